"""Hostile arguments for every function of gasca_core._C.

The property: whatever a caller passes, each call either

  * returns the reference answer (a direct float64 NumPy computation written here, from the
    definitions, independently of cpp/), having overwritten exactly its outputs, or
  * raises ValueError / TypeError, having written nothing at all (the checks run before any
    kernel touches memory),

and the interpreter never dies.  Hypothesis builds a valid call for a random geometry and
then applies zero or more "mutations" to it: other dtypes (float16, int32, object, bool,
complex, byte-swapped, mixed, equal-but-not-identical), non-contiguous, negative-stride,
Fortran-ordered, misaligned and read-only arrays, None or lists where an array belongs,
wrong ranks, wrong or zero-size dimensions, outputs that alias inputs, bad or huge
stride/padding/dilation/output_padding (up to and past 2**63, including geometries whose
output would hold more than 2**31 elements while every array stays tiny), bad versions,
bad hyper-parameters, NaN/inf data.  Each mutation knows what it does to the call:

  VALID    the call must succeed and match the reference,
  EITHER   the contract allows both (e.g. version=True, which pybind11 reads as 1): raise,
           or match the reference,
  ANY      it must not crash; any result is acceptable (e.g. NaN data, alpha = 1e300),
  INVALID  it must raise ValueError or TypeError and leave every array untouched.

A crash (segfault, abort, sanitizer report) would kill pytest, so the property tests run
in a child interpreter (`test_fuzz_suite_survives_in_a_child_interpreter`); the child is
this same module with GASCA_FUZZ_CHILD=1 (set it yourself to run them in-process, e.g.
under a debugger or tools/sanitize.sh).  Example counts come from a Hypothesis profile:
the default keeps the whole module near 30 s on two cores; HYPOTHESIS_PROFILE=thorough
runs thousands of examples per kernel.
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gasca_core import _C  # noqa: E402

# ----------------------------------------------------------------------------- profiles
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("gasca-fuzz", max_examples=250, **_COMMON)
settings.register_profile("thorough", max_examples=3000, **_COMMON)
try:
    FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "gasca-fuzz"))
except Exception:  # a profile registered elsewhere (or none): use ours
    FUZZ = settings.get_profile("gasca-fuzz")

IN_CHILD = os.environ.get("GASCA_FUZZ_CHILD") == "1"
child_only = pytest.mark.skipif(
    not IN_CHILD, reason="runs in a child interpreter via test_fuzz_suite_survives_in_a_child_"
                         "interpreter (set GASCA_FUZZ_CHILD=1 to run it in this process)")

# ----------------------------------------------------------------------------- expectations
VALID, EITHER, ANY, INVALID = 0, 1, 2, 3
EXPECT_NAMES = {VALID: "VALID", EITHER: "EITHER", ANY: "ANY", INVALID: "INVALID"}

CONV_FUNCTIONS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
                  "conv_transpose2d_forward", "conv_transpose2d_backward_input",
                  "conv_transpose2d_backward_weight")
SYMCONV_FUNCTIONS = ("symconv2d_forward", "symconv2d_backward_input", "symconv2d_backward_weight")
ELTWISE_FUNCTIONS = ("leaky_relu_forward", "leaky_relu_backward")
ALL_FUZZED = CONV_FUNCTIONS + SYMCONV_FUNCTIONS + ("conv2d_backward_bias", "gemm", "sgd_step",
                                                  "adam_step") + ELTWISE_FUNCTIONS

# Every output we compute a reference for stays at most this many elements; a geometry
# asking for more gets a small (hence wrong-shaped) output array and must be rejected.
MAX_OUTPUT = 4096
INT32_LIMIT = 2**31


# ============================================================================ references
# Plain float64 NumPy, read off the definitions.  Each reference is also evaluated on the
# absolute values of its inputs: that gives, per output element, the sum of |terms|,
# which bounds the rounding error of any summation order (see `assert_close`).

def conv_out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    """Output length of a convolution along one axis (Python ints: never overflows)."""
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def conv_t_out_size(size: int, kernel: int, stride: int, pad: int, out_pad: int, dil: int) -> int:
    """Output length of a transposed convolution along one axis."""
    return (size - 1) * stride - 2 * pad + dil * (kernel - 1) + out_pad + 1


def taps(out_size: int, in_size: int, stride: int, pad: int, dil: int, k: int):
    """For kernel tap k along one axis: the output positions o whose input position
    o*stride - pad + k*dil lies inside [0, in_size), and those input positions."""
    pos = [o * stride - pad + k * dil for o in range(out_size)]
    keep = [o for o, p in enumerate(pos) if 0 <= p < in_size]
    return np.array(keep, dtype=np.int64), np.array([pos[o] for o in keep], dtype=np.int64)


def conv2d_ref(x, w, b, stride, pad, dil, out_hw=None):
    """y (N, Co, OH, OW) = sum over ci, i, j of w[co, ci, i, j] x[n, ci, ih, iw] (+ b[co])."""
    n, _, h, wd = x.shape
    co, _, kh, kw = w.shape
    oh, ow = out_hw or (conv_out_size(h, kh, stride[0], pad[0], dil[0]),
                        conv_out_size(wd, kw, stride[1], pad[1], dil[1]))
    y = np.zeros((n, co, oh, ow))
    for i in range(kh):
        o_h, i_h = taps(oh, h, stride[0], pad[0], dil[0], i)
        for j in range(kw):
            o_w, i_w = taps(ow, wd, stride[1], pad[1], dil[1], j)
            if o_h.size and o_w.size:
                patch = x[:, :, i_h[:, None], i_w[None, :]]
                y[:, :, o_h[:, None], o_w[None, :]] += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_input_grad_ref(dy, w, in_hw, stride, pad, dil):
    """dx (N, Ci, H, W): every product the forward pass formed sends dy * w back to its pixel."""
    n, _, oh, ow = dy.shape
    _, ci, kh, kw = w.shape
    dx = np.zeros((n, ci) + tuple(in_hw))
    for i in range(kh):
        o_h, i_h = taps(oh, in_hw[0], stride[0], pad[0], dil[0], i)
        for j in range(kw):
            o_w, i_w = taps(ow, in_hw[1], stride[1], pad[1], dil[1], j)
            if o_h.size and o_w.size:
                g = dy[:, :, o_h[:, None], o_w[None, :]]
                dx[:, :, i_h[:, None], i_w[None, :]] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return dx


def conv2d_weight_grad_ref(x, dy, k_hw, stride, pad, dil):
    """dw (Co, Ci, KH, KW) = sum over n, oh, ow of dy[n, co, oh, ow] x[n, ci, ih, iw]."""
    _, ci, h, wd = x.shape
    _, co, oh, ow = dy.shape
    dw = np.zeros((co, ci) + tuple(k_hw))
    for i in range(k_hw[0]):
        o_h, i_h = taps(oh, h, stride[0], pad[0], dil[0], i)
        for j in range(k_hw[1]):
            o_w, i_w = taps(ow, wd, stride[1], pad[1], dil[1], j)
            if o_h.size and o_w.size:
                dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy[:, :, o_h[:, None], o_w[None, :]],
                                           x[:, :, i_h[:, None], i_w[None, :]])
    return dw


def with_bound(fn: Callable[..., np.ndarray], *arrays, **kw) -> Tuple[np.ndarray, np.ndarray]:
    """(fn(arrays), fn(|arrays|)): the value and the sum of |terms| of each element."""
    value = fn(*[None if a is None else np.asarray(a, np.float64) for a in arrays], **kw)
    bound = fn(*[None if a is None else np.abs(np.asarray(a, np.float64)) for a in arrays], **kw)
    return value, bound


# ============================================================================ the call
@dataclass
class Call:
    """One call into _C, what it must do, and how it was made hostile."""
    fn: str
    kwargs: Dict[str, Any]
    outputs: Tuple[str, ...]                 # the arrays the function writes
    expected: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    terms: int = 1                           # most summands in one output element
    expect: int = VALID
    notes: List[str] = field(default_factory=list)
    rigid: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # axes fixed by the rest
    optional: Tuple[str, ...] = ()           # array arguments for which None is meaningful
    params: Tuple[str, ...] = ()             # geometry arguments (stride, padding, ...)
    version_family: Optional[str] = None
    touched: set = field(default_factory=set)  # arguments a mutation changed: not changed again

    def mark(self, outcome: int, note: str) -> None:
        self.expect = max(self.expect, outcome)
        self.notes.append(f"{note} -> {EXPECT_NAMES[outcome]}")

    def arrays(self) -> Dict[str, np.ndarray]:
        return {k: v for k, v in self.kwargs.items() if isinstance(v, np.ndarray)}

    def describe(self) -> str:
        parts = []
        for k, v in self.kwargs.items():
            if isinstance(v, np.ndarray):
                flags = "" if v.flags.c_contiguous else " non-contiguous"
                parts.append(f"{k}={v.dtype}{v.shape}{flags}")
            else:
                parts.append(f"{k}={v!r:.60}")
        return (f"_C.{self.fn}({', '.join(parts)})\n  expected {EXPECT_NAMES[self.expect]}; "
                f"mutations: {self.notes or ['none']}")


def tolerance(dtype: np.dtype, terms: int) -> float:
    """Relative (to the sum of |terms|) error allowed: recursive summation of n terms
    errs by at most n*eps of it; the factor 4 covers the products and a final rounding."""
    eps = np.finfo(dtype).eps if np.dtype(dtype).kind == "f" else np.finfo(np.float64).eps
    return 4.0 * (terms + 2) * eps


def assert_close(call: Call, name: str, got: np.ndarray) -> None:
    value, bound = call.expected[name]
    got64 = np.asarray(got, np.float64)
    assert got64.shape == value.shape, f"{name}: shape {got64.shape} != {value.shape}\n{call.describe()}"
    err = np.abs(got64 - value)
    allowed = tolerance(got.dtype, call.terms) * bound + 1e-300
    bad = ~(err <= allowed)  # NaN in the result counts as bad
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{name}{list(idx)}: got {got64[idx]!r}, reference {value[idx]!r} "
                             f"(allowed error {allowed[idx]:.3g}); {int(bad.sum())} of "
                             f"{bad.size} elements off\n{call.describe()}")


def run_call(call: Call) -> None:
    """Make the call and check it against its expectation (see the module docstring)."""
    before = {k: (a.tobytes(), a.dtype, a.shape) for k, a in call.arrays().items()}
    try:
        getattr(_C, call.fn)(**call.kwargs)
    except (ValueError, TypeError) as exc:
        assert call.expect != VALID, f"a valid call raised {type(exc).__name__}: {exc}\n{call.describe()}"
        assert str(exc), f"{type(exc).__name__} without a message\n{call.describe()}"
        for k, a in call.arrays().items():
            assert a.tobytes() == before[k][0], (
                f"{k} was modified by a call that then raised {type(exc).__name__}: {exc}\n"
                f"{call.describe()}")
        event(f"rejected with {type(exc).__name__}")
        return
    assert call.expect != INVALID, f"an invalid call was accepted\n{call.describe()}"
    event("accepted")
    if call.expect == ANY:
        return
    for k, a in call.arrays().items():
        if k in call.expected:
            assert_close(call, k, a)
        else:
            assert a.tobytes() == before[k][0], f"{k} was modified\n{call.describe()}"


# ============================================================================ random data
def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: np.dtype,
                 nonneg: bool = False) -> np.ndarray:
    a = rng.standard_normal(tuple(shape))
    return np.asarray(np.abs(a) if nonneg else a, dtype=dtype)


def nan_array(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An output buffer: full of NaN, so that an element the kernel forgets to write shows."""
    return np.full(tuple(shape), np.nan, dtype=dtype)


