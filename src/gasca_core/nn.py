"""Layers with parameters, as torch.nn: Module, Parameter, Conv2d, ConvTranspose2d, Linear,
Sequential, ModuleList, activations and losses.

A `Module` finds its parameters and sub-modules by the attributes it is given
(`self.conv = Conv2d(...)`), in assignment order, and names them with dotted paths
("encoder.0.weight") in `named_parameters()` and `state_dict()`.

Initialisation follows PyTorch's defaults: weights kaiming_uniform_(a=sqrt(5)), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
fan_in computed from the weight's shape as PyTorch does (for ConvTranspose2d's weight
(in, out, kh, kw) that is out*kh*kw).  Random numbers come from `rng` when a layer is
given one, else from the package's default generator (see `gasca_core.manual_seed`).

Names are PyTorch's for the same layers: parameters "weight" and "bias" in PyTorch's
layouts, Sequential/ModuleList children "0", "1", ..., the constructor arguments kept as
attributes of the same names (in_channels, kernel_size, negative_slope, start_dim,
reduction, ...), and the losses derive from one `_Loss` holding `reduction`.  PyTorch
options we do not implement (inplace=True, pos_weight, class weights, ignore_index,
label_smoothing, the deprecated size_average / reduce) raise rather than being ignored.

state_dict() returns NumPy copies whatever the device, so checkpoints written from a GPU
model load on a CPU one and back; load_state_dict() copies the values onto the
parameters' own device and dtype.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import backend
from . import functional as F
from . import init
from .tensor import Tensor

IntOrPair = Union[int, Tuple[int, int]]


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter (requires_grad True by default).

    Its data is kept C-contiguous, because the optimizer kernels update it in place.
    """

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)
        self.data = backend.get_array_module(self.data).ascontiguousarray(self.data)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------- Module

