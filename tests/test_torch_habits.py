"""PyTorch habits that students bring, run in gasca_core and in PyTorch side by side.

Where gasca_core uses a PyTorch name it uses PyTorch's meaning.  Each habit below is one
small call, written once and run on a gasca_core Tensor and on a torch.Tensor; values
and gradients must agree, and every gradient is also checked against float64 finite
differences.  Module names, state_dict keys and the losses' `reduction` are compared
with torch.nn's same layers.

Where gasca_core deliberately differs, the call raises a clear error instead of silently
doing something else (tests `test_deliberate_difference_raises` and below):
- `.T` of a tensor with more than 2 dims (PyTorch deprecates it there; it reverses every
  dim): use .mT or permute;
- max/min with NumPy's `axis=` (NumPy's max gives the values, PyTorch's max(dim) the pair
  (values, indices)), max(other) (PyTorch's elementwise maximum), and max(dim) with a
  tuple of dims;
- both spellings of one argument (dim= and axis=, keepdim= and keepdims=), and axis=()
  (NumPy reduces over no dim, PyTorch's dim=() over every dim);
- transpose with other than two dims (NumPy's transpose(*axes) is permute here),
  permute without dims, view(dtype);
- the losses' deprecated size_average / reduce (in PyTorch a reduction passed by position
  lands there and silently means 'mean'), and options not implemented: pos_weight, class
  weights, ignore_index other than -100 or a target equal to it, label_smoothing;
- inplace=True in ReLU / LeakyReLU (ours never write into their input);
- a Tensor as an index (`x[x > 0]`): ours hold floats, so a mask and a list of positions
  look alike; a NumPy mask or integer array indexes as in PyTorch.
Three documented differences give PyTorch's values and do not raise: argmax and the indices
of max(dim) are int64 arrays (NumPy, or CuPy on "cuda"), not Tensors, because our Tensors
hold floats only; comparisons (==, !=, <, <=, >, >=) are elementwise as in PyTorch but
give 1.0 / 0.0 in the tensor's dtype rather than bools, for the same reason; and view()
copies a tensor whose memory layout PyTorch's view refuses.

Tests that need PyTorch take the `torch` fixture (tests/conftest.py), which skips them
cleanly where it is not installed; the rest of the file runs regardless.
"""
import warnings

import numpy as np
import pytest

import gasca_core as gc
import gasca_core.functional as F
from gasca_core import nn
from gasca_core.models import GascaConfig, build_full
from gasca_core.tensor import Function
from gasca_core.testing import gradcheck

SHAPE = (3, 4, 5)