def clip_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    """A small stand-in shape for an output too large (or empty) to allocate: every entry
    in 1..3, so it cannot match the real one."""
    return tuple(min(max(s, 1), 3) for s in shape)


def fits(shape: Sequence[int]) -> bool:
    return all(s >= 1 for s in shape) and math.prod(shape) <= MAX_OUTPUT  # Python ints: exact


def note_overflow(shape: Sequence[int]) -> None:
    if math.prod(max(s, 0) for s in shape) >= INT32_LIMIT:
        event("geometry whose output has >= 2**31 elements (tiny arrays)")


# ============================================================================ base calls
HUGE = [2**29, 2**30 - 1, 2**30]


@st.composite
def pair(draw, small: st.SearchStrategy, huge: bool) -> Tuple[int, int]:
    """(h, w), each from `small`, or (rarely, when `huge`) from the huge values."""
    def one():
        if huge and draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from(HUGE))
        return draw(small)
    return (one(), one())


@st.composite
def conv_call(draw, fn: str) -> Call:
    """A call of one of the six convolution functions with a random small geometry.

    Roughly one geometry in six uses huge strides, paddings or dilations (2**29..2**30):
    their outputs are either a few elements (then the call is valid and compared with
    the reference) or astronomically many (then the output array we pass is small, and
    the call must be rejected before any kernel runs).
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    huge = draw(st.integers(0, 5)) == 0
    # 12 input channels (one draw in four): enough for version 2's backward-input by stride
    # phases (see below).
    n, ci, co = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3, 12])), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(pair(st.integers(1, 3), huge))
    padding = draw(pair(st.integers(0, 2), huge))
    transposed = fn.startswith("conv_transpose2d")
    # Dilations up to 3 for the transposed convolution: with strides 1..3 that leaves room
    # for stride <= output_padding < dilation (see below).
    dilation = draw(pair(st.integers(1, 3 if transposed else 2), huge))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    version = draw(st.integers(-1, len(_C.versions()["conv2d"]) - 1))
    if not transposed:
        h, w = min(h, 5), min(w, 5)
        if ci == 12 and not huge:
            # Aim at version 2's backward-input by stride phases: dilation 1 and phase rows
            # of 2, 4 or 8 pixels (whole or half vectors in float or double, or neither);
            # and at its implicit weight gradient: 96 output channels (a whole number of
            # register-tile panels, a dW too large for the small path) in one draw in three.
            dilation = (1, 1)
            w = stride[1] * draw(st.sampled_from([2, 4, 8]))
            if draw(st.integers(0, 2)) == 0:
                co, kh, kw = 96, 3, 3
    if not huge and draw(st.integers(0, 4)):
        # Mostly geometries with a non-empty output (the rest test the empty-output check).
        if transposed:
            padding = tuple(min(p, ((size - 1) * s + d * (k - 1)) // 2) for p, size, s, d, k in
                            zip(padding, (min(h, 5), min(w, 5)), stride, dilation, (kh, kw)))
        else:
            h, w = (max(size, d * (k - 1) + 1 - 2 * p) for size, p, d, k in
                    zip((h, w), padding, dilation, (kh, kw)))
    call = Call(fn, {}, (), version_family="conv2d",
                params=("stride", "padding", "output_padding", "dilation") if transposed
                else ("stride", "padding", "dilation"))
    geom = dict(stride=stride, padding=padding, dilation=dilation)

    if not transposed:
        oh = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
        ow = conv_out_size(w, kw, stride[1], padding[1], dilation[1])
        y_shape = (n, co, oh, ow)
        note_overflow(y_shape)
        ok = fits(y_shape)
        if not ok:
            call.mark(INVALID, f"geometry gives output {y_shape}")
            y_shape = clip_shape(y_shape)
        x = random_array(rng, (n, ci, h, w), dtype)
        wt = random_array(rng, (co, ci, kh, kw), dtype)
        dy = random_array(rng, y_shape, dtype)
        if fn == "conv2d_forward":
            b = random_array(rng, (co,), dtype) if draw(st.booleans()) else None
            call.kwargs = dict(x=x, weight=wt, bias=b, out=nan_array(y_shape, dtype), **geom)
            call.outputs, call.optional = ("out",), ("bias",)
            call.rigid = dict(x=(0, 1), weight=(0, 1), bias=(0,), out=(0, 1, 2, 3))
            call.terms = ci * kh * kw + 1
            if ok:
                call.expected["out"] = with_bound(
                    lambda x_, w_, b_: conv2d_ref(x_, w_, b_, stride, padding, dilation), x, wt, b)
        elif fn == "conv2d_backward_input":
            call.kwargs = dict(grad_out=dy, weight=wt, grad_in=nan_array((n, ci, h, w), dtype), **geom)
            call.outputs = ("grad_in",)
            call.rigid = dict(grad_out=(0, 1, 2, 3), weight=(0, 1), grad_in=(0, 1))
            call.terms = co * kh * kw
            if ok:
                call.expected["grad_in"] = with_bound(
                    lambda d_, w_: conv2d_input_grad_ref(d_, w_, (h, w), stride, padding, dilation), dy, wt)
        else:  # conv2d_backward_weight
            call.kwargs = dict(x=x, grad_out=dy, grad_weight=nan_array((co, ci, kh, kw), dtype), **geom)
            call.outputs = ("grad_weight",)
            call.rigid = dict(x=(0, 1), grad_out=(0, 1, 2, 3), grad_weight=(0, 1))
            call.terms = n * y_shape[2] * y_shape[3]
            if ok:
                call.expected["grad_weight"] = with_bound(
                    lambda x_, d_: conv2d_weight_grad_ref(x_, d_, (kh, kw), stride, padding, dilation), x, dy)
    else:
        h, w = min(h, 5), min(w, 5)
        # output_padding < stride (the adjoint convolution's natural output is x's size),
        # or < max(stride, dilation) (PyTorch's rule: where it is >= stride the adjoint's
        # output is smaller than its natural size, conv2d.h), or anything in 0..3 (past
        # the rule: rejected).
        out_pad = draw(pair(st.integers(0, 3), False))
        rule = draw(st.sampled_from(["< stride"] * 2 + ["< max(stride, dilation)"] * 3 + ["any"]))
        if rule != "any":
            limit = stride if rule == "< stride" else tuple(map(max, stride, dilation))
            out_pad = (min(out_pad[0], limit[0] - 1), min(out_pad[1], limit[1] - 1))
        if any(s <= op < d for op, s, d in zip(out_pad, stride, dilation)):
            event("stride <= output_padding < dilation: adjoint output below its natural size")
        oh = conv_t_out_size(h, kh, stride[0], padding[0], out_pad[0], dilation[0])
        ow = conv_t_out_size(w, kw, stride[1], padding[1], out_pad[1], dilation[1])
        y_shape = (n, co, oh, ow)
        note_overflow(y_shape)
        ok = fits(y_shape)
        if not ok:
            call.mark(INVALID, f"geometry gives output {y_shape}")
            y_shape = clip_shape(y_shape)
        elif out_pad[0] >= max(stride[0], dilation[0]) or out_pad[1] >= max(stride[1], dilation[1]):
            call.mark(INVALID, f"output_padding {out_pad} >= max(stride, dilation)")
        geom["output_padding"] = out_pad
        x = random_array(rng, (n, ci, h, w), dtype)
        wt = random_array(rng, (ci, co, kh, kw), dtype)
        dy = random_array(rng, y_shape, dtype)
        args = (stride, padding, dilation)
        if fn == "conv_transpose2d_forward":
            b = random_array(rng, (co,), dtype) if draw(st.booleans()) else None
            call.kwargs = dict(x=x, weight=wt, bias=b, out=nan_array(y_shape, dtype), **geom)
            call.outputs, call.optional = ("out",), ("bias",)
            call.rigid = dict(x=(0, 1), weight=(0, 1), bias=(0,), out=(0, 1, 2, 3))
            call.terms = ci * kh * kw + 1

            def forward_t(x_, w_, b_):
                y = conv2d_input_grad_ref(x_, w_, (oh, ow), *args)
                return y if b_ is None else y + b_[None, :, None, None]
            if ok:
                call.expected["out"] = with_bound(forward_t, x, wt, b)
        elif fn == "conv_transpose2d_backward_input":
            call.kwargs = dict(grad_out=dy, weight=wt, grad_in=nan_array((n, ci, h, w), dtype), **geom)
            call.outputs = ("grad_in",)
            call.rigid = dict(grad_out=(0, 1, 2, 3), weight=(0, 1), grad_in=(0, 1))
            call.terms = co * kh * kw
            if ok:
                call.expected["grad_in"] = with_bound(
                    lambda d_, w_: conv2d_ref(d_, w_, None, *args, out_hw=(h, w)), dy, wt)
        else:  # conv_transpose2d_backward_weight
            call.kwargs = dict(x=x, grad_out=dy, grad_weight=nan_array((ci, co, kh, kw), dtype), **geom)
            call.outputs = ("grad_weight",)
            call.rigid = dict(x=(0, 1), grad_out=(0, 1, 2, 3), grad_weight=(0, 1))
            call.terms = n * h * w
            if ok:
                # In the adjoint convolution dy plays the image and x the output gradient.
                call.expected["grad_weight"] = with_bound(
                    lambda x_, d_: conv2d_weight_grad_ref(d_, x_, (kh, kw), *args), x, dy)
    call.kwargs["version"] = version
    return call


def mirror(w_half: np.ndarray, kw: int) -> np.ndarray:
    """The full symmetric kernel (..., KW) that w_half (..., ceil(KW/2)) stands for."""
    return w_half[..., [min(j, kw - 1 - j) for j in range(kw)]]


def fold(w_full: np.ndarray) -> np.ndarray:
    """The adjoint of mirror: mirrored columns of a full kernel's gradient added."""
    kw = w_full.shape[-1]
    out = np.zeros(w_full.shape[:-1] + ((kw + 1) // 2,))
    for j in range(kw):
        out[..., min(j, kw - 1 - j)] += w_full[..., j]
    return out


@st.composite
def symconv_call(draw, fn: str) -> Call:
    """A call of one of the symmetry convolution's functions (cpp/symconv2d.h): a plain
    convolution call (conv_call) whose weight becomes the half (..., ceil(KW/2)) and which
    gains kernel_width = KW; the references are conv2d's with the mirrored kernel, the
    weight gradient folded.  The half width is determined by kernel_width (a rigid axis)."""
    plain = draw(conv_call(fn.replace("symconv2d", "conv2d")))
    k = plain.kwargs
    weight_key = "grad_weight" if fn.endswith("backward_weight") else "weight"
    full = k[weight_key]
    kw = full.shape[3]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    half = random_array(rng, full.shape[:3] + ((kw + 1) // 2,), full.dtype)
    stride, padding, dilation = k["stride"], k["padding"], k["dilation"]
    call = Call(fn, {}, plain.outputs, terms=plain.terms, expect=plain.expect,
                notes=list(plain.notes), optional=plain.optional, params=plain.params,
                version_family="symconv2d")
    call.rigid = {name: tuple(axes) + ((3,) if name == weight_key else ())
                  for name, axes in plain.rigid.items()}
    if fn == "symconv2d_forward":
        call.kwargs = dict(x=k["x"], weight=half, bias=k["bias"], out=k["out"], kernel_width=kw)
        if "out" in plain.expected:
            call.expected["out"] = with_bound(
                lambda x_, w_, b_: conv2d_ref(x_, mirror(w_, kw), b_, stride, padding, dilation),
                k["x"], half, k["bias"])
    elif fn == "symconv2d_backward_input":
        call.kwargs = dict(grad_out=k["grad_out"], weight=half, grad_in=k["grad_in"],
                           kernel_width=kw)
        in_hw = k["grad_in"].shape[2:]
        if "grad_in" in plain.expected:
            call.expected["grad_in"] = with_bound(
                lambda d_, w_: conv2d_input_grad_ref(d_, mirror(w_, kw), in_hw, stride, padding,
                                                     dilation), k["grad_out"], half)
    else:
        call.kwargs = dict(x=k["x"], grad_out=k["grad_out"],
                           grad_weight=nan_array(half.shape, half.dtype), kernel_width=kw)
        call.terms = 2 * plain.terms  # each stored column sums two taps
        if "grad_weight" in plain.expected:
            call.expected["grad_weight"] = with_bound(
                lambda x_, d_: fold(conv2d_weight_grad_ref(x_, d_, full.shape[2:], stride,
                                                           padding, dilation)),
                k["x"], k["grad_out"])
    call.kwargs.update(stride=stride, padding=padding, dilation=dilation,
                       version=draw(st.integers(-1, len(_C.versions()["symconv2d"]) - 1)))
    return call


@st.composite
def bias_call(draw) -> Call:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(4))
    dy = random_array(rng, shape, dtype)
    call = Call("conv2d_backward_bias", dict(grad_out=dy, grad_bias=nan_array((shape[1],), dtype)),
                ("grad_bias",), rigid=dict(grad_out=(1,), grad_bias=(0,)),
                terms=shape[0] * shape[2] * shape[3])
    call.expected["grad_bias"] = with_bound(lambda d: d.sum(axis=(0, 2, 3)), dy)
    return call


@st.composite
def gemm_call(draw) -> Call:
    """c = alpha op(a) op(b) + beta c for m, n, k in 0..6 (zero sizes are legal here)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    m, n, k = (draw(st.integers(0, 6)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    alpha = draw(st.sampled_from([1.0, -0.5, 2.0, 0.0]))
    beta = draw(st.sampled_from([0.0, 1.0, -1.5]))
    a = random_array(rng, (k, m) if ta else (m, k), dtype)
    b = random_array(rng, (n, k) if tb else (k, n), dtype)
    # beta == 0 must not read c: NaN there must not leak into the result.
    c = nan_array((m, n), dtype) if beta == 0 else random_array(rng, (m, n), dtype)

    call = Call("gemm", dict(a=a, b=b, c=c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta,
                             version=draw(st.integers(-1, len(_C.versions()["gemm"]) - 1))),
                ("c",), rigid=dict(a=(0, 1), b=(0, 1), c=(0, 1)), terms=k + 2, version_family="gemm")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    op_a, op_b = (a64.T if ta else a64), (b64.T if tb else b64)
    c64 = c.astype(np.float64) if beta else np.zeros((m, n))
    call.expected["c"] = (alpha * (op_a @ op_b) + beta * c64,
                          abs(alpha) * (np.abs(op_a) @ np.abs(op_b)) + abs(beta) * np.abs(c64))
    return call


def optim_shape(draw) -> Tuple[int, ...]:
    return tuple(draw(st.integers(0, 4)) for _ in range(draw(st.integers(0, 3))))


@st.composite
def sgd_call(draw) -> Call:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = optim_shape(draw)
    lr = draw(st.sampled_from([0.1, 0.01, 1.0, 0.0]))
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1]))
    wd = draw(st.sampled_from([0.0, 1e-2]))
    first = draw(st.booleans())
    p, g = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    buf = random_array(rng, shape, dtype) if momentum or draw(st.booleans()) else None
    call = Call("sgd_step", dict(param=p, grad=g, momentum_buf=buf, lr=lr, momentum=momentum,
                                 dampening=dampening, weight_decay=wd, nesterov=nesterov,
                                 first_step=first,
                                 version=draw(st.integers(-1, len(_C.versions()["optim"]) - 1))),
                ("param", "momentum_buf"), optional=("momentum_buf",) if not momentum else (),
                rigid={"param": tuple(range(len(shape))), "grad": tuple(range(len(shape))),
                       "momentum_buf": tuple(range(len(shape)))},
                terms=4, version_family="optim")
    p64, g64 = p.astype(np.float64), g.astype(np.float64)
    d = g64 + wd * p64
    d_abs = np.abs(g64) + wd * np.abs(p64)
    if momentum:
        b64 = buf.astype(np.float64)
        new_buf = d if first else momentum * b64 + (1 - dampening) * d
        buf_abs = d_abs if first else momentum * np.abs(b64) + (1 - dampening) * d_abs
        step, step_abs = ((d + momentum * new_buf, d_abs + momentum * buf_abs) if nesterov
                          else (new_buf, buf_abs))
        call.expected["momentum_buf"] = (new_buf, buf_abs)
    else:
        step, step_abs = d, d_abs
    call.expected["param"] = (p64 - lr * step, np.abs(p64) + lr * step_abs)
    return call


@st.composite
def adam_call(draw) -> Call:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = optim_shape(draw)
    lr = draw(st.sampled_from([1e-3, 0.1, 0.0]))
    b1, b2 = draw(st.sampled_from([0.9, 0.0, 0.5])), draw(st.sampled_from([0.999, 0.9, 0.0]))
    eps = draw(st.sampled_from([1e-8, 1e-3]))
    wd = draw(st.sampled_from([0.0, 1e-2]))
    decoupled = draw(st.booleans())
    step = draw(st.sampled_from([1, 2, 10, 1000, 2**40]))
    p, g = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    m, v = random_array(rng, shape, dtype), random_array(rng, shape, dtype, nonneg=True)
    axes = tuple(range(len(shape)))
    call = Call("adam_step", dict(param=p, grad=g, exp_avg=m, exp_avg_sq=v, step=step, lr=lr,
                                  beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled=decoupled,
                                  version=draw(st.integers(-1, len(_C.versions()["optim"]) - 1))),
                ("param", "exp_avg", "exp_avg_sq"),
                rigid={k: axes for k in ("param", "grad", "exp_avg", "exp_avg_sq")},
                terms=8, version_family="optim")
    p64, g64, m64, v64 = (a.astype(np.float64) for a in (p, g, m, v))
    p_abs = np.abs(p64)
    if decoupled:
        p64, p_abs = p64 * (1 - lr * wd), p_abs * (1 - lr * wd)
        d, d_abs = g64, np.abs(g64)
    else:
        d, d_abs = g64 + wd * p64, np.abs(g64) + wd * p_abs
    new_m, m_abs = b1 * m64 + (1 - b1) * d, b1 * np.abs(m64) + (1 - b1) * d_abs
    new_v = b2 * v64 + (1 - b2) * d * d
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    denom = np.sqrt(new_v) / np.sqrt(bc2) + eps
    call.expected["exp_avg"] = (new_m, m_abs)
    call.expected["exp_avg_sq"] = (new_v, b2 * v64 + (1 - b2) * d_abs * d_abs)
    call.expected["param"] = (p64 - lr / bc1 * new_m / denom, p_abs + lr / bc1 * m_abs / denom)
    return call


BASE = {fn: (lambda fn=fn: conv_call(fn)) for fn in CONV_FUNCTIONS}
BASE.update({fn: (lambda fn=fn: symconv_call(fn)) for fn in SYMCONV_FUNCTIONS})
@st.composite
def leaky_relu_call(draw, fn: str) -> Call:
    """LeakyReLU's forward (x -> out) or backward (y, grad_out -> grad_in), any shape (zero
    sizes are legal), 0 < negative_slope <= 1."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = optim_shape(draw)
    slope = draw(st.sampled_from([0.2, 0.01, 1.0]))
    version = draw(st.integers(-1, len(_C.versions()["eltwise"]) - 1))
    axes = tuple(range(len(shape)))
    a = random_array(rng, shape, dtype)
    a64 = a.astype(np.float64)
    if fn == "leaky_relu_forward":
        call = Call(fn, dict(x=a, out=nan_array(shape, dtype), negative_slope=slope,
                             version=version), ("out",), rigid={"x": axes, "out": axes},
                    terms=1, version_family="eltwise")
        call.expected["out"] = (np.where(a64 > 0, a64, slope * a64), np.abs(a64))
        return call
    g = random_array(rng, shape, dtype)
    g64 = g.astype(np.float64)
    call = Call(fn, dict(y=a, grad_out=g, grad_in=nan_array(shape, dtype), negative_slope=slope,
                         version=version), ("grad_in",),
                rigid={"y": axes, "grad_out": axes, "grad_in": axes}, terms=1,
                version_family="eltwise")
    call.expected["grad_in"] = (np.where(a64 > 0, g64, slope * g64), np.abs(g64))
    return call


BASE.update({"conv2d_backward_bias": bias_call, "gemm": gemm_call, "sgd_step": sgd_call,
             "adam_step": adam_call})
BASE.update({fn: (lambda fn=fn: leaky_relu_call(fn)) for fn in ELTWISE_FUNCTIONS})


# ============================================================================ mutations
# Each takes (draw, call) and changes call.kwargs, marking the outcome it implies.

def pick_array(draw, call: Call) -> Optional[str]:
    """An array argument no earlier mutation replaced (a second one could undo the first)."""
    names = sorted(k for k in call.arrays() if k not in call.touched)
    if not names:
        return None
    name = draw(st.sampled_from(names))
    call.touched.add(name)
    return name


def byteswapped(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder())


def mutate_dtype(draw, call: Call) -> None:
    name = pick_array(draw, call)
    if name is None:
        return
    a = call.kwargs[name]
    kind = draw(st.sampled_from(["float16", "int32", "int64", "object", "bool", "complex64",
                                 "other float", "byte-swapped", "unpickled"]))
    if kind == "unpickled":
        # Equal to float32/float64 but maybe a different dtype object (as after pickle or
        # np.load of some files): still float32/float64, so it must be accepted.
        new = pickle.loads(pickle.dumps(a))
        call.kwargs[name] = new
        call.mark(VALID, f"{name}: unpickled dtype")
        return
    if kind == "other float":
        target = np.dtype(np.float64 if a.dtype == np.float32 else np.float32)
        if all(v.dtype == target for k, v in call.arrays().items() if k != name):
            return  # every other array was already switched: this would end the mismatch
        new = a.astype(target)
    elif kind == "byte-swapped":
        new = byteswapped(a)
    else:
        with np.errstate(invalid="ignore"):
            new = a.astype(kind)
    call.kwargs[name] = new
    call.mark(INVALID, f"{name}: dtype {kind} ({new.dtype.str})")


def same_values_view(a: np.ndarray, how: str) -> np.ndarray:
    """A view holding a's values in another memory layout."""
    if how == "every other element":
        big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "negative stride":
        axis = a.ndim - 1
        return np.flip(np.flip(a, axis).copy(), axis)
    if how == "Fortran order":
        return np.asfortranarray(a)
    if how == "misaligned":
        raw = np.empty(a.nbytes + a.itemsize, np.uint8)
        view = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view
    raise AssertionError(how)


def mutate_layout(draw, call: Call) -> None:
    name = pick_array(draw, call)
    if name is None:
        return
    a = call.kwargs[name]
    if a.ndim == 0 or a.dtype.kind not in "fc":
        return
    how = draw(st.sampled_from(["every other element", "negative stride", "Fortran order",
                                "misaligned", "read-only"]))
    if how == "read-only":
        new = a.copy()
        new.setflags(write=False)
        call.kwargs[name] = new
        call.mark(INVALID if name in call.outputs else VALID, f"{name}: read-only")
        return
    new = same_values_view(a, how)
    call.kwargs[name] = new
    if not new.flags.c_contiguous:
        call.mark(INVALID, f"{name}: {how}, not C-contiguous")
    elif not new.flags.aligned:  # the kernels would dereference a misaligned float*
        call.mark(INVALID, f"{name}: {how}")
    else:  # e.g. a flipped axis of length 1: still C-contiguous, same values
        call.mark(VALID, f"{name}: {how}, still C-contiguous")


class NotAnArray:
    """Quacks a little like an array (shape, dtype, __array__) but is not an ndarray."""

    def __init__(self, a: np.ndarray) -> None:
        self.shape, self.dtype, self._a = a.shape, a.dtype, a

    def __array__(self, dtype=None, copy=None):
        return self._a


def mutate_replace(draw, call: Call) -> None:
    names = sorted(k for k in call.arrays() if k not in call.optional and k not in call.touched)
    if not names:
        return
    name = draw(st.sampled_from(names))
    call.touched.add(name)
    a = call.kwargs[name]
    kind = draw(st.sampled_from(["None", "list", "scalar", "memoryview", "array-like", "str"]))
    call.kwargs[name] = {"None": None, "list": a.tolist(), "scalar": a.dtype.type(1.0),
                         "memoryview": memoryview(a) if a.flags.c_contiguous else None,
                         "array-like": NotAnArray(a), "str": "x"}[kind]
    call.mark(INVALID, f"{name}: replaced by {kind}")


def mutate_shape(draw, call: Call) -> None:
    """Change an axis that the other arguments determine, the rank, or (for the
    convolutions) make a dimension zero: each makes the call invalid.  Once per call: two
    changes could agree with each other again (both arrays one rank up)."""
    if "shape" in call.touched:
        return
    call.touched.add("shape")
    name = pick_array(draw, call)
    if name is None:
        return
    a = call.kwargs[name]
    kind = draw(st.sampled_from(["+-1 on a determined axis", "rank + 1", "rank - 1", "zero-size"]))
    if kind == "+-1 on a determined axis":
        axes = call.rigid.get(name, ())
        if not axes:
            return
        axis = draw(st.sampled_from(axes))
        delta = draw(st.sampled_from([-1, 1]))
        shape = list(a.shape)
        shape[axis] += delta
        if shape[axis] < 0:
            shape[axis] = a.shape[axis] + 1
        new = np.zeros(shape, a.dtype)
    elif kind == "rank + 1":
        new = a.reshape((1,) + a.shape)
    elif kind == "rank - 1":
        if a.ndim == 0:
            new = a.reshape(1)
        elif a.ndim == 1:
            new = a.reshape(()) if a.size == 1 else a.reshape(a.shape + (1,))
        else:
            new = a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
    else:
        if call.fn in ("gemm", "sgd_step", "adam_step") + ELTWISE_FUNCTIONS:
            return  # zero sizes are legal there (and drawn in the base calls)
        axis = draw(st.integers(0, a.ndim - 1))
        shape = list(a.shape)
        shape[axis] = 0
        new = np.zeros(shape, a.dtype)
    call.kwargs[name] = new
    call.mark(INVALID, f"{name}: {kind}: {a.shape} -> {new.shape}")


def mutate_alias(draw, call: Call) -> None:
    """Make an output share memory with another array argument."""
    outs = [k for k in call.outputs
            if isinstance(call.kwargs.get(k), np.ndarray) and k not in call.touched]
    others = [k for k in call.arrays() if k not in call.touched
              and (k not in outs or call.fn in ("sgd_step", "adam_step"))]
    if not outs:
        return
    out = draw(st.sampled_from(outs))
    others = [k for k in others if k != out]
    if not others:
        return
    other = draw(st.sampled_from(others))
    o, i = call.kwargs[out], call.kwargs[other]
    if o.size == 0 or i.size == 0 or o.dtype != i.dtype:
        return
    shift = draw(st.integers(0, i.size - 1))  # out starts inside `other`
    call.touched.update((out, other))
    buf = np.zeros(shift + max(i.size - shift, o.size), i.dtype)
    buf[:i.size] = i.ravel()
    call.kwargs[other] = buf[:i.size].reshape(i.shape)
    call.kwargs[out] = buf[shift:shift + o.size].reshape(o.shape)
    call.mark(INVALID, f"{out} overlaps {other} (offset {shift})")


BAD_PAIRS = [
    (0, "zero"), (-1, "negative"), ((1, -5), "negative"), (2**30 + 1, "just too large"),
    (2**31, "2**31"), ((1, 2**31 + 7), "2**31 + 7"), (2**62, "2**62"), (2**63, "2**63"),
    (-(2**63) - 1, "below int64"), (2**64 + 1, "above uint64"), (None, "None"), (1.5, "float"),
    ("2", "str"), ((1,), "1-tuple"), ((1, 2, 3), "3-tuple"), ((1, None), "pair with None"),
    (True, "bool"), ((2.0, 2.0), "float pair"), (object(), "object"),
    (np.bool_(True), "numpy bool"), ((np.int64(1), np.bool_(True)), "pair with numpy bool"),
    (b"12", "bytes"), (bytearray(b"12"), "bytearray"),
]


def mutate_param(draw, call: Call) -> None:
    if not call.params:
        return
    name = draw(st.sampled_from(call.params))
    if name in call.touched:
        return
    call.touched.add(name)
    current = call.kwargs[name]
    kind = draw(st.sampled_from(["bad", "bad", "bad", "list", "numpy ints"]))
    if kind == "list":
        call.kwargs[name] = list(current)
        call.mark(VALID, f"{name} as a list")
    elif kind == "numpy ints":
        call.kwargs[name] = (np.int64(current[0]), np.int32(current[1]))
        call.mark(VALID, f"{name} as NumPy integers")  # anything with __index__, as in PyTorch
    else:
        value, label = draw(st.sampled_from(BAD_PAIRS))
        if name == "padding" and label in ("zero",):
            return  # zero padding is legal
        if name == "output_padding" and label == "zero":
            return
        call.kwargs[name] = value
        call.mark(INVALID, f"{name} = {label}")


def mutate_version(draw, call: Call) -> None:
    """A bad version, or for a convolution a bad gemm_version (the gemm its gemm-based
    versions call): both are checked against their family's count."""
    if call.version_family is None or "version" in call.touched:
        return
    call.touched.add("version")
    arg, family = "version", call.version_family
    if family in ("conv2d", "symconv2d") and draw(st.booleans()):
        arg, family = "gemm_version", "gemm"
    count = len(_C.versions()[family])
    value = draw(st.sampled_from([-2, count, count + 7, -(2**31) - 1, 2**31, 2**63, 1.5, None,
                                  "0", True]))
    call.kwargs[arg] = value
    if value is True:
        call.mark(EITHER if count > 1 else INVALID, f"{arg} = True")
    else:
        call.mark(INVALID, f"{arg} = {value!r}")


def hyper_outcome(call: Call, value: float, nonneg: bool) -> int:
    """What the bindings do with a float hyper-parameter of an optimizer: it must be finite,
    within float32's range when the arrays are float32 (the kernels hold it in their
    precision), and >= 0 where `nonneg`; then any result is acceptable (no reference)."""
    param = call.kwargs.get("param")
    f32 = isinstance(param, np.ndarray) and param.dtype == np.float32
    if not np.isfinite(value) or (f32 and abs(value) > float(np.finfo(np.float32).max)):
        return INVALID
    return INVALID if nonneg and value < 0 else ANY


def mutate_hyper(draw, call: Call) -> None:
    """Bad hyper-parameters of gemm, the optimizers and LeakyReLU (one per call)."""
    if call.fn not in ("gemm", "sgd_step", "adam_step") + ELTWISE_FUNCTIONS \
            or "hyper" in call.touched:
        return
    call.touched.add("hyper")
    if call.fn in ELTWISE_FUNCTIONS:  # the slope must be finite and in (0, 1]
        value = draw(st.sampled_from([0.0, -0.2, 1.5, float("nan"), float("inf"), 1e300, None,
                                      "0.2", 0.5, 1e-30]))
        call.kwargs["negative_slope"] = value
        ok = isinstance(value, float) and 0.0 < value <= 1.0
        # a valid new slope changes the reference: any result will do
        call.mark(ANY if ok else INVALID, f"negative_slope = {value!r}")
        return
    if call.fn == "gemm":
        name = draw(st.sampled_from(["alpha", "beta", "trans_a"]))
        if name == "trans_a":
            value = draw(st.sampled_from(["yes", [1]]))
            call.kwargs[name] = value
            call.mark(INVALID, f"trans_a = {value!r}")
            return
        value = draw(st.sampled_from([float("nan"), float("inf"), 1e300, None, "1"]))
        call.kwargs[name] = value
        call.mark(ANY if isinstance(value, float) else INVALID, f"{name} = {value!r}")
    elif call.fn == "sgd_step":
        name = draw(st.sampled_from(["lr", "momentum", "weight_decay", "dampening", "nesterov"]))
        if name == "nesterov":
            call.kwargs.update(nesterov=True)
            ok = call.kwargs["momentum"] > 0 and call.kwargs["dampening"] == 0
            call.mark(ANY if ok else INVALID, "nesterov = True")  # ANY: the reference changes
            return
        value = draw(st.sampled_from([-1.0, float("nan"), float("inf"), 1e300, None, "0.1"]))
        if name == "momentum" and isinstance(value, float) and value > 0 \
                and call.kwargs["momentum_buf"] is None:
            call.kwargs[name] = value
            call.mark(INVALID, f"momentum = {value!r} without momentum_buf")
            return
        call.kwargs[name] = value
        if value is None or isinstance(value, str):
            call.mark(INVALID, f"{name} = {value!r}")
        else:  # dampening may be negative (torch.optim.SGD does not constrain it)
            call.mark(hyper_outcome(call, value, nonneg=name != "dampening"), f"{name} = {value!r}")
    elif call.fn == "adam_step":
        name = draw(st.sampled_from(["lr", "beta1", "beta2", "eps", "weight_decay", "step"]))
        if name == "step":
            value = draw(st.sampled_from([0, -1, 2**63, 1.5, None]))
            call.kwargs[name] = value
            call.mark(INVALID, f"step = {value!r}")
            return
        value = draw(st.sampled_from([-1.0, float("nan"), float("inf"), 1.0, 1e300, None]))
        call.kwargs[name] = value
        if value is None or value != value or value < 0 or (name.startswith("beta") and value >= 1):
            call.mark(INVALID, f"{name} = {value!r}")
        else:
            call.mark(hyper_outcome(call, value, nonneg=True), f"{name} = {value!r}")


def mutate_poison(draw, call: Call) -> None:
    """NaN or inf in an input: no reference, but the call must not crash."""
    name = pick_array(draw, call)
    if name is None:
        return
    a = call.kwargs[name]
    if a.size == 0 or a.dtype.kind != "f" or not a.flags.writeable:
        return
    a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    call.mark(ANY, f"{name}: non-finite value")


MUTATIONS = {"dtype": mutate_dtype, "layout": mutate_layout, "replace": mutate_replace,
             "shape": mutate_shape, "alias": mutate_alias, "param": mutate_param,
             "version": mutate_version, "hyper": mutate_hyper, "poison": mutate_poison}


@st.composite
def hostile_call(draw, fn: str) -> Call:
    call = draw(BASE[fn]())
    count = draw(st.sampled_from([0, 1, 1, 1, 2]))
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=count, max_size=count)):
        MUTATIONS[name](draw, call)
    event(f"expected {EXPECT_NAMES[call.expect]}")
    return call


