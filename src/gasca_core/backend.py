"""The one dispatch point between Python and the kernels.

Three things live here and nowhere else:

1. *Which array library holds the numbers.*  Device "cpu" means NumPy arrays, device
   "cuda" means CuPy arrays.  `get_array_module(device_or_array)` returns the module, so
   that the rest of the package writes `xp.exp(x)` once for both.  Importing gasca_core
   never imports CuPy: it is imported on the first request for "cuda".

2. *Which compiled module runs a kernel.*  NumPy arrays go to `gasca_core._C` (the C++
   kernels), CuPy arrays to `gasca_core._C_cuda` (the CUDA kernels, on CuPy's current
   stream).  Every kernel wrapper below allocates its output, makes its inputs
   C-contiguous, and calls the binding with the argument order of python/README.md.

3. *Which version of each kernel runs.*  Every kernel family of versions() has versions,
   0 the reference and the others faster; a run may choose them (the section "kernel
   versions" below, and docs/COURSE.md):

       with gasca_core.kernels(conv2d=1, gemm=0):    # a block of code
           ...
       python -m gasca_core.train --kernels conv2d=1,gemm=0     # a command (also compare, bench)
       GASCA_KERNELS=conv2d=1,gemm=0 python -m ...              # a process

   all three read by `parse_kernels` and checked by `check_kernels`.  A version of your own,
   written in Python on NumPy arrays, joins the built-in ones with `register_kernel`.

There is no pure-Python fallback for the kernels: if the extension did not build, the
first kernel call raises an ImportError that says how to build it.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

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
    """Version names of the built-in CPU kernels: {"gemm": [...], "conv2d": [...],
    "optim": [...], "symconv2d": [...], "eltwise": [...]}, index = version number.  (Versions registered from Python are listed by
    `kernel_versions`.)"""
    return _cpu_module().versions()


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return _cpu_module().get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use."""
    _cpu_module().set_num_threads(int(n))


# ----------------------------------------------------------------------------- kernel versions
# Names.  A *family* is a key of versions(): its versions are numbered together in C++ (one
# version map atop cpp/conv2d.cpp, gemm.cpp, optim.cpp).  A *kernel* is one wrapper below.
# A choice names either: a family sets each of its kernels, a kernel only itself (and wins
# over its family).  conv2d's family holds the transposed convolution too: its passes are
# conv2d's passes (cpp/conv_transpose2d.h), so one conv2d version serves both.
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "conv2d": ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
               "conv_transpose2d_forward", "conv_transpose2d_backward_input",
               "conv_transpose2d_backward_weight"),
    "gemm": ("gemm",),
    "optim": ("sgd_step", "adam_step"),
    # The symmetry convolution (cpp/symconv2d.h: mirror-symmetric kernels stored as their left
    # half), CPU only: on CUDA, gasca_core.functional mirrors the half into a full kernel and
    # runs conv2d's CUDA kernels instead.
    "symconv2d": ("symconv2d_forward", "symconv2d_backward_input", "symconv2d_backward_weight"),
    # Element-wise passes of the activations (cpp/eltwise.h), CPU only: on CUDA arrays the
    # autograd computes them with CuPy's element-wise operations.
    "eltwise": ("leaky_relu_forward", "leaky_relu_backward"),
}
KERNELS: Dict[str, str] = {k: fam for fam, ks in FAMILIES.items() for k in ks}  # kernel -> family
# The conv2d versions built on gemm, whose products run on the chosen gemm version
# (cpp/conv2d.h: version 2 too where it takes version 1's path).
CONV_VERSIONS_ON_GEMM = (1,)
# The same for every convolution family: which of its versions hand their products to gemm.
VERSIONS_ON_GEMM: Dict[str, Tuple[int, ...]] = {"conv2d": CONV_VERSIONS_ON_GEMM, "symconv2d": (1,)}
ENV_KERNELS = "GASCA_KERNELS"            # e.g. "conv2d=1,gemm=0"
ENV_KERNEL_FILES = "GASCA_KERNEL_FILES"  # Python files that register versions, os.pathsep-separated

Version = Union[int, str]  # a built-in version number (-1: the fastest) or a registered name

