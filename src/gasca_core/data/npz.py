"""Pairs from one .npz file (as written by numpy.savez).

Arrays:
- ``inputs``, ``targets``: (N, H, W) or (N, 1, H, W), the same shape. uint8 is divided by
  255, uint16 by 65535; floating point is taken as is and must be finite and in [0, 1].
  Other types (signed integers, bool, complex) are refused.
- labels, optional, either way:
  ``labels``: a structured array (N,) with one field per label
  (e.g. ``np.rec.fromarrays([ids, yaws], names="identity,yaw")``), or a plain (N,) array
  (one label per pair, available as the label named ``label``), or
  ``label_<name>``: one array (N,) per label (e.g. ``label_identity``, ``label_yaw``).
  A label named ``identity`` or ``subject`` makes the splits keep each person in one split.
Other arrays in the file are ignored. Pickled (object) arrays are never loaded.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .pairs import PairDataset
from .grid import file_mode
from .images import ImageSize, normalize_size, resize_gray


def _to_unit_float(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    """uint8 / uint16 / float array -> float32 in [0, 1], (N, 1, H, W)."""
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"{path}: array {name!r} must have shape (N, H, W) or (N, 1, H, W), "
                         f"got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(a.dtype, np.floating):
        out = a.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{path}: array {name!r} holds NaN or infinite values")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise ValueError(f"{path}: array {name!r} must hold values in [0, 1], got range "
                             f"[{out.min()}, {out.max()}] (scale it, or store uint8 0..255)")
        return out
    raise ValueError(f"{path}: array {name!r} has dtype {a.dtype}; expected uint8, uint16 "
                     f"or floating point in [0, 1]")


def load_npz(data: "str | os.PathLike[str]", image_size: ImageSize = 64) -> PairDataset:
    """Load pairs from an .npz file (see the module docstring); resized when image_size is
    given and differs from the stored size."""
    if data is None:
        raise ValueError("the npz dataset needs --data FILE.npz")
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # not a NumPy file, a pickle, a broken archive
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array; expected an .npz archive with "
                         f"arrays 'inputs' and 'targets' (numpy.savez)")
    with z:
        names = set(z.files)
        for need in ("inputs", "targets"):
            if need not in names:
                raise ValueError(f"{path}: no array {need!r} (found: "
                                 f"{', '.join(sorted(names)) or 'none'})")
        try:
            arrays = {k: z[k] for k in names
                      if k in ("inputs", "targets", "labels") or k.startswith("label_")}
        except Exception as e:  # truncated member, object (pickled) array, ...
            raise ValueError(f"{path}: cannot read its arrays ({e})") from None

    inputs = _to_unit_float(arrays["inputs"], "inputs", path)
    targets = _to_unit_float(arrays["targets"], "targets", path)
    if inputs.shape != targets.shape:
        raise ValueError(f"{path}: inputs {inputs.shape} and targets {targets.shape} must have "
                         f"the same shape")
    n = len(inputs)
    labels: dict[str, np.ndarray] = {}
    if "labels" in arrays:
        rec = arrays["labels"]
        if rec.dtype.names is not None:
            labels.update({f: np.asarray(rec[f]) for f in rec.dtype.names})
        elif rec.ndim == 1:  # one plain label per pair, e.g. a class index
            labels["label"] = rec
        else:
            raise ValueError(f"{path}: 'labels' must be (N,) (one label per pair, named 'label'), "
                             f"a structured array with one field per label, or stored as arrays "
                             f"named label_<name>; got shape {rec.shape}")
    for key, value in arrays.items():
        if key.startswith("label_"):
            labels[key[len("label_"):]] = value
    for key, value in labels.items():
        if value.shape[:1] != (n,):
            raise ValueError(f"{path}: label {key!r} has shape {value.shape}, expected ({n},)")

    size = normalize_size(image_size)
    if size is not None and inputs.shape[2:] != size:
        inputs = np.stack([resize_gray(a[0], size) for a in inputs])[:, None]
        targets = np.stack([resize_gray(a[0], size) for a in targets])[:, None]
    return PairDataset(inputs, targets, labels, name=f"npz:{path.stem}", check=False)


def save_npz(ds: PairDataset, path: "str | os.PathLike[str]") -> Path:
    """Write ds in the format load_npz reads (float32 inputs/targets, label_<name> arrays),
    atomically (temp file + rename). E.g. to hand the synthetic faces to another tool."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"path {str(path)!r} must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, inputs=ds.inputs, targets=ds.targets,
                     **{f"label_{k}": v for k, v in ds.labels.items()})
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
