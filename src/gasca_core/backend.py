"""The one dispatch point between Python and the kernels.

Two things live here and nowhere else:

1. *Which array library holds the numbers.*  Device "cpu" means NumPy arrays, device
   "cuda" means CuPy arrays.  `get_array_module(device_or_array)` returns the module, so
   that the rest of the package writes `xp.exp(x)` once for both.  Importing gasca_core
   never imports CuPy: it is imported on the first request for "cuda".

2. *Which compiled module runs a kernel.*  NumPy arrays go to `gasca_core._C` (the C++
   kernels), CuPy arrays to `gasca_core._C_cuda` (the CUDA kernels, on CuPy's current
   stream).  Every kernel wrapper below allocates its output, makes its inputs
   C-contiguous, and calls the binding with the argument order of python/README.md.

There is no pure-Python fallback for the kernels: if the extension did not build, the
first kernel call raises an ImportError that says how to build it.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Tuple, Union

import numpy as np

Pair = Tuple[int, int]
DEVICES = ("cpu", "cuda")

_cupy = None          # the cupy module once imported
_cpu_kernels = None   # gasca_core._C once imported
_cuda_kernels = None  # gasca_core._C_cuda once imported


# ----------------------------------------------------------------------------- devices

def _import_cupy():
    """Import CuPy on first use; None when it is not installed or broken."""
    global _cupy
    if _cupy is None:
        try:
            _cupy = importlib.import_module("cupy")
        except Exception:  # not installed, or installed without a working CUDA runtime
            return None
    return _cupy


def require_cuda() -> Any:
    """Return the cupy module if the whole CUDA path is usable, else raise RuntimeError.

    The message says exactly what is missing: CuPy, a visible GPU, or gasca_core's CUDA
    extension `_C_cuda` (built only when nvcc was found at install time).
    """
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(
            "device 'cuda' needs CuPy, which is not installed (or failed to import): "
            "install it with `pip install \".[cuda]\"` (cupy-cuda13x)")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or the driver refuses
        raise RuntimeError(f"device 'cuda' needs a GPU, but CUDA reports none visible ({exc})") from None
    if count == 0:
        raise RuntimeError("device 'cuda' needs a GPU, but no GPU is visible to CUDA")
    _cuda_module()
    return cp


def check_device(device: str) -> str:
    """Validate a device name ("cpu" or "cuda"; "cuda:0" is read as "cuda")."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string 'cpu' or 'cuda', got {type(device).__name__}")
    name = device.split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return name


def is_cupy_array(array: Any) -> bool:
    """True for a CuPy ndarray (checked without importing CuPy)."""
    return type(array).__module__.startswith("cupy")


def device_of(array: Any) -> str:
    """"cuda" for a CuPy array, "cpu" for anything else."""
    return "cuda" if is_cupy_array(array) else "cpu"


def get_array_module(device_or_array: Union[str, Any]) -> Any:
    """NumPy for "cpu" or a NumPy array; CuPy for "cuda" or a CuPy array."""
    if isinstance(device_or_array, str):
        if check_device(device_or_array) == "cpu":
            return np
        return require_cuda()
    if is_cupy_array(device_or_array):
        return _import_cupy()
    return np


def to_device(array: Any, device: str) -> Any:
    """The array on `device` (the same object when it is already there)."""
    device = check_device(device)
    if device == device_of(array):
        return array
    if device == "cpu":
        return array.get()
    return require_cuda().asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy array with the same values (a host copy for CuPy arrays)."""
    return array.get() if is_cupy_array(array) else np.asarray(array)


# ----------------------------------------------------------------------------- modules

def _cpu_module():
    global _cpu_kernels
    if _cpu_kernels is None:
        try:
            _cpu_kernels = importlib.import_module("gasca_core._C")
        except ImportError as exc:
            raise ImportError(
                "gasca_core's C++ extension gasca_core._C is not built or failed to load "
                f"({exc}); install the package with `pip install .` from the source tree, "
                "which compiles it") from exc
    return _cpu_kernels


def _cuda_module():
    global _cuda_kernels
    if _cuda_kernels is None:
        try:
            _cuda_kernels = importlib.import_module("gasca_core._C_cuda")
        except ImportError as exc:
            raise RuntimeError(
                "device 'cuda' needs gasca_core's CUDA extension gasca_core._C_cuda, which "
                f"is not built or failed to load ({exc}); reinstall on a machine with nvcc, "
                "forcing it with `pip install . -C cmake.define.GASCA_CUDA=ON`") from None
    return _cuda_kernels


def _kernels_for(array: Any):
    """(module, extra keyword arguments) to run a kernel on `array`'s device."""
    if is_cupy_array(array):
        module = _cuda_module()
        return module, {"stream": _import_cupy().cuda.get_current_stream().ptr}
    return _cpu_module(), {}