_registered: Dict[str, Dict[str, Callable]] = {k: {} for k in KERNELS}  # kernel -> name -> fn
_base_choices: Optional[Dict[str, Version]] = None  # the process's choice (env, then set_kernels)
_block_choices: contextvars.ContextVar = contextvars.ContextVar("gasca_kernels", default=None)
_tally: Dict[Tuple[str, str], List[float]] = {}  # (kernel, version that ran) -> [calls, flops]


def fastest_versions() -> Dict[str, int]:
    """The built-in version each family's -1 picks: {"gemm": 2, "conv2d": 2, "optim": 1,
    "symconv2d": 1, "eltwise": 1}."""
    return dict(_cpu_module().fastest_versions())


def register_kernel(kernel: str, fn: Callable, name: str) -> Callable:
    """Add `fn`, written in Python on NumPy arrays, as version `name` of `kernel`.

    `kernel` is one kernel, not a family (a version may cover one pass: the forward
    convolution alone, say); `fn` takes the wrapper's arguments without `version` and
    returns what the wrapper returns (the optimizer steps update their arrays in place and
    return None).  For example, conv2d_forward's:

        def my_conv(x, weight, bias, stride, padding, dilation):  # -> y (N, Co, OH, OW)
        gasca_core.register_kernel("conv2d_forward", my_conv, name="mine")

    From then on "mine" is a version of conv2d_forward like 0, 1, 2: kernel_versions lists
    it, so the kernel tests check it against the reference and the benchmark times it, and
    `kernels(conv2d_forward="mine")` (or --kernels conv2d_forward=mine) makes every
    conv2d_forward of a run call it.  Registering a name again replaces the function.
    Registered versions run on the CPU only (NumPy arrays); a result of the wrong shape or
    dtype is an error naming the version.  Returns fn.
    """
    if kernel not in KERNELS:
        hint = (f" ({kernel!r} is a family: register each of its kernels, "
                f"{', '.join(FAMILIES[kernel])})" if kernel in FAMILIES else "")
        raise ValueError(f"register_kernel: unknown kernel {kernel!r}{hint}; kernels are "
                         f"{', '.join(KERNELS)}")
    if not callable(fn):
        raise TypeError(f"register_kernel: fn must be callable, got {type(fn).__name__}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_kernel: name must be an identifier (a word such as 'mine'), "
                         f"got {name!r}: numbers are the built-in versions")
    _registered[kernel][name] = fn
    return fn


def unregister_kernel(kernel: str, name: str) -> None:
    """Remove version `name` of `kernel` (registered by register_kernel)."""
    if name not in _registered.get(kernel, {}):
        raise ValueError(f"unregister_kernel: {kernel} has no registered version {name!r}")
    del _registered[kernel][name]


def load_kernel_file(path: str) -> None:
    """Run the Python file `path`, whose register_kernel calls add versions (what
    --kernel-file and GASCA_KERNEL_FILES do)."""
    if not os.path.isfile(path):
        raise ValueError(f"kernel file {path!r} does not exist")
    name = "gasca_kernel_file_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"kernel file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def kernel_versions(kernel: str) -> List[Version]:
    """Every version of `kernel` (or of a family: its first kernel's built-in versions and
    the names registered for any of its kernels): the built-in numbers 0, 1, ..., then the
    registered names.  What the kernel tests and the benchmark iterate over."""
    _base()  # loads GASCA_KERNEL_FILES
    if kernel in FAMILIES:
        names = [n for k in FAMILIES[kernel] for n in _registered[k]]
        return list(range(len(versions()[kernel]))) + list(dict.fromkeys(names))
    _check_name(kernel)
    return list(range(len(versions()[KERNELS[kernel]]))) + list(_registered[kernel])


def parse_kernels(spec: str, what: str = "--kernels") -> Dict[str, Version]:
    """'conv2d=1,gemm=0' (or 'conv2d_forward=mine') -> {"conv2d": 1, "gemm": 0}: a number is
    a built-in version, a word a registered one.  `what` names the spec's origin in errors.
    Checked by check_kernels."""
    choices: Dict[str, Version] = {}
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        name, eq, value = (t.strip() for t in item.partition("="))
        if not eq or not name or not value:
            raise ValueError(f"{what}: expected NAME=VERSION items separated by commas "
                             f"(e.g. conv2d=1,gemm=0), got {item!r}")
        try:
            choices[name] = int(value)
        except ValueError:
            choices[name] = value
    return check_kernels(choices, what)


