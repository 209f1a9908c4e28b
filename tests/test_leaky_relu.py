"""LeakyReLU's branch-free form (0 < slope <= 1) gives the floats of the plain formula
y = x * (1 if x > 0 else slope), dy = grad * (1 if x > 0 else slope), bit for bit, special
values included, and PyTorch's where it is installed; other slopes take the plain form."""
import numpy as np
import pytest

from gasca_core import functional as F
from gasca_core import no_grad
from gasca_core.tensor import Tensor
from gasca_core.testing import gradcheck

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.0e38, -3.0e38, 1e-310, -1e-310]
SLOPES = [0.2, 0.01, 1.0, 1e-30, 0.0, -0.5, 1.5]


def _case(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(500), SPECIAL]).astype(dtype)
    g = np.concatenate([rng.standard_normal(500), rng.standard_normal(len(SPECIAL))]).astype(dtype)
    return x, g


def _run(x, g, slope):
    xt = Tensor(x.copy(), requires_grad=True)
    y = F.leaky_relu(xt, slope)
    y.backward(g)
    return y.data, xt.grad


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", SLOPES)
def test_the_plain_formula_bit_for_bit(dtype, slope):
    x, g = _case(dtype)
    y, gx = _run(x, g, slope)
    s = np.where(x > 0, dtype(1), dtype(slope))
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_array_equal(y, x * s)
    np.testing.assert_array_equal(np.signbit(y), np.signbit(x * s))   # -0.0 stays -0.0
    np.testing.assert_array_equal(gx, g * s)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("slope", SLOPES)
def test_pytorch_bit_for_bit(torch, slope):
    x, g = _case(np.float32, seed=1)
    y, gx = _run(x, g, slope)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(tx, slope).backward(torch.tensor(g))
    np.testing.assert_array_equal(y, torch.nn.functional.leaky_relu(torch.tensor(x), slope).numpy())
    np.testing.assert_array_equal(gx, tx.grad.numpy())


def test_without_a_gradient_nothing_is_kept_and_the_values_agree():
    x, _ = _case(np.float32, seed=2)
    x = x[np.isfinite(x)]
    with no_grad():
        y = F.leaky_relu(Tensor(x, requires_grad=True), 0.2)
    assert not y.requires_grad and y._ctx is None
    plain = F.leaky_relu(Tensor(x), 0.2)
    np.testing.assert_array_equal(y.data, plain.data)


@pytest.mark.parametrize("slope", [0.2, 1.5])
def test_gradient_against_finite_differences(slope):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5       # keep away from the kink at 0
    assert gradcheck(lambda t: F.leaky_relu(t, slope), [Tensor(x, requires_grad=True)])
