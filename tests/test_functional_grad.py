"""Every differentiable operation's gradient against central finite differences (float64)."""
import numpy as np
import pytest

import gasca_core as gc
import gasca_core.functional as F
from gasca_core.testing import gradcheck
from gasca_core.tensor import Function


def T(rng, *shape, requires_grad=True, low=None):
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, low + 1.0, size=shape)
    return gc.Tensor(data, requires_grad=requires_grad)


def test_gradcheck_catches_a_wrong_backward(rng):
    class WrongSquare(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return (grad * x,)  # should be 2 x

    with pytest.raises(AssertionError, match="differ"):
        gradcheck(WrongSquare.apply, [T(rng, 3, 2)])


# Elementwise and broadcasting binary operations: (shape a, shape b).
BROADCAST_CASES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)), ((), (2, 2))]


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div])
@pytest.mark.parametrize("shapes", BROADCAST_CASES)
def test_binary_ops_with_broadcasting(op, shapes, rng):
    a = T(rng, *shapes[0])
    b = T(rng, *shapes[1], low=0.5) if op is F.div else T(rng, *shapes[1])
    assert op(a, b).shape == np.broadcast_shapes(*shapes)
    gradcheck(op, [a, b])


def test_operators_with_constants(rng):
    a = T(rng, 3, 2, low=0.5)
    gradcheck(lambda a: 2.0 - a * 3 + 1 / a - (-a) / 4.0 + a ** 2.5, [a])
    # A NumPy array on the left defers to the Tensor (no silent NumPy broadcasting).
    c = rng.standard_normal((3, 2))
    out = c + a
    assert isinstance(out, gc.Tensor)
    np.testing.assert_allclose(out.data, c + a.data)


@pytest.mark.parametrize("exponent", [2, 3.0, 0.5, -1.5])
def test_pow(exponent, rng):
    gradcheck(lambda x: F.pow(x, exponent), [T(rng, 4, 3, low=0.5)])


def test_matmul_and_linear(rng):
    gradcheck(F.matmul, [T(rng, 3, 4), T(rng, 4, 5)])
    gradcheck(F.linear, [T(rng, 6, 4), T(rng, 3, 4), T(rng, 3)])
    gradcheck(lambda x, w: F.linear(x, w), [T(rng, 2, 5, 4), T(rng, 3, 4)])
    x, w = T(rng, 6, 4), T(rng, 3, 4)
    np.testing.assert_allclose(F.linear(x, w).data, x.data @ w.data.T, atol=1e-12)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_sum_and_mean(dim, keepdim, rng):
    x = T(rng, 3, 4, 2)
    gradcheck(lambda x: F.sum(x, dim, keepdim), [x])
    gradcheck(lambda x: F.mean(x, dim, keepdim), [x])
    np.testing.assert_allclose(F.mean(x, dim, keepdim).data, x.data.mean(axis=dim, keepdims=keepdim))


def test_shape_ops(rng):
    x = T(rng, 2, 3, 4)
    gradcheck(lambda x: F.reshape(x, (4, -1)), [x])
    gradcheck(lambda x: x.flatten(1), [x])
    gradcheck(lambda x: x.permute(2, 0, 1), [x])
    gradcheck(lambda x: x.transpose(0, 2), [x])
    gradcheck(lambda x: x[0].T, [x])
    gradcheck(lambda x: x[1:, ::2, 1], [x])
    gradcheck(lambda x: x[np.array([0, 1, 0])], [x])  # repeated index: gradients add up
    gradcheck(lambda a, b: F.cat([a, b], dim=1), [T(rng, 2, 3), T(rng, 2, 5)])
    gradcheck(lambda a, b: F.stack([a, b], dim=1), [T(rng, 2, 3), T(rng, 2, 3)])