def check_kernels(choices: Dict[str, Version], what: str = "kernels") -> Dict[str, Version]:
    """The choices, each name a kernel or a family and each version one it has; otherwise a
    ValueError naming the bad entry and the valid ones.  Returns a copy."""
    for name, version in choices.items():
        _check_name(name, what)
        kernels = FAMILIES.get(name, (name,))
        family = KERNELS[kernels[0]]
        count = len(versions()[family])
        if isinstance(version, bool) or not isinstance(version, (int, str)):
            raise ValueError(f"{what}: {name}={version!r}: a version is a number or a "
                             f"registered name")
        if isinstance(version, int):
            if not -1 <= version < count:
                raise ValueError(f"{what}: {name}={version}: {family} has versions -1 (the "
                                 f"fastest) and {_listing(family)}")
            continue
        missing = [k for k in kernels if version not in _registered[k]]
        if missing == list(kernels):
            known = {k: list(_registered[k]) for k in kernels if _registered[k]}
            raise ValueError(f"{what}: {name}={version}: no version {version!r} is registered "
                             f"for {name}; its versions are {_listing(family)}"
                             + (f", and the registered {known}" if known else "")
                             + " (register_kernel, --kernel-file, GASCA_KERNEL_FILES)")
        if missing:
            covered = [k for k in kernels if k not in missing]
            raise ValueError(f"{what}: {name}={version}: {version!r} is registered for "
                             f"{', '.join(covered)} only, not for {', '.join(missing)}: "
                             f"choose it kernel by kernel ({covered[0]}={version})")
    return dict(choices)


def set_kernels(choices: Union[str, Dict[str, Version]]) -> None:
    """Choose kernel versions for the rest of the process, on top of GASCA_KERNELS (what
    --kernels does).  A string is parsed by parse_kernels."""
    global _base_choices
    new = parse_kernels(choices) if isinstance(choices, str) else check_kernels(choices)
    _base_choices = {**_base(), **new}


@contextlib.contextmanager
def kernels(spec: Union[str, Dict[str, Version], None] = None, **choices: Version) -> Iterator[None]:
    """Run a block on chosen kernel versions: `with kernels(conv2d=1, gemm=0):` (or
    `kernels("conv2d=1,gemm=0")`).  Names are families (conv2d, gemm, optim, symconv2d, eltwise: all their
    kernels) or kernels (conv2d_forward, adam_step, ...: one of them, over its family);
    versions are numbers (versions(); -1 = the fastest) or registered names.  Blocks nest,
    the inner choice winning; what is not chosen keeps the outer choice (by default the
    fastest).  An explicit version= argument to a wrapper still wins over all of it."""
    extra = parse_kernels(spec, "kernels") if isinstance(spec, str) else dict(spec or {})
    new = check_kernels({**extra, **choices})
    outer = _block_choices.get()
    token = _block_choices.set({**(outer or {}), **new})
    try:
        yield
    finally:
        _block_choices.reset(token)


def chosen_version(kernel: str) -> Version:
    """The version `kernel` runs now on the CPU: a built-in number (-1 resolved to the
    fastest) or a registered name."""
    return _resolve(KERNELS[kernel], _choice(kernel))


def _choice(kernel: str) -> Version:
    """The version chosen for `kernel` as given (-1 when none was: the fastest of whichever
    module runs it): the innermost kernels() block first, then the process's choice; in
    each, the kernel's own entry before its family's."""
    _check_name(kernel)
    family = KERNELS[kernel]
    for layer in (_block_choices.get() or {}, _base()):
        for name in (kernel, family):
            if name in layer:
                return layer[name]
    return -1


def chosen_kernels() -> Dict[str, Version]:
    """{kernel: the version it runs now} for every kernel: what reports and checkpoints
    record."""
    return {k: chosen_version(k) for k in KERNELS}


