"""The benchmarks run and print their tables (they are measured, never asserted on time)."""
import subprocess
import sys


def _run(args):
    return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True, timeout=300)


def test_kernel_bench_prints_every_pass_of_a_layer():
    r = _run(["gasca_core.bench", "--sections", "layers,gemm", "--layers", "1", "--batch", "2",
              "--repeat", "1", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "GFLOP" in r.stdout
    for name in ("conv fwd", "conv bwd-in", "conv bwd-w", "convT fwd", "convT bwd-in", "convT bwd-w",
                 "numpy"):
        assert name in r.stdout, name


def test_training_step_bench_reports_steps_per_second():
    r = _run(["gasca_core.bench_step", "--batch", "2", "--steps", "1", "--no-torch"])
    assert r.returncode == 0, r.stderr
    assert "steps/s" in r.stdout


def test_bench_rejects_bad_flags():
    r = _run(["gasca_core.bench", "--layers", "9"])
    assert r.returncode != 0 and "--layers" in r.stderr