class Module:
    """Base class of every layer and model.  Subclasses call `super().__init__()` first,
    assign parameters and sub-modules as attributes, and define `forward`."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called; "
                                 f"call super().__init__() first in {type(self).__name__}.__init__")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            if name not in params:
                self._discard(name)
            params[name] = value          # reassigning keeps the registration order
        elif isinstance(value, Module):
            if name not in modules:
                self._discard(name)
            modules[name] = value
        elif name in params or name in modules:
            kind = "parameter" if name in params else "module"
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} to {name!r}, a registered "
                                f"{kind} of {type(self).__name__}: assign a "
                                f"{'Parameter' if kind == 'parameter' else 'Module'} or None")
            (params if name in params else modules)[name] = None
        elif name in buffers:
            buffers[name] = None if value is None else Tensor(value).detach()
        else:
            object.__setattr__(self, name, value)

    def _discard(self, name: str) -> None:
        self.__dict__.pop(name, None)
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails: look in the registries.
        for store in ("_parameters", "_buffers", "_modules"):
            registry = self.__dict__.get(store)
            if registry is not None and name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Optional[Parameter]) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        self._discard(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-learnable state array (a Tensor, requires_grad False) saved in state_dict."""
        self._discard(name)
        self._buffers[name] = None if value is None else Tensor(value).detach()

    def add_module(self, name: str, module: Optional["Module"]) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self._discard(name)
        self._modules[name] = module

    # --- traversal
    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator["Module"]:
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        """This module and every sub-module (each once), depth first, with dotted names."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [((f"{name}.{n}" if name else n), m) for n, m in module.named_children()]
            stack.extend(reversed(children))

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[Tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two layers appears once."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, param in module._parameters.items():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[Tuple[str, Tensor]]:
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, buf in module._buffers.items():
                if buf is not None:
                    yield (f"{module_name}.{name}" if module_name else name), buf

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def apply(self, fn: Any) -> "Module":
        """Call fn(module) on every sub-module, children before parents (e.g. a custom init)."""
        for module in reversed(list(self.modules())):
            fn(module)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of scalar parameters (only those with requires_grad, if asked)."""
        return int(sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only))

    # --- modes and gradients
    def train(self, mode: bool = True) -> "Module":
        """Training mode (True) or evaluation mode (False) for this module and all below."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's .grad: to None (default), or to zeros."""
        for param in self.parameters():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad[...] = 0

    # --- device and dtype
    def to(self, device: Optional[str] = None, dtype: Any = None) -> "Module":
        """Move every parameter (and its .grad) and buffer to `device` and/or convert them to
        `dtype`, in place; returns self.  The Parameter objects stay the same, so an
        optimizer built before the move keeps working."""
        if device is not None:
            device = backend.check_device(device)
            if device == "cuda":
                backend.require_cuda()
        if dtype is not None:
            dtype = _float_dtype(dtype)

        def convert(array: Any) -> Any:
            if dtype is not None:
                array = array.astype(dtype, copy=False)
            if device is not None:
                array = backend.to_device(array, device)
            return backend.get_array_module(array).ascontiguousarray(array)

        for tensor in list(self.parameters()) + list(self.buffers()):
            tensor.data = convert(tensor.data)
            if tensor.grad is not None:
                tensor.grad = convert(tensor.grad)
        return self

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self) -> "Module":
        return self.to("cuda")

    def float(self) -> "Module":
        return self.to(dtype=np.float32)

    def double(self) -> "Module":
        return self.to(dtype=np.float64)

    # --- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and buffer by dotted name, as NumPy copies (whatever the device)."""
        state: "OrderedDict[str, np.ndarray]" = OrderedDict()
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            state[name] = np.array(backend.to_numpy(tensor.data), copy=True)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from `state_dict` into this module's parameters and buffers.

        Every value must have exactly the shape of the tensor it goes into (ValueError
        naming the key otherwise) and a floating dtype; it is converted to the tensor's
        dtype and device.  With strict=True (default), a missing or unexpected key raises
        KeyError listing them all; with strict=False they are returned instead.
        Nothing is modified unless every check passes.
        """
        own = OrderedDict(list(self.named_parameters()) + list(self.named_buffers()))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        updates = []
        for name, tensor in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if not backend.is_cupy_array(value):
                value = np.asarray(value)
            if tuple(value.shape) != tensor.shape:
                raise ValueError(f"load_state_dict: {name!r} has shape {tuple(value.shape)} in the "
                                 f"state dict but {tensor.shape} in the module")
            if value.dtype.kind != "f":
                raise ValueError(f"load_state_dict: {name!r} has dtype {value.dtype}; "
                                 f"expected a floating dtype")
            updates.append((tensor, value))
        for tensor, value in updates:
            tensor.data[...] = backend.to_device(value, tensor.device).astype(tensor.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # --- calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(module).replace("\n", "\n  ")
                 for name, module in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


# ----------------------------------------------------------------------------- layers

def _init_weight_and_bias(module: Module, rng: Optional[np.random.Generator]) -> None:
    """PyTorch's default: weight kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in))."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5), rng=rng)
    if module.bias is not None:
        fan_in, _ = init.calculate_fan_in_and_fan_out(module.weight.shape)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(module.bias, -bound, bound, rng=rng)


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class Linear(Module):
    """y = x W^T + b.  x (..., in_features) -> (..., out_features).
    weight (out_features, in_features), bias (out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        dtype = _float_dtype(dtype)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.empty((out_features,), dtype=dtype)) if bias else None
        _init_weight_and_bias(self, rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share, as PyTorch's _ConvNd: the geometry attributes
    (in_channels, out_channels, kernel_size, stride, padding, dilation, transposed,
    output_padding, groups), the weight, (out_channels, in_channels, kh, kw), or, transposed,
    (in_channels, out_channels, kh, kw), the bias (out_channels), and PyTorch's
    initialisation.  Only groups=1."""

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair, transposed: bool,
                 output_padding: IntOrPair, groups: int, bias: bool, dtype: Any,
                 rng: Optional[np.random.Generator]) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError(f"{name}: only groups=1 is supported, got groups={groups}")
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = F._pair(kernel_size, "kernel_size", 1)
        self.stride = F._pair(stride, "stride", 1)
        self.padding = F._pair(padding, "padding", 0)
        self.dilation = F._pair(dilation, "dilation", 1)
        self.transposed = bool(transposed)
        self.output_padding = F._pair(output_padding, "output_padding", 0)
        self.groups = 1
        if self.transposed:
            backend.check_output_padding(name, self.output_padding, self.stride, self.dilation)
        elif self.output_padding != (0, 0):
            raise ValueError(f"{name}: output_padding belongs to transposed convolutions")
        dtype = _float_dtype(dtype)
        channels = (self.in_channels, self.out_channels) if self.transposed else \
            (self.out_channels, self.in_channels)
        self.weight = Parameter(np.empty(channels + self.kernel_size, dtype=dtype))
        self.bias = Parameter(np.empty((self.out_channels,), dtype=dtype)) if bias else None
        _init_weight_and_bias(self, rng)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")