def _c(array: Any) -> Any:
    """A C-contiguous version of `array` (the same object when it already is), whose dtype
    is NumPy's canonical dtype object (see `_canonical`)."""
    xp = get_array_module(array)
    return _canonical(xp.ascontiguousarray(array))


def _canonical(array: Any) -> Any:
    """A view of `array` whose dtype is the canonical np.dtype(np.float32/float64) object.

    Arrays restored by pickle carry an equal but distinct dtype object, which an identity
    check in a binding would reject; a view shares the memory, so in-place updates still
    reach the original array.
    """
    if array is None or is_cupy_array(array):
        return array
    canonical = np.dtype(array.dtype.type)
    return array if array.dtype is canonical or not array.dtype.isnative else array.view(canonical)


def versions() -> dict:
    """Version names of the CPU kernels: {"gemm": [...], "conv2d": [...], "optim": [...]}."""
    return _cpu_module().versions()


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return _cpu_module().get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use."""
    _cpu_module().set_num_threads(int(n))


# ----------------------------------------------------------------------------- geometry
# Python's copy of the geometry in cpp/conv2d.h (conv_out_size, conv_transpose_out_size and
# the output_padding rule), which the kernels and the bindings' checks use: Python sizes the
# outputs it allocates and explains a bad geometry before the bindings reject it.

def conv2d_output_size(in_size: Pair, kernel: Pair, stride: Pair, padding: Pair,
                       dilation: Pair) -> Pair:
    """(OH, OW) of a convolution: (H + 2P - D(K-1) - 1) // S + 1 per axis."""
    return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for i, k, s, p, d in zip(in_size, kernel, stride, padding, dilation))


def conv_transpose2d_output_size(in_size: Pair, kernel: Pair, stride: Pair, padding: Pair,
                                 output_padding: Pair, dilation: Pair) -> Pair:
    """(OH, OW) of a transposed convolution: (H-1)S - 2P + D(K-1) + OP + 1 per axis."""
    return tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1  # type: ignore[return-value]
                 for i, k, s, p, op, d in zip(in_size, kernel, stride, padding,
                                              output_padding, dilation))


def check_output_padding(who: str, output_padding: Pair, stride: Pair, dilation: Pair) -> None:
    """PyTorch's rule for a transposed convolution: output_padding < max(stride, dilation) on
    each axis, else ValueError naming `who`.  (Where output_padding >= stride the kernels
    compute the adjoint convolution with an output smaller than its natural size: see
    make_conv_transpose_geometry in cpp/conv2d.h.)"""
    limit = tuple(max(s, d) for s, d in zip(stride, dilation))
    if any(op >= lim for op, lim in zip(output_padding, limit)):
        raise ValueError(f"{who}: output_padding {tuple(output_padding)} must be smaller than "
                         f"max(stride, dilation) = {limit} on each axis (stride {tuple(stride)}, "
                         f"dilation {tuple(dilation)})")


# ----------------------------------------------------------------------------- conv kernels

def conv2d_forward(x, weight, bias, stride: Pair, padding: Pair, dilation: Pair,
                   version: int = -1):
    """y = conv2d(x, weight) + bias.  x (N,Ci,H,W), weight (Co,Ci,KH,KW), bias (Co) or None
    -> y (N,Co,OH,OW)."""
    xp = get_array_module(x)
    n, _, h, w = x.shape
    co, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size((h, w), (kh, kw), stride, padding, dilation)
    out = xp.empty((n, co, oh, ow), dtype=x.dtype)
    module, extra = _kernels_for(x)
    module.conv2d_forward(_c(x), _c(weight), None if bias is None else _c(bias),
                          _canonical(out), tuple(stride), tuple(padding), tuple(dilation), version=version, **extra)
    return out


def conv2d_backward_input(grad_out, weight, input_shape, stride: Pair, padding: Pair,
                          dilation: Pair, version: int = -1):
    """dL/dx of conv2d.  grad_out (N,Co,OH,OW), weight (Co,Ci,KH,KW) -> (N,Ci,H,W) = input_shape."""
    xp = get_array_module(grad_out)
    grad_in = xp.empty(tuple(input_shape), dtype=grad_out.dtype)
    module, extra = _kernels_for(grad_out)
    module.conv2d_backward_input(_c(grad_out), _c(weight), _canonical(grad_in), tuple(stride),
                                 tuple(padding), tuple(dilation), version=version, **extra)
    return grad_in


def conv2d_backward_weight(x, grad_out, weight_shape, stride: Pair, padding: Pair,
                           dilation: Pair, version: int = -1):
    """dL/dweight of conv2d.  x (N,Ci,H,W), grad_out (N,Co,OH,OW) -> (Co,Ci,KH,KW) = weight_shape."""
    xp = get_array_module(x)
    grad_weight = xp.empty(tuple(weight_shape), dtype=x.dtype)
    module, extra = _kernels_for(x)
    module.conv2d_backward_weight(_c(x), _c(grad_out), _canonical(grad_weight), tuple(stride),
                                  tuple(padding), tuple(dilation), version=version, **extra)
    return grad_weight


