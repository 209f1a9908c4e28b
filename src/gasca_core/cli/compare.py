"""python -m gasca_core.compare: the paper's comparison, GANGGLW vs joint vs plain greedy.

Runs every method on the same data, the same architecture and the same budget of generator
updates, over several seeds, and reports test MSE per method (mean, a 95% confidence
interval and the spread) and per yaw.  With --budget both (the default) it also runs every
method again for the seconds joint training took, so that the cheaper greedy stages can
spend their savings on more steps.

One clock for every method: the trainer's training clock counts the training steps (the
greedy stages' code encoding included) and each phase's set-up, never validations,
checkpoints or grids (for no method), and the equal-time budget is joint's seconds on that
clock.  Every run records its training-clock and wall seconds and its G and D updates, and
the tables show them; --shared-machine marks runs made beside other work, whose seconds
are then left out of every mean of seconds.

--adv-weights W1,W2,... repeats the whole comparison per adversarial weight (a sweep;
0 = no D at all: "GASCA without the GA").  --ablations separates GANGGLW's two differences
from joint training, cheaper steps and fewer D updates: it adds joint at GANGGLW's D:G
update ratio (for every weight > 0) and every method with no D (weight 0).

Writes results.json (every run, enough to rebuild the tables), results.md and bar charts;
--report-only DIR rebuilds results.md and the charts from DIR/results.json (or, for a
--curve directory, curves.md and the chart from DIR/curves.json), training nothing; several
directories are merged, after checking that their settings agree.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from .. import evaluation
from ..statistics import mean_ci
from ..evaluation import baselines, format_table, per_label_table, predict
from ..metrics import mse_per_image
from ..models import GascaConfig
from ..training import (CODE_MODES, LR_SCHEDULES, METHODS, Trainer, TrainConfig, canonical_method,
                        gangglw_d_ratio)
from .common import (HelpFormatter, add_data_args, add_kernel_args, add_model_args,
                     apply_kernel_args, d_ratio, fail, float_list, int_list, load_splits,
                     model_config_from_args, nonneg_float, positive_int, resolve_dataset)

RESULTS_FORMAT = 2
JOINT_AT_GANGGLW_RATIO = "joint (gangglw's D:G ratio)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gasca_core.compare", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated methods to compare")
    p.add_argument("--seeds", type=int_list, default=[1, 2, 3], metavar="S1,S2,...",
                   help="seeds (each seeds initialisation and batches; the data split uses --data-seed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data split")
    p.add_argument("--steps", type=positive_int, default=600, help="generator updates per run")
    p.add_argument("--budget", choices=("steps", "time", "both"), default="both",
                   help="equal generator updates, equal training-clock time (joint's; "
                        "validations excluded for every method), or both")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--adv-weight", type=nonneg_float, default=TrainConfig.adv_weight,
                   help="adversarial weight (0 = no D is trained)")
    p.add_argument("--adv-weights", type=float_list, default=None, metavar="W1,W2,...",
                   help="run the whole comparison once per adversarial weight (a sweep, e.g. "
                        "0,1e-4,1e-3,1e-2,1e-1; 0 = no D); overrides --adv-weight")
    p.add_argument("--d-ratio", type=d_ratio, default=TrainConfig.d_ratio, metavar="R",
                   help="D updates per step in phases that train G and D, in (0, 1] (every run)")
    p.add_argument("--ablations", action="store_true",
                   help=f"also run '{JOINT_AT_GANGGLW_RATIO}' (joint with GANGGLW's D updates "
                        "per G update, for each weight > 0) and every method with no D "
                        "(adversarial weight 0, added to the weights)")
    p.add_argument("--finetune-share", type=nonneg_float, default=TrainConfig.finetune_share,
                   help="gangglw: share of the G updates given to the fine-tunes")
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=TrainConfig.lr_schedule,
                   help="constant, or cosine (each phase's rates fall to 0 by its end)")
    p.add_argument("--codes", choices=CODE_MODES, default=TrainConfig.codes,
                   help="greedy stages' codes: encoded per batch (each stage's time in "
                        "proportion to its steps, as equal-time runs need) or all at once "
                        "before the stage (memory); the same floats either way")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where results go (default runs/compare; with --report-only of several "
                        "directories, where the merged results go: default the first)")
    p.add_argument("--curve", type=int_list, default=None, metavar="B1,B2,...",
                   help="learning curves instead of the comparison: every method at each of these "
                        "budgets of G updates (equal updates; each run's training clock is "
                        "recorded), for every seed; writes curves.json, curves.md and "
                        "learning_curves.png")
    p.add_argument("--report-only", metavar="DIR[,DIR...]", default=None,
                   help="train nothing: rebuild DIR/results.md and the charts from "
                        "DIR/results.json; several directories (runs of the same data and "
                        "architecture split over processes) are merged into --out")
    p.add_argument("--shared-machine", action="store_true",
                   help="other work runs on the machine beside these runs (e.g. two compare "
                        "processes at once): each run's seconds are still recorded, but its "
                        "record is marked untimed and left out of every mean of seconds, "
                        "the learning curves' clock axis included; refused with --budget "
                        "time or both, whose budgets are seconds")
    p.add_argument("--progress", action="store_true", help="show per-phase progress bars")
    add_kernel_args(p)
    return p


# ----------------------------------------------------------------------------- one run


def run_one(mc: GascaConfig, tc: TrainConfig, train, val, test, progress: bool) -> dict:
    """Train one method with one seed and setting; returns the run's record for
    results.json: test MSE (mean and per yaw), G and D updates, the training-clock and wall
    seconds (all phases and per phase), and whatever quality_metrics adds."""
    trainer = Trainer(mc, tc, train, val, out_dir=None, progress=progress, log=lambda s: None)
    final = trainer.run()
    out = predict(trainer.G, test.inputs, tc.device)
    mse = mse_per_image(out, test.targets)
    res = {"method": tc.method, "seed": tc.seed, "adv_weight": tc.adv_weight,
           "d_ratio": tc.d_ratio, "time_budget": tc.time_budget,
           "test_mse": float(mse.mean()),
           "g_updates": final["g_updates"], "d_updates": final["d_updates"],
           "train_seconds": final["train_seconds"], "wall_seconds": final["wall_seconds"],
           "phase_seconds": final["phase_seconds"],
           "phases": [p.name for p in trainer.phases], "per_yaw": {},
           "kernels": trainer.kernels[-1]["kernels"],  # the versions it ran on
           # D's mean probability of "real" on real and fake validation pairs at the end of
           # each phase (None where the phase has no D)
           "d_probs": {rec["phase"]: [rec.get("d_real"), rec.get("d_fake")]
                       for rec in trainer.history}}
    for yaw, n, m, _, _ in per_label_table(out, test.targets, test.labels, "yaw"):
        res["per_yaw"][str(yaw)] = m
    res.update(quality_metrics(out, test, train))
    val_out = predict(trainer.G, val.inputs, tc.device)
    res["val_mse"] = float(mse_per_image(val_out, val.targets).mean())
    res.update(quality_metrics(val_out, val, train, prefix="val_"))
    return res


def quality_metrics(out, split, train, prefix: str = "") -> dict:
    """The run's quality beyond MSE on `split` (evaluation.quality_metrics, with the cached
    recognizer of this training set), flattened for results.json: ssim, psnr, sharpness,
    artefact, realism, rank1 (the recognizer's, of G's outputs) and rank1_eigenfaces, and
    rank1 per yaw; each key prefixed (e.g. "val_" for the validation split, on which
    settings are chosen).  The references (raw inputs, targets, chance) are computed once
    per split by references(), not per run."""
    q = evaluation.quality_metrics(out, split, train, log=None, references=False)
    o = q["overall"]["outputs"]
    res = {k: o.get(k) for k in ("ssim", "psnr", "sharpness", "artefact", "realism")}
    for name, key in (("recognizer", "rank1"), ("eigenfaces", "rank1_eigenfaces")):
        rep = q["identity"].get(name)
        res[key] = rep["rows"]["outputs"]["rank1"] if rep else None
        if name == "recognizer" and rep:
            res["rank1_per_yaw"] = {y: v["rank1"] for y, v in rep["rows"]["outputs"]["per_yaw"].items()}
    return {prefix + k: v for k, v in res.items()}


def references(split, train) -> dict:
    """What every run is measured against, once: the recognizer's rank-1 of the raw inputs
    and of the true targets (the ceiling), chance, and the raw inputs' pixel figures."""
    q = evaluation.quality_metrics(split.inputs, split, train, log=None)
    ref = {"inputs": q["overall"]["inputs"]}
    rep = q["identity"].get("recognizer")
    if rep:
        ref["rank1"] = {row: {"rank1": rep["rows"][row]["rank1"],
                              "per_yaw": {y: v["rank1"] for y, v in rep["rows"][row].get("per_yaw", {}).items()}}
                        for row in ("inputs", "targets", "chance")}
    ref["recognizer"] = q.get("recognizer")
    return ref