# Each habit: (how a student writes it, the same call for a gasca_core or a torch tensor).
HABITS = [
    ("x.sum()", lambda x: x.sum()),
    ("x.sum(dim=1)", lambda x: x.sum(dim=1)),
    ("x.sum(1, keepdim=True)", lambda x: x.sum(1, keepdim=True)),
    ("x.sum(-1)", lambda x: x.sum(-1)),
    ("x.sum(dim=(0, 2))", lambda x: x.sum(dim=(0, 2))),
    ("x.sum((-1, 0), keepdim=True)", lambda x: x.sum((-1, 0), keepdim=True)),
    ("x.sum(dim=[0, 1])", lambda x: x.sum(dim=[0, 1])),
    ("x.sum(dim=())", lambda x: x.sum(dim=())),                 # PyTorch: every dim
    ("x.sum(axis=1, keepdims=True)", lambda x: x.sum(axis=1, keepdims=True)),
    ("x.mean()", lambda x: x.mean()),
    ("x.mean(dim=-2)", lambda x: x.mean(dim=-2)),
    ("x.mean((0, 1), keepdim=True)", lambda x: x.mean((0, 1), keepdim=True)),
    ("x.mean(axis=2)", lambda x: x.mean(axis=2)),
    ("x.amax()", lambda x: x.amax()),
    ("x.amax(dim=1)", lambda x: x.amax(dim=1)),
    ("x.amax((0, -1), keepdim=True)", lambda x: x.amax((0, -1), keepdim=True)),
    ("x.amin(-1)", lambda x: x.amin(-1)),
    ("x.amin(dim=(0, 1))", lambda x: x.amin(dim=(0, 1))),
    ("x.max()", lambda x: x.max()),
    ("x.min()", lambda x: x.min()),
    ("x.max(dim=1).values", lambda x: x.max(dim=1).values),
    ("x.max(1)[0]", lambda x: x.max(1)[0]),
    ("x.max(np.int64(2)).values", lambda x: x.max(np.int64(2)).values),
    ("x.max(-1, keepdim=True).values", lambda x: x.max(-1, keepdim=True).values),
    ("values, _ = x.min(0)", lambda x: x.min(0)[0]),
    ("x.min(dim=2, keepdim=True).values", lambda x: x.min(dim=2, keepdim=True).values),
    ("x.transpose(0, 2)", lambda x: x.transpose(0, 2)),
    ("x.transpose(-1, 1)", lambda x: x.transpose(-1, 1)),
    ("x.transpose(1, 1)", lambda x: x.transpose(1, 1)),
    ("x[0].transpose(0, 1)", lambda x: x[0].transpose(0, 1)),  # used to return x[0] as it was
    ("x.permute(2, 0, 1)", lambda x: x.permute(2, 0, 1)),
    ("x.permute((1, 2, 0))", lambda x: x.permute((1, 2, 0))),
    ("x.permute([-1, 0, 1])", lambda x: x.permute([-1, 0, 1])),
    ("x.view(4, -1)", lambda x: x.view(4, -1)),
    ("x.view((3, 20))", lambda x: x.view((3, 20))),
    ("x.view(-1)", lambda x: x.view(-1)),
    ("x.reshape(5, 3, 4)", lambda x: x.reshape(5, 3, 4)),
    ("x.reshape((-1, 10))", lambda x: x.reshape((-1, 10))),
    ("x.flatten()", lambda x: x.flatten()),
    ("x.flatten(1)", lambda x: x.flatten(1)),
    ("x.flatten(0, 1)", lambda x: x.flatten(0, 1)),
    ("x.flatten(start_dim=-2)", lambda x: x.flatten(start_dim=-2)),
    ("x.flatten(1, -2)", lambda x: x.flatten(1, -2)),
    ("x[0].T", lambda x: x[0].T),
    ("x[0, 0].T", lambda x: x[0, 0].T),                        # 1-D: as it is
    ("x.mT", lambda x: x.mT),
    ("x.unsqueeze(0)", lambda x: x.unsqueeze(0)),
    ("x.unsqueeze(-1)", lambda x: x.unsqueeze(-1)),
    ("x.unsqueeze(2)", lambda x: x.unsqueeze(2)),
    ("x[:, :1].squeeze()", lambda x: x[:, :1].squeeze()),
    ("x[:, :1].squeeze(1)", lambda x: x[:, :1].squeeze(1)),
    ("x.squeeze(0)", lambda x: x.squeeze(0)),                  # size 3: left alone
    ("x[:1, :, :1].squeeze((0, 2))", lambda x: x[:1, :, :1].squeeze((0, 2))),
    ("x.transpose(1, 2).reshape(3, -1)", lambda x: x.transpose(1, 2).reshape(3, -1)),
    ("x.permute(2, 0, 1).contiguous().view(5, -1)", lambda x: x.permute(2, 0, 1).contiguous().view(5, -1)),
    ("x.sum(1).max(dim=-1).values.mean()", lambda x: x.sum(1).max(dim=-1).values.mean()),
]
HABIT_IDS = [h[0] for h in HABITS]

# A 0-D tensor: PyTorch accepts dim 0 and -1 and has nothing to reduce or swap.
SCALAR_HABITS = [
    ("s.sum(0)", lambda s: s.sum(0)),
    ("s.sum(-1, keepdim=True)", lambda s: s.sum(-1, keepdim=True)),
    ("s.mean(0)", lambda s: s.mean(0)),
    ("s.amax(0)", lambda s: s.amax(0)),
    ("s.max(0).values", lambda s: s.max(0).values),
    ("s.max()", lambda s: s.max()),
    ("s.T", lambda s: s.T),
    ("s.flatten()", lambda s: s.flatten()),
    ("s.reshape(1, 1)", lambda s: s.reshape(1, 1)),
    ("s.unsqueeze(0)", lambda s: s.unsqueeze(0)),
    ("s.squeeze(0)", lambda s: s.squeeze(0)),
    ("s.transpose(0, -1)", lambda s: s.transpose(0, -1)),
    ("s.permute(())", lambda s: s.permute(())),
]


def _data(rng, shape=SHAPE):
    return rng.standard_normal(shape)


def _run_torch(fn, *args):
    with warnings.catch_warnings():  # PyTorch warns about .T on a 1-D tensor
        warnings.simplefilter("ignore")
        return fn(*args)


