"""The symmetry convolution (cpp/symconv2d.h): kernels mirror-symmetric left
to right, stored as their left half w_half (Co, Ci, KH, HW), HW = ceil(KW/2), standing for
the full kernel

    w[..., j] = w_half[..., min(j, KW-1-j)]

Every version of the three passes is checked against two things on random geometries
(odd and even KW, KW = 1, stride 1-3, padding 0-2, dilation 1-2, batch 1-3, float32 and
float64):

* the oracle, the "parameterised form": conv2d (its own reference, version 0) with the
  mirrored full kernel; the weight gradient folded back onto the half,
  dw_half[..., j] = dw[..., j] + dw[..., KW-1-j] (the centre column of an odd KW once);
* a direct float64 NumPy reference written here from the same definition.

The autograd op and the layers are checked against float64 finite differences, against
the parameterised form in our own autograd, and against PyTorch with a mirrored weight
when torch is importable.  Bad arguments raise errors that name them.
"""
import numpy as np
import pytest

from gasca_core import _C, backend
from gasca_core.testing import call_version, version_id

SYM_VERSIONS = backend.kernel_versions("symconv2d")
DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------- references
def mirror(w_half, kw):
    """The full kernel (..., KW) that w_half (..., ceil(KW/2)) stands for."""
    return np.ascontiguousarray(w_half[..., [min(j, kw - 1 - j) for j in range(kw)]])


