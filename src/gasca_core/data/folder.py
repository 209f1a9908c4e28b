"""A folder of pairs: DIR/inputs/* and DIR/targets/* matched by name, or DIR/pairs.csv.

Layout 1 (matched by name): every image file under DIR/inputs (subfolders included) is
paired with the image under DIR/targets at the same relative path and file stem (the
suffix may differ: inputs/a/x.png <-> targets/a/x.jpg). An input without a target is an
error naming both; a target without an input is skipped with a warning. Label "name": the
relative path without suffix.

Layout 2 (a CSV of pairs): DIR/pairs.csv (or any CSV given as ``pairs_csv``), UTF-8, with
a header row holding the columns ``input`` and ``target`` (paths relative to the CSV's
folder, or absolute). Any further column becomes a label (int if every entry is an integer,
float if every entry is a number, otherwise text); a column named ``identity`` or
``subject`` makes the splits keep each person in one split. Several inputs may share one
target.

Images are read as described in :mod:`.images` (grey, [0, 1]); with ``image_size`` None
they must all have one size, otherwise they are resized to it.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .crop import CropSpec, file_boxes
from .pairs import PairDataset
from .images import IMAGE_SUFFIXES, ImageSize, is_image_file, normalize_size, read_gray


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files under folder by relative path without suffix; refuses duplicates."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not is_image_file(path):
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise ValueError(f"{found[key]} and {path} have the same name apart from the "
                             f"suffix: cannot tell which one to pair")
        found[key] = path
    return found


def read_pairs(files: list[tuple[Path, Path]], image_size: ImageSize,
               where: str, box_of: Optional[Callable[[Path], Optional[tuple]]] = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Read (input, target) files into float32 (N, 1, H, W) arrays.

    box_of(path, frame): the face box to crop that file to before resizing, given its
    decoded (H, W) frame (None: the whole image). With image_size None every image must have the size of the first one; a target
    read for several inputs is decoded once.
    """
    size = normalize_size(image_size)
    cache: dict[Path, np.ndarray] = {}
    first: Optional[tuple[Path, tuple[int, int]]] = None

    def read(path: Path) -> np.ndarray:
        nonlocal first
        if path not in cache:
            box = None if box_of is None else (lambda frame, p=path: box_of(p, frame))
            a = read_gray(path, size, box)
            if first is None:
                first = (path, a.shape)
            elif a.shape != first[1]:
                raise ValueError(f"{path}: image is {a.shape[1]}x{a.shape[0]} (WxH) but "
                                 f"{first[0]} is {first[1][1]}x{first[1][0]}; images in {where} "
                                 f"must share one size, or pass image_size to resize them")
            cache[path] = a
        return cache[path]

    inputs = np.stack([read(i) for i, _ in files])[:, None]
    targets = np.stack([read(t) for _, t in files])[:, None]
    return inputs, targets


