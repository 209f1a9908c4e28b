"""Differentiable operations, one small `Function` per operation (import as F).

Each Function has `forward(ctx, *arrays)`, computed on raw NumPy/CuPy arrays, and
`backward(ctx, grad)`, which returns dL/d(argument) for each positional argument of
forward (None where no gradient is needed or possible).  The lowercase functions are the
public API, with PyTorch's names and argument orders (F.conv2d(input, weight, bias,
stride, padding, dilation)); they check shapes and raise ValueError with clear messages
before anything reaches the kernels.

Dims, as in PyTorch: reductions (sum, mean, amax, amin, argmax, argmin) take `dim` (an
int, a tuple or list, or None / () for every dim; negative dims count from the end) and
`keepdim`; NumPy's `axis=` and `keepdims=` are accepted as aliases, but giving both
spellings raises, and so does `axis=()` (NumPy: no dim, PyTorch: every dim).  A dim out
of range raises IndexError, a dim named twice ValueError.  `transpose(x, dim0, dim1)`
swaps two dims; `permute(x, dims)` reorders them all.  Tensor.max/min (as torch.max/min)
are built on `max_or_min`: this module has no `max` or `min`, it uses Python's.

Broadcasting: elementwise binary operations broadcast as NumPy does; their backward sums
the gradient back down to each operand's shape (`unbroadcast`).  A plain number or array
mixed with a Tensor is taken as a constant in the tensor's dtype and on its device.

Convolutions and matrix products run on our own kernels through `gasca_core.backend`.
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import backend
from .tensor import (ALL_DIMS, NO_KEEPDIM, NOT_GIVEN, Context, Dim, Function, Tensor, _Default,
                     _shape_args)

IntOrPair = Union[int, Tuple[int, int]]
_DIM0 = _Default(0)  # cat/stack's dim left out: 0

# ----------------------------------------------------------------------------- helpers


def _xp(array: Any) -> Any:
    return backend.get_array_module(array)


def unbroadcast(grad: Any, shape: Tuple[int, ...]) -> Any:
    """Sum `grad` down to `shape`: the adjoint of broadcasting an array of `shape`."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _constant(value: Any, like: Tensor) -> Tensor:
    """`value` as a Tensor constant in like's dtype, on like's device."""
    if isinstance(value, Tensor):
        return value
    xp = _xp(like.data)
    array = backend.to_device(value, like.device) if hasattr(value, "shape") else value
    return Tensor._wrap(xp.asarray(array, dtype=like.dtype))


def _operands(a: Any, b: Any) -> Tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, _constant(b, a)
    if isinstance(b, Tensor):
        return _constant(a, b), b
    a = Tensor(a)
    return a, _constant(b, a)


def _tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple, float, int)) or backend.is_cupy_array(value):
        return Tensor(value)
    raise TypeError(f"{name} must be a Tensor or an array, got {type(value).__name__}")


def _pair(value: IntOrPair, name: str, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints as a pair (h, w), each >= minimum."""
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _dim(dim: Any, ndim: int, name: str) -> int:
    """One dim as an index in [0, ndim); negative dims count from the end, as in PyTorch.
    A 0-D tensor accepts 0 and -1 (PyTorch's rule), both given back as 0."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"{name}: a dim must be an int, got {dim!r}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{name}: dim {dim} is out of range for a tensor with {ndim} dims "
                         f"(expected a dim in [{-n}, {n - 1}])")
    return int(dim) % n


def _dims(dim: Dim, ndim: int, name: str) -> Tuple[int, ...]:
    """The dims a reduction runs over, sorted: an int, a tuple or list of ints, or None.
    None and an empty tuple mean every dim (as in PyTorch); naming a dim twice raises.
    A 0-D tensor accepts 0 and -1 and has no dim to reduce."""
    if dim is None:
        return tuple(range(ndim))
    dims = [dim] if isinstance(dim, (int, np.integer)) else list(dim)
    out = [_dim(d, ndim, name) for d in dims]
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: dim {tuple(dims)} names a dim more than once")
    if not out:
        return tuple(range(ndim))
    return tuple(sorted(set(out))) if ndim else ()


def _spelling(name: str, torch_name: str, value: Any, numpy_name: str, alias: Any) -> Any:
    """The value of an argument that PyTorch spells `torch_name` and NumPy `numpy_name`
    (dim/axis, keepdim/keepdims): either spelling, never both."""
    if alias is not NOT_GIVEN:
        if not isinstance(value, _Default):
            raise TypeError(f"{name}: got both {torch_name}= (PyTorch's spelling) and "
                            f"{numpy_name}= (NumPy's); give one of them")
        return alias
    return value.value if isinstance(value, _Default) else value


def _dim_and_keepdim(name: str, dim: Any, keepdim: Any, axis: Any, keepdims: Any) -> Tuple[Any, bool]:
    """dim and keepdim of a reduction, from PyTorch's spelling or NumPy's aliases."""
    if isinstance(axis, (tuple, list)) and len(axis) == 0:
        raise ValueError(f"{name}: axis=() reduces over no dim in NumPy but dim=() over every "
                         f"dim in PyTorch; say dim=None (or leave it out) for every dim")
    return _spelling(name, "dim", dim, "axis", axis), bool(_spelling(name, "keepdim", keepdim,
                                                                     "keepdims", keepdims))


def _check_reduction(reduction: str, size_average: Any = None, reduce: Any = None,
                     name: str = "loss") -> None:
    """reduction must be 'mean', 'sum' or 'none'.  PyTorch's deprecated size_average and
    reduce are refused: a reduction passed by position lands on size_average in PyTorch's
    signatures (where F.mse_loss(x, y, "sum") silently means 'mean'), so it must be named."""
    if size_average is not None or reduce is not None:
        raise ValueError(f"{name}: size_average and reduce (PyTorch's deprecated spellings of "
                         f"reduction) are not supported, got size_average={size_average!r}, "
                         f"reduce={reduce!r}; pass reduction='mean', 'sum' or 'none' by name")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _unsupported(name: str, **options: Any) -> None:
    """Raise for a PyTorch option we do not implement, unless it has its default value
    (given as option=(value, default))."""
    for option, (value, default) in options.items():
        if not (value is None if default is None else value == default):
            raise ValueError(f"{name}: {option}={value!r} is not supported (only the "
                             f"default, {default!r})")


def _reduce(loss: Any, reduction: str) -> Any:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _reduction_grad(grad: Any, shape: Tuple[int, ...], reduction: str) -> Any:
    """dL/d(elementwise loss) given dL/d(reduced loss)."""
    if reduction == "none":
        return grad
    scale = 1.0 / max(int(np.prod(shape)), 1) if reduction == "mean" else 1.0
    return grad * scale  # a 0-d array that broadcasts against the elementwise loss


# ----------------------------------------------------------------------------- arithmetic

class Add(Function):
    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any]:
        return unbroadcast(grad, ctx.shapes[0]), unbroadcast(grad, ctx.shapes[1])


