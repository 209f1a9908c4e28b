"""Malformed calls into gasca_core._C raise ValueError/TypeError naming the argument, and
never crash the interpreter or touch memory."""
import numpy as np
import pytest

from gasca_core import _C

F = np.float32


def conv_args():
    x = np.zeros((2, 3, 8, 8), F)
    w = np.zeros((4, 3, 3, 3), F)
    b = np.zeros(4, F)
    out = np.zeros((2, 4, 4, 4), F)  # stride 2, padding 1
    return x, w, b, out


def call_forward(x, w, b, out, stride=(2, 2), padding=(1, 1), dilation=(1, 1), version=-1):
    _C.conv2d_forward(x, w, b, out, stride, padding, dilation, version=version)


def test_valid_call_works():
    call_forward(*conv_args())


@pytest.mark.parametrize("which,bad,needle", [
    ("x", np.zeros((3, 8, 8), F), "x must be 4-D"),
    ("w", np.zeros((4, 3, 3), F), "weight must be 4-D"),
    ("b", np.zeros((4, 1), F), "bias must be 1-D"),
    ("out", np.zeros((2, 4, 16), F), "out must be 4-D"),
])
def test_wrong_rank(which, bad, needle):
    args = dict(zip(("x", "w", "b", "out"), conv_args()))
    args[which] = bad
    with pytest.raises(ValueError, match=needle):
        call_forward(**args)


def test_channel_mismatch_names_both_shapes():
    x, _, b, out = conv_args()
    w = np.zeros((4, 5, 3, 3), F)
    with pytest.raises(ValueError, match=r"channel mismatch.*\(2, 3, 8, 8\).*\(4, 5, 3, 3\)"):
        call_forward(x, w, b, out)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex64, bool])
def test_wrong_dtype(dtype):
    x, w, b, out = conv_args()
    with pytest.raises(ValueError, match="x has dtype"):
        call_forward(x.astype(dtype), w, b, out)


def test_big_endian_is_rejected():
    x, w, b, out = conv_args()
    with pytest.raises(ValueError, match="x has dtype"):
        call_forward(x.astype(">f4"), w, b, out)


def test_mixed_dtypes():
    x, w, b, out = conv_args()
    with pytest.raises(ValueError, match="dtype mismatch.*weight"):
        call_forward(x, w.astype(np.float64), b, out)


def test_non_contiguous_is_rejected_not_copied():
    x, w, b, out = conv_args()
    xt = np.zeros((2, 3, 8, 16), F)[:, :, :, ::2]
    with pytest.raises(ValueError, match="x .*not C-contiguous"):
        call_forward(xt, w, b, out)
    wf = np.asfortranarray(w)
    with pytest.raises(ValueError, match="weight .*not C-contiguous"):
        call_forward(x, wf, b, out)


def test_non_array_is_type_error():
    x, w, b, out = conv_args()
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        call_forward(x.tolist(), w, b, out)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        call_forward(x, w, b, None)


def test_read_only_output():
    x, w, b, out = conv_args()
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out .*read-only"):
        call_forward(x, w, b, out)


def test_output_aliasing_input():
    buf = np.zeros((2, 4, 8, 8), F)
    w = np.zeros((4, 4, 3, 3), F)
    with pytest.raises(ValueError, match="out .*shares memory with x"):
        _C.conv2d_forward(buf, w, None, buf, (1, 1), (1, 1), (1, 1))


def test_empty_output_size():
    x = np.zeros((1, 1, 2, 2), F)
    w = np.zeros((1, 1, 5, 5), F)
    out = np.zeros((1, 1, 1, 1), F)
    with pytest.raises(ValueError, match="output size would be empty"):
        _C.conv2d_forward(x, w, None, out, (1, 1), (0, 0), (1, 1))


def test_bad_output_shape():
    x, w, b, _ = conv_args()
    with pytest.raises(ValueError, match=r"out has shape \(2, 4, 5, 4\) but \(2, 4, 4, 4\)"):
        call_forward(x, w, b, np.zeros((2, 4, 5, 4), F))


def test_bad_bias_shape():
    x, w, _, out = conv_args()
    with pytest.raises(ValueError, match="bias has shape"):
        call_forward(x, w, np.zeros(3, F), out)


@pytest.mark.parametrize("version", [-2, 99])
def test_bad_version(version):
    with pytest.raises(ValueError, match="version"):
        call_forward(*conv_args(), version=version)


def test_negative_padding():
    with pytest.raises(ValueError, match="padding"):
        call_forward(*conv_args(), padding=(-1, 1))


