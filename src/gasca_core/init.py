"""Parameter initialisation, as torch.nn.init, from a seedable random generator.

Randomness: every function here draws from `rng` when given (a numpy.random.Generator),
else from the package's default generator.  That generator starts from seed 0 in every
fresh process (so two runs of the same script build the same weights, as with PyTorch's
fixed default seed), and `gasca_core.manual_seed(seed)` restarts it from `seed`.

Values are drawn in float64 on the CPU, then cast to the tensor's dtype and copied onto
its device, so a seed gives the same weights (up to rounding) for every dtype and device.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from . import backend
from .tensor import Tensor

_default_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Restart the default generator from `seed`; returns it."""
    global _default_generator
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _default_generator = np.random.default_rng(int(seed))
    return _default_generator


def default_generator() -> np.random.Generator:
    """The generator used when no `rng` is passed."""
    return _default_generator


def _fill(tensor: Tensor, values: np.ndarray) -> Tensor:
    """Write `values` into tensor.data in place (cast to its dtype, on its device)."""
    tensor.data[...] = backend.to_device(values.astype(tensor.dtype), tensor.device)
    return tensor


def calculate_fan_in_and_fan_out(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(fan_in, fan_out) of a weight shape as PyTorch computes them:
    fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] * prod(shape[2:]).

    For a transposed convolution's weight (in, out, kh, kw) this makes fan_in = out*kh*kw,
    which is what PyTorch does too.
    """
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0,
             rng: Optional[np.random.Generator] = None) -> Tensor:
    """Fill with U(a, b)."""
    rng = rng or _default_generator
    return _fill(tensor, rng.uniform(a, b, size=tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0,
            rng: Optional[np.random.Generator] = None) -> Tensor:
    """Fill with N(mean, std^2)."""
    rng = rng or _default_generator
    return _fill(tensor, rng.normal(mean, std, size=tensor.shape))


def zeros_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 0
    return tensor


def ones_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 1
    return tensor


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, nonlinearity: str = "leaky_relu",
                     rng: Optional[np.random.Generator] = None) -> Tensor:
    """He initialisation: U(-bound, bound), bound = gain * sqrt(3 / fan_in).

    gain = sqrt(2 / (1 + a^2)) for leaky_relu (a = negative slope), sqrt(2) for relu,
    1 for linear/sigmoid/tanh-free use.  With a = sqrt(5) (PyTorch's default for conv and
    linear weights) the bound is exactly 1 / sqrt(fan_in).
    """
    fan_in, _ = calculate_fan_in_and_fan_out(tensor.shape)
    if nonlinearity == "leaky_relu":
        gain = math.sqrt(2.0 / (1 + a * a))
    elif nonlinearity == "relu":
        gain = math.sqrt(2.0)
    elif nonlinearity in ("linear", "sigmoid"):
        gain = 1.0
    elif nonlinearity == "tanh":
        gain = 5.0 / 3
    else:
        raise ValueError(f"nonlinearity must be leaky_relu, relu, linear, sigmoid or tanh, got {nonlinearity!r}")
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return uniform_(tensor, -bound, bound, rng)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0,
                    rng: Optional[np.random.Generator] = None) -> Tensor:
    """Glorot initialisation: U(-bound, bound), bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, rng)
