"""GASCA models and the three trainers: Algorithm 1's structure, which parameters each phase
moves, the label conventions, learning, checkpoints and exact resume."""
import json
import math
import os

import numpy as np
import pytest

import gasca_core as gc
from gasca_core.data import PairDataset
from gasca_core.models import (Discriminator, DiscriminatorLevel, GascaConfig, Generator,
                               ShallowAutoencoder, build_full, grow)
from gasca_core.rng import stream
from gasca_core.training import (CheckpointError, NonFiniteLossError, Trainer,
                                 TrainConfig, discriminator_loss, adversarial_loss,
                                 load_checkpoint, load_generator, plan_phases, save_checkpoint)

TINY = dict(image_size=16, channels=[4, 6, 8], kernel_sizes=[3, 3, 3])


def pairs(n, seed, size=16):
    """Inputs and targets that differ by a fixed local map (a one-pixel shift plus a
    contrast change): learnable by a small convolutional autoencoder."""
    rng = np.random.default_rng(seed)
    blobs = rng.random((n, 1, size // 4, size // 4)).astype(np.float32)
    x = np.kron(blobs, np.ones((1, 1, 4, 4), np.float32))
    y = np.clip(0.7 * np.roll(x, 1, axis=-1) + 0.15, 0, 1)
    return PairDataset(np.ascontiguousarray(x), np.ascontiguousarray(y))


def params_of(module):
    return {k: v.copy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- models


def test_default_config_is_gasca64():
    mc = GascaConfig()
    assert (mc.levels, mc.channels, mc.kernel_sizes, mc.paddings) == (3, [32, 64, 128], [5, 5, 3], [2, 2, 1])
    assert [mc.code_shape(k) for k in range(4)] == [(1, 64, 64), (32, 32, 32), (64, 16, 16), (128, 8, 8)]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="kernel_sizes"):
        GascaConfig(channels=[4, 8], kernel_sizes=[3])
    with pytest.raises(ValueError, match="activation"):
        GascaConfig(hidden_activation="swish")
    with pytest.raises(ValueError, match="divisible"):
        GascaConfig(image_size=20, channels=[4, 4, 4], kernel_sizes=[3, 3, 3])


def test_generator_grows_in_the_middle_and_codes_have_the_right_shapes():
    mc = GascaConfig(**TINY)
    g, d = build_full(mc, seed=0, depth=3)
    assert g.layer_order() == ["enc1", "enc2", "enc3", "dec3", "dec2", "dec1"]
    x = gc.Tensor(np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32))
    for k in range(4):
        assert g.encode(x, depth=k).shape == (2,) + mc.code_shape(k)
    assert g(x).shape == (2, 1, 16, 16)
    assert d(x).shape == (2, 1)
    assert d.depth == 3 and len(list(d.convs)) == 3
    # The full forward is exactly enc1, enc2, enc3, dec3, dec2, dec1.
    levels = list(g.levels)
    h = x
    for ae in levels:
        h = ae.encoder(h)
    for ae in reversed(levels):
        h = ae.decoder(h)
    np.testing.assert_array_equal(h.numpy(), g(x).numpy())


def test_levels_must_be_inserted_in_order():
    mc = GascaConfig(**TINY)
    g = Generator(mc)
    with pytest.raises(ValueError, match="next level"):
        g.add_level(ShallowAutoencoder(mc, 2, stream("init-G", 0, 2)))
    d = Discriminator(mc)
    with pytest.raises(ValueError, match="next level"):
        d.add_level(DiscriminatorLevel(mc, 2, stream("init-D", 0, 2)))


def test_output_of_level_one_is_an_image_in_unit_range():
    mc = GascaConfig(**TINY)
    g, _ = build_full(mc, seed=1)
    y = g(gc.Tensor(np.random.default_rng(1).normal(size=(3, 1, 16, 16)).astype(np.float32) * 10))
    assert y.numpy().min() >= 0 and y.numpy().max() <= 1


# ----------------------------------------------------------------------------- losses


def test_label_convention_targets_real_reconstructions_fake():
    big = gc.Tensor(np.full((4, 1), 30.0, np.float32))
    small = gc.Tensor(np.full((4, 1), -30.0, np.float32))
    # D that says "real" to targets and "fake" to reconstructions has ~zero loss ...
    assert discriminator_loss(big, small).item() < 1e-6
    # ... and the opposite D a huge one (finite: computed from logits).
    wrong = discriminator_loss(small, big).item()
    assert 59 < wrong < 61
    # G's non-saturating loss is small when D calls its output real, large when fake.
    assert adversarial_loss(big, "non_saturating").item() < 1e-6
    assert adversarial_loss(small, "non_saturating").item() > 29
    # The paper's saturating form log(1 - D(G(x))): very negative when D is fooled.
    assert adversarial_loss(big, "saturating").item() < -29
    assert abs(adversarial_loss(small, "saturating").item()) < 1e-6


def test_discriminator_loss_matches_the_formula():
    rng = np.random.default_rng(3)
    r, f = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = -np.mean(np.log(sig(r))) - np.mean(np.log(1 - sig(f)))
    got = discriminator_loss(gc.Tensor(r), gc.Tensor(f)).item()
    assert got == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------- plans


def test_plans_give_every_method_the_same_generator_budget():
    tc = lambda m: TrainConfig(method=m, steps=300, finetune_share=0.4)  # noqa: E731
    plans = {m: plan_phases(m, 3, tc(m), n_train=100) for m in ("gangglw", "joint", "glw")}
    assert [p.name for p in plans["gangglw"]] == [
        "greedy-1", "greedy-2", "finetune_g-2", "finetune_d-2", "greedy-3", "finetune_g-3", "finetune_d-3"]
    assert [p.name for p in plans["glw"]] == ["greedy-1", "greedy-2", "greedy-3"]
    assert [p.name for p in plans["joint"]] == ["joint-3"]
    for m, plan in plans.items():
        assert sum(p.steps for p in plan if p.trains_g) == 300, m
    ft = sum(p.steps for p in plans["gangglw"] if p.kind == "finetune_g")
    assert ft == 120


# ----------------------------------------------------------------------------- phases


def _phase_changes(method, steps=24, adv_weight=1e-2):
    """For each phase, which G and D parameters it changed."""
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method=method, steps=steps, batch_size=8, lr=1e-2, adv_weight=adv_weight, seed=0)
    t = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
    before, changes = {}, []

    def start(tr, idx):
        before["g"], before["d"] = params_of(tr.G), params_of(tr.D)

    def end(tr, idx):
        g, d = params_of(tr.G), params_of(tr.D)
        changes.append((tr.phases[idx],
                        {k for k in g if k in before["g"] and not np.array_equal(g[k], before["g"][k])},
                        {k for k in d if k in before["d"] and not np.array_equal(d[k], before["d"][k])},
                        set(g), set(d)))

    t.on_phase_start.append(start)
    t.on_phase_end.append(end)
    t.run()
    return t, changes


