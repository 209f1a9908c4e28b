"""The CUDA kernels (gasca_core._C_cuda) against the CPU kernels (gasca_core._C).

Every CUDA kernel version is held to the CPU module on many random geometries (strides,
paddings, dilations, odd sizes, batch 1, channel counts that straddle the 64-wide tiles),
in float32 and float64; the gradients are checked in float64 against central finite
differences and through the adjoint identities <conv(x), g> = <x, conv^T(g)>; the optimizer
kernels must follow the CPU ones step for step; malformed calls must raise TypeError or
ValueError naming the argument.

These tests need a CUDA GPU, CuPy and the CUDA extension; they are skipped with the reason
where any of the three is missing.  Run them with `pytest -m gpu tests/test_cuda.py`.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest


def _why_no_gpu() -> str | None:
    """None when the GPU tests can run, else the reason they cannot (never raises)."""
    try:
        import cupy
    except Exception as e:  # not installed, or a broken install (missing CUDA libraries)
        return f"CuPy is not importable ({type(e).__name__}: {e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU is visible"
    except Exception as e:  # no driver, or no device
        return f"no CUDA GPU is visible ({type(e).__name__}: {e})"
    try:
        from gasca_core import _C_cuda  # noqa: F401
    except Exception as e:
        return f"gasca_core._C_cuda is missing (built without nvcc?): {e}"
    try:
        from gasca_core import _C  # noqa: F401
    except Exception as e:
        return f"the CPU module gasca_core._C (the oracle) is missing: {e}"
    return None


_WHY = _why_no_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]

if _WHY is None:
    import cupy as cp

    from gasca_core import _C as cpu
    from gasca_core import _C_cuda as gpu
else:  # the module must still import, so that pytest can report the skip
    cp = cpu = gpu = None

DTYPES = [np.float32, np.float64]
GPU_VERSIONS = [0, 1]


def tolerance(dtype) -> float:
    """Relative tolerance of a GPU result against the CPU one: the two sum in different
    orders (and the GPU fuses multiply-adds), so float32 agrees to a few units in 1e-6 of the
    largest magnitude, float64 to about 1e-14."""
    return 2e-5 if dtype == np.float32 else 1e-11


def assert_close(got, want, dtype, what: str) -> None:
    got = cp.asnumpy(got) if not isinstance(got, np.ndarray) else got
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    tol = tolerance(dtype)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def on_gpu(a: np.ndarray):
    return cp.asarray(a)


def stream() -> int:
    return cp.cuda.get_current_stream().ptr


# --------------------------------------------------------------------------- geometries
def out_size(g: dict) -> tuple[int, int]:
    (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
    span_h = g["h"] + 2 * ph - dh * (g["kh"] - 1) - 1
    span_w = g["w"] + 2 * pw - dw * (g["kw"] - 1) - 1
    return (span_h // sh + 1 if span_h >= 0 else 0, span_w // sw + 1 if span_w >= 0 else 0)


def random_geometries(count: int, seed: int) -> list[dict]:
    """Random conv2d geometries with a non-empty output, as keyword dicts."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        g = dict(
            n=int(rng.integers(1, 4)), ci=int(rng.integers(1, 6)), co=int(rng.integers(1, 7)),
            h=int(rng.integers(1, 14)), w=int(rng.integers(1, 14)),
            kh=int(rng.integers(1, 6)), kw=int(rng.integers(1, 6)),
            stride=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
            padding=(int(rng.integers(0, 3)), int(rng.integers(0, 3))),
            dilation=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
        )
        if out_size(g)[0] > 0 and out_size(g)[1] > 0:
            out.append(g)
    return out


