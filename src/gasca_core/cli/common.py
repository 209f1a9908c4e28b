"""What the command-line tools share: flag types, the data and architecture flags, and the
one place where flags become a GascaConfig (model_config_from_args) and splits are loaded."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

from ..data import DATASET_NAMES
from ..data.pairs import PairDataset
from ..models import (ACTIVATIONS, ARCHITECTURES, DECODERS, DEFAULT_ARCHITECTURE, GascaConfig,
                      architecture)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is nothing to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_data_args(p: argparse.ArgumentParser, image_size: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                   help="where the (input, target) pairs come from: the built-in synthetic faces "
                        "(rendered and cached on first use; synthetic-expressions: the same "
                        "faces showing seven expressions, 31,500 pairs), a folder with inputs/ and "
                        "targets/, a Multi-PIE-style tree, an .npz file, or a cache made by "
                        "python -m gasca_core.data prepare (default: synthetic-faces without "
                        "--data, otherwise told by --data: a cache, *.npz, a folder with "
                        "inputs/ or pairs.csv, any other folder a Multi-PIE tree)")
    g.add_argument("--data", metavar="PATH", default=None,
                   help="the folder, tree, .npz file or prepared cache")
    g.add_argument("--max-train", type=positive_int, default=None, metavar="N",
                   help="use at most N training pairs (for quick runs)")
    g.add_argument("--max-eval", type=positive_int, default=None, metavar="N",
                   help="use at most N validation and N test pairs (seeded subsets; default "
                        "all). The evaluation holds its split's images and outputs in memory: "
                        "cap it on datasets whose test split does not fit")
    if image_size:
        g.add_argument("--image-size", type=positive_int, default=64, metavar="S",
                       help="images are S x S pixels (resized where a loader must)")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not np.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    v = nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def d_ratio(text: str) -> float:
    """A D:G update ratio, in (0, 1]."""
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return v


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers >= 0 (e.g. adversarial weights)."""
    try:
        vals = [nonneg_float(t.strip()) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError:
        vals = []
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got '{text}'")
    return vals


def int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got '{text}'")
    return vals


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The architecture flags: a named architecture, and fields to override in it."""
    a = p.add_argument_group(f"architecture (default: {DEFAULT_ARCHITECTURE})")
    a.add_argument("--arch", choices=sorted(ARCHITECTURES), default=DEFAULT_ARCHITECTURE,
                   help="a named architecture: gasca-64 is the paper's shapes (3 levels, "
                        "32,64,128 channels, kernels 5,5,3); gasca-64-deep has 5 levels "
                        "(16,32,64,128,128 channels, kernels 4). The flags below override its "
                        "fields")
    a.add_argument("--channels", type=int_list, default=None, metavar="C1,C2,...",
                   help="channels of each level; their number is the number of levels "
                        "(default: the architecture's)")
    a.add_argument("--kernel-sizes", type=int_list, default=None, metavar="K1,K2,...",
                   help="kernel size of each level (default: the architecture's; levels beyond "
                        "its own use 3)")
    a.add_argument("--hidden-activation", choices=ACTIVATIONS, default=None,
                   help="activation of the encoders and of the decoders above level 1 "
                        "(default: the architecture's: leaky_relu)")
    a.add_argument("--decoder", choices=DECODERS, default=None,
                   help="how each level's decoder doubles the map: a transposed convolution, or "
                        "resize (nearest upsampling, then a stride-1 convolution) "
                        "(default: the architecture's)")
    a.add_argument("--symmetric-levels", type=int_list, default=None, metavar="K1,K2,...",
                   help="levels of G (1-based) whose encoder convolution and decoder "
                        "convolution use kernels mirror-symmetric left to right: about half "
                        "the weights (the symmetry convolution; D stays plain) "
                        "(default: none)")
    a.add_argument("--local-global-levels", type=int_list, default=None, metavar="K1,K2,...",
                   help="levels of G (1-based) whose encoder and decoder convolutions add a "
                        "global path: the input pooled to a grid of channel means, one matrix, "
                        "added at every output pixel (nn.LocalGlobal; starts at zero; D stays "
                        "plain) (default: none)")
    a.add_argument("--local-global-grid", type=positive_int, default=None, metavar="G",
                   help="the pooled grid of --local-global-levels, G x G (default 4; 1 is "
                        "global average pooling)")


def add_kernel_args(p: argparse.ArgumentParser) -> None:
    """--kernels and --kernel-file: which kernel versions the command runs on (the one
    mechanism of gasca_core.backend; GASCA_KERNELS and GASCA_KERNEL_FILES do the same from
    the environment, and these flags win over them)."""
    k = p.add_argument_group("kernel versions (docs/COURSE.md)")
    k.add_argument("--kernels", default=None, metavar="NAME=V,...",
                   help="run on these kernel versions, e.g. conv2d=1,gemm=0: NAME is a family "
                        "(conv2d, gemm, optim, symconv2d) or one kernel (conv2d_forward, "
                        "conv_transpose2d_backward_weight, adam_step, ...), V a built-in version "
                        "number (python -c 'import gasca_core; print(gasca_core.backend.versions())') "
                        "or the name of one registered by --kernel-file (default: the fastest "
                        "of each, or what GASCA_KERNELS says)")
    k.add_argument("--kernel-file", action="append", default=[], metavar="FILE.py",
                   help="a Python file whose gasca_core.register_kernel calls add versions of "
                        "your own (repeatable)")


def apply_kernel_args(args: argparse.Namespace) -> None:
    """Load the --kernel-file files and choose the --kernels versions for this process; a
    bad file or choice stops the tool with the message."""
    from .. import backend
    try:
        for path in getattr(args, "kernel_file", None) or []:
            backend.load_kernel_file(path)
        if getattr(args, "kernels", None):
            backend.set_kernels(backend.parse_kernels(args.kernels))
        else:
            backend.chosen_kernels()  # reads and checks GASCA_KERNELS now, not mid-run
    except ValueError as e:
        fail(str(e))


def model_config_from_args(args: argparse.Namespace) -> GascaConfig:
    """The GascaConfig that the architecture flags and --image-size describe; it keeps the
    architecture's name (--arch) only when no flag changes one of its fields, and is called
    "custom" otherwise."""
    base = architecture(getattr(args, "arch", None) or DEFAULT_ARCHITECTURE)
    channels = args.channels or base.channels
    ks = args.kernel_sizes or (base.kernel_sizes + [3] * max(0, len(channels) - len(base.kernel_sizes))
                               )[:len(channels)]
    if len(ks) != len(channels):
        fail(f"--kernel-sizes has {len(ks)} entries, --channels {len(channels)}: give one per level")
    fields = dict(image_size=getattr(args, "image_size", base.image_size), channels=channels,
                  kernel_sizes=ks,
                  hidden_activation=getattr(args, "hidden_activation", None) or base.hidden_activation,
                  decoder=getattr(args, "decoder", None) or base.decoder,
                  symmetric_levels=getattr(args, "symmetric_levels", None) or base.symmetric_levels,
                  local_global_levels=getattr(args, "local_global_levels", None) or base.local_global_levels,
                  local_global_grid=getattr(args, "local_global_grid", None) or base.local_global_grid)
    same = all(getattr(base, k) == v for k, v in fields.items())
    try:
        return GascaConfig(**{**base.to_dict(), **fields, "paddings": None,
                              "disc_channels": None, "name": base.name if same else "custom"})
    except ValueError as e:
        fail(str(e))


def resolve_dataset(args: argparse.Namespace) -> str:
    """Set args.dataset from --data when --dataset was not given (see add_data_args)."""
    from ..data import infer_dataset
    if getattr(args, "dataset", None) is None:
        try:
            args.dataset = infer_dataset(args.data)
        except ValueError as e:
            fail(str(e))
    return args.dataset


def load_splits(dataset: str, data: Optional[str], seed: int, image_size: int = 64,
                max_train: Optional[int] = None, max_eval: Optional[int] = None
                ) -> tuple[PairDataset, PairDataset, PairDataset]:
    """(train, val, test) pairs of a dataset named by the flags; a missing --data stops the
    tool with a message."""
    from ..data import get_splits, infer_dataset
    from ..data.datasets import BUILT_IN
    dataset = dataset or infer_dataset(data)
    if dataset not in BUILT_IN and not data:
        fail(f"--dataset {dataset} needs --data PATH")
    return tuple(get_splits(dataset, data=data, seed=seed, image_size=image_size,
                            max_train=max_train, max_eval=max_eval))  # type: ignore[return-value]


def fail(msg: str, code: int = 2) -> "None":
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