def describe_kernels(chosen: Optional[Dict[str, Version]] = None) -> str:
    """One line for a report: each kernel's version and its name, families collapsed when
    all their kernels run the same one; the gemm inside conv2d version 1 is the gemm's."""
    chosen = chosen or chosen_kernels()
    parts = []
    for family, ks in FAMILIES.items():
        vs = [chosen[k] for k in ks]
        if len(set(map(str, vs))) == 1:
            parts.append(f"{family} {_label(family, vs[0])}")
        else:
            parts += [f"{k} {_label(family, chosen[k])}" for k in ks]
    return "; ".join(parts)


def kernel_calls(reset: bool = False) -> Dict[Tuple[str, str], Tuple[int, float]]:
    """{(kernel, version that ran): (calls, FLOPs)} since the last reset: which versions
    really ran, and how much work they did (2 per multiply-add of a convolution or matrix
    product; 0 for the optimizers).  A convolution version that calls gemm shows it, as in
    ("conv2d_forward", "1+gemm0")."""
    out = {k: (int(v[0]), v[1]) for k, v in _tally.items()}
    if reset:
        _tally.clear()
    return out


def _check_name(name: str, what: str = "kernels") -> None:
    if name not in KERNELS and name not in FAMILIES:
        raise ValueError(f"{what}: unknown kernel {name!r}: choose a family "
                         f"({', '.join(FAMILIES)}) or one kernel ({', '.join(KERNELS)})")


def _listing(family: str) -> str:
    return ", ".join(f"{i} ({n})" for i, n in enumerate(versions()[family]))


def _label(family: str, version: Version) -> str:
    if isinstance(version, str):
        return f"'{version}' (registered)"
    return f"v{version} ({versions()[family][version]})"


def _resolve(family: str, version: Version) -> Version:
    return fastest_versions()[family] if version == -1 else version


def _base() -> Dict[str, Version]:
    """The process's choice: GASCA_KERNEL_FILES loaded and GASCA_KERNELS read on first use,
    then whatever set_kernels added."""
    global _base_choices
    if _base_choices is None:
        _base_choices = {}
        for path in filter(None, os.environ.get(ENV_KERNEL_FILES, "").split(os.pathsep)):
            load_kernel_file(path)
        _base_choices = parse_kernels(os.environ.get(ENV_KERNELS, ""), ENV_KERNELS)
    return _base_choices


def _pick(kernel: str, version: Optional[Version]) -> Version:
    """The version a wrapper runs: its explicit `version` argument, else the choice."""
    if version is None:
        return _choice(kernel)
    if isinstance(version, str):
        check_kernels({kernel: version}, f"{kernel}(version=...)")
        return version
    return version  # a number: the binding checks it (and -1 is the fastest)


def _conv_gemm(kernel: str, version: int, array: Any) -> int:
    """The gemm version to hand a compiled convolution: the chosen gemm, which C++ can run
    only when it is built in.  CPU version 1 is built on gemm, so a registered (Python) gemm
    cannot serve it; version 2 calls a gemm only where it takes version 1's path, and then
    the fastest built-in one.  (The CUDA convolutions call no gemm.)"""
    g = _choice("gemm")
    if isinstance(g, int):
        return g
    family = KERNELS[kernel]
    if not is_cupy_array(array) and _resolve(family, version) in VERSIONS_ON_GEMM[family]:
        raise ValueError(f"{kernel}: {family} version {_resolve(family, version)} "
                         f"({versions()[family][_resolve(family, version)]}) calls gemm from "
                         f"C++, which cannot run the registered Python gemm {g!r}: choose a "
                         f"built-in gemm, or another {family} version")
    return -1


def _python_version(kernel: str, name: str, like: Any, *args) -> Any:
    """Call registered version `name` of `kernel` and check what it returns against `like`
    (the array the built-in version would have written; None for in-place kernels)."""
    if is_cupy_array(args[0]):
        raise ValueError(f"{kernel}: version {name!r} is registered from Python and runs on "
                         f"NumPy arrays only (device cpu), not on CuPy arrays")
    out = _registered[kernel][name](*args)
    if like is None:
        return None
    if not isinstance(out, np.ndarray) or out.shape != like.shape or out.dtype != like.dtype:
        got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise ValueError(f"{kernel}: registered version {name!r} returned {got}, expected a "
                         f"NumPy array of {like.dtype} and shape {like.shape}")
    return np.ascontiguousarray(out)