# ----------------------------------------------------------------------------- statistics


# ----------------------------------------------------------------------------- the report


def _variant(r: dict) -> str:
    return r.get("variant", r["method"])


def _select(runs: list[dict], weight: float, budget: str, variant: Optional[str] = None) -> list[dict]:
    return [r for r in runs if r["adv_weight"] == weight and r["budget"] == budget
            and (variant is None or _variant(r) == variant)]


def _mean(rs: list[dict], key: str):
    vals = [r.get(key) for r in rs]
    if not vals:
        return "-"
    return float(np.mean(vals)) if vals and all(v is not None for v in vals) else "-"


def _seconds(rs: list[dict], key: str = "train_seconds"):
    """Mean seconds over the runs timed on an otherwise idle machine (records of a
    --shared-machine run are marked "timed": false); "-" where none was."""
    return _mean([r for r in rs if r.get("timed", True)], key) if rs else "-"


def _ci_cell(rs: list[dict], key: str) -> str:
    """'mean [low, high]' of a metric over the runs (95% Student t; 'mean (n=1)' alone)."""
    vals = [r.get(key) for r in rs]
    if not vals or any(v is None for v in vals):
        return "-"
    mean, half = mean_ci(vals)
    return f"{mean:.4g}" if half is None else f"{mean:.4g} [{mean - half:.4g}, {mean + half:.4g}]"