@pytest.mark.parametrize("fn", [
    F.relu, F.sigmoid, F.tanh, F.exp, F.abs,
    lambda x: F.leaky_relu(x, 0.2),
    lambda x: F.clamp(x, -0.5, 0.7),
])
def test_elementwise(fn, rng):
    # Keep away from the kinks at 0 (relu, leaky_relu, abs) and the clamp bounds.
    data = rng.standard_normal((4, 5))
    data = np.where(np.abs(data) < 0.05, 0.3, data)
    data = np.where(np.abs(data - 0.7) < 0.05, 0.3, data)
    data = np.where(np.abs(data + 0.5) < 0.05, 0.3, data)
    gradcheck(fn, [gc.Tensor(data, requires_grad=True)])


def test_log(rng):
    gradcheck(F.log, [T(rng, 3, 3, low=0.5)])


def test_sigmoid_is_stable_for_large_inputs():
    x = gc.Tensor(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.sigmoid(x)
        y.sum().backward()
    np.testing.assert_allclose(y.data, [0.0, 4.248354255291589e-18, 0.5, 1.0, 1.0], rtol=1e-12)
    assert np.all(np.isfinite(x.grad))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses(reduction, rng):
    x, y = T(rng, 3, 4), T(rng, 3, 4)
    gradcheck(lambda x, y: F.mse_loss(x, y, reduction=reduction), [x, y])
    diff = x.data - y.data
    diff = np.where(np.abs(diff) < 0.05, 0.5, diff)
    gradcheck(lambda x, y: F.l1_loss(x, y, reduction=reduction), [gc.Tensor(y.data + diff, requires_grad=True), y])
    target = gc.Tensor(rng.uniform(size=(3, 4)), requires_grad=True)
    weight = gc.Tensor(rng.uniform(0.5, 2.0, size=(4,)), requires_grad=True)
    gradcheck(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction), [x, target])
    gradcheck(lambda x, w: F.binary_cross_entropy_with_logits(x, target.data, w, reduction=reduction), [x, weight])
    labels = np.array([0, 2, 1])
    gradcheck(lambda x: F.cross_entropy(x, labels, reduction=reduction), [x])


def test_loss_values_match_their_definitions(rng):
    x, y = rng.standard_normal((5, 3)), rng.uniform(size=(5, 3))
    np.testing.assert_allclose(F.mse_loss(gc.Tensor(x), y).item(), np.mean((x - y) ** 2))
    np.testing.assert_allclose(F.l1_loss(gc.Tensor(x), y, reduction="sum").item(), np.sum(np.abs(x - y)))
    p = 1 / (1 + np.exp(-x))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(gc.Tensor(x), y, reduction="none").data, bce)
    labels = np.array([0, 2, 1, 1, 0])
    log_softmax = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(F.cross_entropy(gc.Tensor(x), labels).item(),
                               -log_softmax[np.arange(5), labels].mean())


def test_bce_with_logits_is_finite_and_exact_for_large_logits():
    x = gc.Tensor(np.array([-800.0, -50.0, 50.0, 800.0]), requires_grad=True)
    y = np.array([1.0, 0.0, 1.0, 0.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        loss.sum().backward()
    # -log sigmoid(-800) = 800; -log(1 - sigmoid(-50)) = log1p(e^-50); and so on.
    np.testing.assert_allclose(loss.data, [800.0, np.log1p(np.exp(-50)), np.log1p(np.exp(-50)), 800.0],
                               rtol=1e-12)
    np.testing.assert_allclose(x.grad, [-1.0, 0.0, 0.0, 1.0], atol=1e-15)
    gradcheck(lambda x: F.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0])),
              [gc.Tensor(np.array([-30.0, 30.0]), requires_grad=True)])


