"""Tensor, Function and the graph walk: the whole autograd.

A `Tensor` wraps an array (NumPy on "cpu", CuPy on "cuda") and, when it was produced by
an operation while gradients were being recorded, a `Context` that remembers which
`Function` produced it, from which input tensors, and what that function saved for its
backward pass.  Those contexts form a directed acyclic graph.  `Tensor.backward()` sorts
the graph topologically (iteratively: deep graphs are no problem) and runs each
function's `backward` once, from the output back to the leaves, summing the gradients
that reach a tensor along different paths.

Conventions, as in PyTorch:
- Only leaves (tensors made by the user, e.g. parameters) that require grad get `.grad`,
  and it accumulates across backward calls until it is reset (`zero_grad`).
- `.grad` is a raw array (a NumPy array on the CPU), not a Tensor.
- After `backward()` the graph is freed: each context drops its saved arrays and its
  inputs, so activations can be reclaimed.  A second backward through the same graph
  raises, unless the first one passed `retain_graph=True`.
- Inside `with no_grad():` operations record nothing.
- Where a method has a PyTorch name it has PyTorch's meaning: reductions take `dim` (an
  int, a tuple, or None for every dim) and `keepdim` (NumPy's `axis` / `keepdims` are
  aliases); `transpose(dim0, dim1)` swaps two dims, `permute(*dims)` reorders them all;
  `size()` is the shape and `numel()` the element count.  Where we deliberately differ,
  the call raises and says what to use instead (`.T` of a tensor with more than 2 dims,
  `max(axis=...)`, `view(dtype)`, ...); tests/test_torch_habits.py lists every case.
  Indices (argmax, max(dim).indices) are int64 arrays, since Tensors hold floats only.

Data types: float32 and float64 arrays are kept as given (not copied).  Anything else
(Python numbers, lists, integer, boolean or float16 arrays) becomes float32, PyTorch's
default floating type, unless `dtype=` says otherwise.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import backend

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ----------------------------------------------------------------------------- grad mode

_grad_enabled = True


def is_grad_enabled() -> bool:
    """True when operations are being recorded for backward."""
    return _grad_enabled


@contextlib.contextmanager
def set_grad_enabled(mode: bool) -> Iterator[None]:
    """Context manager that turns recording on (True) or off (False) inside its block."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, bool(mode)
    try:
        yield
    finally:
        _grad_enabled = previous


class no_grad:
    """Record nothing inside the block: `with no_grad(): ...` or as a decorator `@no_grad()`."""

    def __enter__(self) -> None:
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc: Any) -> None:
        global _grad_enabled
        _grad_enabled = self._previous

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)
        return wrapper


class enable_grad(no_grad):
    """Record operations inside the block, even within an enclosing `no_grad()`."""

    def __enter__(self) -> None:
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, True


# ----------------------------------------------------------------------------- Function

class Context:
    """What one operation remembers for its backward pass.

    As in torch.autograd.Function: forward calls `ctx.save_for_backward(*tensors)` with the
    arrays backward will need (or None), and backward reads them back from
    `ctx.saved_tensors`; `ctx.needs_input_grad[i]` says whether positional argument i of
    forward is a tensor that requires grad (backward may skip the others).  Anything else
    (shapes, options) is set as a plain attribute (`ctx.stride = stride`).  Difference: our
    Functions compute on raw arrays, so what is saved and given back are those arrays (a
    Tensor passed to save_for_backward is saved as its array).  `ctx.saved` is the same
    tuple under this project's older name.
    """

    def __init__(self, function: type, inputs: Tuple[Optional["Tensor"], ...]) -> None:
        self.function = function
        self.inputs = inputs  # one entry per positional argument: the Tensor, or None
        self.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        self.saved: Tuple[Any, ...] = ()
        self.released = False

    def save_for_backward(self, *tensors: Any) -> None:
        """Keep these arrays (or None) for backward: read them back from `ctx.saved_tensors`."""
        saved = []
        for i, t in enumerate(tensors):
            if isinstance(t, Tensor):
                t = t.data
            elif t is not None and not (isinstance(t, (np.ndarray, np.generic)) or backend.is_cupy_array(t)):
                raise TypeError(f"save_for_backward can only save arrays, Tensors or None, but "
                                f"argument {i} is a {type(t).__name__}; keep other values as "
                                f"attributes of ctx (ctx.name = value)")
            saved.append(t)
        self.saved = tuple(saved)

    @property
    def saved_tensors(self) -> Tuple[Any, ...]:
        """What forward passed to `save_for_backward`, in the same order."""
        if self.released:
            raise RuntimeError("saved_tensors of a graph that backward() has already freed; "
                               "pass retain_graph=True to the first backward to keep them")
        return self.saved

    def release(self) -> None:
        """Drop everything the backward pass needed, so that memory can be reclaimed."""
        self.__dict__ = {"function": self.function, "needs_input_grad": self.needs_input_grad,
                         "inputs": (), "saved": (), "released": True}