def test_gangglw_follows_algorithm_1():
    t, changes = _phase_changes("gangglw")
    assert t.G.depth == 3 and t.D.depth == 3
    for phase, g_changed, d_changed, g_all, d_all in changes:
        k = phase.level
        if phase.kind == "greedy":
            new_g = {n for n in g_all if n.startswith(f"levels.{k - 1}.")}
            new_d = {n for n in d_all if n.startswith(f"convs.{k - 1}.") or n.startswith("head.")}
            assert g_changed == new_g, phase.name      # only the new level of G, all of it
            assert d_changed == new_d, phase.name      # only the new level of D
        elif phase.kind == "finetune_g":
            assert g_changed == g_all, phase.name      # every parameter of G
            assert d_changed == set(), phase.name      # D is frozen
        elif phase.kind == "finetune_d":
            assert g_changed == set(), phase.name
            assert d_changed == d_all, phase.name      # every parameter of D


def test_glw_never_touches_earlier_levels():
    t, changes = _phase_changes("glw")
    for phase, g_changed, _, g_all, _ in changes:
        assert all(n.startswith(f"levels.{phase.level - 1}.") for n in g_changed)


def test_joint_trains_everything_at_once():
    t, changes = _phase_changes("joint")
    (phase, g_changed, d_changed, g_all, d_all), = changes
    assert g_changed == g_all and d_changed == d_all