def summarize_runs(runs: list[dict], variants: list[str], budget: str, weight: float,
                   split: str = "test") -> list[list]:
    """Rows per variant: runs; MSE, SSIM and identity rank-1 as mean [95% CI (Student t)];
    sharpness, artefact and realism means; mean G and D updates; mean training-clock and
    wall seconds.  split "val" gives the validation figures (where settings are chosen)."""
    pre = "" if split == "test" else "val_"
    rows = []
    for name in variants:
        rs = _select(runs, weight, budget, name)
        if not rs:
            continue
        rows.append([name, len(rs), _ci_cell(rs, pre + "mse" if pre else "test_mse"),
                     _ci_cell(rs, pre + "ssim"), _ci_cell(rs, pre + "rank1"),
                     _mean(rs, pre + "sharpness"), _mean(rs, pre + "artefact"),
                     _mean(rs, pre + "realism"),
                     _mean(rs, "g_updates"), _mean(rs, "d_updates"),
                     _seconds(rs), _seconds(rs, "wall_seconds")])
    return rows


SWEEP_METRICS = [("val_mse", "Validation MSE"), ("val_ssim", "Validation SSIM"),
                 ("val_rank1", "Validation identity rank-1"), ("test_mse", "Test MSE"),
                 ("ssim", "Test SSIM"), ("rank1", "Test identity rank-1"),
                 ("sharpness", "Test sharpness (1 = as sharp as the targets)"),
                 ("realism", "Test realism distance (0 = the targets')")]

SUMMARY_HEADER = ["method", "runs", "MSE [95% CI]", "SSIM [95% CI]", "rank-1 [95% CI]",
                  "sharpness", "artefact", "realism", "G updates", "D updates",
                  "train s (clock)", "wall s"]


def _weight_title(w: float) -> str:
    return f"adversarial weight {w:g}" + (" (no D: GASCA without the GA)" if w == 0 else "")


