"""Pieces the command-line entry points share: data flags, loading splits, baselines, tables."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

import numpy as np

from .metrics import mse_per_image, psnr_per_image, ssim_per_image
from .training.trainer import PairData

DATASETS = ("synthetic-faces", "folder", "multipie", "npz")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is nothing to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_data_args(p: argparse.ArgumentParser, image_size: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic-faces",
                   help="where the (input, target) pairs come from: the built-in synthetic faces "
                        "(rendered and cached on first use), a folder with inputs/ and "
                        "targets/, a Multi-PIE-style tree, or an .npz file")
    g.add_argument("--data", metavar="PATH", default=None,
                   help="the folder, tree or .npz file for --dataset folder/multipie/npz")
    g.add_argument("--max-train", type=positive_int, default=None, metavar="N",
                   help="use at most N training pairs (for quick runs)")
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


def int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got '{text}'")
    return vals


def load_splits(dataset: str, data: Optional[str], seed: int, image_size: int = 64,
                max_train: Optional[int] = None) -> tuple[PairData, PairData, PairData]:
    """(train, val, test) pairs for a dataset name, as the trainers want them."""
    from . import data as data_mod
    if dataset != "synthetic-faces" and not data:
        raise SystemExit(f"error: --dataset {dataset} needs --data PATH")
    train, val, test = data_mod.get_splits(dataset, data=data, seed=seed, image_size=image_size,
                                           max_train=max_train)
    return PairData.from_dataset(train), PairData.from_dataset(val), PairData.from_dataset(test)


def baselines(train: PairData, test: PairData) -> dict[str, float]:
    """The two trivial baselines: output = input, and output = the mean training target."""
    mean_face = np.broadcast_to(train.targets.mean(axis=0, keepdims=True), test.targets.shape)
    return {"copy_input_mse": float(mse_per_image(test.inputs, test.targets).mean()),
            "mean_target_mse": float(mse_per_image(mean_face, test.targets).mean())}


def per_label_table(pred, target, labels: dict, key: str) -> list[tuple[Any, int, float, float, float]]:
    """Rows (label value, count, MSE, PSNR, SSIM) grouped by labels[key]."""
    if key not in labels:
        return []
    vals = np.asarray(labels[key])
    mse, psnr, ssim = (mse_per_image(pred, target), psnr_per_image(pred, target),
                       ssim_per_image(pred, target))
    rows = []
    for v in np.unique(vals):
        m = vals == v
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # yaw -60.0 reads better as -60
        rows.append((v, int(m.sum()), float(mse[m].mean()),
                     float(psnr[m].mean()), float(ssim[m].mean())))
    return rows


def predict(g, inputs: np.ndarray, device: str = "cpu") -> np.ndarray:
    """G's outputs for (N, C, H, W) host inputs, run on `device` in batches, as a host array."""
    from . import backend
    from .training.trainer import batched_apply
    g.eval()
    out = batched_apply(g, backend.to_device(inputs, device))
    return out.get() if hasattr(out, "get") else out


def results_tables(name: str, out: np.ndarray, split: PairData, train: PairData,
                   label_keys: Sequence[str] = ("yaw",)) -> str:
    """The report every tool prints: MSE/PSNR/SSIM of `out` against the split's targets,
    the two trivial baselines, and the error per label value (per yaw, ...)."""
    from .metrics import summarize
    m = summarize(out, split.targets)
    base = baselines(train, split)
    lines = [format_table(["", "MSE", "PSNR (dB)", "SSIM"], [[name, m["mse"], m["psnr"], m["ssim"]]]),
             "",
             format_table(["trivial baseline", "MSE"],
                          [["output = input", base["copy_input_mse"]],
                           ["output = mean target face", base["mean_target_mse"]]])]
    for key in label_keys:
        rows = per_label_table(out, split.targets, split.labels, key)
        if rows:
            lines += ["", f"per {key}{' (degrees)' if key == 'yaw' else ''}:",
                      format_table([key, "n", "MSE", "PSNR", "SSIM"], rows)]
    return "\n".join(lines)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"  # 4 significant digits: 0.00458, 3.5e-06, 25.17
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells])


def fail(msg: str, code: int = 2) -> "None":
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)