class Sub(Function):
    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any]:
        gb = unbroadcast(-grad, ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return unbroadcast(grad, ctx.shapes[0]), gb


class Mul(Function):
    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = unbroadcast(grad * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(grad * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = unbroadcast(grad / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-grad * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx: Context, a: Any) -> Any:
        return -a

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        return (-grad,)


class Pow(Function):
    """x ** p for a constant real exponent p."""

    @staticmethod
    def forward(ctx: Context, x: Any, exponent: float) -> Any:
        ctx.save_for_backward(x)
        ctx.exponent = exponent
        return x ** exponent

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        (x,) = ctx.saved_tensors
        p = ctx.exponent
        return grad * (p * x ** (p - 1)), None


def add(a: Any, b: Any) -> Tensor:
    """a + b, broadcasting."""
    return Add.apply(*_operands(a, b))


def sub(a: Any, b: Any) -> Tensor:
    """a - b, broadcasting."""
    return Sub.apply(*_operands(a, b))


def mul(a: Any, b: Any) -> Tensor:
    """a * b elementwise, broadcasting."""
    return Mul.apply(*_operands(a, b))


def div(a: Any, b: Any) -> Tensor:
    """a / b elementwise, broadcasting."""
    return Div.apply(*_operands(a, b))


def neg(a: Tensor) -> Tensor:
    """-a."""
    return Neg.apply(_tensor(a, "a"))


def pow(x: Tensor, exponent: float) -> Tensor:
    """x ** exponent for a real-number exponent (a tensor exponent is not supported)."""
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError(f"pow: exponent must be a real number, got {type(exponent).__name__}")
    return Pow.apply(_tensor(x, "x"), float(exponent))


# ----------------------------------------------------------------------------- matrix products

class MatMul(Function):
    """C = A @ B for 2-D A (M,K) and B (K,N), on our blocked gemm kernel."""

    @staticmethod
    def forward(ctx: Context, a: Any, b: Any) -> Any:
        ctx.save_for_backward(a, b)
        return backend.gemm(a, b)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any]:
        a, b = ctx.saved_tensors
        ga = backend.gemm(grad, b, trans_b=True) if ctx.needs_input_grad[0] else None   # dC B^T
        gb = backend.gemm(a, grad, trans_a=True) if ctx.needs_input_grad[1] else None   # A^T dC
        return ga, gb


def matmul(a: Any, b: Any) -> Tensor:
    """a @ b for 2-D operands: (M,K) @ (K,N) -> (M,N)."""
    a, b = _operands(a, b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul: both operands must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    if a.dtype != b.dtype:
        raise ValueError(f"matmul: dtypes differ: {a.dtype} and {b.dtype}")
    return MatMul.apply(a, b)


class Linear(Function):
    """y = x W^T + b with x (N,in), W (out,in), b (out): the gemm kernel, no transposed copies."""

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any) -> Any:
        ctx.save_for_backward(x, weight)
        y = backend.gemm(x, weight, trans_b=True)
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any, Any]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = backend.gemm(grad, weight) if need_x else None               # (N,out)(out,in)
        gw = backend.gemm(grad, x, trans_a=True) if need_w else None      # (out,N)(N,in)
        gb = grad.sum(axis=0) if need_b else None
        return gx, gw, gb


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = input @ weight.T + bias.  input (..., in), weight (out, in), bias (out) -> (..., out)."""
    input, weight = _tensor(input, "input"), _tensor(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got {weight.shape}")
    if input.ndim < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input's last dimension must be in_features={weight.shape[1]}, "
                         f"got input shape {input.shape}")
    if bias is not None:
        bias = _tensor(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"linear: dtypes differ: input {input.dtype}, weight {weight.dtype}"
                         + ("" if bias is None else f", bias {bias.dtype}"))
    lead = input.shape[:-1]
    x2 = input if input.ndim == 2 else reshape(input, (-1, input.shape[-1]))
    y = Linear.apply(x2, weight, bias)
    return y if input.ndim == 2 else reshape(y, lead + (weight.shape[0],))


# ----------------------------------------------------------------------------- shapes

class Reshape(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, shape: Tuple[int, ...]) -> Any:
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        return grad.reshape(ctx.in_shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, axes: Tuple[int, ...]) -> Any:
        ctx.axes = axes
        return x.transpose(axes)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        return grad.transpose(tuple(int(a) for a in np.argsort(ctx.axes))), None


def _is_basic_index(index: Any) -> bool:
    """True for NumPy "basic" indexing (ints, slices, ..., None): a view, no repeats."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in parts)


class GetItem(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, index: Any) -> Any:
        ctx.in_shape, ctx.index = x.shape, index
        return x[index]

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        xp = _xp(grad)
        out = xp.zeros(ctx.in_shape, dtype=grad.dtype)
        if _is_basic_index(ctx.index):  # slices and ints never select an element twice
            out[ctx.index] = grad
        elif xp is np:
            np.add.at(out, ctx.index, grad)  # sums repeated indices, like PyTorch
        else:
            import cupyx
            cupyx.scatter_add(out, ctx.index, grad)
        return out, None


class Cat(Function):
    @staticmethod
    def forward(ctx: Context, *arrays: Any, axis: int = 0) -> Any:
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return _xp(arrays[0]).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        bounds = np.cumsum(ctx.sizes)[:-1].tolist()
        return tuple(_xp(grad).split(grad, bounds, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx: Context, *arrays: Any, axis: int = 0) -> Any:
        ctx.axis = axis
        return _xp(arrays[0]).stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        xp = _xp(grad)
        return tuple(xp.take(grad, i, axis=ctx.axis) for i in range(grad.shape[ctx.axis]))


def reshape(input: Tensor, shape: Sequence[int]) -> Tensor:
    """input with a new shape of the same size (one entry may be -1: inferred), as
    torch.reshape."""
    x = _tensor(input, "input")
    shape = _shape_args((shape,) if isinstance(shape, (int, np.integer)) else tuple(shape),
                        "reshape")
    known = int(np.prod([s for s in shape if s != -1]))
    unknown = shape.count(-1)
    if (unknown > 1 or any(s < -1 for s in shape)
            or (unknown == 0 and known != x.numel())
            or (unknown == 1 and (known == 0 or x.numel() % known != 0))):
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                         f"({x.numel()} elements) into {shape}")
    if unknown:
        shape = tuple(x.numel() // known if s == -1 else s for s in shape)
    return Reshape.apply(x, shape)


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dims start_dim..end_dim into one, as torch.flatten: (N,C,H,W) with start_dim=1
    -> (N, C*H*W).  A 0-D tensor becomes shape (1,)."""
    input = _tensor(input, "input")
    start, end = _dim(start_dim, input.ndim, "flatten"), _dim(end_dim, input.ndim, "flatten")
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for shape {input.shape}")
    shape = input.shape[:start] + (int(np.prod(input.shape[start:end + 1])),) + input.shape[end + 1:]
    return Reshape.apply(input, shape)


def permute(input: Tensor, dims: Sequence[int]) -> Tensor:
    """input with its dims reordered, as torch.permute: output dim i is input dim dims[i]."""
    input = _tensor(input, "input")
    if dims is None:
        raise TypeError("permute: dims is required, as in PyTorch (NumPy's transpose() with no "
                        "axes reverses them: say permute(x, tuple(reversed(range(x.ndim)))))")
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    order = tuple(_dim(d, input.ndim, "permute") for d in dims)
    if sorted(order) != list(range(input.ndim)):
        raise ValueError(f"permute: dims {dims} must name each of the {input.ndim} dims of a "
                         f"tensor of shape {input.shape} once")
    return Permute.apply(input, order)


def transpose(input: Tensor, dim0: int, dim1: int) -> Tensor:
    """input with dims dim0 and dim1 swapped, as torch.transpose (not NumPy's transpose,
    which reorders every axis: that is permute)."""
    input = _tensor(input, "input")
    a, b = _dim(dim0, input.ndim, "transpose"), _dim(dim1, input.ndim, "transpose")
    order = list(range(input.ndim))
    if order:
        order[a], order[b] = order[b], order[a]
    return Permute.apply(input, tuple(order))


def squeeze(input: Tensor, dim: Dim = None) -> Tensor:
    """input without dims of size 1, as torch.squeeze: every such dim (dim None), or those
    of `dim` (an int or a tuple) that have size 1 (a named dim of another size is kept)."""
    input = _tensor(input, "input")
    if dim is None:
        drop = {i for i, n in enumerate(input.shape) if n == 1}
    else:
        dims = [dim] if isinstance(dim, (int, np.integer)) else list(dim)
        named = [_dim(d, input.ndim, "squeeze") for d in dims]
        if len(set(named)) != len(named):
            raise ValueError(f"squeeze: dim {tuple(dims)} names a dim more than once")
        drop = {d for d in named if input.ndim and input.shape[d] == 1}
    return Reshape.apply(input, tuple(n for i, n in enumerate(input.shape) if i not in drop))


def unsqueeze(input: Tensor, dim: int) -> Tensor:
    """input with a new dim of size 1 at position `dim`, as torch.unsqueeze; dim lies in
    [-ndim - 1, ndim], a negative one counting from the end of the result."""
    input = _tensor(input, "input")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"unsqueeze: dim must be an int, got {dim!r}")
    n = input.ndim + 1
    if not -n <= dim < n:
        raise IndexError(f"unsqueeze: dim {dim} is out of range for a tensor with {input.ndim} "
                         f"dims (expected a dim in [{-n}, {n - 1}])")
    d = int(dim) % n
    return Reshape.apply(input, input.shape[:d] + (1,) + input.shape[d:])


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index] (NumPy indexing: ints, slices, integer or boolean arrays); the gradient is
    scattered back, summing repeated indices.

    Deliberate difference: a Tensor is refused as an index. PyTorch indexes with integer
    tensors (positions) and bool tensors (masks); ours hold floats only (a comparison gives
    1.0 / 0.0), so a Tensor index could mean either, and reading a mask as positions 0 and
    1 would be a silent wrong answer. Index with a NumPy array instead."""
    parts = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Tensor) for i in parts):
        raise TypeError(
            "indexing with a Tensor is ambiguous here (Tensors hold floats, so a mask and a "
            "list of positions look alike): index with a NumPy array, e.g. "
            "x[mask.numpy() > 0] for a mask or x[idx.numpy().astype(np.int64)] for positions")
    return GetItem.apply(_tensor(x, "x"), index)