def _same_values_and_grads(torch, fn, arrays, rng):
    """fn on gasca_core tensors and on torch tensors: equal values, equal gradients."""
    ours = [gc.Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = fn(*ours), _run_torch(fn, *theirs)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.asarray(rng.standard_normal(y.shape))
    y.backward(g)
    ty.backward(torch.tensor(g))
    for i, (m, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=f"input {i}")


# ----------------------------------------------------------------------------- tensor habits

@pytest.mark.parametrize("fn", [h[1] for h in HABITS], ids=HABIT_IDS)
def test_habit_matches_torch(fn, torch, rng):
    _same_values_and_grads(torch, fn, [_data(rng)], rng)


@pytest.mark.parametrize("fn", [h[1] for h in HABITS], ids=HABIT_IDS)
def test_habit_gradient_matches_finite_differences(fn, rng):
    gradcheck(fn, [gc.Tensor(_data(rng), requires_grad=True)])


@pytest.mark.parametrize("fn", [h[1] for h in SCALAR_HABITS], ids=[h[0] for h in SCALAR_HABITS])
def test_habit_on_a_0d_tensor_matches_torch(fn, torch, rng):
    _same_values_and_grads(torch, fn, [np.array(1.5)], rng)


@pytest.mark.parametrize("fn", [h[1] for h in SCALAR_HABITS], ids=[h[0] for h in SCALAR_HABITS])
def test_habit_on_a_0d_tensor_gradient(fn):
    gradcheck(fn, [gc.Tensor(np.array(1.5), requires_grad=True)])


TIES = np.array([[1.0, 3.0, 3.0, -2.0], [2.0, 2.0, 0.0, 2.0], [-1.0, -1.0, -1.0, -1.0]])


@pytest.mark.parametrize("fn", [
    lambda x: x.amax(dim=1), lambda x: x.amin(0), lambda x: x.amax(), lambda x: x.max(),
    lambda x: x.min(), lambda x: x.max(dim=1).values, lambda x: x.min(-1, keepdim=True).values,
    lambda x: x.max(0).values,
], ids=["amax(1)", "amin(0)", "amax()", "max()", "min()", "max(1)", "min(-1, keepdim)", "max(0)"])
def test_ties_share_or_pick_the_gradient_as_torch(fn, torch, rng):
    """amax/amin and max()/min() share the gradient among tied entries; max(dim) and
    min(dim) give it all to the first index, as PyTorch does."""
    _same_values_and_grads(torch, fn, [TIES], rng)


@pytest.mark.parametrize("fn", [
    lambda x: x.argmax(), lambda x: x.argmax(1), lambda x: x.argmax(-1, keepdim=True),
    lambda x: x.argmin(dim=0), lambda x: x.argmax(dim=None, keepdim=True), lambda x: x.argmin(),
    lambda x: x.max(1).indices, lambda x: x.min(-1, keepdim=True).indices, lambda x: x.max(dim=0)[1],
], ids=["argmax()", "argmax(1)", "argmax(-1, keepdim)", "argmin(dim=0)", "argmax(None, keepdim)",
        "argmin()", "max(1).indices", "min(-1, keepdim).indices", "max(dim=0)[1]"])
@pytest.mark.parametrize("data", [TIES, np.random.default_rng(7).standard_normal((3, 4))], ids=["ties", "random"])
def test_indices_match_torch_as_int64_arrays(fn, data, torch):
    """Documented difference: indices are int64 arrays, not Tensors (ours hold floats)."""
    mine, theirs = fn(gc.Tensor(data)), fn(torch.tensor(data))
    assert isinstance(mine, np.ndarray) and mine.dtype == np.int64
    assert mine.shape == tuple(theirs.shape)
    np.testing.assert_array_equal(mine, theirs.numpy())


def test_max_with_dim_is_a_named_pair():
    x = gc.Tensor(TIES)
    values, indices = x.max(dim=1)
    pair = x.max(1)
    assert pair.values.shape == (3,) and pair[0].shape == (3,) and pair[1] is pair.indices
    np.testing.assert_array_equal(values.data, [3.0, 2.0, -1.0])
    np.testing.assert_array_equal(indices, [1, 0, 0])


def test_size_numel_dim_and_conversions_match_torch(torch):
    x, tx = gc.Tensor(np.ones(SHAPE)), torch.ones(SHAPE)
    assert x.size() == tuple(tx.size()) and x.size(-1) == tx.size(-1) == 5 and x.size(0) == 3
    assert x.numel() == tx.numel() and x.dim() == tx.dim() and len(x) == len(tx)
    s, ts = gc.Tensor(np.array(2.5)), torch.tensor(2.5)
    assert float(s) == float(ts) and int(s) == int(ts) and bool(s) == bool(ts)
    assert bool(gc.Tensor([0.0])) is False
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x)
    with pytest.raises(RuntimeError):
        bool(tx)
    with pytest.raises(IndexError):
        x.size(3)


@pytest.mark.parametrize("fn,tfn", [
    (lambda a, b: F.cat([a, b], dim=1), lambda t, a, b: t.cat([a, b], dim=1)),
    (lambda a, b: F.cat([a, b], -1), lambda t, a, b: t.cat([a, b], -1)),
    (lambda a, b: F.cat([a, b]), lambda t, a, b: t.cat([a, b])),
    (lambda a, b: F.cat((a, b), axis=0), lambda t, a, b: t.cat((a, b), dim=0)),
], ids=["cat(dim=1)", "cat(-1)", "cat()", "cat(axis=0)"])
def test_cat_matches_torch(fn, tfn, torch, rng):
    _same_values_and_grads(torch, lambda a, b: fn(a, b) if isinstance(a, gc.Tensor) else tfn(torch, a, b),
                           [_data(rng, (2, 3)), _data(rng, (2, 3))], rng)
    gradcheck(fn, [gc.Tensor(_data(rng, (2, 3)), requires_grad=True), gc.Tensor(_data(rng, (2, 3)), requires_grad=True)])


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack_matches_torch(dim, torch, rng):
    _same_values_and_grads(
        torch, lambda a, b: F.stack([a, b], dim=dim) if isinstance(a, gc.Tensor) else torch.stack([a, b], dim=dim),
        [_data(rng, (2, 3)), _data(rng, (2, 3))], rng)
    gradcheck(lambda a, b: F.stack([a, b], dim), [gc.Tensor(_data(rng, (2, 3)), requires_grad=True),
                                                  gc.Tensor(_data(rng, (2, 3)), requires_grad=True)])


