"""Running a trained G over data, and the report every tool prints.

batched_apply and predict run a network over many images in batches without recording a
graph; results_tables is the one report of train, evaluate and compare: MSE / PSNR / SSIM
beside the two trivial baselines, and the error per label value (per yaw, ...).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .data.pairs import PairDataset
from .metrics import mse_per_image, psnr_per_image, ssim_per_image, summarize
from .tensor import Tensor, no_grad


def batched_apply(fn: Callable[[Tensor], Tensor], x, batch_size: int = 256):
    """fn over the first axis of array x in batches, without recording a graph; the result
    stays on x's device."""
    xp = get_array_module(x)
    outs = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(fn(Tensor(x[i:i + batch_size])).data)
    return xp.concatenate(outs) if outs else x[:0]


def predict(g, inputs: np.ndarray, device: str = "cpu") -> np.ndarray:
    """G's outputs for (N, C, H, W) host inputs, run on `device` in batches, as a host array."""
    g.eval()
    return to_numpy(batched_apply(g, to_device(inputs, device)))


def baselines(train: PairDataset, test: PairDataset) -> dict[str, float]:
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


def results_tables(name: str, out: np.ndarray, split: PairDataset, train: PairDataset,
                   label_keys: Sequence[str] = ("yaw",)) -> str:
    """The report every tool prints: MSE/PSNR/SSIM of `out` against the split's targets,
    the two trivial baselines, and the error per label value (per yaw, ...)."""
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