def conv2d_backward_bias(grad_out):
    """dL/dbias of conv2d or conv_transpose2d: grad_out (N,C,H,W) summed over N, H, W -> (C)."""
    xp = get_array_module(grad_out)
    grad_bias = xp.empty((grad_out.shape[1],), dtype=grad_out.dtype)
    module, extra = _kernels_for(grad_out)
    module.conv2d_backward_bias(_c(grad_out), _canonical(grad_bias), **extra)
    return grad_bias


def conv_transpose2d_forward(x, weight, bias, stride: Pair, padding: Pair, output_padding: Pair,
                             dilation: Pair, version: int = -1):
    """y = conv_transpose2d(x, weight) + bias.  x (N,Ci,H,W), weight (Ci,Co,KH,KW),
    bias (Co) or None -> y (N,Co,OH,OW)."""
    xp = get_array_module(x)
    n, _, h, w = x.shape
    _, co, kh, kw = weight.shape
    oh, ow = conv_transpose2d_output_size((h, w), (kh, kw), stride, padding, output_padding,
                                          dilation)
    out = xp.empty((n, co, oh, ow), dtype=x.dtype)
    module, extra = _kernels_for(x)
    module.conv_transpose2d_forward(_c(x), _c(weight), None if bias is None else _c(bias),
                                    _canonical(out), tuple(stride), tuple(padding), tuple(output_padding),
                                    tuple(dilation), version=version, **extra)
    return out


def conv_transpose2d_backward_input(grad_out, weight, input_shape, stride: Pair, padding: Pair,
                                    output_padding: Pair, dilation: Pair, version: int = -1):
    """dL/dx of conv_transpose2d.  grad_out (N,Co,OH,OW), weight (Ci,Co,KH,KW) -> input_shape."""
    xp = get_array_module(grad_out)
    grad_in = xp.empty(tuple(input_shape), dtype=grad_out.dtype)
    module, extra = _kernels_for(grad_out)
    module.conv_transpose2d_backward_input(_c(grad_out), _c(weight), _canonical(grad_in), tuple(stride),
                                           tuple(padding), tuple(output_padding),
                                           tuple(dilation), version=version, **extra)
    return grad_in


def conv_transpose2d_backward_weight(x, grad_out, weight_shape, stride: Pair, padding: Pair,
                                     output_padding: Pair, dilation: Pair, version: int = -1):
    """dL/dweight of conv_transpose2d.  x (N,Ci,H,W), grad_out (N,Co,OH,OW) -> (Ci,Co,KH,KW)."""
    xp = get_array_module(x)
    grad_weight = xp.empty(tuple(weight_shape), dtype=x.dtype)
    module, extra = _kernels_for(x)
    module.conv_transpose2d_backward_weight(_c(x), _c(grad_out), _canonical(grad_weight), tuple(stride),
                                            tuple(padding), tuple(output_padding),
                                            tuple(dilation), version=version, **extra)
    return grad_weight


def gemm(a, b, trans_a: bool = False, trans_b: bool = False, version: int = -1):
    """c = op(a) @ op(b) with our blocked matrix product (2-D arrays)."""
    xp = get_array_module(a)
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = xp.empty((m, n), dtype=a.dtype)
    module, extra = _kernels_for(a)
    module.gemm(_c(a), _c(b), _canonical(c), trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0,
                version=version, **extra)
    return c


# ----------------------------------------------------------------------------- optimizers

def sgd_step(param, grad, momentum_buf: Optional[Any], lr: float, momentum: float,
             dampening: float, weight_decay: float, nesterov: bool, first_step: bool,
             version: int = -1) -> None:
    """Fused in-place SGD update of `param` (and `momentum_buf`); see cpp/optim.h.

    `param` and `momentum_buf` must already be C-contiguous (they are updated in place);
    `grad` is made contiguous and cast to the parameter's dtype here.
    """
    module, extra = _kernels_for(param)
    module.sgd_step(_canonical(param), _c(grad.astype(param.dtype, copy=False)),
                    _canonical(momentum_buf), float(lr),
                    float(momentum), float(dampening), float(weight_decay), bool(nesterov),
                    bool(first_step), version=version, **extra)


def adam_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float,
              beta2: float, eps: float, weight_decay: float, decoupled: bool,
              version: int = -1) -> None:
    """Fused in-place Adam (decoupled=False) or AdamW (decoupled=True) update; see
    cpp/optim.h.  `step` is the 1-based step count after this update."""
    module, extra = _kernels_for(param)
    module.adam_step(_canonical(param), _c(grad.astype(param.dtype, copy=False)),
                     _canonical(exp_avg), _canonical(exp_avg_sq), int(step), float(lr), float(beta1), float(beta2), float(eps),
                     float(weight_decay), bool(decoupled), version=version, **extra)