def build_report(results: dict) -> str:
    """results.md from a results.json's content (its format 1, before the fair clock, too)."""
    args, runs = results.get("args", {}), results["runs"]
    for r in runs:   # results.json of format 1: one weight, no variants or D updates
        r.setdefault("adv_weight", args.get("adv_weight", TrainConfig.adv_weight))
        r.setdefault("d_updates", None)
    weights = results.get("adv_weights") or sorted({r["adv_weight"] for r in runs})
    budgets = results.get("budgets") or [b for b in ("steps", "time") if any(r["budget"] == b for r in runs)]
    variants = results.get("variants") or list(dict.fromkeys(_variant(r) for r in runs))
    mc = results.get("model_config", {})
    data = results.get("data", {})
    argv = results.get("argv")
    lines = []
    if results.get("merged_from"):
        lines.append("Merged from " + "; ".join(
            f"{m['dir']} (python -m gasca_core.compare {' '.join(m['argv'] or [])})"
            for m in results["merged_from"]))
    elif argv is not None:
        lines.append(f"Command: python -m gasca_core.compare {' '.join(argv)}")
    lines.append(f"Data: {args.get('dataset', '?')}, {data.get('n_train', '?')} training / "
                 f"{data.get('n_test', '?')} test pairs; architecture {mc.get('channels')} "
                 f"({mc.get('hidden_activation')}); {args.get('steps')} generator updates per "
                 f"run at equal updates; D:G ratio {args.get('d_ratio', 1.0):g}; adversarial "
                 f"weights {', '.join(f'{w:g}' for w in weights)}.")
    base = results.get("baselines")
    if base:
        lines.append(f"Trivial baselines: output = input {base['copy_input_mse']:.5f}, "
                     f"mean target face {base['mean_target_mse']:.5f}.")
    ref = (results.get("references") or {}).get("test", {})
    if ref.get("rank1"):
        r1 = ref["rank1"]
        rec = ref.get("recognizer") or {}
        lines.append(f"Identity rank-1 (recognizer trained on the training people"
                     f"{', in %.0f s, not charged to any run' % rec['train_seconds'] if rec.get('train_seconds') else ''}; "
                     f"gallery: one frontal image per test person under a non-neutral light): "
                     f"raw inputs {r1['inputs']['rank1']:.3f}, true targets (ceiling) "
                     f"{r1['targets']['rank1']:.3f}, chance {r1['chance']['rank1']:.3f}.")
    lines += ["",
              "Times: 'train s' is the training clock, the same for every method: training steps "
              "(the greedy stages' code encoding included) and each phase's set-up count; "
              "validations, checkpoints and grids do not. 'wall s' is everything the run did. "
              "The equal-time budget is joint's training-clock seconds (same seed and weight). "
              "Runs marked untimed (--shared-machine) are left out of the seconds. 95% CI: mean "
              "+- t(0.975, n-1) s / sqrt(n) over the seeds (Student t); with one seed the mean "
              "alone.", ""]
    for w in weights:
        lines += [f"## {_weight_title(w)}", ""]
        for b in budgets:
            rows = summarize_runs(runs, variants, b, w)
            if not rows:
                continue
            what = (f"Equal generator updates ({args.get('steps')})" if b == "steps"
                    else "Equal training-clock time (joint's seconds)")
            lines += [f"{what}, test split:", "", format_table(SUMMARY_HEADER, rows), ""]
            val_rows = summarize_runs(runs, variants, b, w, split="val")
            if any(r[2] != "-" for r in val_rows):
                lines += [f"{what}, validation split (where settings are chosen):", "",
                          format_table(SUMMARY_HEADER, val_rows), ""]
        ryaws = sorted({y for r in runs if r["adv_weight"] == w
                        for y in (r.get("rank1_per_yaw") or {})}, key=float)
        if ryaws:
            rows = []
            ref = (results.get("references") or {}).get("test", {}).get("rank1", {})
            for name in variants:
                rs = [r for r in _select(runs, w, "steps", name) if r.get("rank1_per_yaw")] or \
                    [r for r in runs if r["adv_weight"] == w and _variant(r) == name
                     and r.get("rank1_per_yaw")]
                if rs:
                    rows.append([name] + [float(np.mean([r["rank1_per_yaw"][y] for r in rs]))
                                          for y in ryaws])
            for row in ("inputs", "targets"):
                if row in ref:
                    rows.append([{"inputs": "raw inputs", "targets": "true targets (ceiling)"}[row]]
                                + [ref[row]["per_yaw"].get(y, "-") for y in ryaws])
            lines += ["Identity rank-1 per yaw (degrees), test split, "
                      f"{'equal updates' if 'steps' in budgets else 'equal time'}:", "",
                      format_table(["probes"] + ryaws, rows), ""]
        yaws = sorted({y for r in runs if r["adv_weight"] == w for y in r["per_yaw"]}, key=float)
        if yaws:
            rows = []
            for name in variants:
                rs = _select(runs, w, "steps", name) or \
                    [r for r in runs if r["adv_weight"] == w and _variant(r) == name]
                if rs:
                    rows.append([name] + [float(np.mean([r["per_yaw"][y] for r in rs])) for y in yaws])
            lines += [f"Test MSE per yaw (degrees), {'equal updates' if 'steps' in budgets else 'equal time'}:",
                      "", format_table(["method"] + yaws, rows), ""]
    if len(weights) > 1:
        lines += ["## Sweep over the adversarial weight", ""]
        for b in budgets:
            for key, what in SWEEP_METRICS:
                rows = []
                for name in variants:
                    cells = []
                    for w in weights:
                        vals = [r.get(key) for r in _select(runs, w, b, name)]
                        cells.append(float(np.mean(vals)) if vals and None not in vals else "-")
                    if any(c != "-" for c in cells):
                        rows.append([name] + cells)
                if rows:
                    lines += [f"{what}, mean over seeds, equal "
                              f"{'updates' if b == 'steps' else 'time'}:", "",
                              format_table(["method"] + [f"{w:g}" for w in weights], rows), ""]
    lines += ["## Every run", "",
              format_table(["method", "adv weight", "budget", "seed", "test MSE", "G updates",
                            "D updates", "train s (clock)", "wall s", "time budget s"],
                           [[_variant(r), f"{r['adv_weight']:g}", r["budget"], r["seed"],
                             r["test_mse"], r["g_updates"],
                             "-" if r.get("d_updates") is None else r["d_updates"],
                             r["train_seconds"], r.get("wall_seconds", "-"),
                             "-" if not r.get("time_budget") else r["time_budget"]]
                            for r in runs]), ""]
    return "\n".join(lines)


def write_report(out_dir: str, results: dict) -> list[str]:
    """results.md and the charts in out_dir; returns the files written."""
    report = build_report(results)
    written = [os.path.join(out_dir, "results.md")]
    with open(written[0], "w", encoding="utf-8") as f:
        f.write(report + "\n")
    runs = results["runs"]
    weights = results.get("adv_weights") or sorted({r["adv_weight"] for r in runs})
    budgets = results.get("budgets") or sorted({r["budget"] for r in runs})
    variants = results.get("variants") or list(dict.fromkeys(_variant(r) for r in runs))
    for w in weights:
        name = "comparison.png" if len(weights) == 1 else f"comparison_adv{w:g}.png"
        bar_chart([r for r in runs if r["adv_weight"] == w], variants, budgets,
                  os.path.join(out_dir, name), title=_weight_title(w))
        written.append(os.path.join(out_dir, name))
    if len(weights) > 1 and sweep_chart(runs, variants, weights, budgets,
                                        os.path.join(out_dir, "sweep.png")):
        written.append(os.path.join(out_dir, "sweep.png"))
    return [p for p in written if os.path.exists(p)]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except Exception:
        return None