# ============================================================================ property tests
@child_only
@pytest.mark.parametrize("fn", ALL_FUZZED)
@FUZZ
@given(data=st.data())
def test_hostile_call_returns_reference_or_raises(fn: str, data) -> None:
    run_call(data.draw(hostile_call(fn), label="call"))


@child_only
@pytest.mark.parametrize("fn", ALL_FUZZED)
@settings(FUZZ, max_examples=max(20, FUZZ.max_examples // 4))
@given(data=st.data())
def test_unmutated_call_returns_reference_or_raises(fn: str, data) -> None:
    """Unmutated calls only (valid but for some empty or huge geometries), so that every
    kernel version is compared with the reference on many geometries."""
    call = data.draw(BASE[fn](), label="call")
    run_call(call)


@child_only
@FUZZ
@given(n=st.one_of(st.integers(-(2**70), 0), st.integers(2**31, 2**70),
                   st.sampled_from([None, 1.5, "2", [2]]), st.integers(1, 4)))
def test_set_num_threads(n) -> None:
    """Only 1..4 are set for real: a huge valid count would make OpenMP start that many
    threads at the next parallel kernel (see docs/ROBUSTNESS.md)."""
    previous = _C.get_num_threads()
    try:
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 4:
            _C.set_num_threads(n)
            assert _C.get_num_threads() == n
        else:
            with pytest.raises((ValueError, TypeError)):
                _C.set_num_threads(n)
            assert _C.get_num_threads() == previous
    finally:
        _C.set_num_threads(previous)


# ============================================================================ in-process tests
def test_fuzz_suite_survives_in_a_child_interpreter() -> None:
    """Runs the property tests above in a child interpreter: a segfault or abort there
    (a kernel reading or writing out of bounds) fails this test instead of killing pytest."""
    if IN_CHILD:
        pytest.skip("already the child")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, GASCA_FUZZ_CHILD="1")
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(Path(__file__).resolve()), "-k", "hostile or unmutated or set_num_threads"]
    if os.environ.get("GASCA_FUZZ_STATS"):
        cmd.append("--hypothesis-show-statistics")
    def limit_memory() -> None:  # a kernel sizing scratch from a huge geometry must fail fast
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800,
                          preexec_fn=None if "asan" in env.get("LD_PRELOAD", "") else limit_memory)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode >= 0, f"the child interpreter died of signal {-proc.returncode}:\n{tail}"
    assert proc.returncode == 0, f"the property tests failed (exit {proc.returncode}):\n{tail}"
    assert " passed" in proc.stdout, tail