def cat(tensors: Sequence[Tensor], dim: int = _DIM0, *, axis: int = NOT_GIVEN) -> Tensor:
    """Concatenate tensors along an existing dim (default 0), as torch.cat (NumPy's axis=
    is accepted as an alias)."""
    dim = _spelling("cat", "dim", dim, "axis", axis)
    tensors = [_tensor(t, "tensors[i]") for t in tensors]
    if not tensors:
        raise ValueError("cat: needs at least one tensor")
    dim = _dim(dim, tensors[0].ndim, "cat")
    return Cat.apply(*tensors, axis=dim)


def stack(tensors: Sequence[Tensor], dim: int = _DIM0, *, axis: int = NOT_GIVEN) -> Tensor:
    """Stack same-shaped tensors along a new dim (default 0), as torch.stack (NumPy's axis=
    is accepted as an alias)."""
    dim = _spelling("stack", "dim", dim, "axis", axis)
    tensors = [_tensor(t, "tensors[i]") for t in tensors]
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    n = tensors[0].ndim + 1
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not -n <= dim < n:
        raise IndexError(f"stack: dim {dim!r} is out of range for a result with {n} dims")
    return Stack.apply(*tensors, axis=int(dim) % n)


# ----------------------------------------------------------------------------- reductions

class Sum(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, axes: Tuple[int, ...], keepdims: bool) -> Any:
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        return x.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        xp = _xp(grad)
        if not ctx.keepdims:
            grad = xp.expand_dims(grad, ctx.axes)
        return xp.broadcast_to(grad, ctx.in_shape), None, None


class Mean(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, axes: Tuple[int, ...], keepdims: bool) -> Any:
        ctx.in_shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        ctx.count = int(np.prod([x.shape[a] for a in axes]))
        return x.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        xp = _xp(grad)
        if not ctx.keepdims:
            grad = xp.expand_dims(grad, ctx.axes)
        return xp.broadcast_to(grad / ctx.count, ctx.in_shape), None, None


def sum(input: Tensor, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,  # noqa: A001
        axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Tensor:
    """Sum over `dim`, as torch.sum: an int, a tuple of ints, or None (or ()) for every dim;
    keepdim=True keeps each reduced dim with size 1.  NumPy's axis= and keepdims= are
    accepted as aliases (giving both spellings raises TypeError, and axis=() raises
    because NumPy reads it as "no dim")."""
    input = _tensor(input, "input")
    dim, keepdim = _dim_and_keepdim("sum", dim, keepdim, axis, keepdims)
    return Sum.apply(input, _dims(dim, input.ndim, "sum"), keepdim)


def mean(input: Tensor, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
         axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Tensor:
    """Mean over `dim`, as torch.mean (arguments as in `sum`)."""
    input = _tensor(input, "input")
    dim, keepdim = _dim_and_keepdim("mean", dim, keepdim, axis, keepdims)
    return Mean.apply(input, _dims(dim, input.ndim, "mean"), keepdim)


class Extremum(Function):
    """The largest (or smallest) value over some dims.  The gradient is shared equally
    among the entries that tie for it, as PyTorch's amax/amin and max()/min() without dim."""

    @staticmethod
    def forward(ctx: Context, x: Any, dims: Tuple[int, ...], keepdim: bool, largest: bool) -> Any:
        xp = _xp(x)
        kept = x.max(axis=dims, keepdims=True) if largest else x.min(axis=dims, keepdims=True)
        ties = x == kept
        ctx.save_for_backward(ties, ties.sum(axis=dims, keepdims=True).astype(x.dtype))
        ctx.dims, ctx.keepdim = dims, keepdim
        return kept if keepdim else xp.squeeze(kept, axis=dims)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None, None]:
        ties, count = ctx.saved_tensors
        if not ctx.keepdim:
            grad = _xp(grad).expand_dims(grad, ctx.dims)
        return (grad / count) * ties, None, None, None


class TakeAlongDim(Function):
    """x's entries at `index` along `dim` (index: x's shape with size 1 at dim), as
    torch.take_along_dim; the gradient goes back to exactly those entries."""

    @staticmethod
    def forward(ctx: Context, x: Any, index: Any, dim: int, keepdim: bool) -> Any:
        xp = _xp(x)
        ctx.save_for_backward(index)
        ctx.in_shape, ctx.dim, ctx.keepdim = x.shape, dim, keepdim
        out = xp.take_along_axis(x, index, axis=dim)
        return out if keepdim else xp.squeeze(out, axis=dim)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None, None]:
        (index,) = ctx.saved_tensors
        xp = _xp(grad)
        if not ctx.keepdim:
            grad = xp.expand_dims(grad, ctx.dim)
        trailing = len(ctx.in_shape) - 1 - ctx.dim
        positions = xp.arange(ctx.in_shape[ctx.dim]).reshape((-1,) + (1,) * trailing)
        return grad * (positions == index), None, None, None