def bar_chart(runs: list[dict], methods: list[str], budgets: list[str], path: str,
              title: str = "") -> None:
    """Mean test MSE per method (one bar group per budget), whiskers at min and max."""
    methods = [m for m in methods if any(_variant(r) == m for r in runs)]
    plt = _pyplot()
    if plt is None:
        return _bar_chart_pillow(runs, methods, budgets, path)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(methods)), 4))
    width = 0.8 / len(budgets)
    for j, b in enumerate(budgets):
        means, lo, hi = [], [], []
        for m in methods:
            v = np.array([r["test_mse"] for r in runs if _variant(r) == m and r["budget"] == b])
            means.append(v.mean() if len(v) else np.nan)
            lo.append(v.mean() - v.min() if len(v) else 0)
            hi.append(v.max() - v.mean() if len(v) else 0)
        xs = np.arange(len(methods)) + j * width
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=f"equal {b}")
    ax.set_xticks(np.arange(len(methods)) + width * (len(budgets) - 1) / 2)
    ax.set_xticklabels(methods, fontsize=8)
    ax.set_ylabel("test MSE")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_chart(runs: list[dict], variants: list[str], weights: list[float],
                budgets: list[str], path: str) -> bool:
    """The trade-off the adversarial weight makes: one panel per measure (validation SSIM
    and identity rank-1, where settings are chosen; test MSE, sharpness and realism), one
    line per method and budget, means over seeds with their min-max as a band (weights
    placed evenly, 0 included); False where matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = [("val_ssim", "validation SSIM"), ("val_rank1", "validation identity rank-1"),
              ("test_mse", "test MSE"), ("sharpness", "test sharpness (1 = targets')"),
              ("realism", "test realism distance (0 = targets')")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    xs = np.arange(len(weights))
    for ax, (key, label) in zip(axes, panels):
        for b in budgets:
            for name in variants:
                cells = [[r.get(key) for r in _select(runs, w, b, name) if r.get(key) is not None]
                         for w in weights]
                if not any(cells):
                    continue
                mean = [np.mean(c) if c else np.nan for c in cells]
                lo = [min(c) if c else np.nan for c in cells]
                hi = [max(c) if c else np.nan for c in cells]
                line, = ax.plot(xs, mean, marker="o", ls="-" if b == "steps" else "--",
                                label=f"{name}, equal {b}")
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{w:g}" for w in weights], fontsize=7)
        ax.set_xlabel("adversarial weight")
        ax.set_title(label, fontsize=9)
        if key in ("test_mse", "sharpness", "realism"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bar_chart_pillow(runs, methods, budgets, path) -> None:
    from PIL import Image, ImageDraw
    w, h, pad = 480, 300, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    vals = {(m, b): np.mean([r["test_mse"] for r in runs if _variant(r) == m and r["budget"] == b] or [0])
            for m in methods for b in budgets}
    top = max(vals.values(), default=0.0) or 1.0
    bw = (w - 2 * pad) / (max(1, len(methods)) * (len(budgets) + 1))
    colours = ["#4477aa", "#ee6677", "#228833"]
    for i, m in enumerate(methods):
        for j, b in enumerate(budgets):
            x0 = pad + (i * (len(budgets) + 1) + j) * bw
            y0 = h - pad - (h - 2 * pad) * vals[(m, b)] / top
            d.rectangle([x0, y0, x0 + bw - 2, h - pad], fill=colours[j % 3])
        d.text((pad + i * (len(budgets) + 1) * bw, h - pad + 5), m, fill="black")
    d.text((5, 5), f"test MSE (max {top:.4f}); bars: " + ", ".join(budgets), fill="black")
    img.save(path)


# ----------------------------------------------------------------------------- main


def _read_results(directory: str, name: str = "results.json") -> dict:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        results["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"--report-only: cannot read {path}: {e}")
    return results


def _is_curves(directory: str) -> bool:
    """A --curve directory: curves.json and no results.json."""
    return (os.path.exists(os.path.join(directory, "curves.json"))
            and not os.path.exists(os.path.join(directory, "results.json")))


# The settings every merged part must share (besides the data and the architecture): a run's
# result depends on them, and the tables average runs by method, weight and budget only.
MERGE_MUST_AGREE = ("steps", "lr", "lr_schedule", "batch_size", "finetune_share", "d_ratio",
                    "data_seed", "dataset", "data", "max_train", "max_eval", "image_size",
                    "device")
# ... and those that change only what a second costs (runs at equal updates give the same
# floats either way), checked when a part has equal-time runs.
MERGE_MUST_AGREE_TIMED = ("codes",)


def check_parts_agree(parts: list[dict], names: list[str], same: tuple[str, ...],
                      timed: bool) -> None:
    """Refuse (fail) to merge parts that differ in any key of `same` (e.g. the architecture
    and the data) or were run with other settings (MERGE_MUST_AGREE, and when `timed`,
    MERGE_MUST_AGREE_TIMED); a setting a part does not record is not compared."""
    first = parts[0]
    for part, name in zip(parts[1:], names[1:]):
        for key in same:
            if part.get(key) != first.get(key):
                fail(f"--report-only: {name} has another {key.replace('_', ' ')} than {names[0]}: "
                     f"{part.get(key)} vs {first.get(key)}")
        a, b = first.get("args") or {}, part.get("args") or {}
        for key in MERGE_MUST_AGREE + (MERGE_MUST_AGREE_TIMED if timed else ()):
            if key in a and key in b and a[key] != b[key]:
                fail(f"--report-only: {name} was run with --{key.replace('_', '-')} {b[key]} and "
                     f"{names[0]} with {a[key]}: runs of different settings would be averaged "
                     f"together; rerun one of them with the other's setting")


def merge_results(parts: list[dict], names: list[str]) -> dict:
    """One results dict from several compare runs of the same data and architecture (e.g.
    seeds or weights run as separate processes): their runs together, the union of their
    weights, budgets and variants; refused when the data or the architecture differ."""
    first = parts[0]
    timed = any("time" in (p.get("budgets") or [r["budget"] for r in p["runs"]]) for p in parts)
    check_parts_agree(parts, names, ("model_config", "data"), timed)
    merged = dict(first)
    merged["runs"] = [r for part in parts for r in part["runs"]]
    merged["adv_weights"] = sorted({w for p in parts for w in (p.get("adv_weights") or
                                                               [r["adv_weight"] for r in p["runs"]])})
    merged["budgets"] = [b for b in ("steps", "time")
                         if any(b in (p.get("budgets") or [r["budget"] for r in p["runs"]]) for p in parts)]
    merged["variants"] = list(dict.fromkeys(v for p in parts for v in
                                            (p.get("variants") or [_variant(r) for r in p["runs"]])))
    merged["merged_from"] = [{"dir": n, "argv": p.get("argv")} for n, p in zip(names, parts)]
    return merged


def report_only(directories: str, out: Optional[str] = None) -> int:
    """Rebuild results.md and the charts from DIR/results.json; several directories
    (comma-separated) are merged first (merge_results) and written, results.json
    included, to `out`."""
    names = [d for d in directories.split(",") if d]
    if not names:
        fail("--report-only: give a directory")
    curves = [_is_curves(d) for d in names]
    if any(curves):
        if not all(curves):
            fail("--report-only: learning-curve directories (curves.json) and comparison "
                 "directories (results.json) cannot be merged together")
        return curves_report_only(names, out)
    parts = [_read_results(d) for d in names]
    if len(parts) == 1:
        results, target = parts[0], names[0]
    else:
        results, target = merge_results(parts, names), out or names[0]
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    written = write_report(target, results)
    print(build_report(results))
    print(f"rebuilt from {', '.join(os.path.join(n, 'results.json') for n in names)}: "
          f"{', '.join(os.path.join(target, os.path.basename(p)) for p in written)}")
    return 0


def curves_report_only(names: list[str], out: Optional[str]) -> int:
    """--report-only on --curve directories: curves.md and the chart rebuilt from
    curves.json; several (seeds run as separate processes, e.g. some on a shared machine)
    merged into `out` after the same checks as a comparison's parts."""
    parts = [_read_results(d, "curves.json") for d in names]
    if len(parts) == 1:
        record, target = parts[0], names[0]
    else:
        first = parts[0]
        check_parts_agree(parts, names, ("model_config", "adv_weight"), timed=False)
        record = dict(first)
        record["runs"] = [r for p in parts for r in p["runs"]]
        record["methods"] = list(dict.fromkeys(m for p in parts for m in
                                               (p.get("methods") or [r["method"] for r in p["runs"]])))
        record["merged_from"] = [{"dir": n, "argv": p.get("argv")} for n, p in zip(names, parts)]
        target = out or names[0]
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "curves.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    print(write_curve_report(target, record))
    print(f"rebuilt from {', '.join(os.path.join(n, 'curves.json') for n in names)}: "
          f"{os.path.join(target, 'curves.md')}, {os.path.join(target, 'learning_curves.png')}")
    return 0