def test_functional_spellings_match_the_methods(rng):
    x = gc.Tensor(_data(rng))
    pairs = [
        (F.sum(x, 1, True), x.sum(dim=1, keepdim=True)), (F.mean(x, dim=(0, 2)), x.mean((0, 2))),
        (F.amax(x, -1), x.amax(-1)), (F.amin(x, axis=0), x.amin(0)),
        (F.transpose(x, 0, 1), x.transpose(0, 1)), (F.permute(x, (2, 1, 0)), x.permute(2, 1, 0)),
        (F.reshape(x, (12, 5)), x.view(12, 5)), (F.flatten(x, 1), x.flatten(1)),
        (F.squeeze(x[:1], 0), x[0]), (F.unsqueeze(x, 1), x.unsqueeze(1)),
        (F.max_or_min("max", x, 1).values, x.amax(1)),
    ]
    for a, b in pairs:
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(F.argmax(x, 1), x.argmax(dim=1))


@pytest.mark.parametrize("call", [
    lambda x: x.sum(3), lambda x: x.mean(-4), lambda x: x.amax((0, 3)), lambda x: x.argmax(5),
    lambda x: x.max(3), lambda x: x.transpose(0, 3), lambda x: x.permute(0, 1, 3),
    lambda x: x.flatten(3), lambda x: x.flatten(0, -4), lambda x: x.unsqueeze(4),
    lambda x: x.unsqueeze(-5), lambda x: x.squeeze(3),
], ids=["sum(3)", "mean(-4)", "amax((0, 3))", "argmax(5)", "max(3)", "transpose(0, 3)",
        "permute(0, 1, 3)", "flatten(3)", "flatten(0, -4)", "unsqueeze(4)", "unsqueeze(-5)", "squeeze(3)"])
def test_dim_out_of_range_raises_index_error_as_torch(call, torch):
    """Out-of-range dims used to wrap around silently in permute and flatten."""
    with pytest.raises(IndexError, match="out of range"):
        call(gc.Tensor(np.ones(SHAPE)))
    with pytest.raises(IndexError):
        call(torch.ones(SHAPE))


@pytest.mark.parametrize("call", [
    lambda x: x.sum((0, 0)), lambda x: x.mean((1, -2)), lambda x: x.amax([2, 2]),
    lambda x: x.permute(0, 0, 1), lambda x: x.permute(0, 1), lambda x: x.flatten(2, 1),
], ids=["sum((0, 0))", "mean((1, -2))", "amax([2, 2])", "permute(0, 0, 1)", "permute(0, 1)", "flatten(2, 1)"])
def test_repeated_or_missing_dims_raise_as_torch(call, torch):
    """A dim named twice used to be dropped silently by sum and mean."""
    with pytest.raises(ValueError):
        call(gc.Tensor(np.ones(SHAPE)))
    with pytest.raises(RuntimeError):
        call(torch.ones(SHAPE))


# ----------------------------------------------------------------------------- where we differ

@pytest.mark.parametrize("call,error,match", [
    (lambda x: x.T, RuntimeError, r"\.mT"),
    (lambda x: x.max(axis=1), TypeError, "amax"),
    (lambda x: x.min(axis=0, keepdims=True), TypeError, "amin"),
    (lambda x: x.max(x), TypeError, "elementwise"),
    (lambda x: x.max((0, 1)), TypeError, "amax"),
    (lambda x: x.max(dim=None), TypeError, "leave it out"),
    (lambda x: x.max(keepdim=True), TypeError, "needs a dim"),
    (lambda x: x.sum(dim=1, axis=1), TypeError, "both"),
    (lambda x: x.mean(1, keepdim=True, keepdims=True), TypeError, "both"),
    (lambda x: F.cat([x, x], dim=0, axis=0), TypeError, "both"),
    (lambda x: x.amax(axis=()), ValueError, "dim=None"),
    (lambda x: x.transpose(), TypeError, "permute"),
    (lambda x: x.transpose(2, 0, 1), TypeError, "permute"),
    (lambda x: F.permute(x, None), TypeError, "dims is required"),
    (lambda x: x.view(np.float64), TypeError, r"view\(dtype\)"),
    (lambda x: x.view("float32"), TypeError, r"view\(dtype\)"),
    (lambda x: x.reshape(2.5, -1), TypeError, "ints"),
    (lambda x: F.reshape(x, (2.9, -1)), TypeError, "ints"),
    (lambda x: x[0, 0].mT, RuntimeError, "at least 2 dims"),
    (lambda x: x.argmax(dim=(0, 1)), TypeError, "one int"),
], ids=["T of 3-D", "max(axis)", "min(axis)", "max(other)", "max(tuple)", "max(dim=None)",
        "max(keepdim) without dim", "dim and axis", "keepdim and keepdims", "cat dim and axis",
        "axis=()", "transpose()", "transpose(2, 0, 1)", "permute(None)", "view(np.float64)",
        "view('float32')", "reshape(2.5)", "F.reshape((2.9, -1))", "mT of 1-D", "argmax(tuple)"])