def _count(kernel: str, version: Version, array: Any, gemm: Optional[int] = None,
           flops: float = 0.0) -> None:
    """Tally one call (kernel_calls): the version that ran, resolved, and for CPU conv2d
    version 1 the gemm it called; CUDA versions are marked "cuda:"."""
    if is_cupy_array(array):
        label = f"cuda:{version}"
    else:
        family = KERNELS[kernel]
        label = str(_resolve(family, version))
        if gemm is not None and _resolve(family, version) in VERSIONS_ON_GEMM.get(family, ()):
            label += f"+gemm{_resolve('gemm', gemm)}"
    entry = _tally.setdefault((kernel, label), [0, 0.0])
    entry[0] += 1
    entry[1] += flops


def _conv_flops(kernel: str, args: tuple, out: Any) -> float:
    """2 x the multiply-adds of a convolution pass, from the wrapper's arguments and output:
    every pass of a convolution does the same work, 2 N (weight elements) P, P the pixels
    of the side where the convolution (for a transposed one, the convolution it is the
    adjoint of) has its outputs: y, grad_out, or the transposed convolution's x.  For the
    symmetry convolution the weight elements are the stored half's: the multiplications its
    fast version does (the mirrored pairs' additions are not counted)."""
    side = {"conv2d_forward": out.shape, "conv2d_backward_input": args[0].shape,
            "conv2d_backward_weight": args[1].shape, "conv_transpose2d_forward": args[0].shape,
            "conv_transpose2d_backward_input": out.shape,
            "conv_transpose2d_backward_weight": args[0].shape,
            "symconv2d_forward": out.shape, "symconv2d_backward_input": args[0].shape,
            "symconv2d_backward_weight": args[1].shape}[kernel]
    weight = out.shape if kernel.endswith("backward_weight") else args[1].shape
    n_weight = 1
    for d in weight:
        n_weight *= int(d)
    return 2.0 * int(side[0]) * n_weight * int(side[2]) * int(side[3])


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
# Every wrapper takes `version`: None (the default) runs the version chosen for it (see
# "kernel versions" above: the fastest unless chosen otherwise), a number that built-in
# version, a word that registered version.  A registered version is called with the
# wrapper's arguments, less `version`; the convolutions hand the chosen gemm version to C++
# as `gemm_version` (conv2d version 1 is built on gemm).

def _conv(kernel: str, version: Optional[Version], out: Any, args: tuple, arrays: tuple,
          geometry: tuple, before_geometry: tuple = ()) -> Any:
    """Run conv pass `kernel` into `out`: the registered Python version with `args` (the
    wrapper's own arguments), or the binding with `arrays`, `before_geometry` (the symmetry
    convolution's kernel_width) then `geometry`."""
    v = _pick(kernel, version)
    if isinstance(v, str):
        out = _python_version(kernel, v, out, *args)
    else:
        module, extra = _kernels_for(out)
        gemm_v = _conv_gemm(kernel, v, out)
        getattr(module, kernel)(*arrays, *before_geometry, *(tuple(g) for g in geometry),
                                version=v, gemm_version=gemm_v, **extra)
    _count(kernel, v, out, None if isinstance(v, str) else gemm_v, _conv_flops(kernel, args, out))
    return out


def conv2d_forward(x, weight, bias, stride: Pair, padding: Pair, dilation: Pair,
                   version: Optional[Version] = None):
    """y = conv2d(x, weight) + bias.  x (N,Ci,H,W), weight (Co,Ci,KH,KW), bias (Co) or None
    -> y (N,Co,OH,OW)."""
    xp = get_array_module(x)
    n, _, h, w = x.shape
    co, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size((h, w), (kh, kw), stride, padding, dilation)
    out = xp.empty((n, co, oh, ow), dtype=x.dtype)
    return _conv("conv2d_forward", version, out, (x, weight, bias, stride, padding, dilation),
                 (_c(x), _c(weight), None if bias is None else _c(bias), _canonical(out)),
                 (stride, padding, dilation))


