"""The benchmarks run and print their tables (they are measured, never asserted on time)."""
import subprocess
import sys

import pytest

from gasca_core.models import ARCHITECTURES


def _run(args):
    return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True, timeout=300)


def test_kernel_bench_prints_every_pass_of_a_layer():
    r = _run(["gasca_core.bench", "--sections", "layers,gemm", "--layers", "1", "--batch", "2",
              "--repeat", "1", "--rounds", "2", "--settle", "0", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "GFLOP" in r.stdout and "median of 2 rounds" in r.stdout
    for name in ("conv fwd", "conv bwd-in", "conv bwd-w", "convT fwd", "convT bwd-in", "convT bwd-w",
                 "numpy"):
        assert name in r.stdout, name


def test_training_step_bench_reports_steps_per_second():
    r = _run(["gasca_core.bench_step", "--batch", "2", "--steps", "1", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "steps/s" in r.stdout


def test_training_step_bench_times_the_layer_variants():
    from gasca_core.bench.step import VARIANTS, run
    import io
    out = io.StringIO()
    res = run(batch=2, steps=1, rounds=1, use_torch=False, variants=True, out=out)
    for name in VARIANTS:
        assert res[f"ours, {name}"] > 0 and f"ours, {name}" in out.getvalue()
    assert "/ plain = " in out.getvalue()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_step_bench_pytorch_models_mirror_ours(arch, torch):
    """The PyTorch G and D the step benchmark times have our models' parameters, shape for
    shape (ours are stored level by level, PyTorch's G encoders first: compared as sorted
    lists), and the same output shapes, for every named architecture."""
    from gasca_core.bench.step import _torch_models
    from gasca_core.models import architecture, build_full
    g, d = build_full(architecture(arch), seed=0)
    tg, td = _torch_models(arch)
    for ours, theirs in ((g, tg), (d, td)):
        assert sorted(tuple(p.shape) for p in ours.parameters()) == \
            sorted(tuple(p.shape) for p in theirs.parameters())
    x = torch.rand(2, 1, 64, 64)
    assert tuple(tg(x).shape) == (2, 1, 64, 64) and tuple(td(x).shape) == (2, 1)


def test_training_step_bench_steps_another_architecture():
    r = _run(["gasca_core.bench.step", "--arch", "gasca-64-deep", "--batch", "2", "--steps", "1",
              "--rounds", "1", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "gasca-64-deep" in r.stdout and "steps/s" in r.stdout


def test_kernel_bench_layers_of_another_architecture():
    """--arch times that architecture's encoder convolutions and their mirror images, whose
    output padding brings each back to its input size (0 for gasca-64-deep's kernels of 4);
    gasca-64's layers built from its configuration are the benchmark's table."""
    from gasca_core.bench.layers import LAYERS, arch_layers
    assert arch_layers("gasca-64") == LAYERS
    assert [L.output_padding for L in LAYERS.values()] == [1, 1, 1]
    deep = arch_layers("gasca-64-deep")
    assert [(L.cin, L.cout, L.size, L.out, L.k) for L in deep.values()] == \
        [(1, 16, 64, 32, 4), (16, 32, 32, 16, 4), (32, 64, 16, 8, 4), (64, 128, 8, 4, 4),
         (128, 128, 4, 2, 4)]
    assert all(L.output_padding == 0 for L in deep.values())
    r = _run(["gasca_core.bench", "--sections", "layers", "--arch", "gasca-64-deep", "--layers",
              "5", "--batch", "2", "--rounds", "1", "--settle", "0", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "layer 5: conv 128->128 k4 s2 p1, 4x4" in r.stdout and "convT bwd-w" in r.stdout


def test_bench_rejects_bad_flags():
    r = _run(["gasca_core.bench", "--layers", "9"])
    assert r.returncode != 0 and "--layers" in r.stderr
    r = _run(["gasca_core.bench", "--arch", "gasca-64-deep", "--layers", "6"])
    assert r.returncode != 0 and "no layer 6" in r.stderr
    r = _run(["gasca_core.bench", "--arch", "gasca-64-deep", "--ladder"])
    assert r.returncode != 0 and "ladder" in r.stderr
    r = _run(["gasca_core.bench", "--layers", "one"])
    assert r.returncode != 0 and "--layers" in r.stderr
    for flag, value in (("--rounds", "0"), ("--settle", "-1")):
        r = _run(["gasca_core.bench", flag, value])
        assert r.returncode != 0 and flag in r.stderr, (flag, r.stderr)


def test_round_times_interleaves_the_functions_and_times_each_turn(monkeypatch):
    """On a fake clock: every function takes its turn in every round, each turn makes the
    same number of calls, and the per-call time of each round is what that turn took."""
    import pytest
    from gasca_core.bench import layers

    now = [0.0]
    order = []
    cost = {"a": 0.004, "b": 0.001}   # seconds per call

    def make(name):
        def fn():
            order.append(name)
            now[0] += cost[name]
        return fn

    slept = []
    monkeypatch.setattr(layers.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(layers.time, "sleep", lambda s: slept.append(s))
    times = layers.round_times([make("a"), make("b")], rounds=3, min_turn_s=0.01, settle_s=0.2)
    # warm-up: two calls each; then turns of round(0.01 / 0.001) = 10 calls, a before b
    assert order[:4] == ["a", "a", "b", "b"]
    turns = order[4:]
    assert turns == (["a"] * 10 + ["b"] * 10) * 3
    assert times[0] == pytest.approx([0.004] * 3) and times[1] == pytest.approx([0.001] * 3)
    assert slept == [0.2] * 6           # one untimed pause before every turn
    assert layers.median_ratio(times[0], times[1]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="rounds"):
        layers.round_times([make("a")], rounds=0)
    with pytest.raises(ValueError, match="equally long"):
        layers.median_ratio([1.0], [1.0, 2.0])


def test_median_ratio_is_the_median_of_per_round_ratios():
    from gasca_core.bench.layers import median_ratio
    # per-round ratios 2, 0.5, 3: median 2 (the ratio of the medians would be 2 / 2 = 1)
    assert median_ratio([2.0, 1.0, 6.0], [1.0, 2.0, 2.0]) == 2.0
