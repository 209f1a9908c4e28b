"""conv2d / conv_transpose2d kernels (every version) against a direct NumPy reference.

Every version means every one backend.kernel_versions lists: the built-in ones of
versions() and those registered from Python (backend.register_kernel; with
GASCA_KERNEL_FILES=my_kernels.py a student's own are checked here unedited).  A registered
version that covers only some passes is checked on those; the others run the reference.

The reference below is written straight from the definitions, in float64, looping over
the kernel taps (i, j) and letting NumPy do the (n, c, oh, ow) part:

    y[n, co, oh, ow] = b[co] + sum_{ci, i, j} w[co, ci, i, j] x[n, ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw]

and the transposed convolution is its own scatter definition (PyTorch's ConvTranspose2d):

    y[n, co, ih*sh - ph + i*dh, iw*sw - pw + j*dw] += x[n, ci, ih, iw] w[ci, co, i, j]
"""

import numpy as np
import pytest

from gasca_core import _C, backend
from gasca_core.testing import call_version, version_id, kernel_covers

CONV_VERSIONS = backend.kernel_versions("conv2d")


def run(kernel, version, *args):
    """`version` of conv pass `kernel` into its output argument (call_version); version 0
    where `version` is a registered one that does not cover this pass."""
    call_version(kernel, version if kernel_covers(kernel, version) else 0, *args)
DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------- reference
def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _taps(x_pad, i, j, oh, ow, s, d):
    """The (N, C, OH, OW) slab of the padded input that kernel tap (i, j) reads."""
    return x_pad[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                 j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]]


