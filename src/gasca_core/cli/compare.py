"""python -m gasca_core.compare: the paper's comparison, GANGGLW vs joint vs plain greedy.

Runs every method on the same data, the same architecture and the same budget of generator
updates, over several seeds, and reports test MSE per method (mean and spread) and per yaw,
with the wall-clock time each took.  With --budget both (the default) it also runs every
method again for the wall-clock time joint training took, so that the cheaper greedy stages
can spend their savings on more steps.  Writes results.json, results.md and a bar chart.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from ..evaluation import baselines, format_table, per_label_table, predict
from ..metrics import mse_per_image
from ..models import GascaConfig
from ..training import METHODS, Trainer, TrainConfig, canonical_method
from .common import (HelpFormatter, add_data_args, add_model_args, fail, int_list, load_splits,
                     model_config_from_args, nonneg_float, positive_int)


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
                   help="equal generator updates, equal wall-clock time (joint's), or both")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--adv-weight", type=nonneg_float, default=TrainConfig.adv_weight)
    p.add_argument("--finetune-share", type=nonneg_float, default=TrainConfig.finetune_share,
                   help="gangglw: share of the G updates given to the fine-tunes")
    p.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="runs/compare", metavar="DIR")
    p.add_argument("--progress", action="store_true", help="show per-phase progress bars")
    return p


def run_one(mc: GascaConfig, tc: TrainConfig, train, val, test, progress: bool) -> dict:
    t0 = time.perf_counter()
    trainer = Trainer(mc, tc, train, val, out_dir=None, progress=progress, log=lambda s: None)
    trainer.run()
    wall = time.perf_counter() - t0
    out = predict(trainer.G, test.inputs, tc.device)
    mse = mse_per_image(out, test.targets)
    res = {"method": tc.method, "seed": tc.seed, "test_mse": float(mse.mean()),
           "g_updates": trainer.counters["g_updates"], "train_seconds": trainer.elapsed,
           "wall_seconds": wall, "per_yaw": {}}
    for yaw, n, m, _, _ in per_label_table(out, test.targets, test.labels, "yaw"):
        res["per_yaw"][str(yaw)] = m
    return res


def summarize_runs(runs: list[dict], methods: list[str], budget: str) -> list[list]:
    rows = []
    for m in methods:
        rs = [r for r in runs if r["method"] == m and r["budget"] == budget]
        if not rs:
            continue
        v = np.array([r["test_mse"] for r in rs])
        rows.append([m, len(rs), float(v.mean()), float(v.std()), float(v.min()), float(v.max()),
                     float(np.mean([r["g_updates"] for r in rs])),
                     float(np.mean([r["train_seconds"] for r in rs]))])
    return rows


def bar_chart(runs: list[dict], methods: list[str], budgets: list[str], path: str) -> None:
    """Mean test MSE per method (one bar group per budget), whiskers at min and max."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return _bar_chart_pillow(runs, methods, budgets, path)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(budgets)
    for j, b in enumerate(budgets):
        means, lo, hi = [], [], []
        for m in methods:
            v = np.array([r["test_mse"] for r in runs if r["method"] == m and r["budget"] == b])
            means.append(v.mean() if len(v) else np.nan)
            lo.append(v.mean() - v.min() if len(v) else 0)
            hi.append(v.max() - v.mean() if len(v) else 0)
        xs = np.arange(len(methods)) + j * width
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=f"equal {b}")
    ax.set_xticks(np.arange(len(methods)) + width * (len(budgets) - 1) / 2)
    ax.set_xticklabels(methods)
    ax.set_ylabel("test MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bar_chart_pillow(runs, methods, budgets, path) -> None:
    from PIL import Image, ImageDraw
    w, h, pad = 480, 300, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    vals = {(m, b): np.mean([r["test_mse"] for r in runs if r["method"] == m and r["budget"] == b] or [0])
            for m in methods for b in budgets}
    top = max(vals.values()) or 1.0
    bw = (w - 2 * pad) / (len(methods) * (len(budgets) + 1))
    colours = ["#4477aa", "#ee6677", "#228833"]
    for i, m in enumerate(methods):
        for j, b in enumerate(budgets):
            x0 = pad + (i * (len(budgets) + 1) + j) * bw
            y0 = h - pad - (h - 2 * pad) * vals[(m, b)] / top
            d.rectangle([x0, y0, x0 + bw - 2, h - pad], fill=colours[j % 3])
        d.text((pad + i * (len(budgets) + 1) * bw, h - pad + 5), m, fill="black")
    d.text((5, 5), f"test MSE (max {top:.4f}); bars: " + ", ".join(budgets), fill="black")
    img.save(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    methods = [canonical_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        fail(f"--methods: unknown {bad}; choose from {METHODS}")
    mc = model_config_from_args(args)
    train, val, test = load_splits(args.dataset, args.data, seed=args.data_seed,
                                   image_size=args.image_size, max_train=args.max_train)
    os.makedirs(args.out, exist_ok=True)
    budgets = ["steps", "time"] if args.budget == "both" else [args.budget]
    print(f"comparing {methods} on {len(train)} training pairs, seeds {args.seeds}, "
          f"{args.steps} G updates, budgets {budgets}")
    runs: list[dict] = []
    for seed in args.seeds:
        joint_time = None
        order = sorted(methods, key=lambda m: m != "joint")  # joint first: it sets the time
        for b in budgets:
            for m in order:
                common = dict(method=m, batch_size=args.batch_size, lr=args.lr,
                              adv_weight=args.adv_weight, finetune_share=args.finetune_share,
                              seed=seed, device=args.device, checkpoint_every=10**9)
                if b == "steps":
                    tc = TrainConfig(steps=args.steps, **common)
                elif m == "joint" and "steps" in budgets:
                    # Joint's time *is* the budget: its equal-steps run is its equal-time run.
                    r = dict(next(r for r in runs if r["method"] == "joint" and r["seed"] == seed
                                  and r["budget"] == "steps"), budget="time")
                    runs.append(r)
                    continue
                else:
                    if joint_time is None:
                        fail("--budget time needs joint among --methods (its time is the budget)")
                    # Enough steps that the clock, not the step count, ends each phase.
                    tc = TrainConfig(steps=args.steps * 20, time_budget=joint_time, **common)
                r = run_one(mc, tc, train, val, test, args.progress)
                r["budget"] = b
                if m == "joint" and b == "steps":
                    joint_time = r["train_seconds"]
                runs.append(r)
                print(f"  seed {seed} {b:5s} {m:7s} test MSE {r['test_mse']:.5f} "
                      f"({r['g_updates']} G updates, {r['train_seconds']:.0f} s)", flush=True)
                with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
                    json.dump({"args": vars(args), "model_config": mc.to_dict(), "runs": runs}, f, indent=1)

    base = baselines(train, test)
    lines = [f"Command: python -m gasca_core.compare {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"Data: {args.dataset}, {len(train)} training / {len(test)} test pairs; "
             f"architecture {mc.channels} ({mc.hidden_activation}); adversarial weight {args.adv_weight}.",
             f"Trivial baselines: output = input {base['copy_input_mse']:.5f}, "
             f"mean target face {base['mean_target_mse']:.5f}.", ""]
    for b in budgets:
        lines += [f"Equal {'generator updates' if b == 'steps' else 'wall-clock time (joint’s)'}:", "",
                  format_table(["method", "runs", "test MSE mean", "std", "min", "max",
                                "G updates", "train s"], summarize_runs(runs, methods, b)), ""]
    yaws = sorted({y for r in runs for y in r["per_yaw"]}, key=float)
    if yaws:
        rows = []
        for m in methods:
            rs = [r for r in runs if r["method"] == m and r["budget"] == "steps"] or \
                 [r for r in runs if r["method"] == m]
            rows.append([m] + [float(np.mean([r["per_yaw"][y] for r in rs])) for y in yaws])
        lines += ["Test MSE per yaw (degrees), equal updates:", "",
                  format_table(["method"] + yaws, rows), ""]
    report = "\n".join(lines)
    print("\n" + report)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n")
    bar_chart(runs, methods, budgets, os.path.join(args.out, "comparison.png"))
    print(f"results in {args.out}/ (results.json, results.md, comparison.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
