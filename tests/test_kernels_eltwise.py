"""The element-wise kernels (cpp/eltwise.h), every version, against the NumPy formulas bit
for bit, against PyTorch where installed, through the autograd, and on bad input."""
import numpy as np
import pytest

from gasca_core import _C, Tensor, backend, functional as F, kernels
from gasca_core.testing import call_version, kernel_covers, version_id

ELTWISE_VERSIONS = backend.kernel_versions("eltwise")
CHUNK = 1 << 14  # the fast version's chunk (cpp/eltwise.cpp)
SHAPES = [(), (0,), (1,), (7,), (3, 5), (CHUNK - 1,), (CHUNK + 1,), (2, 3, CHUNK + 5),
          (4, 32, 32, 32)]
SLOPES = [0.2, 0.01, 1.0, 1e-30]
SPECIAL = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 3e38, -3e38]


def _x(shape, dtype, seed=0):
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    flat = x.reshape(-1)
    flat[:min(len(SPECIAL), flat.size)] = np.array(SPECIAL, dtype)[:flat.size]
    return x


def numpy_forward(x, slope):
    s = x.dtype.type(slope)
    return np.asarray(np.maximum(x * s, x))


def numpy_backward(x, dy, slope):
    return np.asarray(np.maximum((x > 0).astype(dy.dtype), dy.dtype.type(slope)) * dy)


def same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    ints = np.int32 if a.dtype == np.float32 else np.int64
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(a.view(ints)[~nan], b.view(ints)[~nan])