def _args_record(args: argparse.Namespace) -> dict:
    """The command's settings as results.json and curves.json keep them."""
    return dict(vars(args))


def plan_variants(methods: list[str], weight: float, ablations: bool, steps_cfg: TrainConfig,
                  levels: int) -> list[tuple[str, str, Optional[float]]]:
    """(label, method, d_ratio override) for one adversarial weight, joint first (its time
    is the equal-time budget)."""
    order = sorted(methods, key=lambda m: m != "joint")
    out: list[tuple[str, str, Optional[float]]] = [(m, m, None) for m in order]
    if ablations and weight > 0:
        ratio = gangglw_d_ratio(steps_cfg, levels)
        if ratio > 0:
            out.insert(1 if "joint" in methods else 0,
                       (JOINT_AT_GANGGLW_RATIO, "joint", min(1.0, ratio)))
    return out


def learning_curves(args, methods: list[str], weight: float, mc: GascaConfig, train, val,
                    test) -> int:
    """--curve: every method at each budget of G updates, for every seed (equal updates).
    Writes curves.json (every run), curves.md (mean [95% CI] per method and budget, with
    the training-clock seconds) and learning_curves.png (test MSE, SSIM and identity rank-1
    against G updates and against seconds)."""
    path = os.path.join(args.out, "curves.json")
    runs: list[dict] = []
    record = {"format": RESULTS_FORMAT, "argv": sys.argv[1:], "args": _args_record(args),
              "model_config": mc.to_dict(), "adv_weight": weight, "methods": methods,
              "runs": runs}
    for steps in sorted(args.curve):
        for seed in args.seeds:
            for m in methods:
                tc = TrainConfig(method=m, steps=steps, batch_size=args.batch_size, lr=args.lr,
                                 lr_schedule=args.lr_schedule, adv_weight=weight,
                                 finetune_share=args.finetune_share, d_ratio=args.d_ratio,
                                 seed=seed, device=args.device, codes=args.codes,
                                 checkpoint_every=10**9)
                r = run_one(mc, tc, train, val, test, args.progress)
                r.update(variant=m, budget="steps", steps=steps, timed=not args.shared_machine)
                runs.append(r)
                print(f"  {steps:6d} updates seed {seed} {m:8s} test MSE {r['test_mse']:.5f} "
                      f"SSIM {r.get('ssim') or float('nan'):.4f} ({r['train_seconds']:.1f} s clock)",
                      flush=True)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(record, f, indent=1)
    print("\n" + write_curve_report(args.out, record))
    return 0