def test_deliberate_difference_raises(call, error, match):
    with pytest.raises(error, match=match):
        call(gc.Tensor(np.ones(SHAPE)))


def test_what_torch_does_instead_of_the_calls_we_refuse(torch):
    """The reason each refusal above exists: PyTorch (or NumPy) would give another result."""
    x = torch.ones(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tuple(x.T.shape) == (5, 4, 3)                # every dim reversed
    assert isinstance(x.max(axis=1), tuple)                 # (values, indices), not NumPy's values
    assert tuple(x.sum(dim=()).shape) == ()                 # dim=(): every dim...
    assert np.ones(SHAPE).sum(axis=()).shape == SHAPE       # ...axis=() in NumPy: none
    assert np.ones((2, 3)).transpose(0, 1).shape == (2, 3)  # NumPy: an axis order, not a swap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = torch.nn.functional.mse_loss(torch.zeros(4), torch.ones(4), "sum")
    assert loss.item() == 1.0                               # positional "sum" meant 'mean'


def test_view_copies_where_torch_refuses(torch, rng):
    """Documented difference: view of a non-contiguous tensor works (values as reshape)."""
    data = _data(rng)
    mine = gc.Tensor(data).transpose(0, 2).view(-1)
    with pytest.raises(RuntimeError, match="view"):
        torch.tensor(data).transpose(0, 2).view(-1)
    np.testing.assert_array_equal(mine.data, torch.tensor(data).transpose(0, 2).reshape(-1).numpy())


# ----------------------------------------------------------------------------- custom Functions

def _cube(base):
    """The same custom Function source for gasca_core.Function and torch.autograd.Function."""

    class Cube(base):
        @staticmethod
        def forward(ctx, x, scale):
            ctx.save_for_backward(x, None)
            ctx.scale = scale
            return scale * x ** 3

        @staticmethod
        def backward(ctx, grad):
            x, nothing = ctx.saved_tensors
            assert nothing is None
            return 3 * ctx.scale * x ** 2 * grad, None

    return Cube


def _mul_add(base):
    class MulAdd(base):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b + a

        @staticmethod
        def backward(ctx, grad):
            a, b = ctx.saved_tensors
            ga = grad * (b + 1) if ctx.needs_input_grad[0] else None
            gb = grad * a if ctx.needs_input_grad[1] else None
            return ga, gb

    return MulAdd


def test_save_for_backward_and_saved_tensors_as_in_torch(torch, rng):
    cube, tcube = _cube(Function), _cube(torch.autograd.Function)
    _same_values_and_grads(torch, lambda x: (cube if isinstance(x, gc.Tensor) else tcube).apply(x, 0.5),
                           [_data(rng)], rng)
    mul_add, tmul_add = _mul_add(Function), _mul_add(torch.autograd.Function)
    _same_values_and_grads(torch, lambda a, b: (mul_add if isinstance(a, gc.Tensor) else tmul_add).apply(a, b),
                           [_data(rng), _data(rng)], rng)
    # needs_input_grad: b does not require grad in either library.
    a, b = gc.Tensor(_data(rng), requires_grad=True), gc.Tensor(_data(rng))
    ta, tb = torch.tensor(a.data, requires_grad=True), torch.tensor(b.data)
    y, ty = mul_add.apply(a, b), tmul_add.apply(ta, tb)
    assert y._ctx.needs_input_grad == ty.grad_fn.needs_input_grad == (True, False)


def test_custom_function_gradients_match_finite_differences(rng):
    gradcheck(lambda x: _cube(Function).apply(x, 0.5), [gc.Tensor(_data(rng), requires_grad=True)])
    gradcheck(_mul_add(Function).apply, [gc.Tensor(_data(rng), requires_grad=True),
                                         gc.Tensor(_data(rng), requires_grad=True)])


def test_saved_is_the_older_name_of_saved_tensors_and_tensors_are_saved_as_arrays():
    class Keep(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x, gc.Tensor(np.ones(2)))
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            assert ctx.saved is ctx.saved_tensors
            assert all(isinstance(s, np.ndarray) for s in ctx.saved_tensors)
            return grad * 2

    x = gc.Tensor(np.ones(2), requires_grad=True)
    Keep.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_save_for_backward_refuses_non_arrays_as_torch():
    class SavesANumber(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(3)
            return x

    with pytest.raises(TypeError, match=r"ctx\.name = value"):
        SavesANumber.apply(gc.Tensor(np.ones(2), requires_grad=True))


def test_saved_tensors_of_a_freed_graph_raise_as_torch():
    cube = _cube(Function)
    x = gc.Tensor(np.ones(3), requires_grad=True)
    y = cube.apply(x, 1.0)
    ctx = y._ctx
    y.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        ctx.saved_tensors


@pytest.mark.parametrize("returned,ok", [
    (lambda g: g, False),                       # one gradient for two inputs
    (lambda g: (g, g, None, None), True),       # extra trailing Nones pass, as in PyTorch
    (lambda g: (g, g, g), False),               # an extra gradient does not
])
def test_backward_must_return_one_gradient_per_input(returned, ok):
    class Product(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a * b

        @staticmethod
        def backward(ctx, grad):
            return returned(grad)

    a, b = gc.Tensor(np.ones(2), requires_grad=True), gc.Tensor(np.ones(2), requires_grad=True)
    if ok:
        Product.apply(a, b).sum().backward()
        np.testing.assert_array_equal(b.grad, [1.0, 1.0])
    else:
        with pytest.raises(RuntimeError, match="expected 2"):
            Product.apply(a, b).sum().backward()


# ----------------------------------------------------------------------------- nn names

# Each layer: (id, constructor given an nn namespace, input shape for a forward or None).
LAYERS = [
    ("Linear", lambda nn: nn.Linear(4, 3), (2, 4)),
    ("Linear(bias=False)", lambda nn: nn.Linear(4, 3, bias=False), (2, 4)),
    ("Conv2d", lambda nn: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6)),
    ("Conv2d rectangular dilated, no bias",
     lambda nn: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False), (1, 2, 7, 6)),
    ("ConvTranspose2d", lambda nn: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5)),
    ("ConvTranspose2d(bias=False)", lambda nn: nn.ConvTranspose2d(3, 2, (5, 3), stride=2, bias=False), (1, 3, 3, 3)),
    ("LeakyReLU(0.2)", lambda nn: nn.LeakyReLU(0.2), (2, 5)),
    ("LeakyReLU(negative_slope=0.05)", lambda nn: nn.LeakyReLU(negative_slope=0.05), (2, 5)),
    ("LeakyReLU()", lambda nn: nn.LeakyReLU(), (2, 5)),
    ("ReLU()", lambda nn: nn.ReLU(), (2, 5)),
    ("ReLU(inplace=False)", lambda nn: nn.ReLU(inplace=False), (2, 5)),
    ("Sigmoid", lambda nn: nn.Sigmoid(), (2, 5)),
    ("Tanh", lambda nn: nn.Tanh(), (2, 5)),
    ("Identity(7, unused=1)", lambda nn: nn.Identity(7, unused=1), (2, 5)),
    ("Flatten()", lambda nn: nn.Flatten(), (2, 3, 4, 5)),
    ("Flatten(0, 2)", lambda nn: nn.Flatten(0, 2), (2, 3, 4, 5)),
    ("Flatten(start_dim=2)", lambda nn: nn.Flatten(start_dim=2), (2, 3, 4, 5)),
    ("Sequential", lambda nn: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(),
                                            nn.Linear(2 * 6 * 6, 1)), (2, 1, 6, 6)),
    ("Sequential of Sequentials", lambda nn: nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 5, stride=2, padding=2), nn.LeakyReLU(0.2)),
        nn.Sequential(nn.ConvTranspose2d(2, 1, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid())),
     (2, 1, 8, 6)),
    ("ModuleList", lambda nn: nn.ModuleList([nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)]), None),
    ("MSELoss()", lambda nn: nn.MSELoss(), None),
    ("L1Loss(reduction='sum')", lambda nn: nn.L1Loss(reduction="sum"), None),
    ("BCEWithLogitsLoss(reduction='none')", lambda nn: nn.BCEWithLogitsLoss(reduction="none"), None),
    ("CrossEntropyLoss()", lambda nn: nn.CrossEntropyLoss(), None),
]
CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "transposed", "output_padding", "groups")
LOSS = ("reduction",)
ATTRIBUTES = {  # the constructor arguments each layer keeps, under PyTorch's names
    "Linear": ("in_features", "out_features"), "Conv2d": CONV,
    "ConvTranspose2d": CONV, "LeakyReLU": ("negative_slope", "inplace"),
    "ReLU": ("inplace",), "Flatten": ("start_dim", "end_dim"), "MSELoss": LOSS, "L1Loss": LOSS,
    "BCEWithLogitsLoss": LOSS, "CrossEntropyLoss": LOSS + ("ignore_index", "label_smoothing"),
}