# Convolutions: (N, C_in, H, W), C_out, (KH, KW), stride, padding, dilation.
CONV_CASES = [
    ((2, 2, 5, 6), 3, (3, 3), 1, 0, 1),
    ((1, 3, 7, 5), 2, (3, 2), 2, 1, 1),
    ((2, 1, 8, 7), 2, (3, 3), (2, 1), (1, 2), (2, 1)),
    ((1, 2, 6, 6), 1, (1, 1), 3, 0, 1),
    ((1, 1, 9, 9), 2, (5, 5), 2, 2, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d(case, with_bias, rng):
    shape, c_out, k, stride, padding, dilation = case
    x, w = T(rng, *shape), T(rng, c_out, shape[1], *k)
    b = T(rng, c_out) if with_bias else None
    fn = lambda x, w, b=None: F.conv2d(x, w, b, stride, padding, dilation)  # noqa: E731
    gradcheck(fn, [x, w] + ([b] if with_bias else []))


# (N, C_in, H, W), C_out, (KH, KW), stride, padding, output_padding, dilation.
CONV_T_CASES = [
    ((2, 2, 4, 5), 3, (3, 3), 1, 0, 0, 1),
    ((1, 3, 3, 4), 2, (3, 2), 2, 1, 1, 1),
    ((2, 2, 4, 3), 1, (5, 5), 2, 2, 1, 1),
    ((1, 1, 3, 3), 2, (3, 3), (2, 3), (1, 0), (1, 2), (2, 1)),
    # stride <= output_padding < dilation (PyTorch's rule is op < max(stride, dilation)):
    # rectangular, on both axes, and on one axis only
    ((1, 2, 3, 4), 2, (3, 2), (1, 2), (1, 0), (1, 2), (2, 3)),
    ((2, 1, 4, 3), 3, (2, 3), (2, 1), (0, 1), (3, 0), (4, 1)),
]


@pytest.mark.parametrize("case", CONV_T_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_transpose2d(case, with_bias, rng):
    shape, c_out, k, stride, padding, output_padding, dilation = case
    x, w = T(rng, *shape), T(rng, shape[1], c_out, *k)
    b = T(rng, c_out) if with_bias else None
    fn = lambda x, w, b=None: F.conv_transpose2d(x, w, b, stride, padding, output_padding, 1, dilation)  # noqa: E731
    gradcheck(fn, [x, w] + ([b] if with_bias else []))


def test_conv_output_shapes_match_the_formulas(rng):
    x = gc.Tensor(rng.random((8, 1, 64, 64)).astype(np.float32))
    w = gc.Tensor(rng.standard_normal((4, 1, 5, 5)).astype(np.float32))
    y = F.conv2d(x, w, None, stride=2, padding=2)
    assert y.shape == (8, 4, 32, 32) and y.dtype == np.float32
    z = F.conv_transpose2d(y, gc.Tensor(rng.standard_normal((4, 1, 5, 5)).astype(np.float32)),
                           None, stride=2, padding=2, output_padding=1)
    assert z.shape == (8, 1, 64, 64)


@pytest.mark.parametrize("call,match", [
    (lambda x, w: F.conv2d(x.reshape(2, 5, 6), w), "4-D"),
    (lambda x, w: F.conv2d(x, w.permute(1, 0, 2, 3)), "channels"),
    (lambda x, w: F.conv2d(x, w, np.zeros(4)), "bias"),
    (lambda x, w: F.conv2d(x, w, stride=0), "stride"),
    (lambda x, w: F.conv2d(x, w, padding=-1), "padding"),
    (lambda x, w: F.conv2d(x, w, padding=(1, 2, 3)), "padding"),
    (lambda x, w: F.conv2d(x, gc.Tensor(np.zeros((3, 2, 7, 7)))), "output size"),
    (lambda x, w: F.conv2d(x, w.to(dtype=np.float32)), "dtype"),
    (lambda x, w: F.conv2d(x, w, groups=2), "groups"),
    (lambda x, w: F.conv_transpose2d(x, w.permute(1, 0, 2, 3), stride=2, output_padding=2), "output_padding"),
    (lambda x, w: F.conv_transpose2d(x, w), "channels"),
])
def test_conv_bad_arguments_raise_value_error(call, match, rng):
    x, w = T(rng, 1, 2, 5, 6), T(rng, 3, 2, 3, 3)
    with pytest.raises(ValueError, match=match):
        call(x, w)