class Function:
    """One differentiable operation.  Subclasses define two static methods on raw arrays:

        forward(ctx, *args, **kwargs) -> array
        backward(ctx, grad) -> one gradient (array or None) per positional argument of forward

    and are called through `apply`, which unwraps Tensor arguments, runs forward, and
    links the result into the graph when a gradient will be needed.  As in
    torch.autograd.Function, forward keeps what backward needs with
    `ctx.save_for_backward(a, b)` and backward reads it with `a, b = ctx.saved_tensors`;
    backward must return as many gradients as forward has positional arguments (extra
    trailing Nones are allowed), else backward() raises.  Unlike PyTorch, forward and
    backward see raw arrays (NumPy or CuPy), not Tensors.

        class Square(Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                return 2 * x * grad
    """

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        """Compute the output array from input arrays; save what backward needs in ctx."""
        raise NotImplementedError("a Function subclass must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Tuple[Any, ...]:
        """Gradients with respect to each input, given the output's gradient."""
        raise NotImplementedError("a Function subclass must define backward(ctx, grad)")

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> "Tensor":
        tensors = tuple(a if isinstance(a, Tensor) else None for a in args)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        devices = {t.device for t in tensors if t is not None}
        if len(devices) > 1:
            raise ValueError(f"{cls.__name__}: all tensors must be on one device, got {sorted(devices)}")
        ctx = Context(cls, tensors)
        out = cls.forward(ctx, *raw, **kwargs)
        track = _grad_enabled and any(ctx.needs_input_grad)
        result = Tensor._wrap(out, requires_grad=track)
        if track:
            result._ctx = ctx
        return result


# ----------------------------------------------------------------------------- Tensor

def _as_array(data: Any, dtype: Any = None) -> Any:
    """The array a Tensor holds: float32/float64 kept as given, the rest as float32."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if backend.is_cupy_array(data) or isinstance(data, np.ndarray):
        if dtype is not None:
            return data.astype(dtype, copy=False)
        if data.dtype in FLOAT_DTYPES:
            return data
        return data.astype(np.float32)
    try:
        return np.asarray(data, dtype=dtype or np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"Tensor data must be an array, a number or a nested list of numbers, "
                        f"got {type(data).__name__} ({exc})") from None


class _Default:
    """The default of an argument that has a second spelling (PyTorch's `dim` / `keepdim`
    and NumPy's `axis` / `keepdims`): it stands for `value` and lets a call that gives both
    spellings be told from one that gives one."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


ALL_DIMS = _Default(None)      # dim left out: every dim
NO_KEEPDIM = _Default(False)   # keepdim left out
NOT_GIVEN = _Default(None)     # an alias (axis, keepdims) left out

Dim = Union[None, int, Sequence[int]]


def _shape_args(args: Tuple[Any, ...], name: str) -> Tuple[Any, ...]:
    """Ints given as f(2, 3) or f((2, 3)) / f([2, 3]): the tuple (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    for a in args:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            extra = (" (PyTorch's view(dtype) reinterprets bytes; that is not supported: "
                     "use .to(dtype=...) to convert values)"
                     if name == "view" and isinstance(a, (type, np.dtype, str)) else "")
            raise TypeError(f"{name}: expected ints, or one tuple of ints, got {args!r}{extra}")
    return tuple(int(a) for a in args)


class Tensor:
    """An array with an optional gradient.

    Args:
        data: array-like.  NumPy/CuPy float32 or float64 arrays are held without copying;
            other inputs become float32 (or `dtype`).
        requires_grad: record operations on this tensor so that `.grad` is filled by backward.
        dtype: float32 or float64, to convert the data to.
        device: "cpu" or "cuda", to move the data to.
    """

    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__, not NumPy

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None,
                 device: Optional[str] = None) -> None:
        array = _as_array(data, dtype)
        if device is not None:
            array = backend.to_device(array, device)
        self.data = array
        self.grad: Optional[Any] = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Optional[Context] = None
        self._retains_grad = False

    @classmethod
    def _wrap(cls, array: Any, requires_grad: bool = False) -> "Tensor":
        """A Tensor around an array that is already float32/float64 (no checks)."""
        t = Tensor.__new__(Tensor)
        t.data, t.grad, t.requires_grad, t._ctx, t._retains_grad = array, None, requires_grad, None, False
        return t

    # --- properties
    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def size(self, dim: Optional[int] = None) -> Any:
        """The shape, as PyTorch's `x.size()`, or the length of dimension `dim`.
        (NumPy's `a.size`, the number of elements, is `numel()`.)"""
        if dim is None:
            return self.shape
        if self.ndim == 0:
            raise IndexError(f"size({dim}): a 0-D tensor has no dims")
        return self.shape[_F._dim(dim, self.ndim, "size")]

    def numel(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    def dim(self) -> int:
        """The number of dimensions (the same as `ndim`)."""
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation."""
        return self._ctx is None

    @property
    def grad_fn(self) -> Optional[type]:
        """The Function that produced this tensor (None for leaves)."""
        return None if self._ctx is None else self._ctx.function

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a Tensor with {self.data.size} elements is "
                               "ambiguous (as in PyTorch); use .any() / .all() on .numpy(), or "
                               "compare .item()")
        return bool(self.data.reshape(()))

    # Comparisons are elementwise, as in PyTorch (`t == 0`, `pred == target`), and record no
    # graph. Deliberate difference: our Tensors hold floats only, so the result holds 1.0
    # where the comparison is true and 0.0 elsewhere, in the tensor's dtype, where PyTorch
    # gives a bool tensor; `(pred == target).mean()` and `.sum()` read the same. A Tensor
    # is hashed by identity (as in PyTorch), so it can still key a dict.
    __hash__ = object.__hash__

    def _compare(self, other: Any, op: str) -> "Tensor":
        other_data = other.data if isinstance(other, Tensor) else other
        xp = backend.get_array_module(self.data)
        result = getattr(self.data, op)(other_data)
        if result is NotImplemented:
            raise TypeError(f"cannot compare a Tensor with {type(other).__name__}")
        return Tensor(xp.asarray(result, dtype=self.data.dtype))

    def __eq__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, "__eq__")

    def __ne__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, "__ne__")

    def __lt__(self, other: Any) -> "Tensor":
        return self._compare(other, "__lt__")

    def __le__(self, other: Any) -> "Tensor":
        return self._compare(other, "__le__")

    def __gt__(self, other: Any) -> "Tensor":
        return self._compare(other, "__gt__")

    def __ge__(self, other: Any) -> "Tensor":
        return self._compare(other, "__ge__")

    def __float__(self) -> float:
        return self.item()

    def __int__(self) -> int:
        return int(self.item())

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self.requires_grad else ""
        device = ", device='cuda'" if self.device == "cuda" else ""
        body = np.array2string(backend.to_numpy(self.data), precision=4, separator=", ",
                               threshold=20, prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{device}{extra})"

    # --- conversion
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (the array itself on the CPU; a host copy on CUDA)."""
        return backend.to_numpy(self.data)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def item(self) -> float:
        """The value of a one-element tensor as a Python float."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return float(self.data.reshape(()))

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, cut from the graph (requires_grad False)."""
        return Tensor._wrap(self.data, requires_grad=False)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set requires_grad in place (only on leaves, as in PyTorch); returns self."""
        if not self.is_leaf and not requires_grad:
            raise RuntimeError("requires_grad_(False) is only allowed on leaf tensors; "
                               "use .detach() to cut a result from the graph")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Also keep `.grad` on this non-leaf tensor during backward."""
        self._retains_grad = True

    def to(self, device: Optional[str] = None, dtype: Any = None) -> "Tensor":
        """This tensor on another device and/or in another dtype; differentiable.
        Returns self when nothing changes."""
        out = self
        if dtype is not None and np.dtype(dtype) != self.dtype:
            out = _F.cast(out, dtype)
        if device is not None and backend.check_device(device) != out.device:
            out = _F.to_device(out, device)
        return out

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def float(self) -> "Tensor":
        return self.to(dtype=np.float32)

    def double(self) -> "Tensor":
        return self.to(dtype=np.float64)

    # --- autograd
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Compute the gradient of this tensor with respect to every leaf of its graph.

        Args:
            grad: dL/d(self), same shape as self.  May be left out only when self has one
                element (a scalar loss); it is then 1.
            retain_graph: keep the graph so that backward can run through it again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(was it computed under no_grad(), or from tensors that "
                               "do not require grad?)")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a grad argument needs a one-element "
                                   f"(scalar) output, got shape {self.shape}; pass "
                                   f"grad=array of that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = _as_array(grad, self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, "
                                 f"expected the tensor's shape {self.shape}")
            grad = backend.to_device(grad, self.device)
        run_backward(self, grad, retain_graph)

    # --- operators (all go through functional, so they are recorded)
    def __add__(self, other: Any) -> "Tensor":
        return _F.add(self, other)

    def __radd__(self, other: Any) -> "Tensor":
        return _F.add(other, self)

    def __sub__(self, other: Any) -> "Tensor":
        return _F.sub(self, other)

    def __rsub__(self, other: Any) -> "Tensor":
        return _F.sub(other, self)

    def __mul__(self, other: Any) -> "Tensor":
        return _F.mul(self, other)

    def __rmul__(self, other: Any) -> "Tensor":
        return _F.mul(other, self)

    def __truediv__(self, other: Any) -> "Tensor":
        return _F.div(self, other)

    def __rtruediv__(self, other: Any) -> "Tensor":
        return _F.div(other, self)

    def __neg__(self) -> "Tensor":
        return _F.neg(self)

    def __pow__(self, exponent: float) -> "Tensor":
        return _F.pow(self, exponent)

    def __matmul__(self, other: Any) -> "Tensor":
        return _F.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Tensor":
        return _F.matmul(other, self)

    def __getitem__(self, index: Any) -> "Tensor":
        return _F.getitem(self, index)

    # --- reductions: PyTorch's dim / keepdim (NumPy's axis / keepdims are accepted as
    # aliases; giving both spellings raises).  See the functions of the same names in
    # functional for what each returns and where we deliberately differ.
    def sum(self, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
            axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> "Tensor":
        """Sum over `dim` (an int, a tuple of ints, or None for every dim), as torch.sum."""
        return _F.sum(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def mean(self, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
             axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> "Tensor":
        """Mean over `dim` (an int, a tuple of ints, or None for every dim), as torch.mean."""
        return _F.mean(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def amax(self, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
             axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> "Tensor":
        """Largest value over `dim`, as torch.amax (the gradient is shared among ties)."""
        return _F.amax(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def amin(self, dim: Dim = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
             axis: Dim = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> "Tensor":
        """Smallest value over `dim`, as torch.amin (the gradient is shared among ties)."""
        return _F.amin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def max(self, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
            axis: Any = NOT_GIVEN, keepdims: Any = NOT_GIVEN) -> Any:
        """As torch.max: `x.max()` is the largest element; `x.max(dim)` is the pair
        (values, indices) along dim (a named tuple; indices are an int64 array).
        NumPy's axis= raises (NumPy's max gives the values only: use amax)."""
        return _F.max_or_min("max", self, dim, keepdim, axis=axis, keepdims=keepdims)

    def min(self, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
            axis: Any = NOT_GIVEN, keepdims: Any = NOT_GIVEN) -> Any:
        """As torch.min: `x.min()` is the smallest element; `x.min(dim)` is the pair
        (values, indices) along dim (a named tuple; indices are an int64 array).
        NumPy's axis= raises (NumPy's min gives the values only: use amin)."""
        return _F.max_or_min("min", self, dim, keepdim, axis=axis, keepdims=keepdims)

    def argmax(self, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
               axis: Optional[int] = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Any:
        """Index of the largest value along dim (of the flattened tensor when dim is None),
        as torch.argmax, returned as an int64 array (NumPy, or CuPy on "cuda")."""
        return _F.argmax(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def argmin(self, dim: Optional[int] = ALL_DIMS, keepdim: bool = NO_KEEPDIM, *,
               axis: Optional[int] = NOT_GIVEN, keepdims: bool = NOT_GIVEN) -> Any:
        """Index of the smallest value along dim, as torch.argmin (an int64 array)."""
        return _F.argmin(self, dim, keepdim, axis=axis, keepdims=keepdims)

    # --- shapes: PyTorch's meanings (transpose swaps two dims; permute lists them all)
    def reshape(self, *shape: Any) -> "Tensor":
        """This tensor's elements in a new shape, given as ints or one tuple (one entry
        may be -1: inferred)."""
        return _F.reshape(self, _shape_args(shape, "reshape"))

    def view(self, *shape: Any) -> "Tensor":
        """As reshape.  Difference: PyTorch's view refuses a tensor whose memory layout
        does not allow it (after a transpose, say); ours copies instead (our operations
        never write into their inputs, so only writing into `.data` yourself could tell
        the copy from a view).  PyTorch's `view(dtype)`, a reinterpretation of the
        bytes, raises."""
        return _F.reshape(self, _shape_args(shape, "view"))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        """Dims start_dim..end_dim merged into one, as torch.flatten."""
        return _F.flatten(self, start_dim, end_dim)

    def transpose(self, dim0: Optional[int] = None, dim1: Optional[int] = None, *more: int) -> "Tensor":
        """This tensor with dims dim0 and dim1 swapped, as torch.transpose.  (NumPy's
        a.transpose(*axes) is permute(*dims) here; a.transpose() is .T for 2-D.)"""
        if dim0 is None or dim1 is None or more:
            given = tuple(d for d in (dim0, dim1) + more if d is not None)
            raise TypeError(f"transpose(dim0, dim1) swaps two dims, as in PyTorch; got "
                            f"transpose{given}.  NumPy's transpose(*axes) is permute(*dims) "
                            f"here, and NumPy's transpose() of a 2-D array is .T")
        return _F.transpose(self, dim0, dim1)

    def permute(self, *dims: Any) -> "Tensor":
        """This tensor with its dims reordered: permute(2, 0, 1) or permute((2, 0, 1))."""
        return _F.permute(self, _shape_args(dims, "permute"))

    @property
    def T(self) -> "Tensor":
        """The transpose of a 2-D tensor; a 0-D or 1-D tensor is returned as it is, as in
        PyTorch.  Deliberate difference: PyTorch deprecates .T on other dims (where it
        reverses every dim, NumPy's meaning); ours raises: use .mT or permute."""
        if self.ndim <= 1:
            return self
        if self.ndim == 2:
            return _F.transpose(self, 0, 1)
        raise RuntimeError(f".T is for 2-D tensors (and returns 0-D/1-D ones as they are), got "
                           f"{self.ndim}-D shape {self.shape}; PyTorch deprecates it there: use "
                           f".mT to swap the last two dims, or permute(...) to reorder them all")

    @property
    def mT(self) -> "Tensor":
        """The last two dims swapped (a batch of matrices transposed), as PyTorch's .mT."""
        if self.ndim < 2:
            raise RuntimeError(f".mT needs a tensor with at least 2 dims, got shape {self.shape}")
        return _F.transpose(self, -2, -1)

    def squeeze(self, dim: Dim = None) -> "Tensor":
        """Dims of size 1 removed: every one (dim None), or those of `dim` (an int or a
        tuple) that have size 1, as torch.squeeze (a dim of another size is left alone)."""
        return _F.squeeze(self, dim)

    def unsqueeze(self, dim: int) -> "Tensor":
        """A new dim of size 1 inserted at position `dim` (in [-ndim-1, ndim])."""
        return _F.unsqueeze(self, dim)

    def contiguous(self) -> "Tensor":
        """Returns self: our operations accept any memory layout (see view)."""
        return self

    def relu(self) -> "Tensor":
        return _F.relu(self)

    def sigmoid(self) -> "Tensor":
        return _F.sigmoid(self)

    def tanh(self) -> "Tensor":
        return _F.tanh(self)

    def exp(self) -> "Tensor":
        return _F.exp(self)

    def log(self) -> "Tensor":
        return _F.log(self)

    def abs(self) -> "Tensor":
        return _F.abs(self)

    def clamp(self, min: Optional[float] = None, max: Optional[float] = None) -> "Tensor":
        return _F.clamp(self, min, max)


# ----------------------------------------------------------------------------- graph walk

def _topological_order(root: Tensor) -> List[Tensor]:
    """Tensors of root's graph that require grad, each after every tensor that uses it.

    Iterative depth-first search: a tensor is appended once all of its inputs have been
    (post-order); reversing gives the order in which backward must visit them.
    """
    order: List[Tensor] = []
    visited = set()
    stack: List[Tuple[Tensor, bool]] = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        ctx = tensor._ctx
        if ctx is not None:
            if ctx.released:
                raise RuntimeError(
                    "backward() through a graph that has already been freed: the first "
                    "backward() freed it; pass retain_graph=True to backward twice")
            for parent in ctx.inputs:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


def _accumulate_leaf_grad(tensor: Tensor, grad: Any) -> None:
    xp = backend.get_array_module(grad)
    if tensor.grad is None:
        # A fresh, contiguous array the user (and the optimizer kernels) may own.
        tensor.grad = xp.array(grad, dtype=tensor.dtype, order="C", copy=True)
    else:
        tensor.grad += grad


def _check_gradient_count(ctx: Context, input_grads: Tuple[Any, ...]) -> None:
    """As PyTorch: one gradient per positional input of forward; extra trailing Nones pass."""
    expected = len(ctx.inputs)
    if len(input_grads) < expected or any(g is not None for g in input_grads[expected:]):
        raise RuntimeError(f"{ctx.function.__name__}.backward returned {len(input_grads)} "
                           f"gradients, expected {expected} (one per positional argument of "
                           f"forward; None for those that need none)")


def run_backward(root: Tensor, grad: Any, retain_graph: bool = False) -> None:
    """Propagate `grad` (dL/droot) through root's graph to its leaves."""
    order = _topological_order(root)
    grads = {id(root): grad}
    for tensor in order:
        g = grads.pop(id(tensor), None)
        ctx = tensor._ctx
        if g is None:  # no gradient reached this tensor along any path
            if ctx is not None and not retain_graph:
                ctx.release()
            continue
        if ctx is None or tensor._retains_grad:
            _accumulate_leaf_grad(tensor, g)
        if ctx is None:
            continue
        input_grads = ctx.function.backward(ctx, g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if len(input_grads) != len(ctx.inputs):
            _check_gradient_count(ctx, input_grads)
        for parent, pg in zip(ctx.inputs, input_grads):
            if parent is None or pg is None or not parent.requires_grad:
                continue
            if tuple(pg.shape) != parent.shape:
                raise RuntimeError(f"{ctx.function.__name__}.backward returned a gradient of "
                                   f"shape {tuple(pg.shape)} for an input of shape {parent.shape}")
            if pg.dtype != parent.dtype:
                pg = pg.astype(parent.dtype)
            key = id(parent)
            # Never add in place: a backward may hand the same array to several inputs.
            grads[key] = pg if key not in grads else grads[key] + pg
        if not retain_graph:
            ctx.release()


from . import functional as _F  # noqa: E402  (functional needs Tensor and Function above)