def conv2d_backward_input(grad_out, weight, input_shape, stride: Pair, padding: Pair,
                          dilation: Pair, version: Optional[Version] = None):
    """dL/dx of conv2d.  grad_out (N,Co,OH,OW), weight (Co,Ci,KH,KW) -> (N,Ci,H,W) = input_shape."""
    xp = get_array_module(grad_out)
    grad_in = xp.empty(tuple(input_shape), dtype=grad_out.dtype)
    return _conv("conv2d_backward_input", version, grad_in,
                 (grad_out, weight, tuple(input_shape), stride, padding, dilation),
                 (_c(grad_out), _c(weight), _canonical(grad_in)), (stride, padding, dilation))


def conv2d_backward_weight(x, grad_out, weight_shape, stride: Pair, padding: Pair,
                           dilation: Pair, version: Optional[Version] = None):
    """dL/dweight of conv2d.  x (N,Ci,H,W), grad_out (N,Co,OH,OW) -> (Co,Ci,KH,KW) = weight_shape."""
    xp = get_array_module(x)
    grad_weight = xp.empty(tuple(weight_shape), dtype=x.dtype)
    return _conv("conv2d_backward_weight", version, grad_weight,
                 (x, grad_out, tuple(weight_shape), stride, padding, dilation),
                 (_c(x), _c(grad_out), _canonical(grad_weight)), (stride, padding, dilation))


def conv2d_backward_bias(grad_out):
    """dL/dbias of conv2d or conv_transpose2d: grad_out (N,C,H,W) summed over N, H, W -> (C).
    (One version only: nothing to choose.)"""
    xp = get_array_module(grad_out)
    grad_bias = xp.empty((grad_out.shape[1],), dtype=grad_out.dtype)
    module, extra = _kernels_for(grad_out)
    module.conv2d_backward_bias(_c(grad_out), _canonical(grad_bias), **extra)
    return grad_bias


def conv_transpose2d_forward(x, weight, bias, stride: Pair, padding: Pair, output_padding: Pair,
                             dilation: Pair, version: Optional[Version] = None):
    """y = conv_transpose2d(x, weight) + bias.  x (N,Ci,H,W), weight (Ci,Co,KH,KW),
    bias (Co) or None -> y (N,Co,OH,OW)."""
    xp = get_array_module(x)
    n, _, h, w = x.shape
    _, co, kh, kw = weight.shape
    oh, ow = conv_transpose2d_output_size((h, w), (kh, kw), stride, padding, output_padding,
                                          dilation)
    out = xp.empty((n, co, oh, ow), dtype=x.dtype)
    return _conv("conv_transpose2d_forward", version, out,
                 (x, weight, bias, stride, padding, output_padding, dilation),
                 (_c(x), _c(weight), None if bias is None else _c(bias), _canonical(out)),
                 (stride, padding, output_padding, dilation))


def conv_transpose2d_backward_input(grad_out, weight, input_shape, stride: Pair, padding: Pair,
                                    output_padding: Pair, dilation: Pair,
                                    version: Optional[Version] = None):
    """dL/dx of conv_transpose2d.  grad_out (N,Co,OH,OW), weight (Ci,Co,KH,KW) -> input_shape."""
    xp = get_array_module(grad_out)
    grad_in = xp.empty(tuple(input_shape), dtype=grad_out.dtype)
    return _conv("conv_transpose2d_backward_input", version, grad_in,
                 (grad_out, weight, tuple(input_shape), stride, padding, output_padding, dilation),
                 (_c(grad_out), _c(weight), _canonical(grad_in)),
                 (stride, padding, output_padding, dilation))


def conv_transpose2d_backward_weight(x, grad_out, weight_shape, stride: Pair, padding: Pair,
                                     output_padding: Pair, dilation: Pair,
                                     version: Optional[Version] = None):
    """dL/dweight of conv_transpose2d.  x (N,Ci,H,W), grad_out (N,Co,OH,OW) -> (Ci,Co,KH,KW)."""
    xp = get_array_module(x)
    grad_weight = xp.empty(tuple(weight_shape), dtype=x.dtype)
    return _conv("conv_transpose2d_backward_weight", version, grad_weight,
                 (x, grad_out, tuple(weight_shape), stride, padding, output_padding, dilation),
                 (_c(x), _c(grad_out), _canonical(grad_weight)),
                 (stride, padding, output_padding, dilation))


