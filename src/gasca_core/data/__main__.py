"""Look at the data before training, and prepare large datasets once.

    python -m gasca_core.data preview [--dataset NAME] [--data PATH] --out grid.png
    python -m gasca_core.data preview --dataset synthetic-expressions --person 0 --out e.png
    python -m gasca_core.data info    [--dataset NAME] [--data PATH]
    python -m gasca_core.data prepare --dataset multipie --data DIR --out CACHE
    python -m gasca_core.data make-multipie --out DIR [--subjects N]

preview saves a grid: the top row holds inputs, the row below their targets; columns are
random pairs (seeded), sorted by yaw where the labels have one (for Multi-PIE frames: the
crops the network will see); with --person ID it shows that person instead, a row per
expression (synthetic-expressions: the seven of gasca_core.data.synthetic.EXPRESSIONS) and a
column per yaw, under the neutral light. info prints the sizes of the dataset and its splits and the
values each label takes (and, for a cache, whether it is complete). prepare decodes, crops
and resizes a multipie tree or a folder once into an on-disk cache that every tool reads
with --data CACHE (gasca_core.data.cache; resumable: run it again after an interruption).
make-multipie writes a Multi-PIE-shaped tree of 640 x 480 frames drawn by the built-in
renderer (gasca_core.data.multipie_tree), to try the Multi-PIE path without the licensed
data.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Optional, Sequence

import numpy as np

from ..rng import stream
from .datasets import DATASET_NAMES, get_splits, infer_dataset, load_dataset
from .pairs import PairDataset
from .grid import save_image_grid
from .splits import split_indices


def _parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE -> (key, value); the value is a Python literal if it parses as one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--opt expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                   help="which data (default: synthetic-faces, or inferred from --data: "
                        "*.npz -> npz, a folder with inputs/ or pairs.csv -> folder, "
                        "another folder -> multipie); synthetic-expressions: the built-in "
                        "faces showing seven expressions, labelled 'expression'")
    p.add_argument("--data", default=None, help="path of your data (folder, tree or .npz)")
    p.add_argument("--image-size", type=int, default=64,
                   help="resize (or render) images to this many pixels square (default 64); "
                        "0 keeps the files' own size")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the pick")
    p.add_argument("--opt", type=_parse_option, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="a loader option, repeatable, e.g. --opt n_identities=20 "
                        "--opt target_light=7 --opt on_missing=skip")


def _label_text(labels: dict[str, np.ndarray], i: int) -> str:
    parts = []
    if "yaw" in labels:
        yaw = float(labels["yaw"][i])
        parts.append(f"{yaw:+.0f}" if yaw else "0")
    if "light" in labels:
        parts.append(f"L{int(labels['light'][i])}")
    if "expression" in labels:
        from .synthetic import EXPRESSIONS
        parts.append(EXPRESSIONS[int(labels["expression"][i])][:3])
    return " ".join(parts)


def preview(ds: PairDataset, out: str, n: int, seed: int, scale: int) -> None:
    """Save a grid of n pairs of ds: inputs above, targets below."""
    rng = stream("preview", seed)
    pick = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
    if "yaw" in ds.labels:
        pick = pick[np.argsort(ds.labels["yaw"][pick], kind="stable")]
    col_labels = [_label_text(ds.labels, int(i)) for i in pick]
    save_image_grid([ds.inputs[pick], ds.targets[pick]], out, labels=["input", "target"],
                    col_labels=col_labels if any(col_labels) else None, scale=scale)


def preview_person(ds: PairDataset, out: str, person: int, scale: int) -> int:
    """Save one person's faces under the neutral light (light 0): a row per expression
    (one row for a data set without expressions), a column per yaw. Returns the rows."""
    from .synthetic import EXPRESSIONS
    labels = ds.labels
    if "identity" not in labels or "yaw" not in labels:
        raise ValueError(f"--person needs a dataset labelled by identity and yaw, "
                         f"{ds.name} has labels {', '.join(labels) or 'none'}")
    mine = labels["identity"] == person
    if "light" in labels:
        mine &= labels["light"] == 0
    if not mine.any():
        raise ValueError(f"no person {person} in {ds.name} (identities "
                         f"{int(labels['identity'].min())}..{int(labels['identity'].max())}"
                         f"; with --split, the person must be in that split)")
    expression = labels.get("expression", np.zeros(len(ds), dtype=np.int64))
    yaws = np.unique(labels["yaw"][mine])
    rows, names = [], []
    for e in np.unique(expression[mine]):
        idx = [int(np.flatnonzero(mine & (expression == e) & (labels["yaw"] == y))[0])
               for y in yaws]
        rows.append(ds.inputs[idx])
        names.append(EXPRESSIONS[int(e)])
    save_image_grid(rows, out, labels=names,
                    col_labels=[f"{y:+.0f}" if y else "0" for y in yaws], scale=scale)
    return len(rows)


LISTED = ("multipie", "folder")   # datasets of image files: listed first, decoded as needed


def _listed_split(dataset: str, data: str, split: str, seed: int, opts: dict[str, Any]):
    """(files, labels, root, box_of, indices of `split`) of a tree or folder, nothing decoded."""
    from .cache import list_pairs
    from .pairs import GROUP_LABELS
    files, labels, root, box_of = list_pairs(dataset, data, opts)
    groups = next((labels[k] for k in GROUP_LABELS if k in labels), None)
    if split == "all":
        idx = np.arange(len(files))
    else:
        idx = split_indices(len(files), groups, seed=seed)[("train", "val", "test").index(split)]
    return files, labels, root, box_of, idx


def preview_files(dataset: str, data: str, split: str, out: str, n: int, seed: int,
                  scale: int, image_size, opts: dict[str, Any]) -> int:
    """preview for a tree or folder: decodes only the pairs it shows (a Multi-PIE tree holds
    750,000 images). Returns how many pairs it showed."""
    from .folder import read_pairs
    files, labels, root, box_of, idx = _listed_split(dataset, data, split, seed, opts)
    pick = np.sort(idx[stream("preview", seed).choice(len(idx), size=min(n, len(idx)),
                                                      replace=False)])
    inputs, targets = read_pairs([files[i] for i in pick], image_size, str(root), box_of)
    ds = PairDataset(inputs, targets, {k: v[pick] for k, v in labels.items()}, check=False)
    preview(ds, out, len(ds), seed, scale)
    return len(ds)


def info_files(dataset: str, data: str, seed: int, opts: dict[str, Any]) -> None:
    """info for a tree or folder, from the file names alone."""
    from .pairs import GROUP_LABELS
    files, labels, root, _, _ = _listed_split(dataset, data, "all", seed, opts)
    groups = next((labels[k] for k in GROUP_LABELS if k in labels), None)
    print(f"dataset: {dataset} at {root}, {len(files)} pairs, "
          f"{len({p for pair in files for p in pair})} image files")
    parts = split_indices(len(files), groups, seed=seed)
    for name, part in zip(("train", "val", "test"), parts):
        persons = f", {len(np.unique(groups[part]))} persons" if groups is not None else ""
        print(f"  {name}: {len(part)} pairs{persons}")
    for key, values in labels.items():
        distinct = np.unique(values)
        shown = ", ".join(str(v) for v in distinct[:15])
        more = f", ... ({len(distinct)} distinct)" if len(distinct) > 15 else ""
        print(f"  label {key}: {shown}{more}")


def info(name: Optional[str], data: Optional[str], seed: int, image_size: Optional[int],
         opts: dict[str, Any]) -> None:
    from .cache import cache_summary, is_cache
    if is_cache(data):
        c = cache_summary(data)
        state = "complete" if c["complete"] else \
            f"INCOMPLETE ({c['chunks_done']} of {c['chunks']} chunks): run its prepare again"
        print(f"cache {data}: {state}; {c['pairs']} pairs, {c['images']} images of "
              f"{c['image_size'][0]}x{c['image_size'][1]}, from {c['dataset']} at {c['data']} "
              f"with options {c['opts']}")
        if not c["complete"]:
            return
        image_size = None
    train, val, test = get_splits(name, data, seed=seed, image_size=image_size, **opts)
    whole = len(train) + len(val) + len(test)
    print(f"dataset: {name or infer_dataset(data)}, {whole} pairs of {train.image_shape}")
    for split in (train, val, test):
        groups = split.groups()
        persons = f", {len(np.unique(groups))} persons" if groups is not None else ""
        print(f"  {split.name}: {len(split)} pairs{persons}")
    for key, values in train.labels.items():
        distinct = np.unique(values)
        shown = ", ".join(str(v) for v in distinct[:15])
        more = f", ... ({len(distinct)} distinct)" if len(distinct) > 15 else ""
        print(f"  label {key}: {shown}{more}")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated integers, got {text!r}") from None


def _make_multipie(args: argparse.Namespace) -> int:
    from .multipie_tree import write_multipie_tree
    try:
        cams = None if args.cameras is None else [c.strip() for c in args.cameras.split(",") if c.strip()]
        summary = write_multipie_tree(
            args.out, args.subjects, _ints(args.sessions, "--sessions"),
            _ints(args.recordings, "--recordings"), cams, _ints(args.flashes, "--flashes"),
            missing=args.missing, seed=args.seed, workers=args.workers, progress=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['files']} frames ({summary['total']} in the tree, "
          f"{summary['missing_targets']} recordings without their target) under {args.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gasca_core.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_prev = sub.add_parser("preview", help="save a grid of (input, target) pairs")
    _common(p_prev)
    p_prev.add_argument("--out", required=True, help="where to write the grid (.png)")
    p_prev.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                        help="which split to draw from (default all)")
    p_prev.add_argument("-n", "--n", type=int, default=9, help="pairs to show (default 9)")
    p_prev.add_argument("--scale", type=int, default=2, help="magnification (default 2)")
    p_prev.add_argument("--person", type=int, default=None, metavar="ID",
                        help="instead of random pairs, show person ID under the neutral "
                             "light: a row per expression, a column per yaw (e.g. "
                             "--dataset synthetic-expressions --person 0)")
    p_info = sub.add_parser("info", help="print sizes of the dataset, its splits and labels")
    _common(p_info)
    p_prep = sub.add_parser("prepare", help="decode, crop and resize a dataset once into a "
                                            "memory-mapped cache (resumable)")
    _common(p_prep)
    p_prep.add_argument("--out", required=True, metavar="CACHE",
                        help="the cache directory (created; an interrupted prepare into it "
                             "continues; one made from other options is refused)")
    p_prep.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per core)")
    p_prep.add_argument("--chunk", type=int, default=256,
                        help="images per unit of work; a chunk is marked done once it is on "
                             "disk, and an interrupted prepare redoes only unmarked chunks")
    p_prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_tree = sub.add_parser("make-multipie", help="write a Multi-PIE-shaped tree of rendered "
                                                  "640x480 frames")
    p_tree.add_argument("--out", required=True, metavar="DIR", help="root of the tree")
    p_tree.add_argument("--subjects", type=int, default=4, help="people (default 4)")
    p_tree.add_argument("--sessions", default="1", help="comma-separated sessions (default 1)")
    p_tree.add_argument("--recordings", default="1",
                        help="comma-separated recordings per session (default 1)")
    p_tree.add_argument("--cameras", default=None,
                        help="comma-separated cameras, e.g. 051,050,041 (default: all 15)")
    p_tree.add_argument("--flashes", default="0,5,7,9,16",
                        help="comma-separated flashes 0-19 (default 0,5,7,9,16; 7 is the "
                             "frontal one the targets use)")
    p_tree.add_argument("--missing", type=float, default=0.0,
                        help="share of recordings whose target frame is left out (default 0)")
    p_tree.add_argument("--seed", type=int, default=0, help="seed of the faces and placements")
    p_tree.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args(argv)
    if args.command == "make-multipie":
        return _make_multipie(args)
    opts = dict(args.opt)
    image_size = args.image_size or None
    try:
        if args.command == "preview":
            if args.n < 1 or args.scale < 1:
                parser.error("--n and --scale must be >= 1")
            dataset = args.dataset or infer_dataset(args.data)
            if dataset in LISTED:
                shown = preview_files(dataset, args.data, args.split, args.out, args.n,
                                      args.seed, args.scale, image_size, opts)
                what = f"{dataset} at {args.data}"
            else:
                ds = load_dataset(dataset, args.data, split=args.split, seed=args.seed,
                                  image_size=image_size, **opts)
                if args.person is not None:
                    rows = preview_person(ds, args.out, args.person, args.scale)
                    print(f"wrote {args.out}: person {args.person} of {ds.name}, {rows} "
                          f"expression(s) (rows) at every yaw (columns), neutral light")
                    return 0
                preview(ds, args.out, args.n, args.seed, args.scale)
                shown, what = min(args.n, len(ds)), ds.name
            print(f"wrote {args.out}: {shown} pairs of {what} (top: inputs, bottom: targets)")
        elif args.command == "prepare":
            if args.data is None:
                parser.error("prepare needs --data (the tree or folder to prepare)")
            from .cache import prepare_cache
            dataset = args.dataset or infer_dataset(args.data)
            try:
                path = prepare_cache(dataset, args.data, args.out, image_size or 64, opts,
                                     workers=args.workers, progress=not args.no_progress,
                                     chunk=args.chunk)
            except KeyboardInterrupt:
                print(f"\ninterrupted: what is done stays in {args.out}; run the same "
                      f"command again to continue", file=sys.stderr)
                return 130
            print(f"cache ready: {path} (train on it with --data {path})")
        elif (args.dataset or infer_dataset(args.data)) in LISTED:
            info_files(args.dataset or infer_dataset(args.data), args.data, args.seed, opts)
        else:
            info(args.dataset, args.data, args.seed, image_size, opts)
    except (ValueError, TypeError) as e:  # bad data or options: one clear line, no trace
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
