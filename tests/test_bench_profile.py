"""The step profiler (gasca_core.bench.profile): its accounting, that it puts every function
back, that it changes nothing computed, and that its counts agree with the backend's."""
import pytest

from gasca_core import backend
from gasca_core import tensor as T
from gasca_core.bench import profile as P
from gasca_core.optim import Optimizer
from gasca_core.training import nonfinite


def test_the_timeline_charges_each_moment_to_the_innermost_region(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    t = P.Timeline(root="root")      # t = 0
    t.enter("a")                     # 1: root gets 1
    t.enter("b")                     # 3: a gets 2
    t.leave()                        # 6: b gets 3
    t.leave()                        # 10: a gets 4 more
    t.flush()                        # 15: root gets 5 more
    assert dict(t.seconds) == {"root": 6.0, "a": 6.0, "b": 3.0}
    assert dict(t.calls) == {"a": 1, "b": 1}


def _originals():
    conv_ops = [c for c in P._functions() if "forward" in c.__dict__]
    return ([getattr(backend, k) for k in P.KERNELS], T.Function.__dict__["apply"], T.run_backward,
            nonfinite.grads_finite, Optimizer.__dict__["step"], Optimizer.__dict__["zero_grad"],
            [c.__dict__["forward"] for c in conv_ops], [c.__dict__.get("backward") for c in conv_ops])


def test_every_function_is_put_back_even_after_an_error():
    before = _originals()
    with pytest.raises(RuntimeError, match="inside"):
        with P.Instrumented(P.Timeline()):
            assert backend.conv2d_forward is not before[0][0]
            raise RuntimeError("inside")
    after = _originals()
    assert after[0] == before[0] and after[1:6] == before[1:6]
    assert all(a is b for a, b in zip(after[6], before[6]))
    assert all(a is b for a, b in zip(after[7], before[7]))


def test_the_timers_change_nothing_computed_and_count_what_the_backend_counts():
    from gasca_core.bench.step import _ours_step_fn
    plain, timed = _ours_step_fn(2, seed=3), _ours_step_fn(2, seed=3)
    tl = P.Timeline()
    backend.kernel_calls(reset=True)
    expected = [plain() for _ in range(2)]
    counted = backend.kernel_calls(reset=True)
    with P.Instrumented(tl):
        got = [timed() for _ in range(2)]
    assert got == expected            # bit for bit: the wrappers only time
    conv_fwd = sum(c for (k, _), (c, _) in counted.items() if k == "conv2d_forward")
    adam = sum(c for (k, _), (c, _) in counted.items() if k == "adam_step")
    assert conv_fwd > 0 and tl.calls["kernel: conv fwd"] == conv_fwd
    assert adam > 0 and tl.calls["kernel: Adam (fused kernel)"] == adam
    assert tl.calls["backward walk"] == 4          # a D and a G update in each step
    assert sum(tl.bytes.values()) > 0


def test_the_report_splits_the_whole_step(capsys):
    res = P.profile(batch=2, steps=1, rounds=1)
    text = capsys.readouterr().out
    regions = res["regions"]
    assert {"convolution kernels (C++)", "backward walk", "autograd recording",
            "finite checks", "rest of the step"} <= {P.group(k) for k in regions}
    assert all(v >= 0 for v in regions.values()) and res["gflop"] > 0 and res["sgemm_gflops"] > 0
    # The regions add up to the timed steps (the same moments, split): per step, their sum
    # is the time the timed loop measured, less only the loop's own few statements.
    assert sum(regions.values()) == pytest.approx(res["timed_step_seconds"], rel=0.05)
    assert "summary" in text and "convolution kernels (C++)" in text and "limit" in text


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        P.main(["--batch", "0"])


def test_the_profile_steps_the_architecture_it_is_given():
    import io
    out = io.StringIO()
    res = P.profile(batch=2, steps=1, rounds=1, out=out, arch="gasca-64-deep")
    assert res["arch"] == "gasca-64-deep" and "gasca-64-deep" in out.getvalue()
    assert res["gflop"] > 0 and res["regions"]["kernel: conv fwd"] > 0