@pytest.mark.parametrize("kw,val", [("stride", (0, 1)), ("stride", 0), ("dilation", (1, 0))])
def test_zero_stride_or_dilation(kw, val):
    with pytest.raises(ValueError, match=kw):
        call_forward(*conv_args(), **{kw: val})


@pytest.mark.parametrize("val", [(1, 2, 3), "ab", 1.5, (1, None)])
def test_malformed_pair(val):
    with pytest.raises((ValueError, TypeError), match="stride"):
        call_forward(*conv_args(), stride=val)


def test_huge_parameters_do_not_overflow():
    with pytest.raises(ValueError, match="padding"):
        call_forward(*conv_args(), padding=(2**62, 1))
    with pytest.raises((ValueError, TypeError, OverflowError)):
        call_forward(*conv_args(), stride=(2**70, 1))


def test_zero_size_dimension():
    x = np.zeros((0, 3, 8, 8), F)
    _, w, b, _ = conv_args()
    with pytest.raises(ValueError, match="x has an empty dimension"):
        call_forward(x, w, b, np.zeros((0, 4, 4, 4), F))


# ----------------------------------------------------------------------------- other passes
def test_backward_input_checks_grad_out_shape():
    x, w, _, out = conv_args()
    with pytest.raises(ValueError, match="grad_out has shape"):
        _C.conv2d_backward_input(np.zeros((2, 4, 3, 4), F), w, x, (2, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="channel mismatch"):
        _C.conv2d_backward_input(out, np.zeros((4, 2, 3, 3), F), x, (2, 2), (1, 1), (1, 1))


def test_backward_weight_checks():
    x, w, _, out = conv_args()
    with pytest.raises(ValueError, match="grad_weight must be 4-D"):
        _C.conv2d_backward_weight(x, out, np.zeros((4, 27), F), (2, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="dtype mismatch"):
        _C.conv2d_backward_weight(x, out.astype(np.float64), w, (2, 2), (1, 1), (1, 1))


def test_backward_bias_checks():
    with pytest.raises(ValueError, match=r"grad_bias has shape \(3,\) but \(4,\)"):
        _C.conv2d_backward_bias(np.zeros((2, 4, 3, 3), F), np.zeros(3, F))


def t_args():
    x = np.zeros((2, 4, 5, 5), F)          # (N, Ci, H, W)
    w = np.zeros((4, 3, 5, 5), F)          # (Ci, Co, KH, KW)
    out = np.zeros((2, 3, 10, 10), F)      # stride 2, padding 2, output_padding 1
    return x, w, out


def test_conv_transpose_valid_and_shape_check():
    x, w, out = t_args()
    _C.conv_transpose2d_forward(x, w, None, out, (2, 2), (2, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"out has shape \(2, 3, 9, 9\) but \(2, 3, 10, 10\)"):
        _C.conv_transpose2d_forward(x, w, None, np.zeros((2, 3, 9, 9), F), (2, 2), (2, 2), (1, 1), (1, 1))


def test_conv_transpose_channel_mismatch():
    x, _, out = t_args()
    with pytest.raises(ValueError, match="channel mismatch"):
        _C.conv_transpose2d_forward(x, np.zeros((3, 3, 5, 5), F), None, out, (2, 2), (2, 2), (1, 1), (1, 1))


def test_conv_transpose_output_padding_too_large():
    x, w, _ = t_args()
    with pytest.raises(ValueError, match="output_padding"):
        _C.conv_transpose2d_forward(x, w, None, np.zeros((2, 3, 11, 11), F), (2, 2), (2, 2), (2, 2), (1, 1))


@pytest.mark.parametrize("version", [-1, 0, 1, 2])
def test_conv_transpose_output_padding_below_dilation_but_not_stride_is_computed(version):
    """op < max(stride, dilation) but >= stride: PyTorch allows it, and so do we (the adjoint
    convolution gets an explicit output size below its natural one, conv2d.h); all three
    passes run, in every version, and agree with version 0 (the NumPy references are in
    test_kernels_conv.py)."""
    if version >= len(_C.versions()["conv2d"]):
        pytest.skip("no such version")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 4)).astype(F)
    w = rng.standard_normal((2, 2, 3, 3)).astype(F)
    geo = ((1, 1), (0, 0), (1, 1), (2, 2))  # stride, padding, output_padding, dilation
    out, out0 = np.full((1, 2, 9, 9), np.nan, F), np.full((1, 2, 9, 9), np.nan, F)  # (4-1)*1 + 2*2 + 1 + 1
    _C.conv_transpose2d_forward(x, w, None, out, *geo, version=version)
    _C.conv_transpose2d_forward(x, w, None, out0, *geo, version=0)
    np.testing.assert_allclose(out, out0, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(out.shape).astype(F)
    dx, dx0 = np.full_like(x, np.nan), np.full_like(x, np.nan)
    _C.conv_transpose2d_backward_input(dy, w, dx, *geo, version=version)
    _C.conv_transpose2d_backward_input(dy, w, dx0, *geo, version=0)
    np.testing.assert_allclose(dx, dx0, rtol=1e-5, atol=1e-5)
    dw, dw0 = np.full_like(w, np.nan), np.full_like(w, np.nan)
    _C.conv_transpose2d_backward_weight(x, dy, dw, *geo, version=version)
    _C.conv_transpose2d_backward_weight(x, dy, dw0, *geo, version=0)
    np.testing.assert_allclose(dw, dw0, rtol=1e-5, atol=1e-5)


def test_conv_transpose_output_padding_at_max_of_stride_and_dilation_is_refused():
    """PyTorch's bound, per axis: output_padding = max(stride, dilation) is one too many."""
    x = np.zeros((1, 2, 4, 4), F)
    w = np.zeros((2, 2, 3, 3), F)
    out = np.zeros((1, 2, 10, 9), F)
    with pytest.raises(ValueError, match=r"output_padding = \(2, 1\) must be smaller than "
                                         r"max\(stride, dilation\) = \(2, 2\)"):
        _C.conv_transpose2d_forward(x, w, None, out, (1, 1), (0, 0), (2, 1), (2, 2))


def test_conv_transpose_empty_output():
    x = np.zeros((1, 2, 1, 1), F)
    w = np.zeros((2, 2, 1, 1), F)
    with pytest.raises(ValueError, match="output size would be empty"):
        _C.conv_transpose2d_forward(x, w, None, np.zeros((1, 2, 1, 1), F), (1, 1), (1, 1), (0, 0), (1, 1))


def test_conv_transpose_backward_checks():
    x, w, out = t_args()
    with pytest.raises(ValueError, match="grad_out has shape"):
        _C.conv_transpose2d_backward_input(np.zeros((2, 3, 9, 9), F), w, x, (2, 2), (2, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="grad_weight has an empty dimension|channel mismatch"):
        _C.conv_transpose2d_backward_weight(x, out, np.zeros((3, 3, 5, 5), F), (2, 2), (2, 2), (1, 1), (1, 1))


# ----------------------------------------------------------------------------- gemm
def test_gemm_checks():
    a = np.zeros((3, 4), F)
    b = np.zeros((5, 6), F)
    with pytest.raises(ValueError, match=r"inner dimensions differ.*\(3, 4\).*\(5, 6\)"):
        _C.gemm(a, b, np.zeros((3, 6), F))
    with pytest.raises(ValueError, match="c has shape"):
        _C.gemm(a, np.zeros((4, 6), F), np.zeros((6, 3), F))
    with pytest.raises(ValueError, match="a must be 2-D"):
        _C.gemm(np.zeros(3, F), b, np.zeros((3, 6), F))
    with pytest.raises(ValueError, match="dtype mismatch"):
        _C.gemm(a, np.zeros((4, 6)), np.zeros((3, 6), F))
    with pytest.raises(ValueError, match="version"):
        _C.gemm(a, np.zeros((4, 6), F), np.zeros((3, 6), F), version=17)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _C.gemm(np.zeros((4, 3), F).T, np.zeros((4, 6), F), np.zeros((3, 6), F))


# ----------------------------------------------------------------------------- optimizers
def test_sgd_checks():
    p = np.zeros(5, F)
    with pytest.raises(ValueError, match="shape mismatch"):
        _C.sgd_step(p, np.zeros(6, F), None, 0.1, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="momentum_buf"):
        _C.sgd_step(p, np.zeros(5, F), None, 0.1, 0.9, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="lr"):
        _C.sgd_step(p, np.zeros(5, F), None, -0.1, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _C.sgd_step(p, np.zeros(5), None, 0.1, 0.0, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match="share memory"):
        _C.sgd_step(p, p, None, 0.1, 0.0, 0.0, 0.0, False, True)


def test_adam_checks():
    p, g, m, v = (np.zeros(4, F) for _ in range(4))
    with pytest.raises(ValueError, match="step"):
        _C.adam_step(p, g, m, v, 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(ValueError, match="beta2"):
        _C.adam_step(p, g, m, v, 1, 1e-3, 0.9, 1.0, 1e-8, 0.0, False)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        _C.adam_step(p, g, m, np.zeros(5, F), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(ValueError, match="exp_avg .*not C-contiguous"):
        _C.adam_step(p, g, np.zeros(8, F)[::2], v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)


def test_set_num_threads_rejects_zero():
    with pytest.raises(ValueError, match="set_num_threads"):
        _C.set_num_threads(0)


# ----------------------------------------------------------------------------- odd but valid
def test_equal_but_not_identical_dtype_is_accepted():
    """A float32 array whose dtype object is equal to, not identical with, np.float32's
    (as after unpickling) is a float32 array."""
    import pickle
    x, w, b, out = (pickle.loads(pickle.dumps(a)) for a in conv_args())
    call_forward(x, w, b, out)


def test_misaligned_array_is_rejected():
    raw = np.zeros(2 * 3 * 8 * 8 * 4 + 1, np.uint8)
    x = raw[1:].view(np.float32).reshape(2, 3, 8, 8)
    assert not x.flags.aligned
    _, w, b, out = conv_args()
    with pytest.raises(ValueError, match="x .*not aligned"):
        call_forward(x, w, b, out)


def test_numpy_integers_are_ints_but_bools_and_bytes_are_not():
    call_forward(*conv_args(), stride=(np.int64(2), np.int32(2)), padding=np.int16(1))
    with pytest.raises(TypeError, match="stride"):
        call_forward(*conv_args(), stride=(True, 2))
    with pytest.raises(TypeError, match="stride"):
        call_forward(*conv_args(), stride=(np.bool_(True), 2))
    with pytest.raises(TypeError, match="stride"):
        call_forward(*conv_args(), stride=b"\x02\x02")


@pytest.mark.parametrize("version", [-1, 1, 2])
def test_huge_strides_and_paddings_on_tiny_arrays_are_computed(version):
    """Legal geometries whose padded extent is astronomically large (the fast path's phase
    image would need exabytes, or its size would overflow) are computed, not crashed on:
    the fast version falls back to im2col, whose scratch is bounded by the arrays."""
    if version >= len(_C.versions()["conv2d"]):
        pytest.skip("no such version")
    rng = np.random.default_rng(0)
    s, p, d = (2**29, 2**29), (2**30, 2**30 - 1), (2**30 - 1, 1)
    x = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    w = rng.standard_normal((1, 4, 2, 1)).astype(np.float32)
    oh = (1 + 2 * p[0] - d[0] * (2 - 1) - 1) // s[0] + 1
    ow = (1 + 2 * p[1] - d[1] * (1 - 1) - 1) // s[1] + 1
    assert oh * ow < 100
    y, y0 = np.empty((1, 1, oh, ow), np.float32), np.empty((1, 1, oh, ow), np.float32)
    _C.conv2d_forward(x, w, None, y, s, p, d, version=version)
    _C.conv2d_forward(x, w, None, y0, s, p, d, version=0)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx0 = np.empty_like(x), np.empty_like(x)
    _C.conv2d_backward_input(dy, w, dx, s, p, d, version=version)
    _C.conv2d_backward_input(dy, w, dx0, s, p, d, version=0)
    np.testing.assert_allclose(dx, dx0, rtol=1e-6, atol=1e-6)
    dw, dw0 = np.empty_like(w), np.empty_like(w)
    _C.conv2d_backward_weight(x, dy, dw, s, p, d, version=version)
    _C.conv2d_backward_weight(x, dy, dw0, s, p, d, version=0)
    np.testing.assert_allclose(dw, dw0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,value", [("lr", float("inf")), ("lr", float("nan")),
                                        ("lr", 1e300), ("momentum", float("inf")),
                                        ("dampening", float("nan")), ("weight_decay", 1e300)])
def test_sgd_hyperparameters_must_be_finite_float32_values(name, value):
    p, g, buf = np.zeros(3, F), np.zeros(3, F), np.zeros(3, F)
    kw = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, first_step=True)
    kw[name] = value
    with pytest.raises(ValueError, match=name):
        _C.sgd_step(p, g, buf, **kw)


def test_gemm_alpha_beyond_float_range_saturates_to_inf():
    a = np.ones((2, 2), F)
    c = np.empty((2, 2), F)
    _C.gemm(a, a, c, alpha=1e300)
    assert np.isposinf(c).all()


def test_set_num_threads_rejects_absurd_counts():
    with pytest.raises(ValueError, match="set_num_threads"):
        _C.set_num_threads(10**6)