def amax(input: Tensor, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
         axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Tensor:
    """Largest value over `dim` (arguments as in `sum`), as torch.amax; the gradient is
    shared equally among entries that tie for the largest value."""
    input = _tensor(input, "input")
    dim, keepdim = _dim_and_keepdim("amax", dim, keepdim, axis, keepdims)
    return Extremum.apply(input, _dims(dim, input.ndim, "amax"), keepdim, True)


def amin(input: Tensor, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
         axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Tensor:
    """Smallest value over `dim` (arguments as in `sum`), as torch.amin; the gradient is
    shared equally among entries that tie for the smallest value."""
    input = _tensor(input, "input")
    dim, keepdim = _dim_and_keepdim("amin", dim, keepdim, axis, keepdims)
    return Extremum.apply(input, _dims(dim, input.ndim, "amin"), keepdim, False)


class ValuesIndices(NamedTuple):
    """What max(dim) and min(dim) return, as PyTorch's torch.return_types.max: the values
    (a Tensor) and their indices along dim (an int64 array, see argmax)."""
    values: Tensor
    indices: Any


def max_or_min(name: str, input: Tensor, dim: Any = ALL_DIMS, keepdim: Any = NO_KEEPDIM, *,
               axis: Any = NOT_GIVEN, keepdims: Any = NOT_GIVEN) -> Any:
    """What Tensor.max and Tensor.min compute (name "max" or "min"), as torch.max/min:
    x.max() is the largest element (a 0-D Tensor; the gradient is shared among ties);
    x.max(dim, keepdim=False) is the named pair (values, indices) along one int dim, ties
    going to the first index, which alone gets the gradient.  Indices are an int64 array
    (see argmax).  Deliberate differences, each raising TypeError: NumPy's axis= (NumPy's
    max gives the values only: use amax), and max(other), PyTorch's elementwise maximum.

    (There is no functional `max` or `min`: this module uses Python's own, and
    torch.nn.functional has none either.)
    """
    if name not in ("max", "min"):
        raise ValueError(f"max_or_min: name must be 'max' or 'min', got {name!r}")
    largest = name == "max"
    input = _tensor(input, "input")
    other = "amax" if largest else "amin"
    if axis is not NOT_GIVEN or keepdims is not NOT_GIVEN:
        raise TypeError(f"{name}(axis=...): NumPy's {name} gives the values, PyTorch's "
                        f"{name}(dim) the pair (values, indices); say {other}(dim) for the "
                        f"values or {name}(dim) for the pair")
    if isinstance(dim, (Tensor, np.ndarray)) or backend.is_cupy_array(dim):
        raise TypeError(f"{name}(input, other), PyTorch's elementwise {name}imum of two tensors, "
                        f"is not supported; {name}(dim) takes one int dim")
    if dim is ALL_DIMS:
        if keepdim is not NO_KEEPDIM:
            raise TypeError(f"{name}(keepdim=...) needs a dim, as in PyTorch; {other}(keepdim=True) "
                            f"keeps every dim")
        return Extremum.apply(input, tuple(range(input.ndim)), False, largest)
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"{name}(dim) takes one int dim, as in PyTorch (leave it out for the "
                        f"{name} of every element; {other}(dim) takes a tuple), got dim={dim!r}")
    keepdim = bool(keepdim.value if isinstance(keepdim, _Default) else keepdim)
    d = _dim(dim, input.ndim, name)
    xp = _xp(input.data)
    if input.ndim == 0:
        return ValuesIndices(Reshape.apply(input, ()), xp.zeros((), dtype=np.int64))
    pick = xp.argmax if largest else xp.argmin
    index = xp.expand_dims(pick(input.data, axis=d).astype(np.int64, copy=False), d)
    values = TakeAlongDim.apply(input, index, d, keepdim)
    return ValuesIndices(values, index if keepdim else xp.squeeze(index, axis=d))


def _arg_extreme(name: str, largest: bool, input: Any, dim: Any, keepdim: Any, axis: Any,
                 keepdims: Any) -> Any:
    input = _tensor(input, "input")
    dim, keepdim = _dim_and_keepdim(name, dim, keepdim, axis, keepdims)
    xp = _xp(input.data)
    pick = xp.argmax if largest else xp.argmin
    if dim is None:
        index = xp.asarray(pick(input.data.reshape(-1)), dtype=np.int64)
        return index.reshape((1,) * input.ndim) if keepdim else index
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"{name}: dim must be one int or None, as in PyTorch, got {dim!r}")
    d = _dim(dim, input.ndim, name)
    if input.ndim == 0:
        return xp.zeros((), dtype=np.int64)
    index = pick(input.data, axis=d).astype(np.int64, copy=False)
    return xp.expand_dims(index, d) if keepdim else index