# The symmetry convolution (cpp/symconv2d.h).  weight_half (Co,Ci,KH,ceil(KW/2)) is the left
# half of a kernel mirror-symmetric left to right, kernel_width its full width KW (which
# weight_half cannot tell: ceil(3/2) = ceil(4/2)).  CPU only; on CUDA arrays the autograd
# layer (functional.symmetric_conv2d) runs conv2d with the mirrored full kernel instead.

def _cpu_only(kernel: str, array: Any) -> None:
    if is_cupy_array(array):
        raise ValueError(f"{kernel}: the symmetry convolution's kernels run on the CPU only; on "
                         f"CUDA use gasca_core.functional.symmetric_conv2d, which mirrors the "
                         f"half kernel and runs conv2d")


def symconv2d_forward(x, weight_half, bias, kernel_width: int, stride: Pair, padding: Pair,
                      dilation: Pair, version: Optional[Version] = None):
    """y = symconv2d(x, weight_half) + bias.  x (N,Ci,H,W), weight_half (Co,Ci,KH,ceil(KW/2)),
    bias (Co) or None -> y (N,Co,OH,OW), as conv2d with the mirrored full kernel."""
    _cpu_only("symconv2d_forward", x)
    n, _, h, w = x.shape
    co, _, kh, _ = weight_half.shape
    oh, ow = conv2d_output_size((h, w), (kh, int(kernel_width)), stride, padding, dilation)
    out = np.empty((n, co, oh, ow), dtype=x.dtype)
    return _conv("symconv2d_forward", version, out,
                 (x, weight_half, bias, kernel_width, stride, padding, dilation),
                 (_c(x), _c(weight_half), None if bias is None else _c(bias), _canonical(out)),
                 (stride, padding, dilation), (int(kernel_width),))


def symconv2d_backward_input(grad_out, weight_half, input_shape, kernel_width: int, stride: Pair,
                             padding: Pair, dilation: Pair, version: Optional[Version] = None):
    """dL/dx of symconv2d.  grad_out (N,Co,OH,OW), weight_half -> (N,Ci,H,W) = input_shape."""
    _cpu_only("symconv2d_backward_input", grad_out)
    grad_in = np.empty(tuple(input_shape), dtype=grad_out.dtype)
    return _conv("symconv2d_backward_input", version, grad_in,
                 (grad_out, weight_half, tuple(input_shape), kernel_width, stride, padding,
                  dilation),
                 (_c(grad_out), _c(weight_half), _canonical(grad_in)), (stride, padding, dilation),
                 (int(kernel_width),))


def symconv2d_backward_weight(x, grad_out, weight_half_shape, kernel_width: int, stride: Pair,
                              padding: Pair, dilation: Pair, version: Optional[Version] = None):
    """dL/dweight_half of symconv2d: the full kernel's gradient folded onto its stored half.
    x (N,Ci,H,W), grad_out (N,Co,OH,OW) -> (Co,Ci,KH,ceil(KW/2)) = weight_half_shape."""
    _cpu_only("symconv2d_backward_weight", x)
    grad_weight = np.empty(tuple(weight_half_shape), dtype=x.dtype)
    return _conv("symconv2d_backward_weight", version, grad_weight,
                 (x, grad_out, tuple(weight_half_shape), kernel_width, stride, padding, dilation),
                 (_c(x), _c(grad_out), _canonical(grad_weight)), (stride, padding, dilation),
                 (int(kernel_width),))


def gemm(a, b, trans_a: bool = False, trans_b: bool = False, version: Optional[Version] = None):
    """c = op(a) @ op(b) with our blocked matrix product (2-D arrays)."""
    xp = get_array_module(a)
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = xp.empty((m, n), dtype=a.dtype)
    v = _pick("gemm", version)
    if isinstance(v, str):
        c = _python_version("gemm", v, c, a, b, trans_a, trans_b)
    else:
        module, extra = _kernels_for(a)
        module.gemm(_c(a), _c(b), _canonical(c), trans_a=trans_a, trans_b=trans_b, alpha=1.0,
                    beta=0.0, version=v, **extra)
    k = a.shape[0] if trans_a else a.shape[1]
    _count("gemm", v, c, flops=2.0 * m * n * k)
    return c


