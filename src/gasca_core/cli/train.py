"""python -m gasca_core.train: train a GASCA model (GANGGLW by default) from one command.

With no arguments it trains GANGGLW on the built-in synthetic faces with the gasca-64
architecture, then prints the test-set reconstruction error beside two trivial baselines
(output = input, output = the mean target face).  Everything lands in --out: checkpoints
(latest.npz, best.npz), metrics.jsonl, image grids after each phase, and a loss curve where
matplotlib is installed.  Ctrl-C saves a checkpoint; --resume continues exactly there.

Data parallel: ``mpiexec -n N python -m gasca_core.train ...`` trains the same model on N
processes (docs/DISTRIBUTED.md); rank 0 alone writes and prints. A rank that fails ends
every rank (MPI_Abort) after saying which rank failed and why.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Optional, Sequence

from .. import backend
from ..distributed import DistributedError, World, init_world
from ..evaluation import phase_end_table, predict, quality_metrics, quality_tables, results_tables
from ..models import GascaConfig, parameter_counts
from ..training import (CODE_MODES, LR_SCHEDULES, METHODS, CheckpointError, NonFiniteLossError, Trainer, TrainConfig,
                        canonical_method, load_checkpoint)
from ..training.trainer import StopRequested
from .common import (HelpFormatter, add_data_args, add_kernel_args, add_model_args,
                     apply_kernel_args, d_ratio, fail, load_splits, model_config_from_args,
                     nonneg_float, positive_float, positive_int, resolve_dataset)

DEFAULT_STEPS = TrainConfig.steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gasca_core.train",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Methods: 'gangglw' = GAN gradual greedy layer-wise (Algorithm 1: greedy stage per "
               "level on codes, then fine-tune all of G, then all of D, on pixels; 'ganglw', the "
               "first release's spelling, is accepted); 'joint' = the whole G and D trained "
               "together from scratch; 'glw' = plain greedy layer-wise stacking without "
               "fine-tuning. See README.md for which parameters move in each phase.",
        formatter_class=HelpFormatter)
    p.add_argument("--method", type=canonical_method, choices=METHODS, default=METHODS[0],
                   help="training algorithm")
    add_data_args(p)

    b = p.add_argument_group("budget (give either --steps or --epochs)")
    b.add_argument("--steps", type=positive_int, default=None,
                   help=f"generator updates for the whole run, shared out over the phases; the "
                        f"same number for every method, for fair comparisons (default {DEFAULT_STEPS} "
                        f"when --epochs is not given)")
    b.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training pairs per greedy stage (and for the joint run)")
    b.add_argument("--finetune-epochs", type=positive_int, default=None,
                   help="passes per fine-tune phase of gangglw (default: --epochs)")
    b.add_argument("--finetune-share", type=nonneg_float, default=TrainConfig.finetune_share,
                   help="gangglw with --steps: share of the generator updates given to the fine-tunes")
    b.add_argument("--d-finetune-ratio", type=nonneg_float, default=TrainConfig.d_finetune_ratio,
                   help="gangglw: D fine-tune updates per G fine-tune update")
    b.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds of training clock for the whole run (validations, checkpoints "
                        "and grids excluded): each phase stops when its own clock reaches its "
                        "share; the shares sum to 1 (for equal-time comparisons)")

    b.add_argument("--codes", choices=CODE_MODES, default=TrainConfig.codes,
                   help="greedy stages k >= 2 train on codes (the pairs after the first k-1 "
                        "encoders): encode each batch as it is drawn (per-batch: memory and "
                        "time in proportion to the steps made) or all training pairs at once "
                        "before the stage (memory: faster when a stage makes several epochs, "
                        "but the codes are held whole, 2x the images' size after level 1); "
                        "the same floats either way")

    o = p.add_argument_group("optimisation and losses")
    o.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size,
                   help="pairs per update")
    o.add_argument("--lr", type=positive_float, default=TrainConfig.lr, help="Adam learning rate of G")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=TrainConfig.lr_schedule,
                   help="constant rates, or cosine: in every phase the rates of G and D fall "
                        "from --lr (--d-lr) to 0 by the phase's end")
    o.add_argument("--d-lr", type=positive_float, default=None, help="Adam learning rate of D (default: --lr)")
    o.add_argument("--beta1", type=nonneg_float, default=TrainConfig.beta1, help="Adam beta1")
    o.add_argument("--rec-loss", choices=("mse", "l1"), default="mse", help="reconstruction loss")
    o.add_argument("--rec-weight", type=nonneg_float, default=TrainConfig.rec_weight,
                   help="weight of the reconstruction term")
    o.add_argument("--adv-loss", choices=("non_saturating", "saturating"), default=TrainConfig.adv_loss,
                   help="generator's adversarial term: -log D(G(x)) (non_saturating) or the "
                        "paper's log(1 - D(G(x))) (saturating)")
    o.add_argument("--adv-weight", type=nonneg_float, default=TrainConfig.adv_weight,
                   help="weight of the adversarial term (0 = plain autoencoders: no D is "
                        "trained at all and gangglw has no D fine-tunes)")
    o.add_argument("--d-steps", type=positive_int, default=1, help="D updates per G update")
    o.add_argument("--d-ratio", type=d_ratio, default=TrainConfig.d_ratio, metavar="R",
                   help="in (0, 1]: phases that train G and D update D on a share R of their "
                        "steps (step i iff floor((i+1)R) > floor(iR)); 1 = every step")
    o.add_argument("--on-nonfinite", choices=("stop", "skip"), default="stop",
                   help="on a NaN/inf loss or gradient: stop the run, or skip that step")

    add_model_args(p)

    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and batches")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train; cuda needs CuPy (pip install \".[cuda]\") and a GPU "
                        "(under mpiexec: one GPU per rank, gradients over NCCL)")
    r.add_argument("--mpi", action="store_true",
                   help="train data-parallel over MPI even when no known launcher variable "
                        "(PMI_RANK, PMI_SIZE, PMIX_RANK, OMPI_COMM_WORLD_SIZE) is set; under "
                        "mpiexec -n N this is automatic (pip install \".[mpi]\")")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: runs/<method>-<dataset>-seed<seed>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its saved "
                        "configuration is used)")
    r.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds a run")
    r.add_argument("--eval-every", type=positive_int, default=None,
                   help="steps between validations (default: every epoch, at most 200)")
    r.add_argument("--checkpoint-every", type=positive_int, default=TrainConfig.checkpoint_every,
                   help="steps between checkpoints (besides one at every validation)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--task", choices=("frontalize", "classify"), default="frontalize",
                   help="what to train for; classification starts from a trained checkpoint "
                        "and is run by python -m gasca_core.classify CHECKPOINT")
    add_kernel_args(p)
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.steps is not None and args.epochs is not None:
        fail("give either --steps (a budget of generator updates) or --epochs, not both")
    steps = args.steps if args.epochs is None else None
    if steps is None and args.epochs is None:
        steps = DEFAULT_STEPS
    try:
        return TrainConfig(
            method=args.method, steps=steps, epochs=args.epochs or 5,
            finetune_epochs=args.finetune_epochs or args.epochs or 5,
            finetune_share=args.finetune_share, d_finetune_ratio=args.d_finetune_ratio,
            batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, d_lr=args.d_lr, beta1=args.beta1,
            rec_loss=args.rec_loss, rec_weight=args.rec_weight, adv_loss=args.adv_loss,
            adv_weight=args.adv_weight, d_steps=args.d_steps, d_ratio=args.d_ratio, seed=args.seed,
            eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
            on_nonfinite=args.on_nonfinite, time_budget=args.time_budget, codes=args.codes,
            device=args.device)
    except ValueError as e:
        fail(str(e))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        world = init_world(args.device, "mpi" if args.mpi else "auto")
    except DistributedError as e:
        fail(str(e))
    if not world.distributed:
        return _train(args, argv, world)
    try:
        return _train(args, argv, world)
    except BaseException as exc:
        # What every rank raised alike ends every rank alike; anything else happened on
        # this rank alone, and the others would wait for it forever at the next
        # all-reduce: say which rank and why, then end the whole job.
        if getattr(exc, "collective", False) or (isinstance(exc, SystemExit) and not exc.code):
            raise
        _abort(world, exc)
        raise


def _abort(world: World, exc: BaseException) -> None:
    """Say on stderr which rank failed and why, then end every rank (MPI_Abort)."""
    if isinstance(exc, SystemExit):
        what, code = f"exited with status {exc.code}", exc.code if isinstance(exc.code, int) else 1
    elif isinstance(exc, KeyboardInterrupt):
        what, code = "interrupted", 130
    else:
        traceback.print_exc()
        what, code = f"{type(exc).__name__}: {exc}", 1
    print(f"error: rank {world.rank} of {world.size} {what}; ending every rank "
          f"(checkpoints already saved are kept)", file=sys.stderr, flush=True)
    world.abort(code)


def _train(args: argparse.Namespace, argv: Optional[Sequence[str]], world: World) -> int:
    say = print if world.rank == 0 else (lambda *a, **k: None)
    resolve_dataset(args)
    apply_kernel_args(args)
    if args.task == "classify":
        fail("--task classify runs from a trained checkpoint: use python -m gasca_core.classify "
             "CHECKPOINT (it trains the encoder's classifier and a from-scratch one, both reported)")
    out = args.out or os.path.join("runs", f"{args.method}-{args.dataset}-seed{args.seed}")
    if args.device == "cuda":
        try:
            backend.require_cuda()
        except RuntimeError as e:
            fail(f"--device cuda: {e}")
    # Rank 0 reads and writes the run's files; every rank gets the same configuration.
    mc, tc, dataset, data, max_train, max_eval = world.on_root(lambda: _prepare(args, argv, out))

    def load():
        try:
            return load_splits(dataset, data, seed=tc.seed, image_size=mc.image_size,
                               max_train=max_train, max_eval=max_eval)
        except (ValueError, FileNotFoundError, OSError) as e:
            fail(f"could not load --dataset {dataset}: {e}")

    # Every rank loads the splits (a prepared cache lazily: a rank then reads only the
    # pairs of its slices); rank 0 first, as it may have to fill the synthetic data's cache.
    t0 = time.perf_counter()
    splits = load() if world.rank == 0 else None
    world.bcast(None)
    train, val, test = splits or load()
    say(f"data: {dataset}: {len(train)} training, {len(val)} validation, {len(test)} test pairs "
        f"of {train.inputs.shape[1:]} ({time.perf_counter() - t0:.1f} s)")
    if world.distributed:
        # The process ids, so that a rank the launcher reports by pid can be named.
        pids = ", ".join(f"{r}={pid}" for r, pid in enumerate(world.allgather(os.getpid())))
        say(f"data parallel: {world.describe()}; each global batch of {tc.batch_size} pairs is "
            f"split into {world.size} slice{'s' if world.size > 1 else ''}; process ids by rank: "
            f"{pids}", flush=True)
        if world.size > tc.batch_size:
            say(f"note: {world.size} ranks for batches of {tc.batch_size} pairs: "
                f"{world.size - tc.batch_size} rank(s) have an empty slice at every step (they "
                f"add nothing and wait); at most --batch-size ranks are useful")
    trainer = Trainer(mc, tc, train, val, out_dir=out, progress=not args.no_progress, world=world)
    say(f"{tc.method}: {len(trainer.phases)} phases: " +
        ", ".join(f"{p.name} ({p.steps} steps)" for p in trainer.phases))
    say(f"kernels: {backend.describe_kernels()}")
    g_params, d_params = parameter_counts(mc)
    variant = mc.layer_variant()
    say(f"model: {mc.name}, G {g_params:,} parameters, D {d_params:,} (all levels)"
        + (f"; {variant}" if variant else ""))
    try:
        trainer.run(resume=args.resume)
    except KeyboardInterrupt as e:
        if world.distributed and not isinstance(e, StopRequested):
            raise   # this rank alone: main() ends the job
        return 130
    except NonFiniteLossError as e:   # decided alike on every rank (the all-reduce)
        say(f"error: {e}", file=sys.stderr)
        return 3
    if world.rank != 0:
        return 0

    report = final_report(trainer, train, test, out)
    print(report)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n")
    print(f"\noutputs in {out}/ (latest.npz, best.npz, metrics.jsonl, grid_*.png)")
    return 0


def _prepare(args: argparse.Namespace, argv: Optional[Sequence[str]], out: str):
    """The run's configuration, from --resume's checkpoint or from the flags, with the
    output directory made ready: (model config, train config, dataset, data, max_train,
    max_eval)."""
    latest = os.path.join(out, "latest.npz")
    if args.resume:
        try:
            meta, _ = load_checkpoint(latest)
        except CheckpointError as e:
            fail(f"--resume: {e}")
        for note in meta.get("notes", []):
            print(f"note: {note}")
        mc = GascaConfig.from_dict(meta["model_config"])
        tc = TrainConfig.from_dict({**meta["train_config"], "device": args.device})
        run_info = _load_run_info(out)
        dataset, data, max_train = run_info.get("dataset", args.dataset), run_info.get("data", args.data), \
            run_info.get("max_train", args.max_train)
        max_eval = run_info.get("max_eval", args.max_eval)
        if meta.get("finished"):
            print(f"the run in {out} has already finished; evaluating it")
    else:
        if os.path.exists(latest) and not args.overwrite:
            fail(f"{out} already holds a run ({latest}); pass --resume to continue it, "
                 f"--overwrite to start afresh, or --out to choose another directory")
        mc, tc = model_config_from_args(args), train_config_from_args(args)
        dataset, data, max_train, max_eval = args.dataset, args.data, args.max_train, args.max_eval
        if args.overwrite and os.path.isdir(out):
            for name in ("latest.npz", "best.npz", "metrics.jsonl", "run.json"):
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
        os.makedirs(out, exist_ok=True)
        _save_run_info(out, {"dataset": dataset, "data": data, "max_train": max_train,
                             "max_eval": max_eval, "argv": list(argv) if argv is not None else sys.argv[1:]})
    return mc, tc, dataset, data, max_train, max_eval


def final_report(trainer: Trainer, train, test, out_dir: Optional[str] = None) -> str:
    """The trained G on the test set: MSE / PSNR / SSIM beside the two trivial baselines and
    per yaw, then identity (rank-1 against a gallery of unseen people), sharpness, grid
    artefacts and realism (evaluation.quality_metrics), and D's probabilities at the end
    of each phase.  With out_dir, the quality figures are also saved as quality.json."""
    out = predict(trainer.G, test.inputs, trainer.device)
    head = (f"\ntest set ({len(test)} pairs), method {trainer.tc.method}, "
            f"{trainer.counters['g_updates']} G updates, {trainer.counters['d_updates']} D "
            f"updates, {trainer.train_seconds:.0f} s of training clock "
            f"({trainer.wall_seconds:.0f} s wall with validations and checkpoints)\n"
            f"{kernels_line(trainer)}:\n"
            + results_tables(f"GASCA ({trainer.tc.method})", out, test, train))
    q = quality_metrics(out, test, train, log=print)
    if out_dir:
        with open(os.path.join(out_dir, "quality.json"), "w", encoding="utf-8") as f:
            json.dump(q, f, indent=1)
    parts = [head, "", "quality (test set):", quality_tables(q)]
    table = phase_end_table(trainer.history)
    if table:
        parts += ["", "at the end of each phase (validation pairs):", table]
    return "\n".join(parts)


def kernels_line(trainer: Trainer) -> str:
    """Which kernel versions trained the run (Trainer.kernels): one choice, or one per stretch
    of steps when a resume changed it."""
    def describe(chosen):
        return backend.describe_kernels(chosen) if chosen else "the fastest (not recorded)"
    segs = trainer.kernels
    if len(segs) == 1:
        return f"kernels: {describe(segs[0]['kernels'])}"
    return "kernels: " + "; ".join(f"from step {seg['global_step']}: {describe(seg['kernels'])}"
                                   for seg in segs)


def _save_run_info(out: str, info: dict) -> None:
    with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def _load_run_info(out: str) -> dict:
    try:
        with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