def write_curve_report(out: str, record: dict) -> str:
    """curves.md (mean [95% CI] per method and budget, with the training-clock seconds of
    the timed runs) and learning_curves.png from a curves.json record; returns the table."""
    runs = record["runs"]
    methods = record.get("methods") or list(dict.fromkeys(r["method"] for r in runs))
    budgets = sorted({r["steps"] for r in runs})
    rows = []
    for m in methods:
        for steps in budgets:
            rs = [r for r in runs if r["method"] == m and r["steps"] == steps]
            if rs:
                rows.append([m, steps, len(rs), _ci_cell(rs, "test_mse"), _ci_cell(rs, "ssim"),
                             _ci_cell(rs, "rank1"), _ci_cell(rs, "val_ssim"), _seconds(rs),
                             sum(1 for r in rs if r.get("timed", True))])
    table = format_table(["method", "G updates", "runs", "test MSE [95% CI]", "test SSIM [95% CI]",
                          "test rank-1 [95% CI]", "val SSIM [95% CI]", "train s (clock)",
                          "timed runs"], rows)
    mc = record.get("model_config") or {}
    untimed = sum(1 for r in runs if not r.get("timed", True))
    note = (f"\n{untimed} of the {len(runs)} runs shared the machine with other work: their "
            f"seconds are left out of the clock column and the chart's clock axis.\n"
            if untimed else "")
    merged = "".join(f"\n- {m['dir']}: `{' '.join(m.get('argv') or [])}`"
                     for m in record.get("merged_from", []))
    with open(os.path.join(out, "curves.md"), "w", encoding="utf-8") as f:
        f.write(f"Learning curves, adversarial weight {record.get('adv_weight', 0):g}, "
                f"architecture {mc.get('name', '')} {mc.get('channels', '')}:\n\n{table}\n{note}"
                + (f"\nMerged from:{merged}\n" if merged else ""))
    _curve_chart(runs, methods, os.path.join(out, "learning_curves.png"))
    return table


