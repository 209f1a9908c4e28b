"""Choosing kernel versions (gasca_core.backend, "kernel versions"): one mechanism for a
block, a flag and the environment; every version trains the same network; a version
registered from Python is checked by the kernel tests, trains a run and is benchmarked."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gasca_core as gc
from gasca_core import backend
from gasca_core.data import PairDataset
from gasca_core.models import GascaConfig
from gasca_core.training import Trainer, TrainConfig, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 3])
TINY_FLAGS = ["--image-size", "16", "--channels", "4,6", "--kernel-sizes", "3,3",
              "--batch-size", "4", "--no-progress"]


def pairs(n, seed, size=16):
    rng = np.random.default_rng(seed)
    x = np.kron(rng.random((n, 1, size // 4, size // 4)), np.ones((1, 1, 4, 4))).astype(np.float32)
    y = np.clip(0.7 * np.roll(x, 1, axis=-1) + 0.15, 0, 1).astype(np.float32)
    return PairDataset(np.ascontiguousarray(x), np.ascontiguousarray(y))


def train_tiny(steps=8):
    """GANGGLW on TINY for `steps` G updates (every phase kind: greedy on pixels and on
    codes, G and D fine-tunes); returns (every parameter, the trainer)."""
    tc = TrainConfig(method="gangglw", steps=steps, batch_size=4, seed=0, checkpoint_every=10**9)
    t = Trainer(TINY, tc, pairs(16, 0), pairs(8, 1), progress=False, log=lambda s: None)
    t.run()
    params = {**{"G." + k: v for k, v in t.G.state_dict().items()},
              **{"D." + k: v for k, v in t.D.state_dict().items()}}
    return params, t


def run(args, env=None, timeout=600):
    """This interpreter on `args`, from the repository root, importing gasca_core as this
    process does (installed, or through PYTHONPATH)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("GASCA_KERNEL")}
    e.update(env or {})
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=ROOT)


# ----------------------------------------------------------------------------- every version trains alike
def test_every_conv2d_and_gemm_version_trains_the_same_network():
    """8 steps of GANGGLW on each of the 3 x 3 conv2d x gemm combinations end with the same
    parameters as on the fastest, to float rounding.  Tolerance 1e-5: the versions add up
    the same products in other orders (each sum differs in its last float32 bits, ~1e-7
    relative), and Adam moves a parameter by about lr = 2e-3 a step whatever the gradient's
    size, so a version whose gradient were wrong by more than rounding would show at
    ~1e-3; measured, the differences stay below 1e-6."""
    conv, gemm = backend.kernel_versions("conv2d"), backend.kernel_versions("gemm")
    combos = list(itertools.product([v for v in conv if isinstance(v, int)],
                                    [v for v in gemm if isinstance(v, int)]))
    assert len(combos) >= 9
    ref, _ = train_tiny()
    for c, g in combos:
        backend.kernel_calls(reset=True)
        with gc.kernels(conv2d=c, gemm=g):
            params, trainer = train_tiny()
        ran = backend.kernel_calls(reset=True)
        # The versions chosen are the ones that ran, the gemm inside version 1 included.
        conv_label = f"{c}+gemm{g}" if c in backend.CONV_VERSIONS_ON_GEMM else str(c)
        assert ("conv2d_forward", conv_label) in ran and ("gemm", str(g)) in ran, ran
        assert all(label == conv_label for (k, label) in ran if k in backend.FAMILIES["conv2d"]), ran
        assert trainer.kernels[-1]["kernels"]["conv2d_backward_weight"] == c
        for name, value in params.items():
            np.testing.assert_allclose(value, ref[name], rtol=0, atol=1e-5,
                                       err_msg=f"conv2d={c} gemm={g}: {name}")


# ----------------------------------------------------------------------------- the mechanism
def test_choices_nest_and_an_explicit_version_wins():
    fastest = backend.fastest_versions()
    assert backend.chosen_version("conv2d_forward") == fastest["conv2d"]
    with gc.kernels(conv2d=0):
        assert backend.chosen_version("conv_transpose2d_backward_weight") == 0
        with gc.kernels("gemm=1,conv2d_forward=1"):
            assert backend.chosen_version("conv2d_forward") == 1      # the kernel's own entry
            assert backend.chosen_version("conv2d_backward_input") == 0  # its family's, outer
            assert backend.chosen_version("gemm") == 1
        assert backend.chosen_version("gemm") == fastest["gemm"]
        backend.kernel_calls(reset=True)
        x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
        backend.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1), version=2)
        backend.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1))
        calls = backend.kernel_calls(reset=True)
        assert calls[("conv2d_forward", "2")][0] == 1 and calls[("conv2d_forward", "0")][0] == 1
        assert calls[("conv2d_forward", "0")][1] == 2 * 9 * 4  # FLOPs: 2 x 9 taps x 4 outputs
    assert backend.chosen_version("conv2d_forward") == fastest["conv2d"]


