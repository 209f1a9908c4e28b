"""The fair clock (issue: comparison biases) and the adversary switches.

- Time shares of every method and setting sum to 1 (the cost model of phases.py).
- One training clock for every method: it counts the steps and the code encoding before a
  greedy stage, never validations or checkpoints; a time budget is spent on it, phase by
  phase, and a resume continues a phase's clock.  A fake clock (Trainer(clock=...)) makes
  these checks exact instead of wall-clock flaky.
- adv_weight 0 trains no D at all, and G ends exactly where it ends with D trained at 0.
- d_ratio: r = 1 is the old step, r < 1 updates D on a share r of the steps.
"""
import dataclasses
import math
import os
from fractions import Fraction

import numpy as np
import pytest

from gasca_core.models import GascaConfig, build_full
from gasca_core.training import (METHODS, Trainer, TrainConfig, d_update_due, gangglw_d_ratio,
                                 load_checkpoint, plan_phases, planned_d_updates,
                                 save_checkpoint)

from test_training import TINY, pairs, params_of


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def steps_per_phase(trainer):
    done = {}
    trainer.on_phase_end.append(lambda tr, idx: done.__setitem__(idx, tr.phase_step))
    return done


def ticking_steps(monkeypatch, clock, seconds=1.0):
    """Every training step takes `seconds` on the fake clock."""
    step = Trainer.step

    def timed(self, *a, **k):
        clock.now += seconds
        return step(self, *a, **k)
    monkeypatch.setattr(Trainer, "step", timed)


def expected_steps(phases, budget, seconds=1.0):
    """Steps each phase makes under the rule 'phase i stops when the run's clock reaches
    the shares of phases 0..i times the budget' (steps of `seconds`, no set-up cost)."""
    now, share, done = 0.0, 0.0, []
    for p in phases:
        share += p.time_share
        n = 0
        while n < p.steps and now < share * budget:
            now += seconds
            n += 1
        done.append(n)
    return done


# ----------------------------------------------------------------------------- shares


@pytest.mark.parametrize("method", METHODS)
def test_time_shares_of_every_plan_sum_to_one(method):
    for levels in (1, 2, 3, 5):
        for steps in (None, 1, 7, 300, 3000):
            for f in (0.0, 0.4, 0.7, 0.95):
                for ratio in (0.0, 0.25, 1.0, 3.0):
                    for adv in (0.0, 1e-4):
                        tc = TrainConfig(method=method, steps=steps, finetune_share=f,
                                         d_finetune_ratio=ratio, adv_weight=adv, batch_size=8)
                        plan = plan_phases(method, levels, tc, n_train=100)
                        shares = [p.time_share for p in plan]
                        assert math.isclose(math.fsum(shares), 1.0, rel_tol=1e-12), (plan, shares)
                        # The cost model, exactly: a D-only step is half a G step.
                        cost = [Fraction(p.steps) / (2 if p.kind == "finetune_d" else 1) for p in plan]
                        for p, c in zip(plan, cost):
                            assert math.isclose(p.time_share, c / sum(cost), rel_tol=1e-12)


def test_the_first_releases_default_plan_is_unchanged_and_its_shares_now_sum_to_one():
    plan = plan_phases("gangglw", 3, TrainConfig(steps=3000), n_train=3780)
    assert [(p.name, p.steps, p.key) for p in plan] == [
        ("greedy-1", 300, 0), ("greedy-2", 300, 1), ("finetune_g-2", 1050, 2),
        ("finetune_d-2", 262, 3), ("greedy-3", 300, 4), ("finetune_g-3", 1050, 5),
        ("finetune_d-3", 262, 6)]
    total = 3000 + 262                    # 3000 G steps + 2 x 262 D-only steps at half cost
    assert [p.time_share for p in plan] == pytest.approx(
        [300 / total, 300 / total, 1050 / total, 131 / total, 300 / total, 1050 / total, 131 / total])
    assert math.isclose(sum(p.time_share for p in plan), 1.0)


# ----------------------------------------------------------------------------- the clock