def _curve_chart(runs: list[dict], methods: list[str], path: str) -> None:
    plt = _pyplot()
    if plt is None:
        return
    keys = [("test_mse", "test MSE"), ("ssim", "test SSIM"), ("rank1", "identity rank-1")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for row, xkey in enumerate(("steps", "train_seconds")):
        for col, (key, label) in enumerate(keys):
            ax = axes[row][col]
            for m in methods:
                pts: dict = {}
                for r in runs:
                    if xkey == "train_seconds" and not r.get("timed", True):
                        continue   # its seconds were shared with other work
                    if r["method"] == m and r.get(key) is not None:
                        pts.setdefault(r["steps"], []).append((r[xkey], r[key]))
                xs = [np.mean([p[0] for p in v]) for _, v in sorted(pts.items())]
                ys = [np.mean([p[1] for p in v]) for _, v in sorted(pts.items())]
                if xs:
                    ax.plot(xs, ys, marker="o", label=m)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())  # no overlapping minor labels
            ax.set_xlabel("G updates" if xkey == "steps" else "training clock (s)")
            ax.set_ylabel(label)
            if row == 0 and col == 0:
                ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_dataset(args)
    if args.report_only:
        return report_only(args.report_only, args.out)
    apply_kernel_args(args)
    args.out = args.out or "runs/compare"
    methods = [canonical_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        fail(f"--methods: unknown {bad}; choose from {METHODS}")
    weights = sorted(set(args.adv_weights or [args.adv_weight]))
    if args.ablations and 0.0 not in weights:
        weights.insert(0, 0.0)   # the ablation "every method with no D"
    mc = model_config_from_args(args)
    budgets = ["steps", "time"] if args.budget == "both" else [args.budget]
    if "time" in budgets and "joint" not in methods:
        fail("--budget time needs joint among --methods (its time is the budget)")
    if args.shared_machine and "time" in budgets and not args.curve:
        fail("--shared-machine with --budget time or both: an equal-time budget is seconds, "
             "and seconds shared with other work are not joint training's; run equal-time "
             "comparisons alone on the machine, or use --budget steps")
    train, val, test = load_splits(args.dataset, args.data, seed=args.data_seed,
                                   image_size=args.image_size, max_train=args.max_train,
                                   max_eval=args.max_eval)
    os.makedirs(args.out, exist_ok=True)
    if args.curve:
        print(f"learning curves of {methods} on {len(train)} training pairs, seeds {args.seeds}, "
              f"at {sorted(args.curve)} G updates, adversarial weight {weights[-1]}, "
              f"D updates per step {args.d_ratio}")
        return learning_curves(args, methods, weights[-1], mc, train, val, test)
    print(f"comparing {methods} on {len(train)} training pairs, seeds {args.seeds}, "
          f"{args.steps} G updates, budgets {budgets}, adversarial weights {weights}")
    results = {"format": RESULTS_FORMAT,
               "argv": list(argv) if argv is not None else sys.argv[1:],
               "args": _args_record(args), "model_config": mc.to_dict(),
               "data": {"n_train": len(train), "n_val": len(val), "n_test": len(test)},
               "baselines": baselines(train, test), "adv_weights": weights,
               "references": {"test": references(test, train), "val": references(val, train)},
               "budgets": budgets, "variants": [], "runs": []}
    runs: list[dict] = results["runs"]

    def save_results() -> None:
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)

    for w in weights:
        for seed in args.seeds:
            common = dict(batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                          adv_weight=w,
                          finetune_share=args.finetune_share, d_ratio=args.d_ratio,
                          seed=seed, device=args.device, codes=args.codes,
                          checkpoint_every=10**9)
            variants = plan_variants(methods, w, args.ablations,
                                     TrainConfig(steps=args.steps, **common), mc.levels)
            for label, _, _ in variants:
                if label not in results["variants"]:
                    results["variants"].append(label)
            joint_time = None
            for b in budgets:
                for label, m, ratio in variants:
                    cfg = dict(common, method=m, d_ratio=ratio or args.d_ratio)
                    plain_joint = label == "joint"
                    if b == "time" and plain_joint and "steps" in budgets:
                        # Joint's time *is* the budget: its equal-steps run is its equal-time run.
                        r = dict(next(r for r in runs if _variant(r) == "joint" and r["seed"] == seed
                                      and r["adv_weight"] == w and r["budget"] == "steps"),
                                 budget="time")
                        runs.append(r)
                        continue
                    if b == "steps" or plain_joint:
                        tc = TrainConfig(steps=args.steps, **cfg)
                    else:
                        # Enough steps that the clock, not the step count, ends each phase.
                        tc = TrainConfig(steps=args.steps * 20, time_budget=joint_time, **cfg)
                    r = run_one(mc, tc, train, val, test, args.progress)
                    r.update(variant=label, budget=b, timed=not args.shared_machine)
                    if plain_joint:
                        joint_time = r["train_seconds"]
                    runs.append(r)
                    print(f"  adv {w:g} seed {seed} {b:5s} {label:28s} test MSE {r['test_mse']:.5f} "
                          f"({r['g_updates']} G / {r['d_updates']} D updates, "
                          f"{r['train_seconds']:.1f} s clock, {r['wall_seconds']:.1f} s wall)",
                          flush=True)
                    save_results()
    save_results()
    written = write_report(args.out, results)
    print("\n" + build_report(results))
    print(f"results in {args.out}/ (results.json, " +
          ", ".join(os.path.basename(p) for p in written) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