def _labels_from_columns(columns: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """CSV columns -> label arrays: int64 if every entry is an integer, float64 if every
    entry is a number, otherwise text."""
    labels = {}
    for name, values in columns.items():
        try:
            labels[name] = np.array([int(v) for v in values], dtype=np.int64)
            continue
        except ValueError:
            pass
        try:
            labels[name] = np.array([float(v) for v in values], dtype=np.float64)
        except ValueError:
            labels[name] = np.array(values, dtype=str)
    return labels


def _pairs_from_csv(csv_path: Path) -> tuple[list[tuple[Path, Path]], dict[str, np.ndarray]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{csv_path}: cannot read the CSV of pairs ({e})") from None
    if not rows:
        raise ValueError(f"{csv_path}: no pairs (expected a header 'input,target' and one "
                         f"row per pair)")
    header = [h.strip() for h in rows[0].keys() if h is not None]
    if "input" not in header or "target" not in header:
        raise ValueError(f"{csv_path}: the header must name the columns 'input' and 'target', "
                         f"got {header}")
    base = csv_path.parent
    files, extra = [], {h: [] for h in header if h not in ("input", "target")}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("input") or not row.get("target"):
            raise ValueError(f"{csv_path}, line {line}: empty 'input' or 'target'")
        pair = (base / row["input"], base / row["target"])
        for p, col in zip(pair, ("input", "target")):
            if not p.is_file():
                raise ValueError(f"{csv_path}, line {line}: {col} file {p} does not exist")
        files.append(pair)
        for h in extra:
            extra[h].append(row.get(h, ""))
    return files, _labels_from_columns(extra)


def load_folder(data: "str | os.PathLike[str]", image_size: ImageSize = 64, *,
                pairs_csv: "str | os.PathLike[str] | None" = None,
                crop: CropSpec = None) -> PairDataset:
    """Load a folder of pairs (see the module docstring for the two layouts).

    crop: cut every image to a square face box before resizing (gasca_core.data.crop):
    [cx, cy, side] for every image, or a JSON file {file name: box, "*": box for the
    rest}; boxes are in pixels of a 640 x 480 frame, scaled to each file's frame. None (the
    default): whole images."""
    files, labels, root = folder_pairs(data, pairs_csv=pairs_csv)
    inputs, targets = read_pairs(files, image_size, str(root), folder_box_of(crop))
    return PairDataset(inputs, targets, labels, name=f"folder:{root.name}")


class FileBoxOf:
    """box_of(path, frame) for a folder: the box named by the file's name (or stem), else
    the "*" box, else None (a class, so that prepare's worker processes can receive it)."""

    def __init__(self, boxes: dict) -> None:
        self.boxes = boxes

    def __call__(self, path: Path, frame=None):
        path = Path(path)
        for key in (path.name, path.stem, "*"):
            if key in self.boxes:
                return self.boxes[key]
        return None


def folder_box_of(crop: CropSpec) -> Optional[FileBoxOf]:
    """crop (see load_folder) -> box_of(path, frame), or None for no cropping."""
    boxes = file_boxes(crop)
    return None if boxes is None else FileBoxOf(boxes)


def folder_pairs(data: "str | os.PathLike[str]", *,
                 pairs_csv: "str | os.PathLike[str] | None" = None):
    """The pairs of a folder without reading an image: ([(input file, target file)],
    labels, root)."""
    if data is None:
        raise ValueError("the folder dataset needs --data DIR (a folder with inputs/ and "
                         "targets/, or with pairs.csv)")
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such directory")
    csv_path = Path(pairs_csv) if pairs_csv is not None else root / "pairs.csv"
    if pairs_csv is not None or csv_path.is_file():
        if not csv_path.is_file():
            raise ValueError(f"pairs_csv {csv_path}: no such file")
        files, labels = _pairs_from_csv(csv_path)
        return files, labels, root

    in_dir, tg_dir = root / "inputs", root / "targets"
    for d in (in_dir, tg_dir):
        if not d.is_dir():
            raise ValueError(f"{root}: expected subfolders inputs/ and targets/ (or a "
                             f"pairs.csv); {d} is missing")
    ins, tgs = _image_files(in_dir), _image_files(tg_dir)
    if not ins:
        raise ValueError(f"{in_dir} holds no image files (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)})")
    missing = [k for k in ins if k not in tgs]
    if missing:
        k = missing[0]
        more = f" (and {len(missing) - 1} more inputs without a target)" if len(missing) > 1 else ""
        raise ValueError(f"{ins[k]} has no partner: expected {tg_dir / k}.<image suffix>{more}")
    orphans = [k for k in tgs if k not in ins]
    if orphans:
        warnings.warn(f"{len(orphans)} files in {tg_dir} have no input and are skipped, "
                      f"e.g. {tgs[orphans[0]]}")
    keys = sorted(ins)
    return [(ins[k], tgs[k]) for k in keys], {"name": np.array(keys, dtype=str)}, root
