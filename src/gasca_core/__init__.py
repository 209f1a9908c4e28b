"""gasca_core: Generative Adversarial Stacked Convolutional Autoencoders (GASCA) and their
GANGGLW training algorithm, on hand-written C++/CUDA kernels under a small autograd.

The core, from the bottom up:
    gasca_core.backend      NumPy/CuPy per device, and the one place that calls the kernels
    gasca_core.Tensor       arrays with gradients; gasca_core.no_grad()
    gasca_core.functional   differentiable operations (conv2d, conv_transpose2d, losses, ...)
    gasca_core.nn           Module, Conv2d, ConvTranspose2d, Linear, Sequential, ...
    gasca_core.optim        SGD, Adam, AdamW on fused kernels

Kernel versions (docs/COURSE.md): `with gasca_core.kernels(conv2d=1, gemm=0): ...` runs a
block on chosen versions, `gasca_core.register_kernel(kernel, fn, name)` adds one of your
own written in Python (both from gasca_core.backend).

Importing gasca_core imports neither CuPy nor the compiled kernels: the extension is loaded
on the first kernel call, CuPy on the first request for device "cuda".
"""
from . import backend
from .backend import kernels, register_kernel
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from . import functional
from . import init
from .init import manual_seed
from . import nn
from . import optim

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
    "manual_seed", "backend", "functional", "init", "nn", "optim", "kernels", "register_kernel",
    "__version__",
]