@pytest.mark.parametrize("method", METHODS)
def test_validation_and_checkpoints_are_off_the_clock_for_every_method(method, monkeypatch, tmp_path):
    """Validations (1000 s each) and checkpoints (500 s each) on the fake clock change
    neither the training clock nor where the time budget ends each phase; the wall time
    sees them."""
    clock = FakeClock()
    ticking_steps(monkeypatch, clock)
    validate, save = Trainer._validate, Trainer.save

    def slow_validate(self, *a, **k):
        clock.now += 1000.0
        return validate(self, *a, **k)

    def slow_save(self, *a, **k):
        clock.now += 500.0
        return save(self, *a, **k)
    monkeypatch.setattr(Trainer, "_validate", slow_validate)
    monkeypatch.setattr(Trainer, "save", slow_save)

    budget = 30.0
    tc = TrainConfig(method=method, steps=400, batch_size=8, seed=0, eval_every=2,
                     checkpoint_every=3, adv_weight=1e-2, time_budget=budget)
    t = Trainer(GascaConfig(**TINY), tc, pairs(32, 0), pairs(8, 1), out_dir=str(tmp_path),
                progress=False, log=lambda s: None, clock=clock)
    done = steps_per_phase(t)
    final = t.run()
    expected = expected_steps(t.phases, budget)
    assert [done[i] for i in range(len(t.phases))] == expected
    assert all(0 < n < p.steps for n, p in zip(expected, t.phases))  # the clock ended them
    assert final["global_step"] == sum(expected)
    assert final["train_seconds"] == final["elapsed"] == sum(expected)
    assert final["phase_seconds"] == [float(n) for n in expected]
    assert final["train_seconds"] <= budget + 1                   # at most the step under way
    validations = len(t.history)
    assert validations >= 2 * len(t.phases)
    assert final["wall_seconds"] >= final["train_seconds"] + 1000 * validations
    meta, _ = load_checkpoint(os.path.join(str(tmp_path), "latest.npz"))
    assert meta["elapsed"] == sum(expected) and meta["phase_seconds"] == expected
    assert meta["wall_seconds"] >= 1000 * validations


def test_encoding_the_codes_counts_on_the_training_clock(monkeypatch):
    """The code encoding at the start of greedy-k (k >= 2) is training work: 5 s of it on
    the fake clock show up in the phase's clock and come out of its share."""
    clock = FakeClock()
    ticking_steps(monkeypatch, clock)
    parts = Trainer._phase_parts

    def slow_parts(self, phase):
        out = parts(self, phase)
        if phase.kind == "greedy" and phase.level > 1:
            clock.now += 5.0
        return out
    monkeypatch.setattr(Trainer, "_phase_parts", slow_parts)
    tc = TrainConfig(method="glw", steps=300, batch_size=8, seed=0, time_budget=30.0)
    t = Trainer(GascaConfig(**TINY), tc, pairs(32, 0), pairs(8, 1), progress=False,
                log=lambda s: None, clock=clock)
    done = steps_per_phase(t)
    final = t.run()
    assert [p.time_share * 30 for p in t.phases] == pytest.approx([10, 10, 10])
    assert [done[i] for i in range(3)] == [10, 5, 5]
    assert final["phase_seconds"] == [10.0, 10.0, 10.0]
    assert final["train_seconds"] == 30.0


def test_resume_in_a_time_budgeted_phase_keeps_its_clock(tmp_path, monkeypatch):
    """Interrupted in the middle of a phase under a time budget, then resumed on a clock
    that reads a very different time: the phase ends where an uninterrupted run's does,
    and with the fake clock the parameters are the same bit for bit."""
    clock = FakeClock()
    ticking_steps(monkeypatch, clock)
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="gangglw", steps=600, batch_size=8, lr=5e-3, seed=3, eval_every=3,
                     adv_weight=1e-2, time_budget=40.0)
    data = (pairs(40, 0), pairs(8, 1))
    ref = Trainer(mc, tc, *data, out_dir=str(tmp_path / "ref"), progress=False,
                  log=lambda s: None, clock=clock)
    ref_final = ref.run()

    out = str(tmp_path / "run")
    first = Trainer(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None, clock=clock)
    stop_at = ref_final["phase_seconds"][0] + ref_final["phase_seconds"][1] + 2  # 2 steps into phase 3

    def stop(tr, idx):
        if tr.counters["global_step"] == stop_at:
            raise KeyboardInterrupt
    first.on_step.append(stop)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    meta, _ = load_checkpoint(os.path.join(out, "latest.npz"))
    assert meta["phase_index"] == 2 and meta["phase_step"] == 2
    assert meta["phase_seconds"][:3] == [ref_final["phase_seconds"][0], ref_final["phase_seconds"][1], 2.0]

    later = FakeClock(1e6)
    ticking_steps(monkeypatch, later)
    resumed = Trainer(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None, clock=later)
    final = resumed.run(resume=True)
    assert final["phase_seconds"] == ref_final["phase_seconds"]
    assert final["train_seconds"] == ref_final["train_seconds"]
    assert resumed.counters == ref.counters
    for a, b in ((resumed.G, ref.G), (resumed.D, ref.D)):
        for k, v in params_of(b).items():
            np.testing.assert_array_equal(a.state_dict()[k], v, err_msg=k)