@pytest.mark.parametrize("spec, message", [
    ("conv=1", "unknown kernel 'conv': choose a family (conv2d, gemm, optim, symconv2d, eltwise)"),
    ("conv2d=9", "conv2d has versions -1 (the fastest) and 0 (reference direct loops)"),
    ("gemm=-2", "gemm has versions"),
    ("conv2d=mine", "no version 'mine' is registered for conv2d"),
    ("conv2d", "expected NAME=VERSION"),
])
def test_bad_choices_name_what_is_wrong_and_what_is_valid(spec, message):
    with pytest.raises(ValueError, match="--kernels") as e:
        backend.parse_kernels(spec)
    assert message in str(e.value)
    with pytest.raises(ValueError):
        with gc.kernels(spec):
            pass


def test_a_registered_version_must_be_chosen_where_it_exists():
    def forward(x, weight, bias, stride, padding, dilation):
        return backend.conv2d_forward(x, weight, bias, stride, padding, dilation, version=0)
    backend.register_kernel("conv2d_forward", forward, name="throwaway_fwd")
    try:
        with pytest.raises(ValueError, match="registered for conv2d_forward only"):
            backend.check_kernels({"conv2d": "throwaway_fwd"})
        with pytest.raises(ValueError, match="no version 'throwaway_fwd' is registered for gemm"):
            with gc.kernels(gemm="throwaway_fwd"):
                pass
        assert "throwaway_fwd" in backend.kernel_versions("conv2d_forward")
        assert "throwaway_fwd" in backend.kernel_versions("conv2d")
    finally:
        backend.unregister_kernel("conv2d_forward", "throwaway_fwd")
    with pytest.raises(ValueError, match="unknown kernel 'conv2d'.*family"):
        backend.register_kernel("conv2d", forward, name="x")
    with pytest.raises(ValueError, match="identifier"):
        backend.register_kernel("gemm", forward, name="3")


def test_a_registered_gemm_cannot_serve_the_im2col_convolution():
    backend.register_kernel("gemm", lambda a, b, ta, tb: (a.T if ta else a) @ (b.T if tb else b),
                            name="numpy_gemm")
    try:
        x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
        with gc.kernels(gemm="numpy_gemm"):
            np.testing.assert_array_equal(backend.gemm(w[0, 0], w[0, 0]), w[0, 0] @ w[0, 0])
            backend.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1))  # v2: no gemm to call
            with gc.kernels(conv2d=1), pytest.raises(ValueError, match="registered Python gemm"):
                backend.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1))
    finally:
        backend.unregister_kernel("gemm", "numpy_gemm")


def test_the_environment_chooses_through_the_same_checks():
    code = "from gasca_core import backend; print(backend.chosen_version('conv2d_forward'), backend.chosen_version('gemm'))"
    r = run(["-c", code], env={"GASCA_KERNELS": "conv2d=0,gemm=1"})
    assert r.returncode == 0 and r.stdout.split() == ["0", "1"], r.stderr
    r = run(["-c", code], env={"GASCA_KERNELS": "conv2d=7"})
    assert r.returncode != 0 and "GASCA_KERNELS: conv2d=7: conv2d has versions" in r.stderr


# ----------------------------------------------------------------------------- your own version
# A throwaway version of conv2d's forward pass in NumPy that counts its calls in a file (the
# runs below are other processes).  WRONG = 1 makes it add 1 to every output: the kernel
# tests must then fail.
OWN_VERSION = '''
import os
import numpy as np
import gasca_core

WRONG = {wrong}


def conv2d_forward(x, weight, bias, stride, padding, dilation):
    with open(os.environ["COUNT_FILE"], "a") as f:
        f.write("x")
    n, ci, h, w = x.shape
    co, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, co, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            taps = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            y += np.einsum("nchw,oc->nohw", taps, weight[:, :, i, j])
    if bias is not None:
        y += bias[None, :, None, None]
    return y + WRONG


gasca_core.register_kernel("conv2d_forward", conv2d_forward, name="{name}")
'''


def _own_version(tmp_path, name, wrong=0):
    path = tmp_path / f"{name}.py"
    path.write_text(OWN_VERSION.format(name=name, wrong=wrong))
    count = tmp_path / f"{name}.count"
    count.write_text("")
    return path, count


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory, shifted_pairs):
    return shifted_pairs(tmp_path_factory.mktemp("data") / "pairs.npz", n=64)