@pytest.mark.parametrize("codes", ["memory", "per-batch"])
def test_greedy_stage_trains_on_codes_of_the_encoder_stack(codes):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="glw", steps=6, batch_size=8, seed=0, codes=codes)
    t = Trainer(mc, tc, pairs(16, 0), pairs(8, 1), progress=False)
    seen = {}

    def start(tr, idx):
        ph = tr.phases[idx]
        run = tr.current_run if tr.current_run and tr.current_run.index == idx else None
        assert run is not None
        x, y, _ = run.batch_at(0)           # what the stage's first step trains on
        batch, _ = run.batches.batch_at(0)
        seen[ph.level] = x.shape[1:]
        # per-batch: the stage holds the pixels and encodes each batch; memory: the codes
        assert (run.encode is not None) == (codes == "per-batch" and ph.level > 1)
        held = run.train.inputs.shape[1:]
        assert held == ((1, 16, 16) if codes == "per-batch" else x.shape[1:])
        if ph.level > 1:
            with gc.no_grad():
                images = tr.train_data.inputs[batch.indices]
                expected = tr.G.encode(gc.Tensor(images), depth=ph.level - 1).numpy()
            np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)

    t.on_phase_start.append(start)
    t.run()
    assert seen == {1: (1, 16, 16), 2: (4, 8, 8), 3: (6, 4, 4)}


@pytest.mark.parametrize("method", ["glw", "gangglw"])
def test_codes_per_batch_or_held_in_memory_train_the_same_network(method):
    """A code does not depend on the batch it is encoded in: encoding each batch as it is
    drawn (the default) trains, bit for bit, the network that encoding every pair before
    the stage trains."""
    mc = GascaConfig(**TINY)
    final = {}
    for codes in ("memory", "per-batch"):
        tc = TrainConfig(method=method, steps=30, batch_size=8, seed=3, adv_weight=1e-2,
                         codes=codes)
        t = Trainer(mc, tc, pairs(40, 0), pairs(8, 1), progress=False)
        t.run()
        final[codes] = (params_of(t.G), params_of(t.D))
    for which in (0, 1):
        for k, v in final["memory"][which].items():
            np.testing.assert_array_equal(final["per-batch"][which][k], v, err_msg=k)


def test_codes_mode_is_checked():
    with pytest.raises(ValueError, match="codes must be one of"):
        TrainConfig(codes="disk")


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", ["gangglw", "joint"])
def test_short_training_lowers_validation_error(method):
    mc = GascaConfig(image_size=16, channels=[8, 16], kernel_sizes=[3, 3])
    tc = TrainConfig(method=method, steps=150, batch_size=16, lr=3e-3, seed=0, adv_weight=1e-3)
    t = Trainer(mc, tc, pairs(128, 0), pairs(32, 1), progress=False)
    grow(t.G, t.D, t.phases[-1].level, tc.seed, t.device)
    before = t.evaluate()["val_mse"]
    t2 = Trainer(mc, tc, pairs(128, 0), pairs(32, 1), progress=False)
    after = t2.run()["val_mse"]
    assert after < 0.5 * before, (before, after)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    state = {"a": np.arange(6.0).reshape(2, 3), "nested": {"b": np.float32(2.5), "c": [1, 2, np.ones(2)]},
             "t": (3, "x"), "none": None}
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, {"hello": 1}, {"s": state})
    meta, states = load_checkpoint(path)
    assert meta == {"hello": 1}
    s = states["s"]
    np.testing.assert_array_equal(s["a"], state["a"])
    assert s["nested"]["b"] == 2.5 and s["nested"]["c"][:2] == [1, 2]
    np.testing.assert_array_equal(s["nested"]["c"][2], np.ones(2))
    assert s["t"] == (3, "x") and s["none"] is None
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_broken_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(str(bad))
    np.savez(tmp_path / "other.npz", x=np.ones(2))
    with pytest.raises(CheckpointError, match="not a gasca_core checkpoint"):
        load_checkpoint(str(tmp_path / "other.npz"))


def test_trainer_checkpoint_loads_into_generator(tmp_path):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=5, batch_size=8, seed=0)
    t = Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False)
    t.run()
    g, mc2, meta = load_generator(str(tmp_path / "latest.npz"))
    assert mc2 == mc and meta["finished"]
    for k, v in t.G.state_dict().items():
        np.testing.assert_array_equal(g.state_dict()[k], v)
    x = gc.Tensor(pairs(4, 5).inputs)
    with gc.no_grad():
        np.testing.assert_array_equal(g(x).numpy(), t.G(x).numpy())
    for name in ("best.npz", "metrics.jsonl"):
        assert (tmp_path / name).exists()
    recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert {"val_mse", "val_psnr", "val_ssim", "d_real", "d_fake", "train_d_loss"} <= set(recs[-1])


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=3, batch_size=8, seed=0)
    Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False).run()
    other = GascaConfig(image_size=16, channels=[4, 6, 9], kernel_sizes=[3, 3, 3])
    t = Trainer(other, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False)
    with pytest.raises(CheckpointError, match="another architecture"):
        t.run(resume=True)