# Geometries valid for the bindings (tiny arrays, outputs of a few elements) whose huge
# stride/padding/dilation made the fast convolution (conv2d version 2, the default) size its
# zero-padded "phase image" from the padded extent: (a) 2**31 rows, an 8 GiB scratch
# buffer filled with zeros; (b) a size whose int64 product wraps to 0, so the buffer is
# tiny and phase_split writes far past it (segmentation fault).  Each runs in its own
# interpreter with a 4 GiB address-space limit so that neither can hurt the machine.
HUGE_GEOMETRIES = {
    "8 GiB phase image": dict(x=(1, 1, 1, 1), w=(1, 1, 1, 1), stride=(2**30, 1),
                              padding=(2**30, 0), dilation=(1, 1)),
    "phase image size wraps to 0": dict(x=(1, 4, 1, 1), w=(1, 4, 2, 1), stride=(2**29, 2**29),
                                        padding=(2**30, 2**30 - 1), dilation=(2**30 - 1, 1)),
}
_HUGE_SCRIPT = """
import resource, sys, numpy as np
if "asan" not in __import__("os").environ.get("LD_PRELOAD", ""):
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from gasca_core import _C
fn, g = sys.argv[1], eval(sys.argv[2])
x, w = np.ones(g["x"], np.float64), np.linspace(0.5, 1.5, int(np.prod(g["w"]))).reshape(g["w"])
oh, ow = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
          zip(g["x"][2:], g["padding"], g["dilation"], g["w"][2:], g["stride"])]
y = np.ones((g["x"][0], g["w"][0], oh, ow))
geo = (g["stride"], g["padding"], g["dilation"])
out = {"conv2d_forward": np.full(y.shape, np.nan), "conv2d_backward_input": np.full(x.shape, np.nan),
       "conv2d_backward_weight": np.full(w.shape, np.nan)}[fn]
args = {"conv2d_forward": (x, w, None, out), "conv2d_backward_input": (y, w, out),
        "conv2d_backward_weight": (x, y, out)}[fn]
try:
    getattr(_C, fn)(*args, *geo)
except (ValueError, TypeError) as exc:
    print("REJECTED", type(exc).__name__, exc)
else:
    print("RESULT", repr(out.ravel().tolist()))
"""