def ref_conv2d(x, w, b, s, p, d):
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(wd, kw, s[1], p[1], d[1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    y = np.zeros((n, co, oh, ow))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", _taps(xp, i, j, oh, ow, s, d), w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def ref_conv2d_backward_input(dy, w, x_shape, s, p, d):
    dy = dy.astype(np.float64)
    w = w.astype(np.float64)
    n, ci, h, wd = x_shape
    _, _, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    # Big enough for every tap, even when the last rows/columns of x are never read.
    hp = max(h + 2 * p[0], (kh - 1) * d[0] + s[0] * (oh - 1) + 1)
    wp = max(wd + 2 * p[1], (kw - 1) * d[1] + s[1] * (ow - 1) + 1)
    dxp = np.zeros((n, ci, hp, wp))
    for i in range(kh):
        for j in range(kw):
            _taps(dxp, i, j, oh, ow, s, d)[...] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    return dxp[:, :, p[0]: p[0] + h, p[1]: p[1] + wd]


def ref_conv2d_backward_weight(x, dy, w_shape, s, p, d):
    x = x.astype(np.float64)
    dy = dy.astype(np.float64)
    co, ci, kh, kw = w_shape
    oh, ow = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    dw = np.zeros(w_shape)
    for i in range(kh):
        for j in range(kw):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, _taps(xp, i, j, oh, ow, s, d))
    return dw


def ref_conv_transpose2d(x, w, b, s, p, op, d):
    """Scatter definition: every input pixel adds w[ci, :, i, j] * x into the output."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, ci, h, wd = x.shape
    _, co, kh, kw = w.shape
    oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
    ow = (wd - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
    full = np.zeros((n, co, (h - 1) * s[0] + d[0] * (kh - 1) + 1 + op[0] + p[0],
                     (wd - 1) * s[1] + d[1] * (kw - 1) + 1 + op[1] + p[1]))
    for i in range(kh):
        for j in range(kw):
            full[:, :, i * d[0]: i * d[0] + s[0] * (h - 1) + 1: s[0],
                 j * d[1]: j * d[1] + s[1] * (wd - 1) + 1: s[1]] += np.einsum(
                     "nchw,co->nohw", x, w[:, :, i, j])
    y = full[:, :, p[0]: p[0] + oh, p[1]: p[1] + ow]
    assert y.shape[2:] == (oh, ow)
    if b is not None:
        y = y + b.astype(np.float64)[None, :, None, None]
    return y


# ----------------------------------------------------------------------------- configurations
# (N, Ci, H, W, Co, KH, KW, stride, padding, dilation)
HAND_CONFIGS = [
    (1, 1, 5, 5, 1, 3, 3, (1, 1), (0, 0), (1, 1)),
    (2, 3, 7, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 2, 8, 5, 3, 2, 3, (2, 1), (0, 1), (1, 1)),    # non-square kernel, odd sizes
    (3, 4, 11, 13, 5, 5, 5, (2, 2), (2, 2), (1, 1)),  # gasca k5 s2 p2 shape class
    (2, 5, 10, 10, 6, 3, 3, (2, 2), (1, 1), (1, 1)),  # gasca k3 s2 p1 shape class
    (2, 3, 9, 12, 2, 3, 2, (1, 2), (2, 0), (2, 3)),   # dilation, padding > kernel/2
    (1, 1, 16, 16, 8, 5, 5, (2, 2), (2, 2), (1, 1)),  # gasca layer 1, one input channel
    (2, 2, 6, 6, 3, 1, 1, (1, 1), (0, 0), (1, 1)),    # 1x1 kernel
    (1, 3, 4, 4, 2, 4, 4, (1, 1), (0, 0), (1, 1)),    # kernel the size of the image
    (2, 2, 10, 7, 3, 3, 3, (3, 2), (0, 1), (1, 1)),   # stride skips input rows
    (1, 2, 5, 5, 2, 3, 3, (1, 1), (3, 3), (1, 1)),    # padding >= kernel
    (4, 8, 9, 9, 16, 3, 3, (1, 1), (1, 1), (1, 1)),   # more channels
    # output rows of 16 / 32 pixels: whole SIMD vectors (the implicit-gemm forward path),
    # with a last tile that is only partly inside the image
    (2, 3, 5, 31, 4, 3, 3, (2, 2), (1, 1), (1, 1)),   # 3 x 16 outputs
    (1, 2, 3, 32, 3, 3, 3, (1, 1), (1, 1), (1, 1)),   # 3 x 32 outputs, stride 1
    (1, 2, 6, 18, 2, 3, 3, (1, 1), (0, 2), (2, 3)),   # 2 x 16 outputs, dilated
    (2, 9, 7, 64, 10, 1, 3, (1, 2), (0, 1), (1, 1)),  # 7 x 32 outputs, channels not a multiple of 8
    # output rows of half a vector (8 floats / 4 doubles): two rows per vector
    (2, 3, 5, 16, 5, 3, 3, (2, 2), (1, 1), (1, 1)),   # 3 x 8 outputs
    (1, 2, 5, 7, 3, 3, 3, (2, 2), (1, 1), (1, 1)),    # 3 x 4 outputs
    # the weight gradient packs 8 pixels at a time when their offsets are consecutive:
    # a 1x1 kernel without padding makes rows contiguous, so groups run across rows; 20 taps
    # leave a part-filled panel
    (2, 20, 4, 5, 3, 1, 1, (1, 1), (0, 0), (1, 1)),
    (1, 3, 6, 11, 2, 2, 3, (1, 1), (0, 1), (1, 1)),   # rows of 11: groups split by row ends
]


def _random_configs(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        kh, kw = rng.integers(1, 6, size=2)
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        h, w = rng.integers(1, 14, size=2)
        cfg = (int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(h), int(w),
               int(rng.integers(1, 7)), int(kh), int(kw), s, p, d)
        if out_size(h, kh, s[0], p[0], d[0]) > 0 and out_size(w, kw, s[1], p[1], d[1]) > 0:
            out.append(cfg)
    return out


CONFIGS = HAND_CONFIGS + _random_configs(24, seed=7)


def _ids(cfgs):
    return ["N{}C{}x{}x{}-O{}k{}x{}-s{}p{}d{}".format(c[0], c[1], c[2], c[3], c[4], c[5], c[6],
                                                       *(f"{a}{b}" for a, b in c[7:]))
            for c in cfgs]


def _tol(dtype, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    return dict(rtol=1e-4, atol=2e-5 * scale) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11 * scale)


def _arrays(cfg, dtype, rng):
    n, ci, h, w, co, kh, kw, s, p, d = cfg
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
    x = rng.standard_normal((n, ci, h, w)).astype(dtype)
    wt = rng.standard_normal((co, ci, kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    return x, wt, b, dy


# ----------------------------------------------------------------------------- conv2d
@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
def test_conv2d_all_passes_match_reference(cfg, dtype, version):
    rng = np.random.default_rng(abs(hash(cfg)) % 2**32)
    x, w, b, dy = _arrays(cfg, dtype, rng)
    s, p, d = cfg[7:]

    ref = ref_conv2d(x, w, b, s, p, d)
    out = np.full(dy.shape, np.nan, dtype=dtype)  # NaN: the kernel must overwrite every entry
    run("conv2d_forward", version, x, w, b, out, s, p, d)
    np.testing.assert_allclose(out, ref, **_tol(dtype, ref), err_msg="forward")

    ref_nb = ref_conv2d(x, w, None, s, p, d)
    run("conv2d_forward", version, x, w, None, out, s, p, d)
    np.testing.assert_allclose(out, ref_nb, **_tol(dtype, ref_nb), err_msg="forward, no bias")

    ref_dx = ref_conv2d_backward_input(dy, w, x.shape, s, p, d)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    run("conv2d_backward_input", version, dy, w, dx, s, p, d)
    np.testing.assert_allclose(dx, ref_dx, **_tol(dtype, ref_dx), err_msg="backward_input")

    ref_dw = ref_conv2d_backward_weight(x, dy, w.shape, s, p, d)
    dw = np.full(w.shape, np.nan, dtype=dtype)
    run("conv2d_backward_weight", version, x, dy, dw, s, p, d)
    np.testing.assert_allclose(dw, ref_dw, **_tol(dtype, ref_dw), err_msg="backward_weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv2d_backward_bias_sums_over_batch_and_space(dtype, rng):
    dy = rng.standard_normal((3, 5, 7, 4)).astype(dtype)
    db = np.full(5, np.nan, dtype=dtype)
    _C.conv2d_backward_bias(dy, db)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
@pytest.mark.parametrize("cfg", CONFIGS[:12], ids=_ids(CONFIGS[:12]))
def test_conv2d_adjoint_identity(cfg, version):
    """<conv(x), y> == <x, conv^T(y)>: backward_input is exactly the forward map's adjoint."""
    rng = np.random.default_rng(3)
    x, w, _, y = _arrays(cfg, np.float64, rng)
    s, p, d = cfg[7:]
    cx = np.empty_like(y)
    run("conv2d_forward", version, x, w, None, cx, s, p, d)
    cty = np.empty_like(x)
    run("conv2d_backward_input", version, y, w, cty, s, p, d)
    lhs, rhs = float(np.vdot(cx, y)), float(np.vdot(x, cty))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("gemm_version", range(len(_C.versions()["gemm"])))
def test_conv2d_v1_runs_the_gemm_version_it_is_given(gemm_version, rng):
    """Version 1's forward is im2col, then one gemm per image: with gemm_version g its output
    is, bit for bit, gemm version g's product of the weight and NumPy's column matrix (the
    copies of im2col are exact), so the gemm chosen really runs inside the convolution;
    and the gemm versions round differently here, so another version would show."""
    n, ci, h, co, k = 2, 7, 9, 5, 3
    x = rng.standard_normal((n, ci, h, h)).astype(np.float32)
    w = rng.standard_normal((co, ci, k, k)).astype(np.float32)
    oh = out_size(h, k, 1, 1, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    products = {}
    for g in range(len(_C.versions()["gemm"])):
        y = np.empty((n, co, oh, oh), np.float32)
        _C.conv2d_forward(x, w, None, y, 1, 1, 1, version=1, gemm_version=g)
        products[g] = y
    y = products[gemm_version]
    for i in range(n):
        cols = np.stack([_taps(xp[i:i + 1], a, b, oh, oh, (1, 1), (1, 1))[0]
                         for a in range(k) for b in range(k)], axis=1).reshape(ci * k * k, oh * oh)
        expect = np.empty((co, oh * oh), np.float32)
        _C.gemm(np.ascontiguousarray(w.reshape(co, -1)), np.ascontiguousarray(cols), expect,
                version=gemm_version)
        np.testing.assert_array_equal(y[i].reshape(co, -1), expect)
    assert any(not np.array_equal(products[g], y) for g in products if g != gemm_version)


def test_conv_gemm_version_is_checked():
    x, w = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3))
    out = np.empty((1, 1, 2, 2))
    with pytest.raises(ValueError, match="gemm_version = 9 is not a gemm version"):
        _C.conv2d_forward(x, w, None, out, version=1, gemm_version=9)
    with pytest.raises(ValueError, match="gemm_version"):
        _C.conv_transpose2d_backward_weight(out, x, np.empty((1, 1, 3, 3)), version=1,
                                            gemm_version=-2)