class _Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("stop_at, schedule", [(5, "constant"), (13, "constant"), (21, "constant"),
                                              (13, "cosine")])  # in greedy-2, finetune_g-2, finetune_d-3
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, stop_at, schedule):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="gangglw", steps=24, batch_size=8, lr=5e-3, seed=3, eval_every=3,
                     adv_weight=1e-2, lr_schedule=schedule)
    data = (pairs(40, 0), pairs(8, 1))
    ref = Trainer(mc, tc, *data, out_dir=str(tmp_path / "ref"), progress=False)
    ref.run()

    out = str(tmp_path / "run")
    t = Trainer(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None)

    def stop(tr, idx):
        if tr.counters["global_step"] == stop_at:
            raise _Stop()

    t.on_step.append(stop)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    meta, _ = load_checkpoint(os.path.join(out, "latest.npz"))
    assert meta["counters"]["global_step"] == stop_at and not meta["finished"]

    t2 = Trainer(mc, tc, *data, out_dir=out, progress=False, log=lambda s: None)
    t2.run(resume=True)
    assert t2.counters == ref.counters
    for a, b in ((t2.G, ref.G), (t2.D, ref.D)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    steps = [json.loads(l)["global_step"] for l in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == sorted(set(steps))  # no duplicated or lost validation records


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=12, batch_size=8, seed=0, eval_every=4)
    t = Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False)

    def poison(tr, idx):
        if tr.counters["global_step"] == 6:
            p = next(iter(tr.G.parameters()))
            p.data[...] = np.nan

    t.on_step.append(poison)
    with pytest.raises(NonFiniteLossError, match=r"joint-3.*step 7"):
        t.run()
    meta, states = load_checkpoint(str(tmp_path / "latest.npz"))
    assert meta["counters"]["global_step"] == 4
    assert all(np.isfinite(v).all() for v in states["g"].values())


def test_nonfinite_skip_mode_skips_and_goes_on(tmp_path):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=6, batch_size=8, seed=0, on_nonfinite="skip", max_skips=100)
    x = pairs(16, 0)
    x.inputs[3] = np.inf  # one poisoned pair: only the batches holding it are skipped
    t = Trainer(mc, tc, x, pairs(8, 1), progress=False, log=lambda s: None)
    t.run()
    assert 0 < t.counters["skipped"] < 12
    assert all(np.isfinite(v).all() for v in t.G.state_dict().values())


def _cuda_or_skip():
    from gasca_core import backend
    try:
        backend.require_cuda()
    except RuntimeError as e:
        pytest.skip(f"no CUDA: {e}")


@pytest.mark.gpu
def test_short_gangglw_run_on_the_gpu_lowers_the_error_and_checkpoints_load_on_cpu(tmp_path):
    _cuda_or_skip()
    mc = GascaConfig(image_size=16, channels=[8, 16], kernel_sizes=[3, 3])
    tc = TrainConfig(method="gangglw", steps=150, batch_size=16, lr=3e-3, seed=0, device="cuda")
    t0 = Trainer(mc, tc, pairs(128, 0), pairs(32, 1), progress=False)
    grow(t0.G, t0.D, t0.phases[-1].level, tc.seed, t0.device)
    before = t0.evaluate()["val_mse"]
    t = Trainer(mc, tc, pairs(128, 0), pairs(32, 1), out_dir=str(tmp_path), progress=False)
    after = t.run()["val_mse"]
    assert after < 0.5 * before, (before, after)
    g, _, _ = load_generator(str(tmp_path / "latest.npz"), device="cpu")
    x = pairs(4, 7).inputs
    with gc.no_grad():
        cpu_out = g(gc.Tensor(x)).numpy()
        gpu_out = t.G(gc.Tensor(x).to("cuda")).numpy()
    np.testing.assert_allclose(cpu_out, gpu_out, rtol=1e-4, atol=1e-5)


def test_checkpoint_of_another_format_version_is_refused(tmp_path):
    import json as _json
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, {"x": 1}, {"s": {"a": np.ones(2)}})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = _json.loads(str(arrays["__meta__"]))
    header["format_version"] = 99
    arrays["__meta__"] = np.array(_json.dumps(header))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_generator_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=2, batch_size=8, seed=0)
    Trainer(mc, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False).run()
    meta, states = load_checkpoint(str(tmp_path / "latest.npz"))
    meta["model_config"]["channels"] = [4, 6, 9]   # a config that lies about the weights
    save_checkpoint(str(tmp_path / "lie.npz"), meta, states)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(str(tmp_path / "lie.npz"))