class Conv2d(_ConvNd):
    """2-D convolution.  x (N, in_channels, H, W) -> (N, out_channels, OH, OW).
    weight (out_channels, in_channels, kh, kw), bias (out_channels).  Only groups=1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                 groups: int = 1, bias: bool = True, dtype: Any = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__("Conv2d", in_channels, out_channels, kernel_size, stride, padding,
                         dilation, False, 0, groups, bias, dtype, rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ConvTranspose2d(_ConvNd):
    """2-D transposed convolution.  x (N, in_channels, H, W) -> (N, out_channels, OH, OW),
    OH = (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1.
    weight (in_channels, out_channels, kh, kw), bias (out_channels).  Only groups=1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                 groups: int = 1, bias: bool = True, dilation: IntOrPair = 1, dtype: Any = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__("ConvTranspose2d", in_channels, out_channels, kernel_size, stride,
                         padding, dilation, True, output_padding, groups, bias, dtype, rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, 1, self.dilation)



class _SymmetricConvNd(_ConvNd):
    """What the two symmetric convolutions share: _ConvNd's geometry attributes, with
    `kernel_size` the full (KH, KW), and a weight that holds only the left half of each
    mirror-symmetric kernel, (..., KH, ceil(KW/2)) (F.symmetric_conv2d's definitions).
    Initialised as the plain layer would be: U(+-1/sqrt(fan_in)) for weight and bias, fan_in
    that of the full kernel, so the mirrored full kernel starts with the plain layer's scale."""

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair, transposed: bool,
                 output_padding: IntOrPair, bias: bool, dtype: Any,
                 rng: Optional[np.random.Generator]) -> None:
        super().__init__(name, in_channels, out_channels, kernel_size, stride, padding, dilation,
                         transposed, output_padding, 1, bias, dtype, rng)
        full_shape = self.weight.shape
        dtype = self.weight.dtype
        kh, kw = self.kernel_size
        self.weight = Parameter(np.empty(full_shape[:2] + (kh, F.half_width(kw)), dtype=dtype))
        fan_in, _ = init.calculate_fan_in_and_fan_out(full_shape)
        bound = 1 / math.sqrt(fan_in)
        init.uniform_(self.weight, -bound, bound, rng=rng)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound, rng=rng)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", symmetric"


class SymmetricConv2d(_SymmetricConvNd):
    """2-D convolution whose kernels are mirror-symmetric left to right (our
    interpretation of the extended GASCA paper's symmetry layer).  x (N, in_channels, H, W)
    -> (N, out_channels, OH, OW) as Conv2d with kernel_size (KH, KW).  weight
    (out_channels, in_channels, KH, ceil(KW/2)): the left half (and centre column) of each
    kernel; the full kernel is F.mirror_kernel(weight, KW).  About half Conv2d's weights
    (KH*ceil(KW/2) instead of KH*KW per kernel).  On the CPU it runs the symmetry
    convolution's own kernels (cpp/symconv2d.h); on CUDA, Conv2d's with the mirrored kernel.
    Only groups=1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
                 bias: bool = True, dtype: Any = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__("SymmetricConv2d", in_channels, out_channels, kernel_size, stride,
                         padding, dilation, False, 0, bias, dtype, rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.symmetric_conv2d(x, self.weight, self.bias, self.kernel_size[1], self.stride,
                                  self.padding, self.dilation)


class SymmetricConvTranspose2d(_SymmetricConvNd):
    """2-D transposed convolution whose kernels are mirror-symmetric left to right: as
    ConvTranspose2d, with weight (in_channels, out_channels, KH, ceil(KW/2)) the left half
    of each kernel.  It runs in the parameterised form on every device: the full kernel is
    made by mirroring (F.mirror_kernel) and ConvTranspose2d's kernels run on it, the full
    kernel's gradient folded back onto the half.  So it saves the parameters, not the
    multiplications.  Only groups=1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                 bias: bool = True, dilation: IntOrPair = 1, dtype: Any = None,
                 rng: Optional[np.random.Generator] = None) -> None:
        super().__init__("SymmetricConvTranspose2d", in_channels, out_channels, kernel_size,
                         stride, padding, dilation, True, output_padding, bias, dtype, rng)

    def forward(self, x: Tensor) -> Tensor:
        return F.symmetric_conv_transpose2d(x, self.weight, self.bias, self.kernel_size[1],
                                            self.stride, self.padding, self.output_padding,
                                            self.dilation)