@pytest.mark.parametrize("version", ELTWISE_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("slope", SLOPES)
def test_leaky_relu_matches_numpy_bit_for_bit(version, dtype, shape, slope):
    x = _x(shape, dtype)
    dy = np.asarray(np.random.default_rng(1).standard_normal(shape)).astype(dtype)
    y_ref = numpy_forward(x, slope)
    if kernel_covers("leaky_relu_forward", version):
        y = np.full(shape, 7, dtype)
        call_version("leaky_relu_forward", version, x, y, slope)
        same_bits(y, y_ref)
    if kernel_covers("leaky_relu_backward", version):
        dx = np.full(shape, 7, dtype)
        call_version("leaky_relu_backward", version, y_ref, dy, dx, slope)
        same_bits(dx, numpy_backward(x, dy, slope))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fast_version_is_the_same_on_any_number_of_threads(threads):
    x = _x((5, CHUNK + 13), np.float32, seed=threads)
    dy = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    old = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        y, dx = np.empty_like(x), np.empty_like(x)
        _C.leaky_relu_forward(x, y, 0.2, version=1)
        _C.leaky_relu_backward(y, dy, dx, 0.2, version=1)
    finally:
        _C.set_num_threads(old)
    same_bits(y, numpy_forward(x, 0.2))
    same_bits(dx, numpy_backward(x, dy, 0.2))


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    for dtype in (np.float32, np.float64):
        x = _x((4, 8, 33, 17), dtype)
        dy = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = torch.nn.functional.leaky_relu(tx, 0.2)
        ty.backward(torch.from_numpy(dy))
        xt = Tensor(x, requires_grad=True)
        yt = F.leaky_relu(xt, 0.2)
        yt.backward(Tensor(dy))
        same_bits(yt.numpy(), ty.detach().numpy())
        same_bits(np.asarray(xt.grad), tx.grad.numpy())


def test_autograd_takes_the_kernels_and_its_gradient_checks():
    """F.leaky_relu on CPU float arrays runs the kernels (tallied), and its float64 gradient
    agrees with central finite differences (away from the kink at 0)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5
    backend.kernel_calls(reset=True)
    xt = Tensor(x, requires_grad=True)
    w = rng.standard_normal(x.shape)
    (F.leaky_relu(xt, 0.2) * Tensor(w)).sum().backward()
    calls = {k: c for (k, _), (c, _) in backend.kernel_calls().items()}
    assert calls.get("leaky_relu_forward", 0) >= 1 and calls.get("leaky_relu_backward", 0) >= 1
    eps = 1e-6
    num = np.empty_like(x)
    f = lambda a: float((np.maximum(a * 0.2, a) * w).sum())  # noqa: E731
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = (f(xp) - f(xm)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(xt.grad), num, rtol=1e-6, atol=1e-8)


def test_other_slopes_stay_in_numpy():
    """Slopes outside (0, 1] take the array module's general path, as before."""
    x = np.random.default_rng(5).standard_normal(10).astype(np.float32)
    for slope in (0.0, 1.5, -0.1):
        backend.kernel_calls(reset=True)
        y = F.leaky_relu(Tensor(x), slope).numpy()
        same_bits(y, x * np.where(x > 0, np.float32(1), np.float32(slope)))
        assert not any(k.startswith("leaky_relu") for k, _ in backend.kernel_calls())



def test_a_registered_version_is_chosen_and_checked():
    calls = []

    def mine(x, slope):
        calls.append(slope)
        return np.maximum(x * x.dtype.type(slope), x)

    backend.register_kernel("leaky_relu_forward", mine, name="mine_eltwise")
    try:
        x = _x((6,), np.float64)
        with kernels(leaky_relu_forward="mine_eltwise"):
            y = F.leaky_relu(Tensor(x), 0.2).numpy()
        assert calls == [0.2]
        same_bits(y, numpy_forward(x, 0.2))
        backend.register_kernel("leaky_relu_forward", lambda x, s: x[:1], name="mine_eltwise")
        with kernels(leaky_relu_forward="mine_eltwise"):
            with pytest.raises(ValueError, match="mine_eltwise"):
                F.leaky_relu(Tensor(x), 0.2)
    finally:
        backend.unregister_kernel("leaky_relu_forward", "mine_eltwise")


def _arrays(shape=(3, 4), dtype=np.float32):
    return (np.zeros(shape, dtype), np.zeros(shape, dtype), np.zeros(shape, dtype))


@pytest.mark.parametrize("slope, what", [(0.0, "(0, 1]"), (1.5, "(0, 1]"), (-0.2, "(0, 1]"),
                                         (float("nan"), "finite"), (float("inf"), "finite")])
def test_bad_slope_is_refused(slope, what):
    x, y, g = _arrays()
    with pytest.raises(ValueError, match="negative_slope") as e:
        _C.leaky_relu_forward(x, y, slope)
    assert what in str(e.value)
    with pytest.raises(ValueError, match="negative_slope"):
        _C.leaky_relu_backward(x, g, y, slope)
    with pytest.raises(ValueError, match="negative_slope"):
        backend.leaky_relu_forward(x, slope)


def test_bad_arrays_are_refused_by_name():
    x, y, g = _arrays()
    with pytest.raises(ValueError, match="dtype"):
        _C.leaky_relu_forward(x, y.astype(np.float64), 0.2)
    with pytest.raises(ValueError, match="shape"):
        _C.leaky_relu_forward(x, np.zeros((4, 3), np.float32), 0.2)
    with pytest.raises(ValueError, match="out"):
        _C.leaky_relu_forward(x, x, 0.2)                       # out overlaps x
    with pytest.raises(ValueError, match="grad_in"):
        _C.leaky_relu_backward(x, g, g, 0.2)                   # grad_in overlaps grad_out
    with pytest.raises(ValueError, match="x"):
        _C.leaky_relu_forward(np.zeros((4, 6), np.float32)[:, ::2], y, 0.2)
    ro = np.zeros((3, 4), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        _C.leaky_relu_forward(x, ro, 0.2)
    with pytest.raises(ValueError, match="int32|dtype"):
        _C.leaky_relu_forward(x.astype(np.int32), y, 0.2)
    with pytest.raises(TypeError, match="x"):
        _C.leaky_relu_forward(x.tolist(), y, 0.2)
    with pytest.raises(ValueError, match="eltwise version"):
        _C.leaky_relu_forward(x, y, 0.2, version=len(_C.versions()["eltwise"]))
    with pytest.raises(ValueError, match="eltwise version"):
        _C.leaky_relu_backward(x, g, y, 0.2, version=-2)