@pytest.mark.slow
def test_a_registered_python_version_is_tested_trained_and_benchmarked(tmp_path, npz_data):
    path, count = _own_version(tmp_path, "counted")
    env = {"GASCA_KERNEL_FILES": str(path), "COUNT_FILE": str(count)}

    # 1. The kernel tests check it, unedited (selected here by its name in the test ids).
    r = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels_conv.py",
             "-k", "counted and (all_passes or adjoint)"], env=env)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    tested = len(count.read_text())
    assert tested > 50, tested

    # ... and fail a wrong one.
    bad, bad_count = _own_version(tmp_path, "off_by_one", wrong=1)
    r = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels_conv.py",
             "-k", "off_by_one and all_passes and N1C1x5x5"],
            env={"GASCA_KERNEL_FILES": str(bad), "COUNT_FILE": str(bad_count)})
    assert r.returncode != 0 and "forward" in r.stdout, r.stdout[-2000:]

    # 2. A training run uses it, and its checkpoint and report say so.
    out = tmp_path / "run"
    count.write_text("")
    r = run(["-m", "gasca_core.train", "--dataset", "npz", "--data", npz_data, "--out", str(out),
             "--steps", "3", "--kernel-file", str(path), "--kernels", "conv2d_forward=counted"]
            + TINY_FLAGS, env={"COUNT_FILE": str(count)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(count.read_text()) > 3
    meta, _ = load_checkpoint(str(out / "latest.npz"))
    assert meta["kernels"][-1]["kernels"]["conv2d_forward"] == "counted"
    assert meta["kernels"][-1]["kernels"]["conv2d_backward_input"] == backend.fastest_versions()["conv2d"]
    assert "conv2d_forward 'counted' (registered)" in (out / "report.md").read_text()

    # 3. The benchmark times it: its own column of the ladder, on the forward pass.
    count.write_text("")
    r = run(["-m", "gasca_core.bench", "--ladder", "--layers", "1", "--batch", "1", "--repeat", "1",
             "--no-step", "--columns", "v2,counted", "--kernel-file", str(path)],
            env={"COUNT_FILE": str(count)})
    assert r.returncode == 0, r.stderr[-2000:]
    header = next(line for line in r.stdout.splitlines() if line.strip().startswith("pass"))
    fwd = next(line for line in r.stdout.splitlines() if "layer 1 conv fwd" in line)
    assert header.split()[1:] == ["v2", "counted", "ceiling"]
    assert all(float(v) > 0 for v in fwd.split()[4:]), fwd
    assert len(count.read_text()) >= 2  # a warm-up call and a timed one


class _Stop(KeyboardInterrupt):
    pass


def test_resume_on_other_versions_records_both(tmp_path):
    """A run interrupted on one conv2d version and resumed on another keeps the first
    stretch's versions in its checkpoint and adds the second's, from the step it resumed."""
    tc = TrainConfig(method="joint", steps=6, batch_size=4, seed=0, checkpoint_every=2)

    def stop(tr, idx):
        if tr.counters["global_step"] == 3:
            raise _Stop()

    with gc.kernels(conv2d=1):
        t = Trainer(TINY, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False,
                    log=lambda s: None)
        t.on_step.append(stop)
        with pytest.raises(KeyboardInterrupt):
            t.run()
    with gc.kernels(conv2d=0):
        t2 = Trainer(TINY, tc, pairs(16, 0), pairs(8, 1), out_dir=str(tmp_path), progress=False,
                     log=lambda s: None)
        t2.run(resume=True)
    meta, _ = load_checkpoint(str(tmp_path / "latest.npz"))
    stretches = [(s["global_step"], s["kernels"]["conv2d_forward"]) for s in meta["kernels"]]
    assert stretches == [(0, 1), (3, 0)], stretches


def test_a_registered_version_returning_the_wrong_array_is_named():
    backend.register_kernel("conv2d_forward", lambda x, w, b, s, p, d: np.zeros((1, 1, 2, 2)),
                            name="float64_result")
    try:
        x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
        with pytest.raises(ValueError, match="'float64_result' returned float64 .* expected a "
                                             "NumPy array of float32"):
            backend.conv2d_forward(x, w, None, (1, 1), (0, 0), (1, 1), version="float64_result")
    finally:
        backend.unregister_kernel("conv2d_forward", "float64_result")


@pytest.mark.parametrize("tool, extra", [("gasca_core.train", ["--steps", "1"]),
                                         ("gasca_core.bench", ["--ladder"]),
                                         ("gasca_core.compare", ["--steps", "1"])])
def test_a_bad_kernels_flag_is_a_one_line_error(tool, extra, tmp_path):
    r = run(["-m", tool, "--kernels", "conv2d=5", "--out", str(tmp_path / "o")] + extra
            if tool != "gasca_core.bench" else ["-m", tool, "--kernels", "conv2d=5"] + extra)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: --kernels: conv2d=5: conv2d has versions -1 (the fastest) and 0" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(["-m", tool, "--kernel-file", str(tmp_path / "missing.py")] + extra)
    assert r.returncode == 2 and "missing.py' does not exist" in r.stderr, r.stderr[-2000:]