# Geometries that exercise the tiles: channel counts across the 64-wide tile edges, long
# reductions (many k-tiles, split-K in the weight gradient), and the gasca-64 layers.
TILE_GEOMETRIES = [
    dict(n=2, ci=70, co=130, h=9, w=11, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    dict(n=3, ci=33, co=65, h=17, w=15, kh=5, kw=5, stride=(2, 2), padding=(2, 2), dilation=(1, 1)),
    dict(n=1, ci=64, co=64, h=16, w=16, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
    dict(n=2, ci=7, co=9, h=40, w=37, kh=3, kw=2, stride=(3, 2), padding=(2, 1), dilation=(2, 3)),
    dict(n=4, ci=1, co=32, h=64, w=64, kh=5, kw=5, stride=(2, 2), padding=(2, 2), dilation=(1, 1)),
    dict(n=2, ci=32, co=64, h=32, w=32, kh=5, kw=5, stride=(2, 2), padding=(2, 2), dilation=(1, 1)),
    dict(n=2, ci=64, co=128, h=16, w=16, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
    dict(n=1, ci=3, co=2, h=5, w=5, kh=5, kw=5, stride=(1, 1), padding=(0, 0), dilation=(1, 1)),
    dict(n=2, ci=2, co=3, h=6, w=7, kh=1, kw=1, stride=(4, 3), padding=(0, 0), dilation=(1, 1)),
    # 81 stride phases: version 1's backward-input falls back to the gather.
    dict(n=1, ci=2, co=3, h=20, w=21, kh=2, kw=3, stride=(9, 9), padding=(1, 0), dilation=(1, 2)),
]

GEOMETRIES = random_geometries(30, seed=5) + TILE_GEOMETRIES


def geometry_id(g: dict) -> str:
    return (f"n{g['n']}c{g['ci']}-{g['co']}_{g['h']}x{g['w']}_k{g['kh']}x{g['kw']}"
            f"_s{g['stride'][0]}{g['stride'][1]}_p{g['padding'][0]}{g['padding'][1]}"
            f"_d{g['dilation'][0]}{g['dilation'][1]}")


def conv_arrays(g: dict, dtype, seed: int = 0):
    """x, weight, bias, grad_out for a convolution of geometry g."""
    rng = np.random.default_rng(seed)
    oh, ow = out_size(g)
    x = rng.standard_normal((g["n"], g["ci"], g["h"], g["w"])).astype(dtype)
    w = rng.standard_normal((g["co"], g["ci"], g["kh"], g["kw"])).astype(dtype)
    b = rng.standard_normal(g["co"]).astype(dtype)
    dy = rng.standard_normal((g["n"], g["co"], oh, ow)).astype(dtype)
    return x, w, b, dy


def conv_kwargs(g: dict) -> dict:
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])


def transpose_of(g: dict) -> tuple[dict, tuple[int, int]]:
    """The transposed convolution whose adjoint is the convolution g: it maps g's output
    (OH, OW) back onto g's input (H, W), with the output_padding that makes the sizes match.
    Returns its keyword arguments and its output_padding."""
    oh, ow = out_size(g)
    (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
    oph = g["h"] - ((oh - 1) * sh - 2 * ph + dh * (g["kh"] - 1) + 1)
    opw = g["w"] - ((ow - 1) * sw - 2 * pw + dw * (g["kw"] - 1) + 1)
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
                output_padding=(oph, opw)), (oph, opw)


def transpose_is_valid(g: dict) -> bool:
    """PyTorch's rule, which the bindings apply: output_padding < max(stride, dilation).
    (transpose_of always gives output_padding < stride; OP_BEYOND_STRIDE below has the rest.)"""
    _, (oph, opw) = transpose_of(g)
    return 0 <= oph < max(g["stride"][0], g["dilation"][0]) and \
        0 <= opw < max(g["stride"][1], g["dilation"][1])


# Transposed convolutions with stride <= output_padding < dilation on at least one axis:
# the adjoint convolution's output (H, W) is smaller than its natural size (cpp/conv2d.h).
# (N, Ci, H, W, Co, KH, KW, stride, padding, output_padding, dilation)
OP_BEYOND_STRIDE = [
    (2, 3, 4, 5, 2, 3, 3, (1, 1), (0, 0), (1, 1), (2, 2)),
    (1, 2, 3, 6, 3, 3, 2, (1, 2), (1, 0), (2, 1), (3, 1)),      # rectangular, one axis
    (2, 4, 5, 4, 3, 2, 3, (2, 1), (0, 1), (3, 2), (4, 3)),      # stride 2: two stride phases
    (1, 3, 7, 6, 2, 2, 2, (1, 1), (0, 0), (1, 2), (2, 3)),
    (2, 70, 9, 11, 130, 3, 3, (1, 1), (1, 1), (1, 1), (2, 2)),  # across the 64-wide tiles
    (4, 33, 8, 8, 65, 5, 5, (2, 2), (2, 2), (2, 3), (3, 4)),    # long reductions, split-K
]


def op_id(c) -> str:
    return "n{}c{}-{}_{}x{}_k{}x{}_s{}{}_p{}{}_op{}{}_d{}{}".format(
        c[0], c[1], c[4], c[2], c[3], c[5], c[6], *c[7], *c[8], *c[9], *c[10])


# --------------------------------------------------------------------------- module facts
def test_module_reports_devices_and_versions():
    assert gpu.device_count() >= 1
    v = gpu.versions()
    assert set(v) == {"gemm", "conv2d", "optim"}
    for family in ("gemm", "conv2d", "optim"):
        assert len(v[family]) >= 2 and all(isinstance(s, str) and s for s in v[family])


# --------------------------------------------------------------------------- conv2d vs CPU
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("g", GEOMETRIES, ids=geometry_id)
def test_conv2d_matches_cpu(g, dtype):
    x, w, b, dy = conv_arrays(g, dtype)
    kw = conv_kwargs(g)
    y_ref = np.empty_like(dy)
    cpu.conv2d_forward(x, w, b, y_ref, **kw)
    dx_ref = np.empty_like(x)
    cpu.conv2d_backward_input(dy, w, dx_ref, **kw)
    dw_ref = np.empty_like(w)
    cpu.conv2d_backward_weight(x, dy, dw_ref, **kw)
    db_ref = np.empty_like(b)
    cpu.conv2d_backward_bias(dy, db_ref)

    xd, wd, bd, dyd = map(on_gpu, (x, w, b, dy))
    for version in GPU_VERSIONS:
        # NaN-filled outputs: a kernel that skips an element cannot pass by luck.
        y = cp.full(dy.shape, np.nan, dtype)
        gpu.conv2d_forward(xd, wd, bd, y, **kw, version=version, stream=stream())
        assert_close(y, y_ref, dtype, f"forward v{version}")
        y_nobias = cp.full(dy.shape, np.nan, dtype)
        gpu.conv2d_forward(xd, wd, None, y_nobias, **kw, version=version, stream=stream())
        assert_close(y_nobias, y_ref - b[None, :, None, None], dtype, f"forward v{version} no bias")
        dx = cp.full(x.shape, np.nan, dtype)
        gpu.conv2d_backward_input(dyd, wd, dx, **kw, version=version, stream=stream())
        assert_close(dx, dx_ref, dtype, f"backward-input v{version}")
        dw = cp.full(w.shape, np.nan, dtype)
        gpu.conv2d_backward_weight(xd, dyd, dw, **kw, version=version, stream=stream())
        assert_close(dw, dw_ref, dtype, f"backward-weight v{version}")
    db = cp.full(b.shape, np.nan, dtype)
    gpu.conv2d_backward_bias(dyd, db, stream=stream())
    assert_close(db, db_ref, dtype, "bias gradient")


def assert_transposed_versions_match_cpu(x, w, b, dy, t_kw, dtype) -> dict:
    """Every GPU version's transposed forward, backward-input and backward-weight against
    the CPU module's on the same arrays; returns {version: (dx, dw)} as computed on the GPU."""
    y_ref = np.empty(dy.shape, dtype)
    cpu.conv_transpose2d_forward(x, w, b, y_ref, **t_kw)
    dx_ref = np.empty_like(x)
    cpu.conv_transpose2d_backward_input(dy, w, dx_ref, **t_kw)
    dw_ref = np.empty_like(w)
    cpu.conv_transpose2d_backward_weight(x, dy, dw_ref, **t_kw)
    xd, wd, bd, dyd = map(on_gpu, (x, w, b, dy))
    grads = {}
    for version in GPU_VERSIONS:
        y = cp.full(dy.shape, np.nan, dtype)
        gpu.conv_transpose2d_forward(xd, wd, bd, y, **t_kw, version=version, stream=stream())
        assert_close(y, y_ref, dtype, f"transposed forward v{version}")
        dx = cp.full(x.shape, np.nan, dtype)
        gpu.conv_transpose2d_backward_input(dyd, wd, dx, **t_kw, version=version, stream=stream())
        assert_close(dx, dx_ref, dtype, f"transposed backward-input v{version}")
        dw = cp.full(w.shape, np.nan, dtype)
        gpu.conv_transpose2d_backward_weight(xd, dyd, dw, **t_kw, version=version,
                                             stream=stream())
        assert_close(dw, dw_ref, dtype, f"transposed backward-weight v{version}")
        grads[version] = (dx, dw)
    return grads


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("g", [g for g in GEOMETRIES if transpose_is_valid(g)], ids=geometry_id)
def test_conv_transpose2d_matches_cpu(g, dtype):
    # The transposed convolution maps the conv's output shape (N, Co, OH, OW) to its input
    # shape (N, Ci, H, W), with weight (Co, Ci, KH, KW) read as (C_in, C_out, KH, KW).
    x_conv, w, _, dy_conv = conv_arrays(g, dtype, seed=1)
    t_kw, _ = transpose_of(g)
    x = dy_conv  # the transposed convolution's input
    dy = x_conv  # the gradient of its output
    b = np.random.default_rng(2).standard_normal(g["ci"]).astype(dtype)
    assert_transposed_versions_match_cpu(x, w, b, dy, t_kw, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", OP_BEYOND_STRIDE, ids=op_id)
def test_conv_transpose2d_output_padding_beyond_stride_matches_cpu(cfg, dtype):
    """stride <= output_padding < dilation: every GPU version against the CPU module (itself
    held to NumPy and PyTorch by tests/test_kernels_conv.py), and in float64 the adjoint
    identities <convT(x), g> = <x, bwd_in(g)> = <w, bwd_w(x, g)>."""
    n, ci, h, w_, co, kh, kw, s, p, op, d = cfg
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, ci, h, w_)).astype(dtype)
    w = rng.standard_normal((ci, co, kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
    ow = (w_ - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    t_kw = dict(stride=s, padding=p, output_padding=op, dilation=d)
    grads = assert_transposed_versions_match_cpu(x, w, b, dy, t_kw, dtype)
    if dtype != np.float64:
        return
    xd, wd, dyd = map(on_gpu, (x, w, dy))
    for version, (dx, dw) in grads.items():
        y0 = cp.empty(dy.shape, dtype)
        gpu.conv_transpose2d_forward(xd, wd, None, y0, **t_kw, version=version, stream=stream())
        lhs = inner(y0, dyd)
        scale = max(1.0, abs(lhs), float(cp.abs(y0).sum()))
        assert abs(lhs - inner(xd, dx)) <= 1e-12 * scale, f"adjoint (input) v{version}"
        assert abs(lhs - inner(wd, dw)) <= 1e-12 * scale, f"adjoint (weight) v{version}"


def test_gasca64_decoder_layers_match_cpu():
    """The three transposed convolutions of gasca-64 (k5 s2 p2 op1, k5 s2 p2 op1,
    k3 s2 p1 op1), float32, batch 3, with bias: the decoder path of every model."""
    rng = np.random.default_rng(3)
    layers = [(32, 1, 32, 5, 2), (64, 32, 16, 5, 2), (128, 64, 8, 3, 1)]  # ci, co, size, k, p
    for ci, co, size, k, p in layers:
        x = rng.standard_normal((3, ci, size, size)).astype(np.float32)
        w = (rng.standard_normal((ci, co, k, k)) / np.sqrt(ci * k * k)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        kw = dict(stride=2, padding=p, output_padding=1, dilation=1)
        y_ref = np.empty((3, co, 2 * size, 2 * size), np.float32)
        cpu.conv_transpose2d_forward(x, w, b, y_ref, **kw)
        for version in GPU_VERSIONS:
            y = cp.full(y_ref.shape, np.nan, np.float32)
            gpu.conv_transpose2d_forward(on_gpu(x), on_gpu(w), on_gpu(b), y, **kw,
                                         version=version, stream=stream())
            assert_close(y, y_ref, np.float32, f"decoder layer {ci}->{co} v{version}")


def test_tiled_kernels_are_deterministic():
    """Split-K sums its slices in a fixed order: two runs give the same bits (the gasca-64
    layer 2 weight gradient at batch 8 is split, its Co x Ci*KH*KW being 13 tiles)."""
    g = dict(n=8, ci=32, co=64, h=32, w=32, kh=5, kw=5, stride=(2, 2), padding=(2, 2),
             dilation=(1, 1))
    x, w, _, dy = map(on_gpu, conv_arrays(g, np.float32))
    runs = []
    for _ in range(2):
        dw = cp.empty(w.shape, cp.float32)
        gpu.conv2d_backward_weight(x, dy, dw, **conv_kwargs(g), version=1, stream=stream())
        y = cp.empty(dy.shape, cp.float32)
        gpu.conv2d_forward(x, w, None, y, **conv_kwargs(g), version=1, stream=stream())
        runs.append((cp.asnumpy(dw), cp.asnumpy(y)))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


# --------------------------------------------------------------------------- gradients
def inner(a, b) -> float:
    return float(cp.sum(cp.asarray(a, dtype=cp.float64) * cp.asarray(b, dtype=cp.float64)))


@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("g", GEOMETRIES[:12] + TILE_GEOMETRIES[:4], ids=geometry_id)
def test_adjoint_identities_float64(g, version):
    """<conv(x, w), dy> = <x, backward_input(dy, w)> = <w, backward_weight(x, dy)>: the
    gradients are the adjoints of the forward map, to float64 rounding."""
    x, w, _, dy = conv_arrays(g, np.float64, seed=4)
    kw = conv_kwargs(g)
    xd, wd, dyd = map(on_gpu, (x, w, dy))
    y = cp.empty(dy.shape)
    gpu.conv2d_forward(xd, wd, None, y, **kw, version=version, stream=stream())
    dx = cp.empty(x.shape)
    gpu.conv2d_backward_input(dyd, wd, dx, **kw, version=version, stream=stream())
    dw = cp.empty(w.shape)
    gpu.conv2d_backward_weight(xd, dyd, dw, **kw, version=version, stream=stream())
    lhs = inner(y, dyd)
    scale = max(1.0, abs(lhs), float(cp.abs(y).sum()))
    assert abs(lhs - inner(xd, dx)) <= 1e-12 * scale
    assert abs(lhs - inner(wd, dw)) <= 1e-12 * scale


def directional_check(loss, grad, point: np.ndarray, rng, what: str, eps: float = 1e-3):
    """Central finite difference of loss along random directions vs <grad, direction>.

    The losses below are quadratic in each argument, so the central difference has no
    truncation error and a large step is safe; what remains is the rounding of the loss
    itself (a relative 1e-16 of |L|, divided by the step), which the tolerance allows for."""
    size = abs(loss(point))
    for _ in range(3):
        d = rng.standard_normal(point.shape)
        fd = (loss(point + eps * d) - loss(point - eps * d)) / (2 * eps)
        an = float(np.sum(grad * d))
        allowed = 1e-7 * max(1.0, abs(an)) + 1e-13 * size / eps
        assert abs(fd - an) <= allowed, f"{what}: finite difference {fd} vs analytic {an}"


@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("g", GEOMETRIES[:8] + TILE_GEOMETRIES[:2], ids=geometry_id)
def test_conv2d_gradients_match_finite_differences(g, version):
    """L = 1/2 |conv(x, w) + b|^2; dL/dy = y, so dL/dx = backward_input(y), dL/dw =
    backward_weight(x, y), dL/db = bias_grad(y); all against central differences."""
    rng = np.random.default_rng(6)
    x, w, b, _ = conv_arrays(g, np.float64, seed=6)
    kw = conv_kwargs(g)
    oh, ow = out_size(g)

    def forward(x_, w_, b_):
        y = cp.empty((g["n"], g["co"], oh, ow))
        gpu.conv2d_forward(on_gpu(x_), on_gpu(w_), on_gpu(b_), y, **kw, version=version,
                           stream=stream())
        return y

    def loss(x_, w_, b_):
        return 0.5 * float(cp.sum(forward(x_, w_, b_) ** 2))

    y = forward(x, w, b)
    dx = cp.empty(x.shape)
    gpu.conv2d_backward_input(y, on_gpu(w), dx, **kw, version=version, stream=stream())
    dw = cp.empty(w.shape)
    gpu.conv2d_backward_weight(on_gpu(x), y, dw, **kw, version=version, stream=stream())
    db = cp.empty(b.shape)
    gpu.conv2d_backward_bias(y, db, stream=stream())
    directional_check(lambda p: loss(p, w, b), cp.asnumpy(dx), x, rng, "dL/dx")
    directional_check(lambda p: loss(x, p, b), cp.asnumpy(dw), w, rng, "dL/dw")
    directional_check(lambda p: loss(x, w, p), cp.asnumpy(db), b, rng, "dL/db")


@pytest.mark.parametrize("version", GPU_VERSIONS)
@pytest.mark.parametrize("g", [g for g in GEOMETRIES[:10] + TILE_GEOMETRIES[:3]
                               if transpose_is_valid(g)], ids=geometry_id)
def test_conv_transpose2d_gradients_match_finite_differences(g, version):
    rng = np.random.default_rng(7)
    x_conv, w, _, x = conv_arrays(g, np.float64, seed=7)  # x: the transposed conv's input
    b = rng.standard_normal(g["ci"])
    t_kw, _ = transpose_of(g)

    def forward(x_, w_, b_):
        y = cp.empty(x_conv.shape)
        gpu.conv_transpose2d_forward(on_gpu(x_), on_gpu(w_), on_gpu(b_), y, **t_kw,
                                     version=version, stream=stream())
        return y

    def loss(x_, w_, b_):
        return 0.5 * float(cp.sum(forward(x_, w_, b_) ** 2))

    y = forward(x, w, b)
    dx = cp.empty(x.shape)
    gpu.conv_transpose2d_backward_input(y, on_gpu(w), dx, **t_kw, version=version,
                                        stream=stream())
    dw = cp.empty(w.shape)
    gpu.conv_transpose2d_backward_weight(on_gpu(x), y, dw, **t_kw, version=version,
                                         stream=stream())
    db = cp.empty(b.shape)
    gpu.conv2d_backward_bias(y, db, stream=stream())
    directional_check(lambda p: loss(p, w, b), cp.asnumpy(dx), x, rng, "dL/dx")
    directional_check(lambda p: loss(x, p, b), cp.asnumpy(dw), w, rng, "dL/dw")
    directional_check(lambda p: loss(x, w, p), cp.asnumpy(db), b, rng, "dL/db")


# --------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 3), (64, 64, 16), (65, 130, 33),
                                   (129, 3, 200), (3, 70, 0)])
def test_gemm_matches_numpy(m, n, k, trans_a, trans_b, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    want = 0.5 * (opa.astype(np.float64) @ opb.astype(np.float64)) - 2.0 * c0
    for version in range(len(gpu.versions()["gemm"])):
        c = on_gpu(c0)
        gpu.gemm(on_gpu(a), on_gpu(b), c, trans_a, trans_b, 0.5, -2.0, version=version,
                 stream=stream())
        assert_close(c, want, dtype, f"gemm v{version}")
        # beta == 0: C's old contents (NaN here) are never read.
        c = cp.full((m, n), np.nan, dtype)
        gpu.gemm(on_gpu(a), on_gpu(b), c, trans_a, trans_b, 1.0, 0.0, version=version,
                 stream=stream())
        assert_close(c, opa.astype(np.float64) @ opb.astype(np.float64), dtype,
                     f"gemm v{version}, beta 0")


# --------------------------------------------------------------------------- optimizers
SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-2),
]
ADAM_CASES = [
    dict(lr=1e-3),
    dict(lr=2e-3, beta1=0.5, beta2=0.99, eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.1, decoupled=True),
    dict(lr=1e-3, beta1=0.3, beta2=0.9),  # 1 - beta1 >= 0.5: torch's other lerp form
]


def optim_tolerance(dtype) -> float:
    return 1e-6 if dtype == np.float32 else 1e-13


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("case", SGD_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_cpu_step_for_step(case, offset, dtype):
    n = 1037  # odd: the vectorised kernel's tail is exercised
    rng = np.random.default_rng(8)
    momentum = case.get("momentum", 0.0)
    for version in range(len(gpu.versions()["optim"])):
        p_cpu = rng.standard_normal(n).astype(dtype)
        b_cpu = np.zeros(n, dtype) if momentum else None
        # offset 1: views starting one element into a buffer, not 16-byte aligned.
        p_gpu = on_gpu(np.concatenate([np.zeros(offset, dtype), p_cpu]))[offset:]
        b_gpu = cp.zeros(n + offset, dtype)[offset:] if momentum else None
        for step in range(5):
            grad = rng.standard_normal(n).astype(dtype)
            g_gpu = on_gpu(np.concatenate([np.zeros(offset, dtype), grad]))[offset:]
            cpu.sgd_step(p_cpu, grad, b_cpu, first_step=step == 0, **case)
            gpu.sgd_step(p_gpu, g_gpu, b_gpu, first_step=step == 0, version=version,
                         stream=stream(), **case)
            tol = optim_tolerance(dtype)
            np.testing.assert_allclose(cp.asnumpy(p_gpu), p_cpu, rtol=tol, atol=tol,
                                       err_msg=f"param after step {step + 1}, v{version}")
            if momentum:
                np.testing.assert_allclose(cp.asnumpy(b_gpu), b_cpu, rtol=tol, atol=tol,
                                           err_msg=f"momentum after step {step + 1}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("case", ADAM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adam_matches_cpu_step_for_step(case, offset, dtype):
    n = 1031
    rng = np.random.default_rng(9)
    for version in range(len(gpu.versions()["optim"])):
        p_cpu = rng.standard_normal(n).astype(dtype)
        m_cpu, v_cpu = np.zeros(n, dtype), np.zeros(n, dtype)
        pad = np.zeros(offset, dtype)
        p_gpu = on_gpu(np.concatenate([pad, p_cpu]))[offset:]
        m_gpu = cp.zeros(n + offset, dtype)[offset:]
        v_gpu = cp.zeros(n + offset, dtype)[offset:]
        for step in range(1, 7):
            grad = rng.standard_normal(n).astype(dtype)
            g_gpu = on_gpu(np.concatenate([pad, grad]))[offset:]
            cpu.adam_step(p_cpu, grad, m_cpu, v_cpu, step, **case)
            gpu.adam_step(p_gpu, g_gpu, m_gpu, v_gpu, step, version=version, stream=stream(),
                          **case)
            tol = optim_tolerance(dtype)
            for name, got, want in (("param", p_gpu, p_cpu), ("exp_avg", m_gpu, m_cpu),
                                    ("exp_avg_sq", v_gpu, v_cpu)):
                np.testing.assert_allclose(cp.asnumpy(got), want, rtol=tol, atol=tol,
                                           err_msg=f"{name} after step {step}, v{version}")


# --------------------------------------------------------------------------- streams
def test_kernels_run_on_the_given_stream():
    """Work queued on a non-default stream, then that stream synchronised, is complete."""
    g = TILE_GEOMETRIES[1]
    x, w, b, dy = conv_arrays(g, np.float32)
    y_ref = np.empty_like(dy)
    cpu.conv2d_forward(x, w, b, y_ref, **conv_kwargs(g))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        xd, wd, bd = map(on_gpu, (x, w, b))
        y = cp.full(dy.shape, np.nan, np.float32)
        for _ in range(3):
            gpu.conv2d_forward(xd, wd, bd, y, **conv_kwargs(g), stream=s.ptr)
    s.synchronize()
    assert_close(y, y_ref, np.float32, "forward on a side stream")
    gpu.synchronize()


# --------------------------------------------------------------------------- 64-bit indices
@pytest.mark.slow
def test_outputs_beyond_2_to_the_31_elements():
    """An output of more than 2^31 elements: every index product must be 64-bit.  Checks a
    sample of outputs (all of the last image) against NumPy.  Needs ~12 GB of GPU memory."""
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 14 * 2**30:
        pytest.skip("needs 14 GiB of free GPU memory")
    n, co, size = 2, 280, 2048  # y: 2 * 280 * 2048 * 2048 = 2.35e9 elements > 2^31
    rng = np.random.default_rng(10)
    x = cp.asarray(rng.standard_normal((n, 1, size, size)).astype(np.float32))
    w = cp.asarray(rng.standard_normal((co, 1, 3, 3)).astype(np.float32))
    y = cp.empty((n, co, size, size), np.float32)
    gpu.conv2d_forward(x, w, None, y, stride=1, padding=1, version=1, stream=stream())
    # Reference for the last channels of the last image (the highest addresses).
    xl = cp.asnumpy(x[-1, 0])
    xp = np.pad(xl, 1)
    for c in (co - 1, co // 2):
        wl = cp.asnumpy(w[c, 0])
        want = sum(wl[i, j] * xp[i:i + size, j:j + size] for i in range(3) for j in range(3))
        np.testing.assert_allclose(cp.asnumpy(y[-1, c]), want, rtol=1e-4, atol=1e-4)
    del y


# --------------------------------------------------------------------------- binding errors
def small_conv(dtype=np.float32):
    x = cp.zeros((2, 3, 8, 8), dtype)
    w = cp.zeros((4, 3, 3, 3), dtype)
    y = cp.zeros((2, 4, 6, 6), dtype)
    return x, w, y


def test_numpy_array_is_a_type_error():
    x, w, y = small_conv()
    with pytest.raises(TypeError, match=r"x must be a CUDA array.*ndarray"):
        gpu.conv2d_forward(cp.asnumpy(x), w, None, y)
    with pytest.raises(TypeError, match=r"out must be a CUDA array"):
        gpu.conv2d_forward(x, w, None, np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(TypeError, match=r"param must be a CUDA array"):
        gpu.sgd_step(np.zeros(4, np.float32), cp.zeros(4, cp.float32), None, lr=0.1)
    with pytest.raises(TypeError, match=r"weight must be a CUDA array.*list"):
        gpu.conv2d_forward(x, [[1.0]], None, y)


def test_wrong_dtype_is_a_value_error():
    x, w, y = small_conv()
    with pytest.raises(ValueError, match=r"x has dtype float16.*float32 or float64"):
        gpu.conv2d_forward(x.astype(cp.float16), w, None, y)
    with pytest.raises(ValueError, match=r"x has dtype int32"):
        gpu.conv2d_forward(x.astype(cp.int32), w, None, y)
    with pytest.raises(ValueError, match=r"dtype mismatch.*float32.*float64"):
        gpu.conv2d_forward(x, w.astype(cp.float64), None, y)


def test_bad_layout_and_shapes_are_value_errors():
    x, w, y = small_conv()
    with pytest.raises(ValueError, match=r"x .* is not C-contiguous"):
        gpu.conv2d_forward(cp.zeros((2, 3, 8, 16), cp.float32)[..., ::2], w, None, y)
    with pytest.raises(ValueError, match=r"x must be 4-D.*\(3, 8, 8\)"):
        gpu.conv2d_forward(x[0], w, None, y)
    with pytest.raises(ValueError, match=r"out has shape \(2, 4, 5, 6\) but \(2, 4, 6, 6\)"):
        gpu.conv2d_forward(x, w, None, cp.zeros((2, 4, 5, 6), cp.float32))
    with pytest.raises(ValueError, match=r"channel mismatch"):
        gpu.conv2d_forward(x, cp.zeros((4, 2, 3, 3), cp.float32), None, y)
    with pytest.raises(ValueError, match=r"bias has shape \(3,\) but \(4,\)"):
        gpu.conv2d_forward(x, w, cp.zeros(3, cp.float32), y)
    with pytest.raises(ValueError, match=r"output size would be empty"):
        gpu.conv2d_forward(cp.zeros((1, 3, 2, 2), cp.float32), w, None, y)
    with pytest.raises(ValueError, match=r"stride = \(0, 0\) must be >= 1"):
        gpu.conv2d_forward(x, w, None, y, stride=0)
    with pytest.raises(ValueError, match=r"version = 7"):
        gpu.conv2d_forward(x, w, None, y, version=7)
    with pytest.raises(ValueError, match=r"out .* shares memory with x"):
        buf = cp.zeros(2 * 4 * 8 * 8, cp.float32)
        gpu.conv2d_forward(buf[: 2 * 3 * 64].reshape(2, 3, 8, 8), w, None,
                           buf[: 2 * 4 * 36].reshape(2, 4, 6, 6))
    with pytest.raises(ValueError, match=r"output_padding = \(2, 2\) must be smaller"):
        gpu.conv_transpose2d_forward(y, w, None, x, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"shape mismatch"):
        gpu.adam_step(cp.zeros(4, cp.float32), cp.zeros(5, cp.float32), cp.zeros(4, cp.float32),
                      cp.zeros(4, cp.float32), 1)
    with pytest.raises(ValueError, match=r"needs a momentum_buf"):
        gpu.sgd_step(cp.zeros(4, cp.float32), cp.zeros(4, cp.float32), None, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"step = 0"):
        gpu.adam_step(*(cp.zeros(4, cp.float32) for _ in range(4)), 0)
    with pytest.raises(ValueError, match=r"inner dimensions differ"):
        gpu.gemm(cp.zeros((2, 3), cp.float32), cp.zeros((4, 5), cp.float32),
                 cp.zeros((2, 5), cp.float32))


def test_errors_leave_the_device_usable():
    """After rejected calls, a good call still runs and is right (nothing was launched)."""
    x, w, y = small_conv()
    for bad in (lambda: gpu.conv2d_forward(x, w, None, y, padding=-1),
                lambda: gpu.conv2d_forward(x, w, None, y[:1])):
        with pytest.raises(ValueError):
            bad()
    xs = cp.ones((1, 1, 3, 3), cp.float32)
    ws = cp.ones((1, 1, 3, 3), cp.float32)
    ys = cp.zeros((1, 1, 1, 1), cp.float32)
    gpu.conv2d_forward(xs, ws, None, ys, stream=stream())
    assert float(ys[0, 0, 0, 0]) == 9.0