# ----------------------------------------------------------------------------- element-wise
# LeakyReLU for 0 < negative_slope <= 1 (cpp/eltwise.h): the same floats as NumPy's
# max(x * s, x), on every thread.  CPU arrays only; the autograd (functional.LeakyReLU)
# runs other slopes, and CuPy arrays, through the array module instead.

def _eltwise_args(kernel: str, negative_slope: float, *arrays) -> float:
    for a in arrays:
        if is_cupy_array(a):
            raise ValueError(f"{kernel}: the element-wise kernels run on the CPU only; "
                             f"gasca_core.functional computes CuPy arrays with CuPy")
    s = float(negative_slope)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"{kernel}: negative_slope = {s!r} must be in (0, 1]")
    return s


def _eltwise(kernel: str, version: Optional[Version], arrays: tuple, s: float):
    """Run element-wise `kernel` on C-contiguous `arrays` (then the slope) into a new array
    shaped like the first: the registered Python version, or the binding."""
    v = _pick(kernel, version)
    like = arrays[0]
    out = np.empty(like.shape, like.dtype)
    if isinstance(v, str):
        out = _python_version(kernel, v, out, *arrays, s)
    else:
        getattr(_cpu_module(), kernel)(*arrays, _canonical(out), s, version=v)
    _count(kernel, v, like)
    return out


def leaky_relu_forward(x, negative_slope: float, version: Optional[Version] = None):
    """max(x * negative_slope, x) as a new C-contiguous array of x's dtype and shape."""
    s = _eltwise_args("leaky_relu_forward", negative_slope, x)
    return _eltwise("leaky_relu_forward", version, (_c(x),), s)


def leaky_relu_backward(y, grad_out, negative_slope: float, version: Optional[Version] = None):
    """grad_out where y > 0, grad_out * negative_slope elsewhere (y: the forward's output,
    positive exactly where its input was)."""
    s = _eltwise_args("leaky_relu_backward", negative_slope, y, grad_out)
    y = _c(y)
    return _eltwise("leaky_relu_backward", version, (y, _c(grad_out.astype(y.dtype, copy=False))), s)


# ----------------------------------------------------------------------------- optimizers

def sgd_step(param, grad, momentum_buf: Optional[Any], lr: float, momentum: float,
             dampening: float, weight_decay: float, nesterov: bool, first_step: bool,
             version: Optional[Version] = None) -> None:
    """Fused in-place SGD update of `param` (and `momentum_buf`); see cpp/optim.h.

    `param` and `momentum_buf` must already be C-contiguous (they are updated in place);
    `grad` is made contiguous and cast to the parameter's dtype here.
    """
    v = _pick("sgd_step", version)
    grad = _c(grad.astype(param.dtype, copy=False))
    if isinstance(v, str):
        _python_version("sgd_step", v, None, param, grad, momentum_buf, float(lr),
                        float(momentum), float(dampening), float(weight_decay), bool(nesterov),
                        bool(first_step))
    else:
        module, extra = _kernels_for(param)
        module.sgd_step(_canonical(param), grad, _canonical(momentum_buf), float(lr),
                        float(momentum), float(dampening), float(weight_decay), bool(nesterov),
                        bool(first_step), version=v, **extra)
    _count("sgd_step", v, param)


def adam_step(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float,
              beta2: float, eps: float, weight_decay: float, decoupled: bool,
              version: Optional[Version] = None) -> None:
    """Fused in-place Adam (decoupled=False) or AdamW (decoupled=True) update; see
    cpp/optim.h.  `step` is the 1-based step count after this update."""
    v = _pick("adam_step", version)
    grad = _c(grad.astype(param.dtype, copy=False))
    if isinstance(v, str):
        _python_version("adam_step", v, None, param, grad, exp_avg, exp_avg_sq, int(step),
                        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                        bool(decoupled))
    else:
        module, extra = _kernels_for(param)
        module.adam_step(_canonical(param), grad, _canonical(exp_avg), _canonical(exp_avg_sq),
                         int(step), float(lr), float(beta1), float(beta2), float(eps),
                         float(weight_decay), bool(decoupled), version=v, **extra)
    _count("adam_step", v, param)