# ----------------------------------------------------------------------------- the name


def test_ganglw_is_an_alias_of_gangglw_everywhere():
    from gasca_core.cli.train import build_parser
    assert TrainConfig(method="ganglw").method == "gangglw"
    tc = TrainConfig(method="gangglw", steps=30, batch_size=8)
    assert [p.name for p in plan_phases("ganglw", 3, tc, 100)] == \
        [p.name for p in plan_phases("gangglw", 3, tc, 100)]
    assert build_parser().parse_args(["--method", "ganglw"]).method == "gangglw"
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method="gan")


def test_a_checkpoint_saved_as_ganglw_loads_and_resumes_exactly(tmp_path):
    """The first release wrote method "ganglw" into its checkpoints: such a checkpoint is
    read as "gangglw" (with a note) and a resume from it ends where an uninterrupted run
    does, bit for bit."""
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="gangglw", steps=24, batch_size=8, seed=5, eval_every=4)
    whole = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
    whole.run()

    out = str(tmp_path / "run")
    first = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), out_dir=out, progress=False)

    def stop(tr, idx):
        if tr.counters["global_step"] == 13:
            raise KeyboardInterrupt
    first.on_step.append(stop)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    latest = os.path.join(out, "latest.npz")
    meta, states = load_checkpoint(latest)
    meta["train_config"]["method"] = "ganglw"            # as the first release wrote it
    meta.pop("notes", None)
    save_checkpoint(latest, meta, states)

    meta, _ = load_checkpoint(latest)
    assert meta["train_config"]["method"] == "gangglw"
    assert any("ganglw" in n for n in meta["notes"])
    resumed = Trainer(mc, TrainConfig.from_dict(meta["train_config"]), pairs(32, 0),
                      pairs(8, 1), out_dir=out, progress=False)
    resumed.run(resume=True)
    for key, value in params_of(whole.G).items():
        np.testing.assert_array_equal(value, resumed.G.state_dict()[key], err_msg=key)
    g, _, gmeta = load_generator(latest)
    assert gmeta["train_config"]["method"] == "gangglw"


def test_the_training_step_is_the_one_the_loop_runs():
    """Trainer.step (what the benchmark times) applied by hand over a phase's batches gives
    the parameters Trainer.run reaches."""
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="joint", steps=7, batch_size=8, seed=2)
    ran = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
    ran.run()
    by_hand = Trainer(mc, tc, pairs(32, 0), pairs(8, 1), progress=False)
    run = by_hand.start_phase(0)
    for step in range(tc.steps):
        batch, _ = run.batches.batch_at(step)
        losses, ok = by_hand.step(run, batch.inputs, batch.targets)
        assert ok and set(losses) == {"d_loss", "g_loss", "rec_loss", "adv_loss"}
    for key, value in params_of(ran.G).items():
        np.testing.assert_array_equal(value, by_hand.G.state_dict()[key], err_msg=key)


def test_a_level_that_does_not_halve_and_restore_its_map_is_refused():
    with pytest.raises(ValueError, match="level 1: kernel size 4 with padding 2 .* 33x33"):
        GascaConfig(kernel_sizes=[4, 5, 3], paddings=[2, 2, 1])
    with pytest.raises(ValueError, match="level 2"):
        GascaConfig(kernel_sizes=[5, 5, 3], paddings=[2, 0, 1])


def test_cosine_schedule_falls_from_lr_to_zero_in_every_phase():
    from gasca_core.training import lr_factor
    assert [lr_factor("cosine", p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor("constant", 0.7) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    mc = GascaConfig(**TINY)
    tc = TrainConfig(method="gangglw", steps=24, batch_size=8, lr=4e-3, seed=3, adv_weight=1e-2,
                     lr_schedule="cosine")
    t = Trainer(mc, tc, pairs(40, 0), pairs(8, 1), progress=False, log=lambda s: None)
    seen = {}  # phase -> the G (or D) rate of each step, read after the step

    def record(tr, idx):
        run = tr.current_run
        opt = run.opt_g or run.opt_d
        seen.setdefault(idx, []).append(opt.param_groups[0]["lr"])

    t.on_step.append(record)
    t.run()
    for idx, lrs in seen.items():
        n = t.phases[idx].steps
        expected = [4e-3 * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
        assert lrs == pytest.approx(expected), t.phases[idx].name