@pytest.mark.parametrize("fn", ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"])
@pytest.mark.parametrize("case", sorted(HUGE_GEOMETRIES))
def test_huge_geometry_with_tiny_arrays_is_computed(case: str, fn: str) -> None:
    """The geometry is valid and its output tiny, so the call must give the reference answer
    (conv2d version 2 falls back to im2col here, fixed in b9d4a9e): no crash, no 8 GiB
    scratch, no refusal."""
    g = HUGE_GEOMETRIES[case]
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _HUGE_SCRIPT, fn, repr(g)],
                          capture_output=True, text=True, timeout=120)
    why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    assert proc.returncode == 0, f"{case}: {fn} died ({why}):\n{proc.stderr[-3000:]}"
    out = proc.stdout.strip().splitlines()[-1:] or [""]
    assert out[0].startswith("RESULT"), proc.stdout + proc.stderr
    x = np.ones(g["x"])
    w = np.linspace(0.5, 1.5, int(np.prod(g["w"]))).reshape(g["w"])
    geo = (g["stride"], g["padding"], g["dilation"])
    if fn == "conv2d_forward":
        ref = conv2d_ref(x, w, None, *geo)
    elif fn == "conv2d_backward_input":
        ref = conv2d_input_grad_ref(np.ones(conv2d_ref(x, w, None, *geo).shape), w, x.shape[2:], *geo)
    else:
        ref = conv2d_weight_grad_ref(x, np.ones(conv2d_ref(x, w, None, *geo).shape), w.shape[2:], *geo)
    got = np.array(eval(out[0][len("RESULT "):]))
    np.testing.assert_allclose(got, ref.ravel(), rtol=1e-12, atol=1e-12)


