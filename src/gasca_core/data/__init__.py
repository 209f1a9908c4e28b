"""Data for GASCA: pairs (input image, target image) with labels.

Six sources, one container of pairs (:class:`PairDataset`, in pairs.py):

- ``synthetic-faces`` (default): a parametric 3D head ray-cast at yaws -60..60 and several
  lights, paired with its frontal neutrally lit image (:mod:`.synthetic`).
- ``synthetic-expressions``: the same faces showing seven expressions (neutral, happy,
  sad, surprised, angry, disgusted, fearful), label ``expression``; the target keeps the
  expression (:mod:`.synthetic`, Expressions).
- ``folder``: DIR/inputs/* and DIR/targets/* matched by file stem, or DIR/pairs.csv
  (:mod:`.folder`).
- ``multipie``: a Multi-PIE-style tree of subject_session_recording_camera_light.png files,
  each paired with camera 051 of the same recording (:mod:`.multipie`).
- ``npz``: arrays ``inputs``, ``targets`` and optional labels (:mod:`.npz`).
- ``cache``: a multipie tree or a folder prepared once (decoded, cropped, resized) into an
  on-disk cache, read batch by batch (:mod:`.cache`; face boxes in :mod:`.crop`; a
  Multi-PIE-shaped tree to try it on in :mod:`.multipie_tree`).

The tools call :func:`get_splits` once (datasets.py; the split by person is in splits.py)
and batch with :class:`BatchIterator` (batching.py), the one batch iterator;
:func:`save_image_grid` writes rows of images (inputs, outputs, targets) to a PNG.
``python -m gasca_core.data preview --out grid.png`` shows pairs before training.

This package needs only NumPy and Pillow (no kernels, no autograd).
"""
from .batching import Batch, BatchIterator
from .datasets import DATASET_NAMES, LOADERS, get_splits, infer_dataset, load_dataset
from .pairs import PairDataset
from .splits import DEFAULT_FRACTIONS, Splits, split_dataset, split_indices
from .grid import make_image_grid, save_image_grid
from .images import ImageReadError, read_gray
from .npz import save_npz

__all__ = [
    "DATASET_NAMES", "LOADERS", "DEFAULT_FRACTIONS", "Batch", "BatchIterator", "PairDataset", "Splits",
    "get_splits", "infer_dataset", "load_dataset", "split_dataset", "split_indices",
    "make_image_grid", "save_image_grid", "ImageReadError", "read_gray", "save_npz",
]
