"""Checking gradients against finite differences, and calling any version of a kernel the
way its binding is called (for tests, here and in user code)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


def numerical_grad(fn: Callable[..., Tensor], inputs: Sequence[Tensor], index: int,
                   eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of sum(fn(*inputs) * weights) with respect to inputs[index],
    where `weights` is a fixed random projection (so every output element matters)."""
    with no_grad():  # plain evaluations: no graph needed
        return _numerical_grad(fn, inputs, index, eps)


def _numerical_grad(fn: Callable[..., Tensor], inputs: Sequence[Tensor], index: int,
                    eps: float) -> np.ndarray:
    x = inputs[index]
    data = x.data
    out = fn(*inputs).data
    weights = backend.to_device(np.random.default_rng(0).standard_normal(out.shape), x.device)
    grad = np.zeros(x.shape)
    flat = data.reshape(-1)  # a view: data is contiguous
    for i in range(flat.size):
        orig = float(flat[i])
        flat[i] = orig + eps
        plus = float((fn(*inputs).data * weights).sum())
        flat[i] = orig - eps
        minus = float((fn(*inputs).data * weights).sum())
        flat[i] = orig
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-6, rtol: float = 1e-4) -> bool:
    """Check the analytic gradient of `fn` against central finite differences.

    `inputs` should be float64 tensors; those with requires_grad are checked.  Raises
    AssertionError naming the input and the largest difference when they disagree;
    returns True otherwise.
    """
    inputs = list(inputs)
    for t in inputs:
        if t.requires_grad and t.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 inputs, got {t.dtype}")
        if t.requires_grad and not t.data.flags.c_contiguous:
            t.data = backend.get_array_module(t.data).ascontiguousarray(t.data)
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    weights = backend.to_device(np.random.default_rng(0).standard_normal(out.shape), out.device)
    out.backward(weights)
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        analytic = np.zeros(t.shape) if t.grad is None else backend.to_numpy(t.grad)
        numeric = numerical_grad(fn, inputs, i, eps)
        if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
            err = np.abs(analytic - numeric).max()
            raise AssertionError(f"gradcheck: input {i} (shape {t.shape}): analytic and numerical "
                                 f"gradients differ by up to {err:.3g}\nanalytic:\n{analytic}\n"
                                 f"numerical:\n{numeric}")
    return True


# ----------------------------------------------------------------------------- kernel versions
# How a kernel's binding takes its arguments (python/README.md) -> how its backend wrapper
# (and so a registered Python version) takes them: the output array becomes its shape (for
# the gradients) or disappears (for the forward passes), in place kernels are the same.
def _conv_args(kernel: str, args: tuple):
    first, second, third, *geometry = args
    if kernel.endswith("_forward"):  # conv2d, conv_transpose2d, symconv2d
        bias, out, *geometry = third, *geometry
        return (first, second, bias, *geometry), out
    return (first, second, third.shape, *geometry), third


def version_id(version: backend.Version) -> str:
    """A version's name in test ids: v0, v1, ... for the built-in ones, a registered one's own
    name (so `pytest -k v1` or `-k mine` selects one version's tests)."""
    return f"v{version}" if isinstance(version, int) else version


def kernel_covers(kernel: str, version: backend.Version) -> bool:
    """Whether `kernel` has `version` (a registered name may cover some kernels of its
    family only)."""
    return version in backend.kernel_versions(kernel)


def call_version(kernel: str, version: backend.Version, *args, **kwargs) -> None:
    """Run `version` of `kernel` on the binding's arguments (python/README.md: outputs
    preallocated and overwritten), whatever the version: a built-in number goes straight to
    gasca_core._C, so the tests see exactly what the binding writes; a registered name goes
    through the backend wrapper (backend.register_kernel), its result written into the
    output array.  So one test checks every version, built-in and registered, against the
    reference.  Registered gemm versions compute op(a) @ op(b); alpha and beta are applied
    here."""
    if isinstance(version, int):
        getattr(backend._cpu_module(), kernel)(*args, version=version, **kwargs)
        return
    wrapper = getattr(backend, kernel)
    if kernel == "gemm":
        a, b, c = args
        alpha, beta = kwargs.get("alpha", 1.0), kwargs.get("beta", 0.0)
        prod = wrapper(a, b, kwargs.get("trans_a", False), kwargs.get("trans_b", False),
                       version=version)
        c[...] = alpha * prod if beta == 0 else alpha * prod + beta * c
    elif kernel in ("sgd_step", "adam_step"):
        wrapper(*args, version=version, **kwargs)
    elif kernel == "leaky_relu_forward":      # binding: (x, out, slope); wrapper: (x, slope)
        x, out, slope = args
        out[...] = wrapper(x, slope, version=version)
    elif kernel == "leaky_relu_backward":     # binding: (y, dy, out, slope)
        y, dy, out, slope = args
        out[...] = wrapper(y, dy, slope, version=version)
    else:
        wrapper_args, out = _conv_args(kernel, args)
        out[...] = wrapper(*wrapper_args, version=version, **kwargs)
