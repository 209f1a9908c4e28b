"""What a run leaves in its directory besides checkpoints: metrics.jsonl (one JSON record
per validation), an image grid after each phase, and the loss curve.

RunOutputs owns the directory's files; the trainer hands it records and images and never
opens a file itself (checkpoints go through checkpoint.py).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from ..backend import to_numpy
from ..data.grid import save_image_grid
from ..evaluation import batched_apply


class RunOutputs:
    """The files of one run in `out_dir` (created on first use)."""

    METRICS = "metrics.jsonl"
    CURVE = "loss_curve.png"

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def prepare(self) -> None:
        """Create the directory and sweep the temporary files of a process that was killed
        while writing a checkpoint (the checkpoint itself is whole: the rename never
        happened)."""
        os.makedirs(self.out_dir, exist_ok=True)
        for name in os.listdir(self.out_dir):
            if name.startswith(".tmp-") and name.endswith(".npz"):
                os.unlink(self.path(name))

    # ------------------------------------------------------------------ metrics.jsonl

    def append_metrics(self, record: dict) -> None:
        with open(self.path(self.METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def trim_metrics(self, global_step: int) -> list[dict]:
        """Drop records written after `global_step` (a resumed run redoes them); returns the
        records kept, oldest first."""
        path = self.path(self.METRICS)
        if not os.path.exists(path):
            return []
        keep = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("global_step", 0) <= global_step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(keep)
        return [json.loads(line) for line in keep]

    # ------------------------------------------------------------------ pictures

    def save_grid(self, generator: Any, val: Any, name: str) -> str:
        """An image grid of 8 validation pairs spread over the whole split (so over people,
        yaws and lights); rows: input, G's output, target. Returns its path."""
        pick = np.unique(np.linspace(0, len(val) - 1, 8).round().astype(np.int64))
        x, y = val.take(pick)
        out = batched_apply(generator, x)
        path = self.path(name)
        save_image_grid([to_numpy(x), np.clip(to_numpy(out), 0, 1), to_numpy(y)], path)
        return path

    def plot_curves(self, history: list[dict], title: str) -> Optional[str]:
        """Validation MSE over the steps, phases marked, where matplotlib is installed."""
        if not history:
            return None
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            return None
        steps = [r["global_step"] for r in history]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["val_mse"] for r in history], label="validation MSE (pixels)")
        ax.plot(steps, [r["phase_val_rec_loss"] for r in history], alpha=0.7,
                label="validation loss of the phase's own data (codes in greedy stages)")
        top = max(r["val_mse"] for r in history)
        starts: dict[str, int] = {}
        for r in history:
            starts.setdefault(r["phase"], r["global_step"])
        for name, s in starts.items():
            ax.axvline(s, color="grey", lw=0.5)
            ax.text(s, top, name, rotation=90, fontsize=6, va="top")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = self.path(self.CURVE)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