def test_checkpoints_without_the_new_clock_fields_still_resume(tmp_path):
    """A checkpoint of an earlier release holds no phase_seconds or wall_seconds: read as 0."""
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=8, batch_size=8, seed=1, eval_every=4)
    out = str(tmp_path)
    t = Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=out, progress=False, log=lambda s: None)
    t.on_step.append(lambda tr, idx: tr.phase_step == 5 and (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        t.run()
    latest = os.path.join(out, "latest.npz")
    meta, states = load_checkpoint(latest)
    for key in ("phase_seconds", "wall_seconds"):
        meta.pop(key)
    save_checkpoint(latest, meta, states)
    again = Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=out, progress=False, log=lambda s: None)
    final = again.run(resume=True)
    assert final["global_step"] == 8 and len(final["phase_seconds"]) == 1


# ----------------------------------------------------------------------------- no adversary


class DTrainedAtZero(Trainer):
    """The behaviour before the fix: at adv_weight 0 D was still trained in its phases and
    gangglw ran its D fine-tunes."""

    def __init__(self, mc, tc, *a, **k):
        super().__init__(mc, tc, *a, **k)
        full = dataclasses.replace(tc, adv_weight=1.0)   # same steps, D fine-tunes kept
        self.phases = plan_phases(tc.method, mc.levels, full, len(self.train_data))
        self.phase_seconds = [0.0] * len(self.phases)

    def _trains_d(self, phase):
        return phase.trains_d


@pytest.mark.parametrize("method", METHODS)
def test_without_an_adversary_no_d_is_trained_and_g_is_the_same(method):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method=method, steps=24, batch_size=8, lr=5e-3, seed=3, eval_every=4,
                     adv_weight=0.0)
    data = (pairs(40, 0), pairs(8, 1))
    t = Trainer(mc, tc, *data, progress=False)
    final = t.run()
    assert final["d_updates"] == 0
    assert "finetune_d" not in {p.kind for p in t.phases}
    if method == "gangglw":   # the D fine-tunes are left out; the others keep their keys
        assert [(p.name, p.key) for p in t.phases] == [
            ("greedy-1", 0), ("greedy-2", 1), ("finetune_g-2", 2), ("greedy-3", 4), ("finetune_g-3", 5)]
    _, untouched = build_full(mc, tc.seed)
    for k, v in params_of(untouched).items():
        np.testing.assert_array_equal(t.D.state_dict()[k], v, err_msg=k)   # D as initialised
    assert all(r["d_real"] is None and r["d_fake"] is None for r in t.history)

    with_d = DTrainedAtZero(mc, tc, *data, progress=False)
    assert with_d.run()["d_updates"] > 0
    assert any(not np.array_equal(with_d.D.state_dict()[k], v) for k, v in params_of(t.D).items())
    for k, v in params_of(with_d.G).items():
        np.testing.assert_array_equal(t.G.state_dict()[k], v, err_msg=k)   # G bit for bit


def test_an_old_weight_zero_checkpoint_in_a_d_fine_tune_resumes_to_the_same_g(tmp_path):
    """An earlier release ran gangglw's D fine-tunes at adv_weight 0: its checkpoints count
    phases in the full plan.  Resumed from inside finetune_d-2, the run skips what is left
    of it and ends with the G of a run that never had D fine-tunes."""
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="gangglw", steps=24, batch_size=8, lr=5e-3, seed=3, eval_every=4,
                     adv_weight=0.0)
    data = (pairs(40, 0), pairs(8, 1))
    ref = Trainer(mc, tc, *data, progress=False)
    ref.run()
    out = str(tmp_path)
    old = DTrainedAtZero(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None)

    def stop(tr, idx):
        if tr.phases[idx].kind == "finetune_d" and tr.phase_step == 1:
            raise KeyboardInterrupt
    old.on_step.append(stop)
    with pytest.raises(KeyboardInterrupt):
        old.run()
    meta, states = load_checkpoint(os.path.join(out, "latest.npz"))
    assert meta["phase_name"] == "finetune_d-2" and meta["phase_index"] == 3
    resumed = Trainer(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None)
    resumed.run(resume=True)
    for k, v in params_of(ref.G).items():
        np.testing.assert_array_equal(resumed.G.state_dict()[k], v, err_msg=k)


# ----------------------------------------------------------------------------- D:G ratio