class Upsample(Module):
    """Nearest-neighbour upsampling by an integer factor (torch.nn.Upsample with
    mode='nearest'; other modes raise).  No parameters."""

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                 align_corners: Any = None, recompute_scale_factor: Any = None) -> None:
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor
        if size is None:  # refuse a bad factor or mode now rather than at the first batch
            F.interpolate(Tensor(np.zeros((1, 1, 1, 1), np.float32)), scale_factor=scale_factor,
                          mode=mode, align_corners=align_corners,
                          recompute_scale_factor=recompute_scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)

    def extra_repr(self) -> str:
        what = f"scale_factor={self.scale_factor}" if self.size is None else f"size={self.size}"
        return f"{what}, mode='{self.mode}'"

class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, as torch.nn.AdaptiveAvgPool2d
    (F.adaptive_avg_pool2d).  No parameters."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size
        F.adaptive_avg_pool2d(Tensor(np.zeros((1, 1, 1, 1), np.float32)), output_size)  # check now

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class LocalGlobal(Module):
    """A convolution that sees both its neighbourhood and the whole map: the library's
    reading of the extended GASCA paper's "convolutional layer that exploits both local and
    global spatial information", whose text gives no formula.

        y = local(x) + (W_g vec(adaptive_avg_pool2d(x, grid)))[:, :, None, None]

    `local` is the layer's ordinary convolution (Conv2d, ConvTranspose2d, or any module
    mapping in_channels to out_channels maps).  The global path pools the whole input to a
    grid x grid map of channel means (grid 1: global average pooling), maps that with one
    matrix W_g (out_channels, in_channels grid^2, no bias: the convolution has one) to one
    value per output channel, and adds it at every output pixel.

    Why this design: a 5x5 kernel at a stride-2 layer sees a tenth of a 64-pixel face, so
    which side is lit or which way the head turns is invisible to it; a coarse pooled map
    carries exactly that (grid 4 keeps left from right and top from bottom).  A fully
    connected view of the whole map would carry more, but costs in_channels H W out_channels
    parameters (2.1 million at gasca-64's level 2, against 51,000 for its convolution);
    this path costs in_channels grid^2 out_channels (32,768 there at grid 4).  W_g starts
    at zero, so the layer starts as the plain convolution and training decides how much of
    the global view to use (the gradient of W_g is not zero at zero)."""

    def __init__(self, local: Module, in_channels: int, out_channels: int, grid: int = 4,
                 dtype: Any = None) -> None:
        super().__init__()
        if not isinstance(local, Module):
            raise TypeError(f"LocalGlobal: local must be a Module, got {type(local).__name__}")
        self.local = local
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.grid = _positive_int(grid, "grid")
        dtype = _float_dtype(dtype if dtype is not None else _module_dtype(local))
        self.global_weight = Parameter(np.zeros((self.out_channels, self.in_channels * self.grid ** 2),
                                                dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LocalGlobal: input must be (N, {self.in_channels}, H, W), got shape {x.shape}")
        y = self.local(x)
        if y.ndim != 4 or y.shape[1] != self.out_channels:
            raise ValueError(f"LocalGlobal: the local layer gave shape {y.shape}, expected "
                             f"(N, {self.out_channels}, OH, OW)")
        pooled = F.flatten(F.adaptive_avg_pool2d(x, self.grid), 1)
        g = F.linear(pooled, self.global_weight)
        return y + F.reshape(g, (x.shape[0], self.out_channels, 1, 1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, grid={self.grid}"


def _module_dtype(module: Module) -> Any:
    for p in module.parameters():
        return p.dtype
    return None

# ----------------------------------------------------------------------------- activations

class ReLU(Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        F._check_not_inplace("ReLU", inplace)
        self.inplace = False

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        F._check_not_inplace("LeakyReLU", inplace)
        self.negative_slope = float(negative_slope)
        self.inplace = False

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Identity(Module):
    """Returns its input; arguments are ignored, as in PyTorch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) with the defaults start_dim=1, end_dim=-1."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ----------------------------------------------------------------------------- losses

class _Loss(Module):
    """Base of the loss modules, as PyTorch's _Loss: holds `reduction` ('mean', 'sum' or
    'none').  PyTorch's deprecated size_average and reduce come first in its signatures (so
    MSELoss("sum") there silently means 'mean'); here they are refused: name reduction."""

    def __init__(self, size_average: Any = None, reduce: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        F._check_reduction(reduction, size_average, reduce, type(self).__name__)
        self.reduction = reduction


class MSELoss(_Loss):
    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy from logits (see F.binary_cross_entropy_with_logits).  As in
    PyTorch, a `weight` is a buffer (in state_dict as "weight"); pos_weight is refused."""

    def __init__(self, weight: Any = None, size_average: Any = None, reduce: Any = None,
                 reduction: str = "mean", pos_weight: Any = None) -> None:
        super().__init__(size_average, reduce, reduction)
        F._unsupported("BCEWithLogitsLoss", pos_weight=(pos_weight, None))
        self.register_buffer("weight", weight)

    def forward(self, input: Tensor, target: Any) -> Tensor:
        weight = None if self.weight is None else self.weight.data
        return F.binary_cross_entropy_with_logits(input, target, weight, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (N, C) against class indices (N,), with PyTorch's
    signature; class weights, another ignore_index and label smoothing are refused."""

    def __init__(self, weight: Any = None, size_average: Any = None, ignore_index: int = -100,
                 reduce: Any = None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(size_average, reduce, reduction)
        F._unsupported("CrossEntropyLoss", weight=(weight, None), ignore_index=(ignore_index, -100),
                       label_smoothing=(label_smoothing, 0.0))
        self.register_buffer("weight", None)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return F.cross_entropy(input, target, reduction=self.reduction)


# ----------------------------------------------------------------------------- containers

class ModuleList(Module):
    """A list of modules, registered as "0", "1", ...: index, slice, len, iterate, append,
    insert, extend, del.  Inserting or deleting renumbers the names that follow."""

    def __init__(self, modules: Optional[Iterable[Module]] = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _items(self) -> List[Module]:
        return list(self._modules.values())

    def _reset(self, modules: List[Module]) -> None:
        self._modules.clear()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def _index(self, index: int) -> int:
        n = len(self._modules)
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index {index!r} is out of range for {type(self).__name__} of length {n}")
        return int(index) % n

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            return type(self)(self._items()[index])
        return self._items()[self._index(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
        key = list(self._modules)[self._index(index)]
        self._modules[key] = module

    def __delitem__(self, index: Union[int, slice]) -> None:
        items = self._items()
        if isinstance(index, slice):
            del items[index]
        else:
            del items[self._index(index)]
        self._reset(items)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items())

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self._modules)), module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert `module` before position `index` (as list.insert)."""
        if not isinstance(module, Module):
            raise TypeError(f"insert: expected a Module, got {type(module).__name__}")
        items = self._items()
        items.insert(index, module)
        self._reset(items)

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            if not isinstance(module, Module):
                raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__}")
            self.append(module)
        return self

    def forward(self, *args: Any) -> Any:
        raise NotImplementedError("ModuleList has no forward(); iterate over it instead")


class Sequential(ModuleList):
    """Modules applied in order: Sequential(a, b, c)(x) == c(b(a(x))).
    Also accepts one OrderedDict of name -> module (names are then kept as given, and
    insert/del renumber to "0", "1", ...)."""

    def __init__(self, *modules: Any) -> None:
        Module.__init__(self)
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            self.extend(modules)

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            return Sequential(*self._items()[index])
        return self._items()[self._index(index)]

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x