def test_versions_lists_every_family_with_names() -> None:
    v = _C.versions()
    assert set(v) == {"gemm", "conv2d", "optim", "symconv2d", "eltwise"}
    for family, names in v.items():
        assert len(names) >= 1 and all(isinstance(s, str) and s for s in names), (family, names)


def test_unpickled_float32_arrays_are_accepted() -> None:
    """A float32 array that went through pickle has an equal but not identical dtype
    object; it is a float32 array all the same and the kernels must take it."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a, b = pickle.loads(pickle.dumps(x)), pickle.loads(pickle.dumps(x.T.copy()))
    c = np.zeros((2, 2), np.float32)
    if a.dtype is np.dtype(np.float32):
        pytest.skip("this NumPy hands back the canonical dtype object after unpickling")
    _C.gemm(a, b, c)
    np.testing.assert_allclose(c, x @ x.T)


def test_concurrent_calls_from_python_threads_agree_with_the_reference() -> None:
    """The GIL is released around every kernel: calls from several Python threads run at
    once, each with its own scratch memory, and each still gets its own right answer."""
    rng = np.random.default_rng(7)
    jobs = []
    for t in range(4):
        x = rng.standard_normal((2, 3, 9 + t, 8)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        ref = conv2d_ref(x.astype(np.float64), w.astype(np.float64), None, (1, 1), (1, 1), (1, 1))
        jobs.append((x, w, ref))
    errors: List[str] = []

    def worker(x, w, ref):
        out = np.empty(ref.shape, np.float32)
        for _ in range(30):
            _C.conv2d_forward(x, w, None, out, (1, 1), (1, 1), (1, 1))
            if not np.allclose(out, ref, rtol=1e-4, atol=1e-4):
                errors.append(f"thread with x {x.shape}: max error {np.abs(out - ref).max()}")
                return

    threads = [threading.Thread(target=worker, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