def test_d_update_rule():
    assert all(d_update_due(i, 1.0) for i in range(10000))
    assert [d_update_due(i, 0.5) for i in range(6)] == [False, True, False, True, False, True]
    for r in (0.1, 0.25, 1 / 3, 0.5, 0.473, 0.99):
        for n in (1, 7, 100, 1001):
            assert sum(d_update_due(i, r) for i in range(n)) == math.floor(n * r)
    with pytest.raises(ValueError, match="d_ratio"):
        TrainConfig(d_ratio=0.0)
    with pytest.raises(ValueError, match="d_ratio"):
        TrainConfig(d_ratio=1.5)


def test_d_ratio_one_is_the_old_step_and_a_half_makes_half_the_d_updates():
    mc = GascaConfig(**TINY)
    runs = {}
    for r in (1.0, 0.5):
        tc = TrainConfig(method="joint", steps=12, batch_size=8, seed=2, adv_weight=1e-2, d_ratio=r)
        t = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
        runs[r] = (t.run(), t)
    assert runs[1.0][0]["d_updates"] == runs[1.0][0]["g_updates"] == 12
    assert runs[0.5][0]["d_updates"] == 6 and runs[0.5][0]["g_updates"] == 12
    d1, d_half = params_of(runs[1.0][1].D), params_of(runs[0.5][1].D)
    assert any(not np.array_equal(d1[k], d_half[k]) for k in d1)

    # d_ratio 1 (the default) is the step as it was: one D update before every G update,
    # so the whole run equals the step applied by hand with a D update at every step.
    tc = TrainConfig(method="joint", steps=12, batch_size=8, seed=2, adv_weight=1e-2)
    by_hand = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
    run = by_hand.start_phase(0)
    for i in range(12):
        batch, _ = run.batches.batch_at(i)
        by_hand.step(run, batch.inputs, batch.targets, phase_step=i)
    assert by_hand.counters["d_updates"] == 12
    for k, v in params_of(runs[1.0][1].G).items():
        np.testing.assert_array_equal(by_hand.G.state_dict()[k], v, err_msg=k)


def test_gangglw_d_ratio_counts_its_plan():
    tc = TrainConfig(method="joint", steps=600)
    plan = plan_phases("gangglw", 3, tc, 3780)
    # greedy 3 x 60 (one D update each), D fine-tunes 2 x round(0.25 x 210)
    assert sum(planned_d_updates(p, tc) for p in plan) == 180 + 2 * 52
    assert gangglw_d_ratio(tc, 3) == pytest.approx((180 + 104) / 600)
    assert gangglw_d_ratio(dataclasses.replace(tc, adv_weight=0.0), 3) == 0.0
    # and it is what a gangglw run does
    mc = GascaConfig(**TINY)
    small = TrainConfig(method="gangglw", steps=40, batch_size=8, seed=0, adv_weight=1e-2)
    t = Trainer(mc, small, pairs(32, 0), pairs(8, 1), progress=False)
    final = t.run()
    assert final["d_updates"] / final["g_updates"] == pytest.approx(gangglw_d_ratio(small, 3))


def test_a_set_up_that_overruns_its_share_is_taken_from_later_phases(monkeypatch):
    """The encoding before greedy-2 costs 1.5 times greedy-2's whole share: the phases after
    it make up the difference, so the run still ends within its budget (up to one step),
    where 'each phase its own share' would have run over by the overrun."""
    clock = FakeClock()
    ticking_steps(monkeypatch, clock)
    parts = Trainer._phase_parts
    budget = 60.0
    tc = TrainConfig(method="gangglw", steps=600, batch_size=8, seed=0, time_budget=budget,
                     adv_weight=1e-2)
    plan = plan_phases("gangglw", 2, tc, 32)
    g2 = next(p for p in plan if p.name == "greedy-2")
    encoding = 1.5 * g2.time_share * budget

    def slow_parts(self, phase):
        out = parts(self, phase)
        if phase.kind == "greedy" and phase.level > 1:
            clock.now += encoding
        return out
    monkeypatch.setattr(Trainer, "_phase_parts", slow_parts)
    mc = GascaConfig(**{**TINY, "channels": [4, 6], "kernel_sizes": [3, 3]})
    t = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False, log=lambda s: None,
                clock=clock)
    done = steps_per_phase(t)
    final = t.run()
    names = [p.name for p in t.phases]
    assert final["train_seconds"] <= budget + 1.0
    assert done[names.index("greedy-2")] == 0                      # nothing left for its steps
    own_share = {p.name: p.time_share * budget for p in t.phases}
    per_phase_rule = sum(max(own_share[n], final["phase_seconds"][i]) for i, n in enumerate(names))
    assert per_phase_rule > budget + 1.0                          # the old rule would overrun
    ft = names.index("finetune_g-2")
    assert done[ft] < int(own_share["finetune_g-2"])              # the overrun came from here