def _names(module):
    return {
        "type": type(module).__name__,
        "modules": [n for n, _ in module.named_modules()],
        "children": [n for n, _ in module.named_children()],
        "parameters": [(n, tuple(p.shape)) for n, p in module.named_parameters()],
        "state_dict": [(k, tuple(v.shape)) for k, v in module.state_dict().items()],
    }


@pytest.mark.parametrize("make,shape", [(m, s) for _, m, s in LAYERS], ids=[i for i, _, _ in LAYERS])
def test_module_names_state_dict_and_forward_match_torch_nn(make, shape, torch, rng):
    ours, theirs = make(nn), make(torch.nn)
    assert _names(ours) == _names(theirs)
    assert ours.training == theirs.training
    for attr in ATTRIBUTES.get(type(theirs).__name__, ()):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    if shape is None:
        return
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = _data(rng, shape).astype(np.float32)
    np.testing.assert_allclose(ours(gc.Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_loss_weight_is_a_buffer_as_in_torch(torch):
    w = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    ours, theirs = nn.BCEWithLogitsLoss(weight=w), torch.nn.BCEWithLogitsLoss(weight=torch.tensor(w))
    assert _names(ours) == _names(theirs)
    x, y = np.random.default_rng(3).standard_normal((4, 3)), np.random.default_rng(4).uniform(size=(4, 3))
    np.testing.assert_allclose(ours(gc.Tensor(x.astype(np.float32)), y.astype(np.float32)).item(),
                               theirs(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)).item(),
                               rtol=1e-6)


LOSS_NAMES = ["_Loss", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


def test_loss_classes_are_related_as_in_torch(torch):
    """L1Loss and CrossEntropyLoss used to subclass MSELoss."""
    for a in LOSS_NAMES:
        for b in LOSS_NAMES:
            ours = issubclass(getattr(nn, a), getattr(nn, b))
            theirs = issubclass(getattr(torch.nn.modules.loss, a), getattr(torch.nn.modules.loss, b))
            assert ours == theirs, (a, b)
    assert not isinstance(nn.L1Loss(), nn.MSELoss) and not isinstance(nn.CrossEntropyLoss(), nn.MSELoss)
    assert all(isinstance(m, nn._Loss) for m in (nn.MSELoss(), nn.L1Loss(), nn.BCEWithLogitsLoss(),
                                                 nn.CrossEntropyLoss()))


def _loss_inputs(name, rng):
    if name == "CrossEntropyLoss":
        return rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    if name == "BCEWithLogitsLoss":
        return rng.standard_normal((5, 4)) * 3, rng.uniform(size=(5, 4))
    return rng.standard_normal((5, 4)), rng.standard_normal((5, 4))


@pytest.mark.parametrize("name", LOSS_NAMES[1:])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_modules_and_functions_reduce_as_torch(name, reduction, torch, rng):
    x, target = _loss_inputs(name, rng)
    functional = {"MSELoss": "mse_loss", "L1Loss": "l1_loss", "CrossEntropyLoss": "cross_entropy",
                  "BCEWithLogitsLoss": "binary_cross_entropy_with_logits"}[name]
    module, tmodule = getattr(nn, name)(reduction=reduction), getattr(torch.nn, name)(reduction=reduction)
    assert module.reduction == tmodule.reduction == reduction
    t_target = torch.tensor(target)
    for ours_fn, theirs_fn in [
        (lambda a: module(a, target), lambda a: tmodule(a, t_target)),
        (lambda a: getattr(F, functional)(a, target, reduction=reduction),
         lambda a: getattr(torch.nn.functional, functional)(a, t_target, reduction=reduction)),
    ]:
        _same_values_and_grads(torch, lambda a: ours_fn(a) if isinstance(a, gc.Tensor) else theirs_fn(a), [x], rng)
    gradcheck(lambda a: module(a, target), [gc.Tensor(x, requires_grad=True)])


@pytest.mark.parametrize("call,match", [
    (lambda x, y: F.mse_loss(x, y, "sum"), "by name"),
    (lambda x, y: F.l1_loss(x, y, True, None), "size_average"),
    (lambda x, y: F.mse_loss(x, y, reduce=False), "reduce"),
    (lambda x, y: F.mse_loss(x, y, weight=y), "weight"),
    (lambda x, y: F.binary_cross_entropy_with_logits(x, y, None, "sum"), "by name"),
    (lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=y), "pos_weight"),
    (lambda x, y: F.cross_entropy(x, np.zeros(5, int), np.ones(4)), "weight"),
    (lambda x, y: F.cross_entropy(x, np.zeros(5, int), ignore_index=0), "ignore_index"),
    (lambda x, y: F.cross_entropy(x, np.array([0, 1, -100, 2, 3])), "ignore_index"),
    (lambda x, y: F.cross_entropy(x, np.zeros(5, int), label_smoothing=0.1), "label_smoothing"),
    (lambda x, y: F.relu(x, inplace=True), "inplace"),
    (lambda x, y: F.leaky_relu(x, 0.2, True), "inplace"),
    (lambda x, y: nn.MSELoss("sum"), "by name"),
    (lambda x, y: nn.L1Loss(reduce=False), "reduce"),
    (lambda x, y: nn.BCEWithLogitsLoss(pos_weight=np.ones(4)), "pos_weight"),
    (lambda x, y: nn.CrossEntropyLoss(np.ones(4)), "weight"),
    (lambda x, y: nn.CrossEntropyLoss(ignore_index=0), "ignore_index"),
    (lambda x, y: nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing"),
    (lambda x, y: nn.ReLU(inplace=True), "inplace"),
    (lambda x, y: nn.LeakyReLU(0.2, True), "inplace"),
], ids=["F.mse_loss(x, y, 'sum')", "l1 size_average", "mse reduce", "mse weight", "bce positional reduction",
        "bce pos_weight", "ce weight", "ce ignore_index", "ce target -100", "ce label_smoothing",
        "F.relu inplace", "F.leaky_relu inplace", "MSELoss('sum')", "L1Loss(reduce)", "BCE pos_weight",
        "CrossEntropyLoss(weight)", "CE ignore_index", "CE label_smoothing", "ReLU(inplace)", "LeakyReLU(inplace)"])
def test_unsupported_torch_options_raise(call, match, rng):
    x, y = gc.Tensor(rng.standard_normal((5, 4))), rng.uniform(size=(5, 4))
    with pytest.raises(ValueError, match=match):
        call(x, y)


# ----------------------------------------------------------------------------- GASCA's own keys

def test_gasca_state_dict_keys_are_unchanged():
    """Checkpoints store these keys; they must keep loading (PyTorch's naming already)."""
    g, d = build_full(GascaConfig(channels=[4, 8], kernel_sizes=[5, 3], image_size=16), seed=0)
    assert list(g.state_dict()) == [
        f"levels.{i}.{part}.0.{p}" for i in (0, 1) for part in ("encoder", "decoder") for p in ("weight", "bias")]
    assert list(d.state_dict()) == [
        "convs.0.0.weight", "convs.0.0.bias", "convs.1.0.weight", "convs.1.0.bias", "head.1.weight", "head.1.bias"]


def test_gasca_generator_loads_a_torch_mirror_state_dict(torch, rng):
    """A PyTorch model laid out as ours (nn.Sequential of levels, each encoder/decoder a
    Sequential) loads into G strictly and computes the same reconstruction."""
    config = GascaConfig(channels=[4, 8], kernel_sizes=[5, 3], image_size=16)
    g, _ = build_full(config, seed=0)
    tnn = torch.nn

    class Level(tnn.Module):
        def __init__(self, c_in, c_out, k, last):
            super().__init__()
            self.encoder = tnn.Sequential(tnn.Conv2d(c_in, c_out, k, 2, k // 2), tnn.LeakyReLU(0.2))
            self.decoder = tnn.Sequential(tnn.ConvTranspose2d(c_out, c_in, k, 2, k // 2, 1),
                                          tnn.Sigmoid() if last else tnn.LeakyReLU(0.2))

    class Mirror(tnn.Module):
        def __init__(self):
            super().__init__()
            self.levels = tnn.Sequential(Level(1, 4, 5, True), Level(4, 8, 3, False))

        def forward(self, x):
            for level in self.levels:
                x = level.encoder(x)
            for level in reversed(self.levels):
                x = level.decoder(x)
            return x

    mirror = Mirror()
    assert [(k, tuple(v.shape)) for k, v in mirror.state_dict().items()] == \
           [(k, v.shape) for k, v in g.state_dict().items()]
    g.load_state_dict({k: v.detach().numpy() for k, v in mirror.state_dict().items()})
    x = rng.random((2, 1, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(g(gc.Tensor(x)).data, mirror(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons_are_elementwise_as_torch(op, torch, rng):
    """`t == 0`, `pred == target`, `t > 0.5`: elementwise, as in PyTorch (ours give 1.0 /
    0.0 in the tensor's dtype where PyTorch gives bools), with no gradient."""
    import operator
    a = np.round(rng.standard_normal((3, 4)), 1).astype(np.float32)
    b = a.copy()
    b[0, :2] += 1.0
    fn = getattr(operator, op)
    ours_t = fn(gc.Tensor(a, requires_grad=True), gc.Tensor(b))
    theirs_t = fn(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_array_equal(ours_t.numpy(), theirs_t.float().numpy())
    assert ours_t.dtype == np.float32 and not ours_t.requires_grad
    np.testing.assert_array_equal(fn(gc.Tensor(a), 0.0).numpy(),
                                  fn(torch.from_numpy(a), 0.0).float().numpy())
    assert float((gc.Tensor(a) == gc.Tensor(b)).mean()) == \
        float((torch.from_numpy(a) == torch.from_numpy(b)).float().mean())


def test_tensors_are_hashed_by_identity_and_one_element_comparisons_are_truthy():
    a, b = gc.Tensor(np.ones(3)), gc.Tensor(np.ones(3))
    keys = {a: "a", b: "b"}
    assert keys[a] == "a" and keys[b] == "b"
    assert a in [a] and bool(gc.Tensor(np.array([2.0])) == 2.0)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(a == b)  # as in PyTorch: a many-element comparison has no single truth value


def test_a_tensor_index_is_refused_and_numpy_masks_index_as_torch(torch, rng):
    a = rng.standard_normal((4, 3)).astype(np.float32)
    x = gc.Tensor(a, requires_grad=True)
    with pytest.raises(TypeError, match="NumPy array"):
        x[x > 0]
    with pytest.raises(TypeError, match="NumPy array"):
        x[0, gc.Tensor(np.array([1.0]))]
    mask = a > 0
    np.testing.assert_array_equal(x[mask].numpy(), torch.from_numpy(a)[torch.from_numpy(mask)].numpy())
    rows = np.array([2, 0, 2])
    x[rows].sum().backward()
    t = torch.from_numpy(a).requires_grad_()
    t[torch.from_numpy(rows)].sum().backward()
    np.testing.assert_array_equal(x.grad, t.grad.numpy())