def argmax(input: Tensor, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
           axis: Optional[int] = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Any:
    """Index of the largest value along one int `dim` (in the flattened tensor when dim is
    None), the first one where several tie, as torch.argmax.  Deliberate difference: the
    indices come back as an int64 array (NumPy, or CuPy on "cuda"), not as a Tensor, since
    our Tensors hold floating-point values only (and indices have no gradient)."""
    return _arg_extreme("argmax", True, input, dim, keepdim, axis, keepdims)


def argmin(input: Tensor, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
           axis: Optional[int] = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Any:
    """Index of the smallest value, as torch.argmin; see argmax."""
    return _arg_extreme("argmin", False, input, dim, keepdim, axis, keepdims)


# ----------------------------------------------------------------------------- elementwise

class ReLU(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        mask = x > 0
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (mask,) = ctx.saved_tensors
        return (grad * mask,)


class LeakyReLU(Function):
    """y = x * slope, slope 1 where x > 0 and negative_slope elsewhere (NaN stays NaN).

    For 0 < negative_slope <= 1 (GASCA's 0.2, PyTorch's default 0.01) the same floats come
    from branch-free passes: y = max(x * s, x), and backward's slope = max(float(x > 0), s).
    `where` with a data-dependent mask is the slow way on the CPU: NumPy's where and masked
    copies run about 15x slower here than an arithmetic pass over the same array (measured
    on a 4 MB activation: 5 ms against 0.35 ms), and they were a sixth of a training step.
    Only the mask x > 0 (a byte an element) is kept for backward, and only when x needs a
    gradient.  Other slopes take the general form (at 0, max(x * 0, x) would turn x = inf
    into NaN where x * 1 keeps it).

    On the CPU, float32/float64 arrays with 0 < negative_slope <= 1 go to our element-wise
    kernels (backend.leaky_relu_forward / _backward, cpp/eltwise.h): the same floats on
    every thread, where NumPy's passes use one.  Their backward reads the output y instead
    of a mask (y > 0 exactly where x > 0), which the next layer keeps alive anyway."""

    @staticmethod
    def forward(ctx: Context, x: Any, negative_slope: float) -> Any:
        xp = _xp(x)
        s = x.dtype.type(negative_slope)
        ctx.negative_slope = s
        ctx.kernel = False
        if not 0 < negative_slope <= 1:
            slope = xp.where(x > 0, x.dtype.type(1), s)
            ctx.save_for_backward(slope)
            return x * slope
        if xp is np and x.dtype in (np.float32, np.float64):
            y = backend.leaky_relu_forward(x, float(negative_slope))
            if ctx.needs_input_grad[0]:
                ctx.kernel = True
                ctx.save_for_backward(y)
            return y
        y = xp.multiply(x, s)
        xp.maximum(y, x, out=y)            # x where x > 0 (x*s <= x), x*s elsewhere (x*s >= x)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x > 0)
        return y

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        (saved,) = ctx.saved_tensors
        if ctx.kernel:                     # the kernel's forward saved its output y
            return backend.leaky_relu_backward(saved, grad, float(ctx.negative_slope)), None
        if saved.dtype != bool:            # the general form saved the slope itself
            return grad * saved, None
        slope = saved.astype(grad.dtype)   # 1 where x > 0, else 0 ...
        _xp(grad).maximum(slope, ctx.negative_slope, out=slope)   # ... then s (0 < s <= 1)
        slope *= grad
        return slope, None


def _sigmoid(x: Any) -> Any:
    """1 / (1 + exp(-x)) without overflow: exp is only taken of -|x|."""
    xp = _xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        out = _sigmoid(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (out,) = ctx.saved_tensors
        return (grad * out * (1 - out),)


class Tanh(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        out = _xp(x).tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (out,) = ctx.saved_tensors
        return (grad * (1 - out * out),)


class Exp(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        out = _xp(x).exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (out,) = ctx.saved_tensors
        return (grad * out,)


class Log(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return _xp(x).log(x)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (x,) = ctx.saved_tensors
        return (grad / x,)


class Abs(Function):
    @staticmethod
    def forward(ctx: Context, x: Any) -> Any:
        ctx.save_for_backward(x)
        return _xp(x).abs(x)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any]:
        (x,) = ctx.saved_tensors
        return (grad * _xp(x).sign(x),)


class Clamp(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, lo: Optional[float], hi: Optional[float]) -> Any:
        # The gradient passes where lo <= x <= hi (inclusive, as in PyTorch).
        xp = _xp(x)
        inside = xp.ones(x.shape, dtype=bool)
        out = x
        if lo is not None:
            inside &= x >= lo
            out = xp.maximum(out, x.dtype.type(lo))
        if hi is not None:
            inside &= x <= hi
            out = xp.minimum(out, x.dtype.type(hi))
        ctx.save_for_backward(inside)
        return out if out is not x else x.copy()

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class Cast(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, dtype: Any) -> Any:
        ctx.in_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        return grad.astype(ctx.in_dtype), None


class ToDevice(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, device: str) -> Any:
        ctx.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        return backend.to_device(grad, ctx.in_device), None


def _check_not_inplace(name: str, inplace: bool) -> None:
    if inplace:
        raise ValueError(f"{name}: inplace=True is not supported: our operations never write "
                         f"into their input (the result is the same; leave inplace out)")


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """max(x, 0)."""
    _check_not_inplace("relu", inplace)
    return ReLU.apply(_tensor(x, "x"))


def leaky_relu(x: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x where x > 0, negative_slope * x elsewhere."""
    _check_not_inplace("leaky_relu", inplace)
    return LeakyReLU.apply(_tensor(x, "x"), float(negative_slope))


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    return Sigmoid.apply(_tensor(x, "x"))


def tanh(x: Tensor) -> Tensor:
    return Tanh.apply(_tensor(x, "x"))


def exp(x: Tensor) -> Tensor:
    return Exp.apply(_tensor(x, "x"))


def log(x: Tensor) -> Tensor:
    """Natural logarithm."""
    return Log.apply(_tensor(x, "x"))


def abs(x: Tensor) -> Tensor:  # noqa: A001
    """|x|; its gradient at 0 is 0 (sign(0)), as in PyTorch."""
    return Abs.apply(_tensor(x, "x"))


def clamp(x: Tensor, min: Optional[float] = None, max: Optional[float] = None) -> Tensor:  # noqa: A002
    """x clipped to [min, max] (either may be None)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    return Clamp.apply(_tensor(x, "x"), min, max)


def cast(x: Tensor, dtype: Any) -> Tensor:
    """x converted to float32 or float64; the gradient is converted back."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"cast: dtype must be float32 or float64, got {dtype}")
    return Cast.apply(_tensor(x, "x"), dtype)


def to_device(x: Tensor, device: str) -> Tensor:
    """x copied to "cpu" or "cuda"; the gradient is copied back."""
    return ToDevice.apply(_tensor(x, "x"), backend.check_device(device))


# ----------------------------------------------------------------------------- losses

def _loss_operands(input: Any, target: Any, name: str) -> Tuple[Tensor, Tensor]:
    input = _tensor(input, "input")
    target = _constant(target, input)
    if input.shape != target.shape:
        raise ValueError(f"{name}: input and target must have the same shape, got "
                         f"{input.shape} and {target.shape}")
    return input, target


class MSELoss(Function):
    @staticmethod
    def forward(ctx: Context, input: Any, target: Any, reduction: str) -> Any:
        diff = input - target
        ctx.save_for_backward(diff)
        ctx.reduction = reduction
        return _reduce(diff * diff, reduction)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any, None]:
        (diff,) = ctx.saved_tensors
        g = 2 * diff * _reduction_grad(grad, diff.shape, ctx.reduction)
        return g, (-g if ctx.needs_input_grad[1] else None), None


class L1Loss(Function):
    @staticmethod
    def forward(ctx: Context, input: Any, target: Any, reduction: str) -> Any:
        diff = input - target
        ctx.save_for_backward(_xp(diff).sign(diff))
        ctx.reduction = reduction
        return _reduce(_xp(diff).abs(diff), reduction)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any, None]:
        (sign,) = ctx.saved_tensors
        g = sign * _reduction_grad(grad, sign.shape, ctx.reduction)
        return g, (-g if ctx.needs_input_grad[1] else None), None


class BCEWithLogits(Function):
    """loss = w * (max(x, 0) - x y + log(1 + exp(-|x|))): finite for any logit x.

    It equals -w (y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), and
    dloss/dx = w (sigmoid(x) - y), dloss/dy = -w x.
    """

    @staticmethod
    def forward(ctx: Context, x: Any, y: Any, weight: Any, reduction: str) -> Any:
        xp = _xp(x)
        loss = xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
        if weight is not None:
            loss = loss * weight
        ctx.save_for_backward(x, y, weight)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, Any, Any, None]:
        x, y, weight = ctx.saved_tensors
        g = _reduction_grad(grad, x.shape, ctx.reduction)
        if weight is not None:
            g = g * weight
        gx = (_sigmoid(x) - y) * g if ctx.needs_input_grad[0] else None
        gy = -x * g if ctx.needs_input_grad[1] else None
        gw = None
        if ctx.needs_input_grad[2]:
            xp = _xp(x)
            elem = xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
            gw = unbroadcast(elem * _reduction_grad(grad, x.shape, ctx.reduction), weight.shape)
        return gx, gy, gw, None


class CrossEntropy(Function):
    """Softmax cross-entropy of logits (N,C) against class indices (N,)."""

    @staticmethod
    def forward(ctx: Context, logits: Any, target: Any, reduction: str) -> Any:
        xp = _xp(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        rows = xp.arange(logits.shape[0])
        ctx.save_for_backward(log_probs, target)
        ctx.reduction = reduction
        return _reduce(-log_probs[rows, target], reduction)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        log_probs, target = ctx.saved_tensors
        xp = _xp(log_probs)
        g = xp.exp(log_probs)                     # softmax
        g[xp.arange(g.shape[0]), target] -= 1      # softmax - one_hot
        scale = _reduction_grad(grad, target.shape, ctx.reduction)
        scale = scale[:, None] if ctx.reduction == "none" else scale
        return g * scale, None, None


def mse_loss(input: Tensor, target: Any, size_average: Any = None, reduce: Any = None,
             reduction: str = "mean", weight: Any = None) -> Tensor:
    """(input - target)^2, averaged ('mean'), summed ('sum') or elementwise ('none'), with
    PyTorch's signature (size_average, reduce and weight are refused: name reduction)."""
    _check_reduction(reduction, size_average, reduce, "mse_loss")
    _unsupported("mse_loss", weight=(weight, None))
    input, target = _loss_operands(input, target, "mse_loss")
    return MSELoss.apply(input, target, reduction)


def l1_loss(input: Tensor, target: Any, size_average: Any = None, reduce: Any = None,
            reduction: str = "mean", weight: Any = None) -> Tensor:
    """|input - target|, averaged ('mean'), summed ('sum') or elementwise ('none'), with
    PyTorch's signature (size_average, reduce and weight are refused: name reduction)."""
    _check_reduction(reduction, size_average, reduce, "l1_loss")
    _unsupported("l1_loss", weight=(weight, None))
    input, target = _loss_operands(input, target, "l1_loss")
    return L1Loss.apply(input, target, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Any, weight: Any = None,
                                     size_average: Any = None, reduce: Any = None,
                                     reduction: str = "mean", pos_weight: Any = None) -> Tensor:
    """Binary cross-entropy of sigmoid(input) against target in [0, 1], computed from the
    logits `input` so that it stays finite and exact for large |input|.  PyTorch's
    signature; size_average, reduce and pos_weight are refused.

    Args:
        input: logits, any shape.  target: same shape, values in [0, 1] (a number is
            broadcast, e.g. 1.0 for "all real").
        weight: optional per-element weight, broadcastable to input's shape.
        reduction: 'mean' | 'sum' | 'none'.
    """
    _check_reduction(reduction, size_average, reduce, "binary_cross_entropy_with_logits")
    _unsupported("binary_cross_entropy_with_logits", pos_weight=(pos_weight, None))
    input = _tensor(input, "input")
    if not isinstance(target, Tensor) and np.ndim(target) == 0 and not backend.is_cupy_array(target):
        target = _xp(input.data).full(input.shape, target, dtype=input.dtype)
    input, target = _loss_operands(input, target, "binary_cross_entropy_with_logits")
    if weight is not None:
        weight = _constant(weight, input)
        try:
            np.broadcast_shapes(weight.shape, input.shape)
        except ValueError:
            raise ValueError(f"binary_cross_entropy_with_logits: weight of shape {weight.shape} "
                             f"does not broadcast to input's shape {input.shape}") from None
    return BCEWithLogits.apply(input, target, weight, reduction)


def cross_entropy(input: Tensor, target: Any, weight: Any = None, size_average: Any = None,
                  ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy.  input: logits (N, C); target: class indices (N,) in [0, C).
    PyTorch's signature; class weights, another ignore_index and label smoothing are
    refused, and so is a target equal to ignore_index (PyTorch would skip it)."""
    _check_reduction(reduction, size_average, reduce, "cross_entropy")
    _unsupported("cross_entropy", weight=(weight, None), ignore_index=(ignore_index, -100),
                 label_smoothing=(label_smoothing, 0.0))
    input = _tensor(input, "input")
    if input.ndim != 2:
        raise ValueError(f"cross_entropy: input must be logits of shape (N, C), got {input.shape}")
    labels = target.data if isinstance(target, Tensor) else target
    if not backend.is_cupy_array(labels):
        labels = np.asarray(labels)
    labels = backend.to_device(labels, input.device)
    if labels.shape != (input.shape[0],):
        raise ValueError(f"cross_entropy: target must have shape ({input.shape[0]},), got {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= input.shape[1]):
        raise ValueError(f"cross_entropy: target class indices must lie in [0, {input.shape[1]}) "
                         f"(ignore_index, PyTorch's way of skipping some, is not supported)")
    return CrossEntropy.apply(input, labels, reduction)


# ----------------------------------------------------------------------------- convolutions

class Conv2d(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any, stride: Tuple[int, int],
                padding: Tuple[int, int], dilation: Tuple[int, int]) -> Any:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return backend.conv2d_forward(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = backend.conv2d_backward_input(grad, weight, x.shape, *ctx.geometry) if need_x else None
        gw = backend.conv2d_backward_weight(x, grad, weight.shape, *ctx.geometry) if need_w else None
        gb = backend.conv2d_backward_bias(grad) if need_b else None
        return gx, gw, gb, None, None, None


class ConvTranspose2d(Function):
    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any, stride: Tuple[int, int],
                padding: Tuple[int, int], output_padding: Tuple[int, int],
                dilation: Tuple[int, int]) -> Any:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, output_padding, dilation)
        return backend.conv_transpose2d_forward(x, weight, bias, *ctx.geometry)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = ctx.geometry
        gx = backend.conv_transpose2d_backward_input(grad, weight, x.shape, *g) if need_x else None
        gw = backend.conv_transpose2d_backward_weight(x, grad, weight.shape, *g) if need_w else None
        gb = backend.conv2d_backward_bias(grad) if need_b else None
        return gx, gw, gb, None, None, None, None


def _check_conv_operands(name: str, input: Any, weight: Any, bias: Any, groups: int,
                         in_channels_axis: int) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    input, weight = _tensor(input, "input"), _tensor(weight, "weight")
    if groups != 1:
        raise ValueError(f"{name}: only groups=1 is supported, got groups={groups}")
    if input.ndim != 4:
        raise ValueError(f"{name}: input must be 4-D (N, C, H, W), got shape {input.shape}")
    layout = "(out, in, kh, kw)" if in_channels_axis == 1 else "(in, out, kh, kw)"
    if weight.ndim != 4:
        raise ValueError(f"{name}: weight must be 4-D {layout}, got shape {weight.shape}")
    if input.shape[1] != weight.shape[in_channels_axis]:
        raise ValueError(f"{name}: input has {input.shape[1]} channels but weight {weight.shape} "
                         f"{layout} expects {weight.shape[in_channels_axis]}")
    out_channels = weight.shape[1 - in_channels_axis]
    if bias is not None:
        bias = _tensor(bias, "bias")
        if bias.shape != (out_channels,):
            raise ValueError(f"{name}: bias must have shape ({out_channels},), got {bias.shape}")
    dtypes = {input.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1:
        raise ValueError(f"{name}: input, weight and bias must share one dtype, got "
                         f"input {input.dtype}, weight {weight.dtype}"
                         + ("" if bias is None else f", bias {bias.dtype}"))
    return input, weight, bias


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrPair = 1,
           padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation), as PyTorch's F.conv2d.

    input (N, C_in, H, W), weight (C_out, C_in, KH, KW), bias (C_out) or None
    -> (N, C_out, OH, OW), OH = (H + 2 padding - dilation (KH - 1) - 1) // stride + 1.
    """
    input, weight, bias = _check_conv_operands("conv2d", input, weight, bias, groups, 1)
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    out = backend.conv2d_output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    if min(out) <= 0:
        raise ValueError(f"conv2d: output size {out} is not positive for input {input.shape}, "
                         f"kernel {weight.shape[2:]}, stride {stride}, padding {padding}, "
                         f"dilation {dilation}")
    return Conv2d.apply(input, weight, bias, stride, padding, dilation)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrPair = 1, padding: IntOrPair = 0,
                     output_padding: IntOrPair = 0, groups: int = 1,
                     dilation: IntOrPair = 1) -> Tensor:
    """2-D transposed convolution, as PyTorch's F.conv_transpose2d (the adjoint of conv2d).

    input (N, C_in, H, W), weight (C_in, C_out, KH, KW), bias (C_out) or None
    -> (N, C_out, OH, OW), OH = (H - 1) stride - 2 padding + dilation (KH - 1) + output_padding + 1.
    output_padding must be smaller than max(stride, dilation) on each axis, as in PyTorch.
    """
    input, weight, bias = _check_conv_operands("conv_transpose2d", input, weight, bias, groups, 0)
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    output_padding = _pair(output_padding, "output_padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    backend.check_output_padding("conv_transpose2d", output_padding, stride, dilation)
    out = backend.conv_transpose2d_output_size(input.shape[2:], weight.shape[2:], stride, padding,
                                               output_padding, dilation)
    if min(out) <= 0:
        raise ValueError(f"conv_transpose2d: output size {out} is not positive for input "
                         f"{input.shape}, kernel {weight.shape[2:]}, stride {stride}, "
                         f"padding {padding}, output_padding {output_padding}")
    return ConvTranspose2d.apply(input, weight, bias, stride, padding, output_padding, dilation)


# ----------------------------------------------------------------------------- symmetry convolution
# Kernels mirror-symmetric left to right (the extended GASCA paper's
# "convolutional layer with a reduced number of parameters that exploits facial symmetry",
# which gives no formula: this is our interpretation).  Only the left half of each kernel
# is a parameter:
#
#   weight_half (..., KH, HW), HW = ceil(KW/2);   full kernel w[..., j] = weight_half[..., min(j, KW-1-j)]
#
# (for an odd KW the centre column is its own mirror).  The full width KW cannot be read off
# weight_half (HW = 2 stands for KW = 3 and 4), so every function takes it as kernel_width.
# On the CPU, symmetric_conv2d runs the symmetry convolution's own kernels (cpp/symconv2d.h:
# the mirrored inputs are added first, then multiplied once by the half); on CUDA, and for
# the transposed convolution everywhere, it takes the "parameterised form": the full kernel
# is made by mirroring (mirror_kernel) and the plain convolution runs; the full kernel's
# gradient folds back onto the half (fold_kernel).


def half_width(kernel_width: int) -> int:
    """HW = ceil(KW/2): the stored columns of a symmetric kernel of full width KW."""
    return (int(kernel_width) + 1) // 2


def mirror_kernel_array(weight_half: Any, kernel_width: int) -> Any:
    """The full kernel (..., KW) that weight_half (..., ceil(KW/2)) stands for (raw arrays)."""
    kw = int(kernel_width)
    idx = [min(j, kw - 1 - j) for j in range(kw)]
    return _xp(weight_half).ascontiguousarray(weight_half[..., idx])


def fold_kernel_array(grad_full: Any, kernel_width: int) -> Any:
    """The adjoint of mirror_kernel_array: a full kernel's gradient (..., KW) summed onto the
    half (..., ceil(KW/2)), grad[..., j] + grad[..., KW-1-j] (the centre column once)."""
    kw = int(kernel_width)
    out = grad_full[..., :half_width(kw)].copy()
    out[..., :kw // 2] += grad_full[..., ::-1][..., :kw // 2]
    return out


class MirrorKernel(Function):
    """weight_half (..., HW) -> the full mirrored kernel (..., KW); backward folds."""

    @staticmethod
    def forward(ctx: Context, weight_half: Any, kernel_width: int) -> Any:
        ctx.kernel_width = kernel_width
        return mirror_kernel_array(weight_half, kernel_width)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None]:
        return fold_kernel_array(grad, ctx.kernel_width), None


def mirror_kernel(weight_half: Tensor, kernel_width: int) -> Tensor:
    """The full mirror-symmetric kernel (..., KW) made from its left half weight_half
    (..., ceil(KW/2)), differentiably: the parameterised form of a symmetric kernel."""
    weight_half = _tensor(weight_half, "weight_half")
    kernel_width = _check_kernel_width("mirror_kernel", weight_half, kernel_width)
    return MirrorKernel.apply(weight_half, kernel_width)


def _check_kernel_width(name: str, weight_half: Tensor, kernel_width: Any) -> int:
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, np.integer)) \
            or kernel_width < 1:
        raise ValueError(f"{name}: kernel_width must be a positive int (the full kernel width "
                         f"KW), got {kernel_width!r}")
    kernel_width = int(kernel_width)
    if weight_half.ndim < 1 or weight_half.shape[-1] != half_width(kernel_width):
        raise ValueError(f"{name}: weight_half {weight_half.shape} must have ceil({kernel_width}/2)"
                         f" = {half_width(kernel_width)} columns (its last dimension) for "
                         f"kernel_width {kernel_width}")
    return kernel_width


class SymmetricConv2d(Function):
    """The symmetry convolution on the CPU kernels (backend.symconv2d_*)."""

    @staticmethod
    def forward(ctx: Context, x: Any, weight_half: Any, bias: Any, kernel_width: int,
                stride: Tuple[int, int], padding: Tuple[int, int],
                dilation: Tuple[int, int]) -> Any:
        ctx.save_for_backward(x, weight_half)
        ctx.geometry = (kernel_width, stride, padding, dilation)
        return backend.symconv2d_forward(x, weight_half, bias, *ctx.geometry)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        x, weight_half = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = ctx.geometry
        gx = backend.symconv2d_backward_input(grad, weight_half, x.shape, *g) if need_x else None
        gw = backend.symconv2d_backward_weight(x, grad, weight_half.shape, *g) if need_w else None
        gb = backend.conv2d_backward_bias(grad) if need_b else None
        return gx, gw, gb, None, None, None, None


def symmetric_conv2d(input: Tensor, weight_half: Tensor, bias: Optional[Tensor] = None,
                     kernel_width: int = None, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     dilation: IntOrPair = 1) -> Tensor:
    """The symmetry convolution: conv2d with a kernel mirror-symmetric left to right, given
    by its left half.

    input (N, C_in, H, W), weight_half (C_out, C_in, KH, ceil(KW/2)), bias (C_out) or None,
    kernel_width = KW (required: ceil(KW/2) does not determine KW) -> (N, C_out, OH, OW),
    equal to conv2d(input, mirror_kernel(weight_half, KW), bias, stride, padding, dilation).
    On the CPU it runs the symmetry convolution's own kernels (half the multiplications);
    on CUDA, conv2d with the mirrored kernel (the parameterised form).
    """
    if kernel_width is None:
        raise ValueError("symmetric_conv2d: kernel_width (the full kernel width KW) is required")
    input, weight_half, bias = _check_conv_operands("symmetric_conv2d", input, weight_half, bias,
                                                    1, 1)
    kernel_width = _check_kernel_width("symmetric_conv2d", weight_half, kernel_width)
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    kernel = (weight_half.shape[2], kernel_width)
    out = backend.conv2d_output_size(input.shape[2:], kernel, stride, padding, dilation)
    if min(out) <= 0:
        raise ValueError(f"symmetric_conv2d: output size {out} is not positive for input "
                         f"{input.shape}, kernel {kernel}, stride {stride}, padding {padding}, "
                         f"dilation {dilation}")
    if input.device == "cuda":
        return conv2d(input, mirror_kernel(weight_half, kernel_width), bias, stride, padding,
                      dilation)
    return SymmetricConv2d.apply(input, weight_half, bias, kernel_width, stride, padding, dilation)


def symmetric_conv_transpose2d(input: Tensor, weight_half: Tensor, bias: Optional[Tensor] = None,
                               kernel_width: int = None, stride: IntOrPair = 1,
                               padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                               dilation: IntOrPair = 1) -> Tensor:
    """The transposed convolution with a mirror-symmetric kernel given by its left half:
    weight_half (C_in, C_out, KH, ceil(KW/2)) -> conv_transpose2d(input,
    mirror_kernel(weight_half, KW), ...).  Always the parameterised form (the full kernel
    made by mirroring, then the existing transposed convolution; its gradient folded back):
    the same parameter saving, no saving in multiplications."""
    if kernel_width is None:
        raise ValueError("symmetric_conv_transpose2d: kernel_width (the full kernel width KW) "
                         "is required")
    weight_half = _tensor(weight_half, "weight_half")
    kernel_width = _check_kernel_width("symmetric_conv_transpose2d", weight_half, kernel_width)
    return conv_transpose2d(input, mirror_kernel(weight_half, kernel_width), bias, stride,
                            padding, output_padding, 1, dilation)


# ----------------------------------------------------------------------------- resampling

class UpsampleNearest(Function):
    """Nearest-neighbour upsampling of (N, C, H, W) by integer factors (sh, sw): every input
    pixel becomes an sh x sw block.  Its adjoint (the backward) sums each block back."""

    @staticmethod
    def forward(ctx: Context, x: Any, sh: int, sw: int) -> Any:
        n, c, h, w = x.shape
        ctx.factors = (sh, sw)
        xp = _xp(x)
        out = xp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw))
        return xp.ascontiguousarray(out).reshape(n, c, h * sh, w * sw)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        sh, sw = ctx.factors
        n, c, hs, ws = grad.shape
        return grad.reshape(n, c, hs // sh, sh, ws // sw, sw).sum(axis=(3, 5)), None, None


def interpolate(input: Tensor, size: Any = None, scale_factor: Any = None,
                mode: str = "nearest", align_corners: Any = None,
                recompute_scale_factor: Any = None, antialias: bool = False) -> Tensor:
    """Resize (N, C, H, W) maps, as torch.nn.functional.interpolate, for the one case this
    library implements: mode "nearest" with integer scale factors (given as scale_factor,
    or as a size that is an integer multiple of the input's).  Anything else raises."""
    x = _tensor(input, "interpolate: input")
    if x.ndim != 4:
        raise ValueError(f"interpolate: input must be (N, C, H, W), got shape {x.shape}")
    if mode != "nearest":
        raise ValueError(f"interpolate: mode {mode!r} is not implemented; only 'nearest' is")
    _unsupported("interpolate", align_corners=(align_corners, None),
                 recompute_scale_factor=(recompute_scale_factor, None), antialias=(antialias, False))
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    h, w = x.shape[2:]
    if scale_factor is not None:
        pair = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if len(pair) != 2 or any(float(f) != int(f) or int(f) < 1 for f in pair):
            raise ValueError(f"interpolate: scale_factor must be a positive integer or a pair of "
                             f"them, got {scale_factor!r} (fractional factors are not implemented)")
        sh, sw = int(pair[0]), int(pair[1])
    else:
        pair = size if isinstance(size, (tuple, list)) else (size, size)
        if len(pair) != 2 or any(int(s) < 1 for s in pair) or pair[0] % h or pair[1] % w:
            raise ValueError(f"interpolate: size {size!r} must be a positive integer multiple of "
                             f"the input's ({h}, {w})")
        sh, sw = int(pair[0]) // h, int(pair[1]) // w
    return UpsampleNearest.apply(x, sh, sw)


# ----------------------------------------------------------------------------- pooling

def _adaptive_windows(size: int, out: int) -> List[Tuple[int, int]]:
    """PyTorch's adaptive pooling windows along one axis: output cell i averages input
    positions [floor(i size / out), ceil((i + 1) size / out)).  When out divides size these
    are the size / out blocks; otherwise neighbouring windows overlap by one position."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2d(Function):
    """(N, C, H, W) -> (N, C, OH, OW): each output cell is the mean of its window
    (_adaptive_windows).  The backward spreads each cell's gradient evenly over its window,
    adding where windows overlap."""

    @staticmethod
    def forward(ctx: Context, x: Any, oh: int, ow: int) -> Any:
        n, c, h, w = x.shape
        rows, cols = _adaptive_windows(h, oh), _adaptive_windows(w, ow)
        ctx.geometry = (x.shape, rows, cols)
        if h % oh == 0 and w % ow == 0:  # disjoint blocks: one reshape, one mean
            return x.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))
        xp = _xp(x)
        out = xp.empty((n, c, oh, ow), dtype=x.dtype)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, None, None]:
        shape, rows, cols = ctx.geometry
        n, c, h, w = shape
        oh, ow = len(rows), len(cols)
        xp = _xp(grad)
        if h % oh == 0 and w % ow == 0:
            bh, bw = h // oh, w // ow
            spread = xp.broadcast_to((grad / (bh * bw))[:, :, :, None, :, None], (n, c, oh, bh, ow, bw))
            return xp.ascontiguousarray(spread).reshape(shape), None, None
        gx = xp.zeros(shape, dtype=grad.dtype)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                gx[:, :, r0:r1, c0:c1] += (grad[:, :, i, j] / ((r1 - r0) * (c1 - c0)))[:, :, None, None]
        return gx, None, None


def adaptive_avg_pool2d(input: Tensor, output_size: IntOrPair) -> Tensor:
    """Average pooling to a fixed output size, as torch.nn.functional.adaptive_avg_pool2d:
    (N, C, H, W) -> (N, C, OH, OW), each output cell the mean of its window of the input
    (windows overlap by one position where OH does not divide H).  output_size: an int or a
    pair of positive ints (None for "keep this axis", as in PyTorch)."""
    x = _tensor(input, "adaptive_avg_pool2d: input")
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: input must be (N, C, H, W), got shape {x.shape}")
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
    sizes = []
    for axis, (value, keep) in enumerate(zip(pair, x.shape[2:])):
        value = keep if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"adaptive_avg_pool2d: output_size must hold positive ints (or None), "
                             f"got {output_size!r}")
        sizes.append(int(value))
    if min(x.shape[2:]) < 1:
        raise ValueError(f"adaptive_avg_pool2d: input has an empty spatial axis: shape {x.shape}")
    return AdaptiveAvgPool2d.apply(x, sizes[0], sizes[1])