def fold(w_full):
    """The gradient of the half from the full kernel's: mirrored columns added."""
    kw = w_full.shape[-1]
    out = np.zeros(w_full.shape[:-1] + ((kw + 1) // 2,))
    for j in range(kw):
        out[..., min(j, kw - 1 - j)] += w_full[..., j]
    return out


def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _taps(x_pad, i, j, oh, ow, s, d):
    return x_pad[:, :, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                 j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]]


def ref_forward(x, w_half, b, kw, s, p, d):
    """float64, from the definition: for each stored column j, add the mirrored taps first
    (x_j + x_{KW-1-j}, the centre once), then multiply by w_half[..., j]."""
    x, w_half = x.astype(np.float64), w_half.astype(np.float64)
    n, _, h, wd = x.shape
    co, _, kh, hw = w_half.shape
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(wd, kw, s[1], p[1], d[1])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    y = np.zeros((n, co, oh, ow))
    for i in range(kh):
        for j in range(hw):
            pair = _taps(xp, i, j, oh, ow, s, d)
            if kw - 1 - j != j:
                pair = pair + _taps(xp, i, kw - 1 - j, oh, ow, s, d)
            y += np.einsum("nchw,oc->nohw", pair, w_half[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def oracle(x, w_half, b, dy, kw, s, p, d, dtype):
    """The parameterised form: conv2d's reference kernels with the mirrored full kernel."""
    w_full = mirror(w_half, kw)
    y = np.empty(dy.shape, dtype)
    _C.conv2d_forward(x, w_full, b, y, s, p, d, version=0)
    dx = np.empty(x.shape, dtype)
    _C.conv2d_backward_input(dy, w_full, dx, s, p, d, version=0)
    dw = np.empty(w_full.shape, dtype)
    _C.conv2d_backward_weight(x, dy, dw, s, p, d, version=0)
    return y, dx, fold(dw)


def _tol(dtype, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    return dict(rtol=1e-4, atol=2e-5 * scale) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11 * scale)


def random_geometries(count, seed):
    """(n, ci, co, h, w, kh, kw, stride, padding, dilation): every KW of 1..6 and every
    stride and padding appear; sizes are redrawn until the output is not empty."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = len(out)
        kw = 1 + k % 6
        kh = int(rng.integers(1, 5))
        s = (int(rng.integers(1, 4)), 1 + (k // 6) % 3)
        p = (int(rng.integers(0, 3)), k % 3)
        d = (int(rng.integers(1, 3)), 1 + (k // 18) % 2)
        n, ci, co = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = int(rng.integers(1, 10)), int(rng.integers(1, 12))
        if out_size(h, kh, s[0], p[0], d[0]) > 0 and out_size(w, kw, s[1], p[1], d[1]) > 0:
            out.append((n, ci, co, h, w, kh, kw, s, p, d))
    return out


GEOMETRIES = random_geometries(36, seed=14)


def _gid(g):
    n, ci, co, h, w, kh, kw, s, p, d = g
    return f"n{n}c{ci}-{co}_{h}x{w}_k{kh}x{kw}_s{s[0]}{s[1]}_p{p[0]}{p[1]}_d{d[0]}{d[1]}"


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_gid)
@pytest.mark.parametrize("version", SYM_VERSIONS, ids=version_id)
def test_every_version_matches_the_mirrored_full_kernel_and_the_reference(version, geometry, dtype):
    n, ci, co, h, w, kh, kw, s, p, d = geometry
    rng = np.random.default_rng(hash(_gid(geometry)) % 2**32)
    x = rng.standard_normal((n, ci, h, w)).astype(dtype)
    wh = rng.standard_normal((co, ci, kh, (kw + 1) // 2)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
    dy = rng.standard_normal((n, co, oh, ow)).astype(dtype)
    y_o, dx_o, dw_o = oracle(x, wh, b, dy, kw, s, p, d, dtype)
    y_ref = ref_forward(x, wh, b, kw, s, p, d)

    y = np.full((n, co, oh, ow), np.nan, dtype)
    call_version("symconv2d_forward", version, x, wh, b, y, kw, s, p, d)
    np.testing.assert_allclose(y, y_ref, **_tol(dtype, y_ref), err_msg="forward vs reference")
    np.testing.assert_allclose(y, y_o, **_tol(dtype, y_o), err_msg="forward vs mirrored conv2d")
    y_nb = np.full_like(y, np.nan)
    call_version("symconv2d_forward", version, x, wh, None, y_nb, kw, s, p, d)
    np.testing.assert_allclose(y_nb, y_ref - b.astype(np.float64)[None, :, None, None],
                               **_tol(dtype, y_ref), err_msg="forward, no bias")

    dx = np.full(x.shape, np.nan, dtype)
    call_version("symconv2d_backward_input", version, dy, wh, dx, kw, s, p, d)
    np.testing.assert_allclose(dx, dx_o, **_tol(dtype, dx_o), err_msg="backward_input")

    dw = np.full(wh.shape, np.nan, dtype)
    call_version("symconv2d_backward_weight", version, x, dy, dw, kw, s, p, d)
    np.testing.assert_allclose(dw, dw_o, **_tol(dtype, dw_o), err_msg="backward_weight")


@pytest.mark.parametrize("version", SYM_VERSIONS, ids=version_id)
def test_gradients_are_the_adjoints_of_the_forward_map(version):
    """<dy, J x> = <J^T dy, x> in float64, for x and for w_half (bias-free forward)."""
    rng = np.random.default_rng(5)
    for kw in (3, 4):
        x = rng.standard_normal((2, 3, 9, 10))
        wh = rng.standard_normal((4, 3, 3, (kw + 1) // 2))
        y = np.empty((2, 4, 5, 5))
        call_version("symconv2d_forward", version, x, wh, None, y, kw, 2, 1, 1)
        dy = rng.standard_normal(y.shape)
        dx = np.empty_like(x)
        call_version("symconv2d_backward_input", version, dy, wh, dx, kw, 2, 1, 1)
        dw = np.empty_like(wh)
        call_version("symconv2d_backward_weight", version, x, dy, dw, kw, 2, 1, 1)
        np.testing.assert_allclose(np.vdot(dy, y), np.vdot(dx, x), rtol=1e-10)
        np.testing.assert_allclose(np.vdot(dy, y), np.vdot(dw, wh), rtol=1e-10)


def test_batches_larger_than_one_block_of_images():
    """Version 1 works on blocks of images (cpp/symconv2d.cpp, kBlockElements): a batch that
    spans several blocks, the last one partial, gives the reference's answers."""
    rng = np.random.default_rng(3)
    # (3*5*3 + 8) * 32*32 = 54 272 elements per image: 9 images per 2**19-element block, so
    # 80 images make 8 full blocks and a partial one.
    x = rng.standard_normal((80, 3, 32, 32)).astype(np.float32)
    wh = rng.standard_normal((8, 3, 5, 3)).astype(np.float32)
    dy = rng.standard_normal((80, 8, 32, 32)).astype(np.float32)
    outs = {}
    for v in (0, 1):
        y = np.empty((80, 8, 32, 32), np.float32)
        _C.symconv2d_forward(x, wh, None, y, 5, 1, 2, 1, version=v)
        dw = np.empty_like(wh)
        _C.symconv2d_backward_weight(x, dy, dw, 5, 1, 2, 1, version=v)
        dx = np.empty_like(x)
        _C.symconv2d_backward_input(dy, wh, dx, 5, 1, 2, 1, version=v)
        outs[v] = (y, dw, dx)
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_allclose(b, a, **_tol(np.float32, a))


def test_versions_are_listed_and_the_fastest_is_version_1():
    names = _C.versions()["symconv2d"]
    assert len(names) == 2 and names[0].startswith("reference")
    assert _C.fastest_versions()["symconv2d"] == 1


# ----------------------------------------------------------------------------- bad arguments
def _valid(dtype=np.float64, kw=5):
    x = np.zeros((2, 3, 8, 8), dtype)
    wh = np.zeros((4, 3, 3, (kw + 1) // 2), dtype)
    out = np.zeros((2, 4, 8, 8), dtype)
    return x, wh, out


@pytest.mark.parametrize("kw, hw", [(5, 2), (4, 3), (1, 2), (2, 2), (3, 3)])
def test_a_half_width_that_does_not_fit_kernel_width_is_refused(kw, hw):
    x = np.zeros((1, 3, 8, 8))
    wh = np.zeros((4, 3, 3, hw))
    out = np.zeros((1, 4, 8, 8))
    with pytest.raises(ValueError, match=rf"weight has shape \(4, 3, 3, {hw}\).*kernel_width {kw}"
                                         rf" stores ceil\({kw}/2\) = {(kw + 1) // 2}"):
        _C.symconv2d_forward(x, wh, None, out, kw, 1, (1, kw // 2), 1)
    dw = np.zeros((4, 3, 3, hw))
    with pytest.raises(ValueError, match=r"grad_weight has shape"):
        _C.symconv2d_backward_weight(x, out, dw, kw, 1, (1, kw // 2), 1)
    with pytest.raises(ValueError, match=r"weight has shape"):
        _C.symconv2d_backward_input(out, wh, x.copy(), kw, 1, (1, kw // 2), 1)


@pytest.mark.parametrize("kw, exc, message", [
    (0, ValueError, "kernel_width = 0 must be a full kernel width"),
    (-3, ValueError, "kernel_width = -3"),
    (2**40, ValueError, "kernel_width"),
    (True, TypeError, "kernel_width must be an int"),
    (5.0, TypeError, "kernel_width must be an int"),
    ("5", TypeError, "kernel_width must be an int"),
    (None, TypeError, "kernel_width must be an int"),
])
def test_a_bad_kernel_width_is_refused(kw, exc, message):
    x, wh, out = _valid()
    with pytest.raises(exc, match=message):
        _C.symconv2d_forward(x, wh, None, out, kw, 1, 2, 1)


def test_wrong_dtypes_layouts_and_shapes_are_refused_with_the_argument_named():
    x, wh, out = _valid()
    with pytest.raises(ValueError, match="x has dtype int32"):
        _C.symconv2d_forward(x.astype(np.int32), wh, None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="dtype mismatch: x is float64 but weight is float32"):
        _C.symconv2d_forward(x, wh.astype(np.float32), None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match=r"weight \(shape \(4, 3, 3, 3\)\) is not C-contiguous"):
        _C.symconv2d_forward(x, np.asfortranarray(wh), None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match=r"x \(shape .*\) is not C-contiguous"):
        _C.symconv2d_forward(x[:, :, :, ::-1], wh, None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="channel mismatch: x has shape \\(2, 2, 8, 8\\)"):
        _C.symconv2d_forward(x[:, :2].copy(), wh, None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match=r"out has shape \(2, 4, 8, 8\) but \(2, 4, 4, 4\) was expected"):
        _C.symconv2d_forward(x, wh, None, out, 5, 2, (1, 2), 1)
    with pytest.raises(ValueError, match=r"bias has shape \(3,\)"):
        _C.symconv2d_forward(x, wh, np.zeros(3), out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="out .* is read-only"):
        ro = out.copy()
        ro.flags.writeable = False
        _C.symconv2d_forward(x, wh, None, ro, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="out .* shares memory with x"):
        big = np.zeros((2, 4, 8, 8))
        _C.symconv2d_forward(big.reshape(-1)[:2 * 3 * 64].reshape(2, 3, 8, 8), wh, None, big, 5, 1, (1, 2), 1)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        _C.symconv2d_forward(x.tolist(), wh, None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        _C.symconv2d_forward(x, wh[0], None, out, 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="output size would be empty"):
        _C.symconv2d_forward(x, np.zeros((4, 3, 3, 6)), None, out, 11, 1, 0, 1)
    with pytest.raises(ValueError, match="version = 2 is not a symconv2d version"):
        _C.symconv2d_forward(x, wh, None, out, 5, 1, (1, 2), 1, version=2)
    with pytest.raises(ValueError, match="gemm_version = 7 is not a gemm version"):
        _C.symconv2d_forward(x, wh, None, out, 5, 1, (1, 2), 1, gemm_version=7)
    with pytest.raises(ValueError, match="stride = \\(0, 0\\) must be >= 1"):
        _C.symconv2d_forward(x, wh, None, out, 5, 0, 2, 1)
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 4, 8, 8\) but \(2, 4, 4, 4\)"):
        _C.symconv2d_backward_input(out, wh, x.copy(), 5, 2, (1, 2), 1)
    with pytest.raises(ValueError, match=r"grad_in .* shares memory with grad_out"):
        _C.symconv2d_backward_input(out, wh, out.reshape(-1)[:2 * 3 * 64].reshape(2, 3, 8, 8), 5, 1, (1, 2), 1)
    with pytest.raises(ValueError, match="grad_weight .* is read-only"):
        dw = np.zeros_like(wh)
        dw.flags.writeable = False
        _C.symconv2d_backward_weight(x, out, dw, 5, 1, (1, 2), 1)


# ----------------------------------------------------------------------------- backend
def test_the_family_is_chosen_tallied_and_counted_in_multiplications_of_the_half():
    import gasca_core as gc
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6))
    wh = rng.standard_normal((4, 3, 3, 2))  # KW = 3 (or 4): 2 stored columns
    backend.kernel_calls(reset=True)
    with gc.kernels(symconv2d=0):
        assert backend.chosen_version("symconv2d_backward_input") == 0
        y0 = backend.symconv2d_forward(x, wh, None, 3, (1, 1), (1, 1), (1, 1))
    y1 = backend.symconv2d_forward(x, wh, None, 3, (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    calls = backend.kernel_calls(reset=True)
    flops = 2 * 2 * 4 * 3 * 3 * 2 * 6 * 6  # 2 N Co Ci KH HW OH OW
    assert calls[("symconv2d_forward", "0")] == (1, flops)
    fast = [k for k in calls if k[0] == "symconv2d_forward" and k[1].startswith("1+gemm")]
    assert fast and calls[fast[0]] == (1, flops), calls
    assert "symconv2d v1" in backend.describe_kernels()
    with pytest.raises(ValueError, match="symconv2d=5: symconv2d has versions -1"):
        backend.parse_kernels("symconv2d=5")


def test_a_registered_python_gemm_cannot_serve_version_1():
    import gasca_core as gc
    backend.register_kernel("gemm", lambda a, b, ta, tb: (a.T if ta else a) @ (b.T if tb else b),
                            name="numpy_sym")
    try:
        x, wh = np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 2))
        with gc.kernels(gemm="numpy_sym"):
            backend.symconv2d_forward(x, wh, None, 3, (1, 1), (0, 0), (1, 1), version=0)
            with pytest.raises(ValueError, match="symconv2d version 1 .* registered Python gemm"):
                backend.symconv2d_forward(x, wh, None, 3, (1, 1), (0, 0), (1, 1), version=1)
    finally:
        backend.unregister_kernel("gemm", "numpy_sym")


# ----------------------------------------------------------------------------- autograd, layers
import gasca_core as gc  # noqa: E402
import gasca_core.functional as F  # noqa: E402
from gasca_core.testing import gradcheck  # noqa: E402

# (x shape, Co, KH, KW, stride, padding, dilation): odd and even widths, KW = 1, strides and
# paddings on both axes, a dilation.
GRAD_CASES = [
    ((2, 2, 5, 6), 3, 3, 3, 1, 1, 1),
    ((1, 2, 5, 7), 2, 2, 4, (1, 2), (0, 1), 1),
    ((2, 1, 6, 6), 2, 3, 5, 2, 2, 1),
    ((1, 3, 4, 5), 2, 1, 1, 1, 0, 1),
    ((1, 2, 6, 8), 2, 2, 2, 3, (1, 0), 1),
    ((1, 2, 7, 9), 2, 3, 3, 1, 1, (1, 2)),
]


def _case_id(c):
    return f"x{'x'.join(map(str, c[0]))}_k{c[2]}x{c[3]}_s{c[4]}_p{c[5]}_d{c[6]}"


def _tensors(case, seed=0, requires_grad=True):
    shape, co, kh, kw, *_ = case
    rng = np.random.default_rng(seed)
    x = gc.Tensor(rng.standard_normal(shape), requires_grad=requires_grad)
    wh = gc.Tensor(rng.standard_normal((co, shape[1], kh, (kw + 1) // 2)), requires_grad=requires_grad)
    b = gc.Tensor(rng.standard_normal(co), requires_grad=requires_grad)
    return x, wh, b


@pytest.mark.parametrize("version", SYM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("case", GRAD_CASES, ids=_case_id)
def test_symmetric_conv2d_gradients_match_float64_finite_differences(case, version):
    _, _, _, kw, s, p, d = case
    x, wh, b = _tensors(case)
    with gc.kernels(symconv2d=version):
        gradcheck(lambda x, wh, b: F.symmetric_conv2d(x, wh, b, kw, s, p, d), [x, wh, b])


@pytest.mark.parametrize("case", GRAD_CASES, ids=_case_id)
def test_symmetric_conv2d_equals_conv2d_with_the_mirrored_kernel_values_and_gradients(case):
    """The parameterised form (mirror the half in autograd, then conv2d) is the oracle."""
    _, _, _, kw, s, p, d = case
    x, wh, b = _tensors(case, seed=1)
    x2, wh2, b2 = (gc.Tensor(t.data.copy(), requires_grad=True) for t in (x, wh, b))
    y = F.symmetric_conv2d(x, wh, b, kw, s, p, d)
    y2 = F.conv2d(x2, F.mirror_kernel(wh2, kw), b2, s, p, d)
    np.testing.assert_allclose(y.data, y2.data, rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(2).standard_normal(y.shape)
    y.backward(g)
    y2.backward(g)
    for a, o in ((x, x2), (wh, wh2), (b, b2)):
        np.testing.assert_allclose(a.grad, o.grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kw", [1, 2, 3, 4, 5])
def test_mirror_kernel_and_its_fold_are_adjoint(kw):
    rng = np.random.default_rng(kw)
    wh = gc.Tensor(rng.standard_normal((2, 3, 2, (kw + 1) // 2)), requires_grad=True)
    full = F.mirror_kernel(wh, kw)
    assert full.shape == (2, 3, 2, kw)
    np.testing.assert_array_equal(full.data, full.data[..., ::-1])  # symmetric left to right
    np.testing.assert_array_equal(full.data, mirror(wh.data, kw))
    gradcheck(lambda w: F.mirror_kernel(w, kw), [wh])
    g = rng.standard_normal(full.shape)
    np.testing.assert_allclose(F.fold_kernel_array(g, kw), fold(g), rtol=1e-14)


@pytest.mark.parametrize("kw, s, p, op", [(3, 2, 1, 1), (4, 2, 1, 0), (5, 1, 2, 0), (2, 3, 0, 2)])
def test_symmetric_conv_transpose2d_gradients_and_its_oracle(kw, s, p, op):
    rng = np.random.default_rng(kw)
    x = gc.Tensor(rng.standard_normal((2, 2, 3, 4)), requires_grad=True)
    wh = gc.Tensor(rng.standard_normal((2, 3, 3, (kw + 1) // 2)), requires_grad=True)
    b = gc.Tensor(rng.standard_normal(3), requires_grad=True)
    fn = lambda x, wh, b: F.symmetric_conv_transpose2d(x, wh, b, kw, s, p, op)  # noqa: E731
    gradcheck(fn, [x, wh, b])
    full = gc.Tensor(mirror(wh.data, kw))
    np.testing.assert_allclose(fn(x, wh, b).data, F.conv_transpose2d(x, full, b, s, p, op).data,
                               rtol=1e-12, atol=1e-12)


def test_layers_have_half_width_weights_and_the_plain_layers_initial_scale():
    conv = gc.nn.SymmetricConv2d(32, 64, 5, stride=2, padding=2, rng=np.random.default_rng(0))
    plain = gc.nn.Conv2d(32, 64, 5, stride=2, padding=2)
    assert conv.weight.shape == (64, 32, 5, 3) and conv.kernel_size == (5, 5)
    assert conv.num_parameters() == 64 * 32 * 15 + 64 and plain.num_parameters() == 64 * 32 * 25 + 64
    bound = 1 / np.sqrt(32 * 25)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.9 * bound
    assert np.abs(conv.bias.data).max() <= bound
    assert "symmetric" in repr(conv)
    up = gc.nn.SymmetricConvTranspose2d(64, 32, 4, stride=2, padding=1, bias=False)
    assert up.weight.shape == (64, 32, 4, 2) and up.bias is None
    x = gc.Tensor(np.random.default_rng(1).standard_normal((2, 32, 16, 16)).astype(np.float32))
    y = conv(x)
    assert y.shape == (2, 64, 8, 8) and y.dtype == np.float32
    assert up(y).shape == (2, 32, 16, 16)
    # The layer is exactly Conv2d with the mirrored weight.
    plain.weight.data[...] = mirror(conv.weight.data, 5)
    plain.bias.data[...] = conv.bias.data
    np.testing.assert_allclose(y.data, plain(x).data, rtol=1e-4, atol=1e-5)
    # A state dict round-trips into a fresh layer.
    fresh = gc.nn.SymmetricConv2d(32, 64, 5, stride=2, padding=2)
    fresh.load_state_dict(conv.state_dict())
    np.testing.assert_array_equal(fresh(x).data, y.data)


def test_bad_operands_are_refused_with_clear_messages():
    x = gc.Tensor(np.zeros((1, 3, 8, 8)))
    wh = gc.Tensor(np.zeros((4, 3, 3, 2)))
    with pytest.raises(ValueError, match="kernel_width .* is required"):
        F.symmetric_conv2d(x, wh)
    with pytest.raises(ValueError, match=r"weight_half \(4, 3, 3, 2\) must have ceil\(5/2\) = 3 columns"):
        F.symmetric_conv2d(x, wh, None, 5)
    with pytest.raises(ValueError, match="kernel_width must be a positive int"):
        F.symmetric_conv2d(x, wh, None, 0)
    with pytest.raises(ValueError, match="input has 2 channels"):
        F.symmetric_conv2d(gc.Tensor(np.zeros((1, 2, 8, 8))), wh, None, 3)
    with pytest.raises(ValueError, match="must share one dtype"):
        F.symmetric_conv2d(x, gc.Tensor(np.zeros((4, 3, 3, 2), np.float32)), None, 3)
    with pytest.raises(ValueError, match="output size"):
        F.symmetric_conv2d(x, gc.Tensor(np.zeros((4, 3, 3, 6))), None, 11)
    with pytest.raises(ValueError, match="weight_half .* columns"):
        F.symmetric_conv_transpose2d(x, gc.Tensor(np.zeros((3, 4, 3, 2))), None, 5)


def test_against_pytorch_with_the_mirrored_weight():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    for kw, s, p in ((3, 1, 1), (4, 2, (1, 2)), (5, 2, 2)):
        x = rng.standard_normal((2, 3, 9, 10))
        wh = rng.standard_normal((4, 3, 3, (kw + 1) // 2))
        b = rng.standard_normal(4)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(wh, requires_grad=True)
        full_t = torch.cat([wt, wt[..., : kw // 2].flip(-1)], dim=-1)
        yt = torch.nn.functional.conv2d(xt, full_t, torch.tensor(b), stride=s, padding=p)
        g = rng.standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(g))
        xg, wg = gc.Tensor(x, requires_grad=True), gc.Tensor(wh, requires_grad=True)
        y = F.symmetric_conv2d(xg, wg, gc.Tensor(b), kw, s, p)
        y.backward(g)
        np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(xg.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(wg.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- model option
def test_symmetric_levels_make_those_levels_symmetric_and_cut_their_weights():
    from gasca_core.models import GascaConfig, architecture, build_full, parameter_counts
    plain, sym = GascaConfig(), GascaConfig(symmetric_levels=[3, 1])
    assert sym.symmetric_levels == [1, 3]
    assert GascaConfig.from_dict(sym.to_dict()).symmetric_levels == [1, 3]
    g, d = build_full(sym, seed=0)
    kinds = [(type(ae.encoder[0]).__name__, type(ae.decoder[0]).__name__) for ae in g.levels]
    assert kinds == [("SymmetricConv2d", "SymmetricConvTranspose2d"),
                     ("Conv2d", "ConvTranspose2d"),
                     ("SymmetricConv2d", "SymmetricConvTranspose2d")]
    (gp, dp), (gs, ds) = parameter_counts(plain), parameter_counts(sym)
    # Level 1: 1*32*5*(5-3) weights saved twice (encoder, decoder); level 3: 64*128*3*(3-2) twice.
    assert gp - gs == 2 * (32 * 5 * 2) + 2 * (64 * 128 * 3 * 1) and dp == ds
    # Kernels of width 4 keep exactly half their weights.
    deep = architecture("gasca-64-deep")
    deep_sym = architecture("gasca-64-deep", symmetric_levels=[1, 2, 3, 4, 5])
    biases = sum(deep.channels) + 1 + sum(deep.channels[:-1])  # encoders', decoders' (1 = image)
    assert parameter_counts(deep_sym)[0] - biases == (parameter_counts(deep)[0] - biases) // 2
    for bad in ([0], [4], [1, 1]):
        with pytest.raises(ValueError, match="symmetric_levels"):
            GascaConfig(symmetric_levels=bad)


def test_train_with_symmetric_levels_reports_fewer_parameters_and_checkpoints(tmp_path, shifted_pairs):
    import os
    import subprocess
    import sys
    from gasca_core.training import load_checkpoint
    data = shifted_pairs(tmp_path / "pairs.npz")
    tiny = ["--image-size", "16", "--channels", "4,6", "--kernel-sizes", "3,4", "--batch-size", "8",
            "--no-progress", "--dataset", "npz", "--data", data, "--steps", "6"]
    out = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "gasca_core.train", "--out", out,
                        "--symmetric-levels", "1,2"] + tiny, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    from gasca_core.models import GascaConfig, parameter_counts
    plain = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 4])
    sym = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 4], symmetric_levels=[1, 2])
    assert parameter_counts(sym)[0] < parameter_counts(plain)[0]
    assert f"G {parameter_counts(sym)[0]:,} parameters" in r.stdout
    assert "symmetric levels 1,2" in r.stdout
    meta, states = load_checkpoint(os.path.join(out, "latest.npz"))
    assert meta["model_config"]["symmetric_levels"] == [1, 2]
    # The evaluate tool rebuilds the symmetric model from the checkpoint and loads it.
    ev = subprocess.run([sys.executable, "-m", "gasca_core.evaluate", os.path.join(out, "latest.npz"),
                         "--dataset", "npz", "--data", data], capture_output=True, text=True,
                        timeout=600)
    assert ev.returncode == 0, ev.stderr
    assert "MSE" in ev.stdout
    bad = subprocess.run([sys.executable, "-m", "gasca_core.train", "--out", str(tmp_path / "b"),
                          "--symmetric-levels", "3"] + tiny, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "symmetric_levels [3] must name distinct levels in 1..2" in bad.stderr


@pytest.mark.parametrize("version", SYM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("x_shape, kw, stride, padding, dilation", [
    ((1, 1, 1, 1), 1, (2**30, 1), (2**30, 0), 1),            # 3 output rows 2**30 apart
    ((1, 2, 2, 1), 3, (1, 1), (0, 2**30), (1, 2**30)),        # taps 2**30 apart in a row
    ((2, 1, 3, 2), 4, (1, 2**30), (1, 2**29), (1, 2**28)),
])
def test_huge_strides_paddings_and_dilations_with_tiny_arrays(version, x_shape, kw, stride,
                                                             padding, dilation):
    """Geometries whose zero-padded image would be astronomically large while every array is
    tiny: version 1 must not size scratch memory from the padded extent (it reads the image
    directly then) and must agree with the mirrored conv2d."""
    rng = np.random.default_rng(0)
    n, ci, h, w = x_shape
    x = rng.standard_normal(x_shape)
    wh = rng.standard_normal((2, ci, 1, (kw + 1) // 2))
    oh, ow = out_size(h, 1, stride[0], padding[0], dilation[0] if isinstance(dilation, tuple) else 1), \
        out_size(w, kw, stride[1], padding[1], dilation[1] if isinstance(dilation, tuple) else 1)
    dy = rng.standard_normal((n, 2, oh, ow))
    y_o, dx_o, dw_o = oracle(x, wh, None, dy, kw, stride, padding, dilation, np.float64)
    y = np.empty((n, 2, oh, ow))
    call_version("symconv2d_forward", version, x, wh, None, y, kw, stride, padding, dilation)
    dx = np.empty_like(x)
    call_version("symconv2d_backward_input", version, dy, wh, dx, kw, stride, padding, dilation)
    dw = np.empty_like(wh)
    call_version("symconv2d_backward_weight", version, x, dy, dw, kw, stride, padding, dilation)
    for got, want in ((y, y_o), (dx, dx_o), (dw, dw_o)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _why_no_gpu():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU is visible"
        from gasca_core import _C_cuda  # noqa: F401
    except Exception as e:  # not installed, no driver or device, no CUDA extension
        return f"no CUDA path ({type(e).__name__}: {e})"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_why_no_gpu() is not None, reason=str(_why_no_gpu()))
@pytest.mark.parametrize("kw", [3, 4])
def test_on_cuda_the_parameterised_form_matches_the_cpu_kernel(kw):
    """On CUDA the layers mirror the half and run conv2d's / conv_transpose2d's CUDA kernels;
    values and gradients match the CPU's own symmetric kernel."""
    rng = np.random.default_rng(kw)
    x = rng.standard_normal((2, 3, 9, 10))
    wh = rng.standard_normal((4, 3, 3, (kw + 1) // 2))
    b = rng.standard_normal(4)
    results = {}
    for device in ("cpu", "cuda"):
        ts = [gc.Tensor(backend.to_device(a, device), requires_grad=True) for a in (x, wh, b)]
        y = F.symmetric_conv2d(*ts, kw, 2, 1)
        y.backward(backend.to_device(np.ones(y.shape), device))
        results[device] = [backend.to_numpy(y.data)] + [backend.to_numpy(t.grad) for t in ts]
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="CPU only"):
        backend.symconv2d_forward(backend.to_device(x, "cuda"), backend.to_device(wh, "cuda"),
                                  None, kw, (1, 1), (1, 1), (1, 1))


def test_the_resize_decoder_of_a_symmetric_level_is_symmetric_too():
    from gasca_core.models import GascaConfig, build_full
    cfg = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 5], decoder="resize",
                      symmetric_levels=[2])
    g, _ = build_full(cfg, seed=0)
    assert type(g.levels[1].decoder[1]).__name__ == "SymmetricConv2d"
    assert type(g.levels[0].decoder[1]).__name__ == "Conv2d"
    x = gc.Tensor(np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32))
    assert g(x).shape == (2, 1, 16, 16)