# ----------------------------------------------------------------------------- conv_transpose2d
def _t_configs():
    """Transposed-conv configs (N, Ci, H, W, Co, KH, KW, s, p, op, d), op < stride."""
    cfgs = [
        (2, 4, 5, 5, 3, 5, 5, (2, 2), (2, 2), (1, 1), (1, 1)),   # gasca decoder k5 s2 p2 op1
        (2, 6, 4, 4, 5, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1)),   # gasca decoder k3 s2 p1 op1
        (1, 8, 6, 6, 1, 5, 5, (2, 2), (2, 2), (1, 1), (1, 1)),   # to one channel (layer 1)
        (1, 2, 3, 4, 3, 3, 2, (3, 2), (1, 0), (2, 1), (1, 2)),   # non-square, dilation
        (3, 3, 5, 3, 2, 2, 3, (1, 1), (0, 1), (0, 0), (2, 1)),
        (1, 1, 1, 1, 2, 3, 3, (1, 1), (0, 0), (0, 0), (1, 1)),   # a single input pixel
    ]
    rng = np.random.default_rng(11)
    while len(cfgs) < 20:
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        op = tuple(int(rng.integers(0, sv)) for sv in s)
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        h, w = (int(v) for v in rng.integers(1, 8, size=2))
        oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
        ow = (w - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
        if oh > 0 and ow > 0:
            cfgs.append((int(rng.integers(1, 4)), int(rng.integers(1, 6)), h, w,
                         int(rng.integers(1, 6)), kh, kw, s, p, op, d))
    return cfgs


T_CONFIGS = _t_configs()


def _t_configs_op_beyond_stride():
    """Transposed-conv configs with stride <= output_padding < dilation on at least one axis:
    PyTorch's rule is output_padding < max(stride, dilation), and here the adjoint
    convolution's output (H, W) is smaller than its natural size (H + op // stride)."""
    cfgs = [
        (2, 3, 4, 5, 2, 3, 3, (1, 1), (0, 0), (1, 1), (2, 2)),    # stride 1, dilation 2, op 1
        (1, 2, 3, 6, 3, 3, 2, (1, 2), (1, 0), (2, 1), (3, 1)),    # rectangular: only the h axis
        (2, 4, 5, 4, 3, 2, 3, (2, 1), (0, 1), (3, 2), (4, 3)),    # both axes, stride 2 and 1
        (1, 3, 5, 16, 2, 3, 3, (1, 1), (1, 1), (1, 1), (2, 2)),   # adjoint rows of 16: implicit gemm
        (2, 2, 6, 8, 3, 3, 3, (1, 2), (1, 1), (1, 2), (2, 3)),    # adjoint rows of 8: half vectors
        (1, 5, 7, 3, 1, 5, 1, (2, 1), (3, 0), (3, 0), (5, 1)),    # op 3 in [2, 5), one output channel
        (8, 32, 16, 16, 16, 3, 3, (1, 1), (1, 1), (1, 1), (2, 2)),  # large enough for several threads
    ]
    rng = np.random.default_rng(13)
    while len(cfgs) < 16:
        s = [int(v) for v in rng.integers(1, 4, size=2)]
        d = [int(v) for v in rng.integers(1, 5, size=2)]
        axis = int(rng.integers(0, 2))  # the axis with stride <= op < dilation
        if d[axis] <= s[axis]:
            continue
        op = [int(rng.integers(0, max(sv, dv))) for sv, dv in zip(s, d)]
        op[axis] = int(rng.integers(s[axis], d[axis]))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        h, w = (int(v) for v in rng.integers(1, 8, size=2))
        oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
        ow = (w - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
        if oh > 0 and ow > 0:
            cfgs.append((int(rng.integers(1, 4)), int(rng.integers(1, 6)), h, w,
                         int(rng.integers(1, 6)), kh, kw, tuple(s), p, tuple(op), tuple(d)))
    for c in cfgs:
        s, op, d = c[7], c[9], c[10]
        assert all(o < max(a, b) for o, a, b in zip(op, s, d)), c
        assert any(a <= o for o, a in zip(op, s)), c
    return cfgs


T_CONFIGS_OP = _t_configs_op_beyond_stride()


def _t_ids(cfgs):
    return ["N{}C{}x{}x{}-O{}k{}x{}-s{}p{}op{}d{}".format(
        *c[:7], *(f"{a}{b}" for a, b in c[7:])) for c in cfgs]


@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", T_CONFIGS + T_CONFIGS_OP, ids=_t_ids(T_CONFIGS + T_CONFIGS_OP))
def test_conv_transpose2d_all_passes_match_reference(cfg, dtype, version):
    n, ci, h, wd, co, kh, kw, s, p, op, d = cfg
    rng = np.random.default_rng(abs(hash(cfg)) % 2**32)
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    w = rng.standard_normal((ci, co, kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)

    ref = ref_conv_transpose2d(x, w, b, s, p, op, d)
    out = np.full(ref.shape, np.nan, dtype=dtype)
    run("conv_transpose2d_forward", version, x, w, b, out, s, p, op, d)
    np.testing.assert_allclose(out, ref, **_tol(dtype, ref), err_msg="forward")

    # Gradients, from the definition: y is linear in x and in w, so the input gradient is
    # the adjoint of the scatter (a plain convolution with the same weight read as
    # (Ci, Co, KH, KW) = (out, in, kh, kw)), and the weight gradient pairs dy's taps with x.
    # That convolution's natural output is (H + op // s, W + ...): only its first H x W
    # outputs are gathers of a scatter (the others read pixels no input pixel reached).
    dy = rng.standard_normal(ref.shape).astype(dtype)
    ref_dx = ref_conv2d(dy, w, None, s, p, d)[:, :, :h, :wd]
    assert ref_dx.shape == x.shape
    dx = np.full(x.shape, np.nan, dtype=dtype)
    run("conv_transpose2d_backward_input", version, dy, w, dx, s, p, op, d)
    np.testing.assert_allclose(dx, ref_dx, **_tol(dtype, ref_dx), err_msg="backward_input")

    ref_dw = ref_conv2d_backward_weight(dy, x, w.shape, s, p, d)
    dw = np.full(w.shape, np.nan, dtype=dtype)
    run("conv_transpose2d_backward_weight", version, x, dy, dw, s, p, op, d)
    np.testing.assert_allclose(dw, ref_dw, **_tol(dtype, ref_dw), err_msg="backward_weight")

    db = np.full(co, np.nan, dtype=dtype)
    _C.conv2d_backward_bias(dy, db)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
@pytest.mark.parametrize("cfg", T_CONFIGS[:8] + T_CONFIGS_OP[:8],
                         ids=_t_ids(T_CONFIGS[:8] + T_CONFIGS_OP[:8]))
def test_conv_transpose2d_gradients_are_adjoints(cfg, version):
    """<convT(x), y> == <x, convT_backward_input(y)> and the weight gradient pairs likewise."""
    n, ci, h, wd, co, kh, kw, s, p, op, d = cfg
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, ci, h, wd))
    w = rng.standard_normal((ci, co, kh, kw))
    yshape = ref_conv_transpose2d(x, w, None, s, p, op, d).shape
    y = rng.standard_normal(yshape)
    tx = np.empty(yshape)
    run("conv_transpose2d_forward", version, x, w, None, tx, s, p, op, d)
    gx = np.empty_like(x)
    run("conv_transpose2d_backward_input", version, y, w, gx, s, p, op, d)
    np.testing.assert_allclose(np.vdot(tx, y), np.vdot(x, gx), rtol=1e-10)
    gw = np.empty_like(w)
    run("conv_transpose2d_backward_weight", version, x, y, gw, s, p, op, d)
    np.testing.assert_allclose(np.vdot(tx, y), np.vdot(w, gw), rtol=1e-10)


# ----------------------------------------------------------------------------- larger shapes
GASCA_LAYERS = [  # (Ci, H, Co, K, s, p): the gasca-64 encoder layers
    (1, 64, 32, 5, 2, 2),
    (32, 32, 64, 5, 2, 2),
    (64, 16, 128, 3, 2, 1),
]


@pytest.mark.parametrize("layer", GASCA_LAYERS, ids=["layer1", "layer2", "layer3"])
def test_fast_versions_match_reference_on_gasca_layers(layer, rng):
    """The shapes the bench times, at batch 2: every version against version 0 (float32)."""
    ci, h, co, k, s, p = layer
    x = rng.standard_normal((2, ci, h, h)).astype(np.float32)
    w = (rng.standard_normal((co, ci, k, k)) / np.sqrt(ci * k * k)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    oh = out_size(h, k, s, p, 1)
    dy = rng.standard_normal((2, co, oh, oh)).astype(np.float32)
    st, pd, dl = (s, s), (p, p), (1, 1)
    results = []
    for v in CONV_VERSIONS:
        y = np.empty((2, co, oh, oh), np.float32)
        dx = np.empty_like(x)
        dw = np.empty_like(w)
        t = np.empty_like(x)
        run("conv2d_forward", v, x, w, b, y, st, pd, dl)
        run("conv2d_backward_input", v, dy, w, dx, st, pd, dl)
        run("conv2d_backward_weight", v, x, dy, dw, st, pd, dl)
        run("conv_transpose2d_forward", v, dy, w, None, t, st, pd, (1, 1), dl)
        results.append((y, dx, dw, t))
    for v, res in zip(CONV_VERSIONS[1:], results[1:]):
        for name, got, ref in zip(("forward", "backward_input", "backward_weight", "transpose"),
                                  res, results[0]):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(),
                                       err_msg=f"version {v} {name}")


# Geometries that take version 2's backward-input by stride phases (at least 12 input
# channels, dilation 1, each phase's row a whole or half SIMD vector: widths of 8, 16 or 32
# pixels per phase here, so AVX2 and AVX-512 both take it, with and without half-vector
# rows), and around it: strides 1 to 3, kernels smaller than the stride (phases no tap
# reaches), paddings beyond the kernel, odd heights, and output sizes below the natural one
# (the transposed convolution's output_padding).  (N, Ci, H, W, Co, KH, KW, s, p)
PHASED_CONFIGS = [
    (2, 12, 16, 16, 5, 3, 3, (2, 2), (1, 1)),
    (1, 16, 15, 32, 7, 5, 5, (2, 2), (2, 2)),
    (2, 13, 9, 16, 4, 4, 4, (2, 2), (1, 1)),
    (1, 12, 8, 8, 3, 3, 3, (1, 1), (1, 1)),
    (1, 12, 10, 16, 6, 1, 1, (2, 2), (0, 0)),
    (1, 14, 12, 24, 5, 2, 2, (3, 3), (1, 1)),
    (2, 12, 16, 32, 9, 5, 3, (2, 1), (3, 0)),
    (1, 20, 7, 64, 3, 3, 5, (1, 2), (0, 4)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", PHASED_CONFIGS, ids=[f"cfg{i}" for i in range(len(PHASED_CONFIGS))])
def test_backward_input_by_stride_phases_matches_reference(cfg, dtype, rng):
    """conv2d backward-input and the transposed convolution's forward (with a bias) against
    the NumPy reference, for the geometries of version 2's stride-phase path, at the
    natural size and one row and column smaller."""
    n, ci, h, wd, co, kh, kw, s, p = cfg
    d = (1, 1)
    w = rng.standard_normal((co, ci, kh, kw)).astype(dtype)
    b = rng.standard_normal(ci).astype(dtype)
    oh, ow = out_size(h, kh, s[0], p[0], 1), out_size(wd, kw, s[1], p[1], 1)
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for v in CONV_VERSIONS:
        dx = np.full((n, ci, h, wd), np.nan, dtype)
        run("conv2d_backward_input", v, dy, w, dx, s, p, d)
        np.testing.assert_allclose(dx, ref_conv2d_backward_input(dy, w, dx.shape, s, p, d),
                                   err_msg=f"version {v}", **tol)
        # the transposed convolution: w as its (Ci_t, Co_t, KH, KW) = (co, ci, kh, kw)
        for op in {(0, 0), (min(1, s[0] - 1), min(1, s[1] - 1))}:
            th, tw = (oh - 1) * s[0] - 2 * p[0] + kh + op[0], (ow - 1) * s[1] - 2 * p[1] + kw + op[1]
            if th > h or tw > wd or th < 1 or tw < 1:
                continue
            y = np.full((n, ci, th, tw), np.nan, dtype)
            run("conv_transpose2d_forward", v, dy, w, b, y, s, p, op, d)
            np.testing.assert_allclose(y, ref_conv_transpose2d(dy, w, b, s, p, op, d),
                                       err_msg=f"version {v} transposed, output_padding {op}",
                                       **tol)


# Products deeper than one K block of version 2's implicit gemm (at most 1024 steps, split
# into equal blocks: 1025 -> 512 + 513, 1200 -> 600 + 600, 2250 -> 3 x 750): the forward
# (output rows of 16 or 8 pixels: whole and half AVX-512 vectors) and the stride-phase
# backward-input, whose phases' sub-kernels reach 1080 and 1125 steps.  The bias starts
# only the first block.  (N, Ci, H, W, Co, KH, KW, s, p)
DEEP_K_CONFIGS = [
    (2, 41, 32, 32, 9, 5, 5, (2, 2), (2, 2)),
    (1, 48, 16, 16, 20, 5, 5, (1, 1), (2, 2)),
    (2, 90, 16, 16, 12, 5, 5, (2, 2), (2, 2)),
    (1, 12, 32, 32, 120, 5, 5, (2, 2), (2, 2)),
    (2, 13, 16, 32, 125, 5, 5, (2, 2), (2, 2)),
]


@pytest.mark.parametrize("cfg", DEEP_K_CONFIGS, ids=[f"cfg{i}" for i in range(len(DEEP_K_CONFIGS))])
def test_products_deeper_than_one_k_block_match_reference(cfg, rng):
    n, ci, h, wd, co, kh, kw, s, p = cfg
    d = (1, 1)
    x, w, b, dy = _arrays((n, ci, h, wd, co, kh, kw, s, p, d), np.float64, rng)
    y_ref = ref_conv2d(x, w, b, s, p, d)
    dx_ref = ref_conv2d_backward_input(dy, w, x.shape, s, p, d)
    for dtype, tol in ((np.float32, dict(rtol=1e-4, atol=1e-3)), (np.float64, dict(rtol=1e-10, atol=1e-10))):
        xs, ws, bs, dys = (a.astype(dtype) for a in (x, w, b, dy))
        y = np.full(y_ref.shape, np.nan, dtype)
        run("conv2d_forward", 2, xs, ws, bs, y, s, p, d)
        np.testing.assert_allclose(y, y_ref, err_msg=f"forward {dtype.__name__}", **tol)
        dx = np.full(x.shape, np.nan, dtype)
        run("conv2d_backward_input", 2, dys, ws, dx, s, p, d)
        np.testing.assert_allclose(dx, dx_ref, err_msg=f"backward-input {dtype.__name__}", **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_stride2_rows_of_every_width_split_exactly(dtype, rng):
    """Version 2 splits each stride-2 row into its two phases in one pass (whole registers,
    then a masked tail): every width from 1 to 70 and each padding from 0 to 3, through
    the forward and the weight gradient, against the reference.  (That the masked tail
    reads nothing past the row is the sanitizer run's part: tools/sanitize.sh.)"""
    d = (1, 1)
    for wd in range(1, 71):
        for pw in range(4):
            s, p = (2, 2), (1, pw)
            kw = min(3, wd + 2 * pw)
            x, w, b, dy = _arrays((1, 2, 3, wd, 3, 3, kw, s, p, d), dtype, rng)
            y = np.full(dy.shape, np.nan, dtype)
            run("conv2d_forward", 2, x, w, b, y, s, p, d)
            np.testing.assert_allclose(y, ref_conv2d(x, w, b, s, p, d), rtol=1e-4, atol=1e-4,
                                       err_msg=f"forward, width {wd}, padding {pw}")
            dw = np.full(w.shape, np.nan, dtype)
            run("conv2d_backward_weight", 2, x, dy, dw, s, p, d)
            np.testing.assert_allclose(dw, ref_conv2d_backward_weight(x, dy, w.shape, s, p, d),
                                       rtol=1e-4, atol=1e-4,
                                       err_msg=f"weight gradient, width {wd}, padding {pw}")


# Geometries that take version 2's implicit weight gradient (C_out a whole number of
# register-tile panels: 32 covers the AVX2 and AVX-512 widths in float and double; dW too
# large for the small path): strides 1 to 3, paddings beyond the kernel, odd sizes, more
# output pixels than one K block (256), a batch of 1 and of 3 (threads with no image or
# with two).  (N, Ci, H, W, Co, KH, KW, s, p)
IMPLICIT_DW_CONFIGS = [
    (3, 12, 16, 16, 32, 5, 5, (2, 2), (2, 2)),
    (1, 16, 9, 13, 32, 3, 3, (1, 1), (1, 1)),
    (2, 12, 11, 7, 32, 5, 3, (3, 2), (4, 0)),
    (2, 40, 20, 36, 64, 3, 3, (1, 1), (0, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", IMPLICIT_DW_CONFIGS, ids=[f"cfg{i}" for i in range(len(IMPLICIT_DW_CONFIGS))])
def test_implicit_weight_gradient_matches_reference(cfg, dtype, rng):
    """conv2d backward-weight and the transposed convolution's, on the geometries of
    version 2's implicit weight gradient, against the NumPy reference."""
    n, ci, h, wd, co, kh, kw, s, p = cfg
    d = (1, 1)
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    oh, ow = out_size(h, kh, s[0], p[0], 1), out_size(wd, kw, s[1], p[1], 1)
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    ref = ref_conv2d_backward_weight(x, dy, (co, ci, kh, kw), s, p, d)
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(ref).max()) if dtype == np.float32 else \
        dict(rtol=1e-10, atol=1e-10 * np.abs(ref).max())
    for v in CONV_VERSIONS:
        dw = np.full((co, ci, kh, kw), np.nan, dtype)
        run("conv2d_backward_weight", v, x, dy, dw, s, p, d)
        np.testing.assert_allclose(dw, ref, err_msg=f"version {v}", **tol)
        # the transposed convolution with x and dy swapped: its weight (co, ci, kh, kw)
        tw = np.full((co, ci, kh, kw), np.nan, dtype)
        op = ((h + 2 * p[0] - kh) % s[0], (wd + 2 * p[1] - kw) % s[1])  # its output is x's size
        run("conv_transpose2d_backward_weight", v, dy, x, tw, s, p, op, d)
        np.testing.assert_allclose(tw, ref, err_msg=f"version {v} transposed", **tol)


# Geometries of version 2's small-map path (at most one register tile of output pixels per
# image, batch > 1: the images' column matrices side by side as one product): gasca-64-deep's
# levels 4 and 5 (4x4 and 2x2 outputs), a 1x1 output, stride 1, dilation, asymmetric
# strides and paddings, and a column matrix of 2**19 elements per image, so that the images
# go in groups (of 2: 2 + 1 for a batch of 3).  (N, Ci, H, W, Co, KH, KW, s, p, d)
SMALL_MAP_CONFIGS = [
    (5, 24, 8, 8, 32, 4, 4, (2, 2), (1, 1), (1, 1)),
    (4, 40, 4, 4, 16, 4, 4, (2, 2), (1, 1), (1, 1)),
    (3, 7, 3, 3, 5, 3, 3, (1, 1), (0, 0), (1, 1)),
    (2, 6, 7, 9, 9, 3, 2, (3, 2), (2, 0), (2, 3)),
    (3, 3, 5, 5, 4, 5, 5, (1, 2), (1, 2), (1, 1)),
    (3, 2048, 8, 8, 8, 4, 4, (2, 2), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", SMALL_MAP_CONFIGS, ids=[f"cfg{i}" for i in range(len(SMALL_MAP_CONFIGS))])
def test_small_output_maps_match_reference(cfg, dtype, rng):
    """All three passes of conv2d and of the transposed convolution (with its bias, at both
    output paddings that give a different output size) against the NumPy reference, on the
    geometries of version 2's small-map path."""
    n, ci, h, wd, co, kh, kw, s, p, d = cfg
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(wd, kw, s[1], p[1], d[1])
    assert oh * ow <= 16 and n > 1, "not a small-map geometry"
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    w = rng.standard_normal((co, ci, kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    tb = rng.standard_normal(ci).astype(dtype)
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    big = 1e-3 if ci * kh * kw > 4096 else 1e-4   # long sums (kdim 32768) in float
    tol = dict(rtol=big, atol=big * np.sqrt(ci * kh * kw)) if dtype == np.float32 else \
        dict(rtol=1e-10, atol=1e-10 * np.sqrt(ci * kh * kw))
    y_ref = ref_conv2d(x, w, b, s, p, d)
    dx_ref = ref_conv2d_backward_input(dy, w, x.shape, s, p, d)
    dw_ref = ref_conv2d_backward_weight(x, dy, w.shape, s, p, d)
    for v in CONV_VERSIONS:
        y = np.full(y_ref.shape, np.nan, dtype)
        run("conv2d_forward", v, x, w, b, y, s, p, d)
        np.testing.assert_allclose(y, y_ref, err_msg=f"version {v} forward", **tol)
        dx = np.full(x.shape, np.nan, dtype)
        run("conv2d_backward_input", v, dy, w, dx, s, p, d)
        np.testing.assert_allclose(dx, dx_ref, err_msg=f"version {v} backward-input", **tol)
        dw = np.full(w.shape, np.nan, dtype)
        run("conv2d_backward_weight", v, x, dy, dw, s, p, d)
        np.testing.assert_allclose(dw, dw_ref, err_msg=f"version {v} backward-weight",
                                   rtol=tol["rtol"], atol=tol["atol"] * np.abs(dw_ref).max())
        # the transposed convolution of dy back to x's size (or one output padding less):
        # its forward is this backward-input plus a bias, its input gradient this forward
        for op in sorted({((h + 2 * p[0] - d[0] * (kh - 1) - 1) % s[0], (wd + 2 * p[1] - d[1] * (kw - 1) - 1) % s[1]),
                          (0, 0)}):
            th = (oh - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
            tw = (ow - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
            if th < 1 or tw < 1:
                continue
            ty = np.full((n, ci, th, tw), np.nan, dtype)
            run("conv_transpose2d_forward", v, dy, w, tb, ty, s, p, op, d)
            np.testing.assert_allclose(ty, ref_conv_transpose2d(dy, w, tb, s, p, op, d),
                                       err_msg=f"version {v} transposed, output_padding {op}",
                                       **tol)


def _three_passes_on_threads(x, w, b, dy, threads=(1, 2, 3)):
    """(y, dx, dw) of a stride-2, padding-1 convolution on each thread count in turn."""
    old = _C.get_num_threads()
    outs = []
    try:
        for t in threads:
            _C.set_num_threads(t)
            y = np.empty(dy.shape, np.float32)
            _C.conv2d_forward(x, w, b, y, (2, 2), (1, 1), (1, 1))
            dx = np.empty_like(x)
            _C.conv2d_backward_input(dy, w, dx, (2, 2), (1, 1), (1, 1))
            dw = np.empty_like(w)
            _C.conv2d_backward_weight(x, dy, dw, (2, 2), (1, 1), (1, 1))
            outs.append((y, dx, dw))
    finally:
        _C.set_num_threads(old)
    return outs


def test_small_output_maps_give_the_same_result_on_any_number_of_threads(rng):
    """The small-map path splits Y's columns (forward) and images (the gradients' column
    matrices) between threads: every thread count computes the same outputs, the forward and
    backward-input bit for bit (each element is summed by one thread in one order)."""
    x = rng.standard_normal((32, 64, 8, 8)).astype(np.float32)
    w = rng.standard_normal((128, 64, 4, 4)).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    dy = rng.standard_normal((32, 128, 4, 4)).astype(np.float32)
    outs = _three_passes_on_threads(x, w, b, dy)
    np.testing.assert_allclose(outs[0][0], ref_conv2d(x, w, b, (2, 2), (1, 1), (1, 1)),
                               rtol=1e-4, atol=1e-3)
    for other in outs[1:]:
        np.testing.assert_array_equal(other[0], outs[0][0])
        np.testing.assert_array_equal(other[1], outs[0][1])
        np.testing.assert_allclose(other[2], outs[0][2], rtol=1e-5, atol=1e-5 * np.abs(outs[0][2]).max())


@pytest.mark.parametrize("ow_vectors", [False, True], ids=["packed", "implicit"])
def test_threads_give_the_same_result(rng, ow_vectors):
    """Splitting work over threads must not change what is computed (beyond rounding).
    Sizes large enough (tens of MFLOP) that the kernels do use several threads."""
    w_in = 31 if ow_vectors else 27   # output width 16 (whole SIMD vectors) or 14
    x = rng.standard_normal((12, 16, 30, w_in)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    ow = (w_in + 2 - 3) // 2 + 1
    dy = rng.standard_normal((12, 24, 15, ow)).astype(np.float32)
    outs = _three_passes_on_threads(x, w, None, dy)
    np.testing.assert_allclose(outs[0][0], ref_conv2d(x, w, None, (2, 2), (1, 1), (1, 1)),
                               rtol=1e-4, atol=1e-4)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


# ----------------------------------------------------------------------------- PyTorch oracle
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS[:10], ids=_ids(CONFIGS[:10]))
def test_conv2d_matches_torch(cfg, dtype, torch):
    rng = np.random.default_rng(21)
    x, w, b, dy = _arrays(cfg, dtype, rng)
    s, p, d = cfg[7:]
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d)
    ty.backward(torch.tensor(dy))
    y = np.empty_like(dy)
    _C.conv2d_forward(x, w, b, y, s, p, d)
    dx = np.empty_like(x)
    _C.conv2d_backward_input(dy, w, dx, s, p, d)
    dw = np.empty_like(w)
    _C.conv2d_backward_weight(x, dy, dw, s, p, d)
    db = np.empty_like(b)
    _C.conv2d_backward_bias(dy, db)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        ref = theirs.detach().numpy()
        np.testing.assert_allclose(ours, ref, **_tol(dtype, ref))


@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", T_CONFIGS[:10] + T_CONFIGS_OP,
                         ids=_t_ids(T_CONFIGS[:10] + T_CONFIGS_OP))
def test_conv_transpose2d_matches_torch(cfg, dtype, version, torch):
    n, ci, h, wd, co, kh, kw, s, p, op, d = cfg
    rng = np.random.default_rng(22)
    x = rng.standard_normal((n, ci, h, wd)).astype(dtype)
    w = rng.standard_normal((ci, co, kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=s, padding=p,
                                              output_padding=op, dilation=d)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(dy))
    y = np.empty_like(dy)
    run("conv_transpose2d_forward", version, x, w, b, y, s, p, op, d)
    dx = np.empty_like(x)
    run("conv_transpose2d_backward_input", version, dy, w, dx, s, p, op, d)
    dw = np.empty_like(w)
    run("conv_transpose2d_backward_weight", version, x, dy, dw, s, p, op, d)
    db = np.empty_like(b)
    _C.conv2d_backward_bias(dy, db)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        ref = theirs.detach().numpy()
        np.testing.assert_allclose(ours, ref, **_tol(dtype, ref))


# ----------------------------------------------------------------------------- huge dilation
def _scatter(x, w, s, p, op, d):
    """The transposed convolution by its definition, in Python loops over the taps that land
    (tiny arrays only; any stride/padding/dilation, with no padded copy of anything)."""
    n, ci, h, wd = x.shape
    _, co, kh, kw = w.shape
    oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
    ow = (wd - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
    y = np.zeros((n, co, oh, ow))
    for ih in range(h):
        for i in range(kh):
            r = ih * s[0] - p[0] + i * d[0]
            if not 0 <= r < oh:
                continue
            for iw in range(wd):
                for j in range(kw):
                    c = iw * s[1] - p[1] + j * d[1]
                    if 0 <= c < ow:
                        y[:, :, r, c] += np.einsum("nc,co->no", x[:, :, ih, iw], w[:, :, i, j])
    return y


@pytest.mark.parametrize("version", CONV_VERSIONS, ids=version_id)
def test_conv_transpose2d_huge_dilation_with_output_padding_beyond_stride(version):
    """Stride 1, dilation 2**20, padding 2**20, output_padding 5 (>= stride, < dilation) on
    tiny arrays: the output is 8 x 2 (only the middle tap lands), the adjoint convolution's
    natural output 8 rows against x's 3, and its phase image would be mostly padding
    (version 2 takes version 1's path).  Forward and both gradients against the
    definition: the gradients as the transposes of the forward map, built column by column."""
    s, p, op, d = (1, 1), (2**20, 0), (5, 0), (2**20, 1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 3, 2))
    w = rng.standard_normal((2, 3, 3, 1))
    y_ref = _scatter(x, w, s, p, op, d)
    assert y_ref.shape == (2, 3, 8, 2) and np.abs(y_ref).max() > 0
    dy = rng.standard_normal(y_ref.shape)
    # y is linear in x (and in w): dx = J_x^T dy, J_x's columns being the images of unit x's.
    unit = lambda shape, k: np.eye(int(np.prod(shape)))[k].reshape(shape)  # noqa: E731
    dx_ref = np.array([np.vdot(_scatter(unit(x.shape, k), w, s, p, op, d), dy)
                       for k in range(x.size)]).reshape(x.shape)
    dw_ref = np.array([np.vdot(_scatter(x, unit(w.shape, k), s, p, op, d), dy)
                       for k in range(w.size)]).reshape(w.shape)
    y = np.full(y_ref.shape, np.nan)
    run("conv_transpose2d_forward", version, x, w, None, y, s, p, op, d)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dx = np.full(x.shape, np.nan)
    run("conv_transpose2d_backward_input", version, dy, w, dx, s, p, op, d)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    dw = np.full(w.shape, np.nan)
    run("conv_transpose2d_backward_weight", version, x, dy, dw, s, p, op, d)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
