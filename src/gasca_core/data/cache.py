"""A prepared dataset on disk: decoded, cropped and resized once, read back batch by batch.

    python -m gasca_core.data prepare --dataset multipie --data DIR --out CACHE
    python -m gasca_core.train --data CACHE            # (any tool's --data takes a cache)

Why: Multi-PIE holds about 750,000 images. Decoding them all on every run takes hours, and
held as float32 at 64 x 64 they are about 12 GB per side, more than a laptop has. A cache
holds each *distinct* image file once as 8-bit grey (a target shared by many inputs is
stored once: 4 KB per image at 64 x 64, about 3 GB for all of Multi-PIE), and a training
run reads only the batches it draws (:class:`U8Images`), so its memory does not grow with
the dataset.

What is in CACHE (a directory):

    options.json   what the cache was made from: dataset, data path, image size, loader
                   options (crop boxes included), file count; written first
    pairs.npz      the pairing and the labels: input_index (N,), target_index (N,) into
                   images.u8, the file of each image (relative to the data root), labels
    images.u8      the images, uint8 (M, H, W) raw, row after row (np.memmap can map
                   it); value / 255 = the image. Training reads it batch by batch
                   (U8File, with pread, so that no page stays resident)
    done.u8        one byte per chunk of `chunk` images (256 by default): 1 once the
                   chunk is written and flushed to disk
    complete.json  written last, after every chunk is done and images.u8 is synced

A prepare that is killed leaves no complete.json: the cache is refused for training
("incomplete"), and the same prepare command continues it, redoing only the chunks not
marked done. A prepare into a cache made from other options is refused, naming the option.
The images are quantized to 8 bits *after* cropping and resizing: against the float images
the in-memory loaders give, each pixel differs by at most half a grey level (1/510).

Decoding runs on ``workers`` processes (default: every core), each reading whole chunks.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .images import ImageSize, normalize_size, read_gray
from .pairs import PairDataset

CACHE_FORMAT = 1
CHUNK = 256   # images per unit of work and per done-marker


class CacheError(ValueError):
    """A cache that cannot be used as asked: incomplete, made from other options, damaged."""


# ----------------------------------------------------------------------------- lazy images


class U8File:
    """images.u8 as a read-only (M, H, W) uint8 store that reads the rows asked for with
    pread: they pass through this process's memory once and are not kept. (A memory map
    of the file would do the same reads, but every page it touched would stay resident in
    the process, so that after one epoch its resident size would be the dataset's.)
    Safe to fork and to pickle: each process opens the file for itself."""

    ndim, dtype = 3, np.dtype(np.uint8)

    def __init__(self, path: "str | os.PathLike[str]", shape: tuple[int, int, int]) -> None:
        self.path, self.shape = os.fspath(path), tuple(int(v) for v in shape)
        self._row = self.shape[1] * self.shape[2]
        self._fd: Optional[int] = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["shape"])

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getitem__(self, rows: Any) -> np.ndarray:
        """Rows (ints, ascending reads fastest) -> uint8 (n, H, W); runs of consecutive rows
        are read in one call."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), self._row)
        fd, i = self._file(), 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            want = (j - i) * self._row
            got = os.preadv(fd, [memoryview(flat[i:j]).cast("B")], int(rows[i]) * self._row)
            if got != want:
                raise CacheError(f"{self.path}: short read at image {rows[i]} ({got} of "
                                 f"{want} bytes): the cache is damaged; prepare it again")
            i = j
        return out

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class U8Images:
    """N grey images (N, 1, H, W) read on demand from a uint8 store (M, H, W) (images.u8
    through U8File, or any uint8 array) through an index (N,) into it: what a PairDataset
    of a cache holds instead of whole float32 arrays.

    Indexing gives float32 arrays in [0, 1], as a PairDataset's arrays are: ``x[i]`` is
    (1, H, W), ``x[a:b]`` and ``x[indices]`` are (n, 1, H, W); only those images are read.
    ``np.asarray(x)`` reads them all (the evaluation of a whole split does; training never
    does). ``subset(indices)`` is another view of the same store, nothing copied.
    """

    ndim = 4
    dtype = np.dtype(np.float32)
    lazy_images = True   # what PairDataset looks for

    def __init__(self, store: Any, index: np.ndarray) -> None:
        if store.ndim != 3 or store.dtype != np.uint8:
            raise ValueError(f"the image store must be uint8 (M, H, W), got {store.dtype} "
                             f"{store.shape}")
        index = np.asarray(index, dtype=np.int64)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= len(store))):
            raise ValueError(f"image indices must be a 1-D array within [0, {len(store)})")
        self.store, self.index = store, index

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.index), 1, *self.store.shape[1:])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("index a U8Images by images only (x[i], x[a:b], x[indices])")
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return self.store[[int(rows)]].astype(np.float32) / np.float32(255.0)
        rows = np.asarray(rows)
        # Read in ascending file order (sequential on disk), then put back in the asked order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), 1, *self.store.shape[1:]), dtype=np.float32)
        out[order, 0] = self.store[rows[order]]
        out /= np.float32(255.0)   # as the loaders read an 8-bit file: value / 255
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[np.arange(len(self))]
        return a if dtype is None else a.astype(dtype, copy=False)

    def subset(self, indices: Any) -> "U8Images":
        return U8Images(self.store, self.index[np.asarray(indices, dtype=np.int64)])

    def __repr__(self) -> str:
        return f"U8Images({len(self)} of {self.store.shape[1:]} from {len(self.store)} stored)"


# ----------------------------------------------------------------------------- prepare


def _canonical(value: Any) -> Any:
    """Options as JSON can hold them and compare them (tuples -> lists, paths -> str)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_pairs(dataset: str, data: str, opts: dict):
    """(files [(input, target)], labels, root, box_of) of a multipie tree or a folder, from
    the file names alone (nothing decoded); opts are the loader's options."""
    from .folder import folder_box_of, folder_pairs
    from .multipie import multipie_box_of, multipie_pairs
    opts = dict(opts)
    crop = opts.pop("crop", "auto" if dataset == "multipie" else None)
    if dataset == "multipie":
        files, labels, root = multipie_pairs(data, **opts)
        return files, labels, root, multipie_box_of(crop)
    if dataset == "folder":
        files, labels, root = folder_pairs(data, **opts)
        return files, labels, root, folder_box_of(crop)
    raise ValueError(f"prepare reads image files: --dataset multipie or folder, got {dataset!r} "
                     f"(the synthetic faces are cached by themselves; an .npz is one file already)")


def _worker_init() -> None:
    """A decoding worker leaves Ctrl-C (SIGINT to the terminal's whole process group) to
    the parent, which stops the pool and keeps what is marked done; and it ends by itself
    within a second or two when the parent is gone (a SIGKILLed prepare would otherwise
    leave its workers waiting for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _read_chunk(job) -> tuple[int, np.ndarray]:
    """A worker's unit: decode, crop and resize the files of one chunk -> uint8 (n, H, W)."""
    c, paths, size, box_of = job
    out = np.empty((len(paths), *size), dtype=np.uint8)
    for i, p in enumerate(paths):
        box = None if box_of is None else (lambda frame, p=p: box_of(p, frame))
        out[i] = np.rint(read_gray(p, size, box) * 255.0)
    return c, out


def prepare_cache(dataset: str, data: "str | os.PathLike[str]", out: "str | os.PathLike[str]",
                  image_size: ImageSize = 64, opts: Optional[dict] = None,
                  workers: Optional[int] = None, progress: bool = True,
                  log=print, chunk: int = CHUNK) -> Path:
    """Decode, crop and resize every image of `dataset` at `data` once into the cache `out`
    (see the module docstring); continues an interrupted prepare of the same options.
    Returns the cache's path."""
    # The crop as the loader would default it, so that "--opt crop=auto" and no crop option
    # name the same cache.
    opts = {"crop": "auto" if dataset == "multipie" else None, **(opts or {})}
    size = normalize_size(image_size)
    if size is None:
        raise ValueError("prepare needs an image size (the cache holds one size)")
    out = Path(out)
    data = os.path.abspath(os.fspath(data))
    files, labels, root, box_of = list_pairs(dataset, data, opts)
    unique = list(dict.fromkeys(p for pair in files for p in pair))
    where = {p: i for i, p in enumerate(unique)}
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1 image, got {chunk}")
    chunk = int(chunk)
    options = {"format": CACHE_FORMAT, "dataset": dataset, "data": data,
               "image_size": list(size), "opts": _canonical(opts), "images": len(unique),
               "pairs": len(files), "chunk": chunk}
    out.mkdir(parents=True, exist_ok=True)
    opt_path = out / "options.json"
    if opt_path.exists():
        with open(opt_path, encoding="utf-8") as f:
            before = json.load(f)
        diff = [k for k in sorted(set(before) | set(options)) if before.get(k) != options.get(k)]
        if diff:
            k = diff[0]
            raise CacheError(f"{out} was prepared from other options: {k} is {before.get(k)!r} "
                             f"there and {options.get(k)!r} now; prepare into another --out, "
                             f"or delete {out} to start it again")
        if (out / "complete.json").exists():
            log(f"{out}: complete already ({len(unique)} images, {len(files)} pairs)")
            return out
    else:
        for stale in ("images.u8", "done.u8", "complete.json", "pairs.npz"):
            if (out / stale).exists():
                raise CacheError(f"{out} holds {stale} but no options.json: not a cache this "
                                 f"version can continue; delete it or choose another --out")
        _atomic_json(opt_path, options)
    h, w = size
    n_chunks = -(-len(unique) // chunk)
    rel = np.array([os.path.relpath(p, root) for p in unique], dtype=str)
    if not (out / "pairs.npz").exists():
        tmp = out / "pairs.tmp.npz"
        np.savez(tmp, input_index=np.array([where[a] for a, _ in files], dtype=np.int64),
                 target_index=np.array([where[b] for _, b in files], dtype=np.int64),
                 files=rel, label_names=np.array(list(labels), dtype=str),
                 **{f"label_{k}": v for k, v in labels.items()})
        os.replace(tmp, out / "pairs.npz")
    row = h * w
    img_fd = os.open(out / "images.u8", os.O_RDWR | os.O_CREAT, 0o644)
    done_fd = os.open(out / "done.u8", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(img_fd, len(unique) * row)     # sparse until written; no-op on resume
        os.ftruncate(done_fd, n_chunks)
        done = np.frombuffer(os.pread(done_fd, n_chunks, 0), dtype=np.uint8)
        todo = [c for c in range(n_chunks) if not done[c]]
        jobs = [(c, unique[c * chunk:(c + 1) * chunk], size, box_of) for c in todo]
        if len(todo) < n_chunks:
            log(f"{out}: continuing, {n_chunks - len(todo)} of {n_chunks} chunks done before")
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(unique), initial=len(unique) - sum(len(j[1]) for j in jobs),
                       desc="preparing", unit="img", dynamic_ncols=True)
        t0 = time.perf_counter()
        workers = max(1, int(workers or os.cpu_count() or 1))

        def finish(c: int, block: np.ndarray) -> None:
            os.pwrite(img_fd, np.ascontiguousarray(block).tobytes(), c * chunk * row)
            os.fdatasync(img_fd)      # the pixels reach the disk before the marker says so
            os.pwrite(done_fd, b"\x01", c)
            os.fdatasync(done_fd)
            if bar is not None:
                bar.update(len(block))

        if workers > 1 and len(jobs) > 1:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)
            try:
                for c, block in pool.map(_read_chunk, jobs):
                    finish(c, block)
            except BaseException:   # Ctrl-C, a bad file: stop now, keep what is marked done
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        else:
            for job in jobs:
                finish(*_read_chunk(job))
        if bar is not None:
            bar.close()
        os.fsync(img_fd)
    finally:
        os.close(img_fd)
        os.close(done_fd)
    _atomic_json(out / "complete.json", {"format": CACHE_FORMAT, "images": len(unique),
                                         "pairs": len(files),
                                         "seconds_this_session": time.perf_counter() - t0})
    return out


# ----------------------------------------------------------------------------- read


def is_cache(path: "str | os.PathLike[str] | None") -> bool:
    """Whether `path` is a cache directory (complete or not)."""
    return path is not None and (Path(path) / "options.json").is_file() and \
        (Path(path) / "pairs.npz").is_file()


def load_cache(data: "str | os.PathLike[str]", image_size: ImageSize = None, **opts: Any
               ) -> PairDataset:
    """The pairs of a prepared cache, read batch by batch (PairDataset of U8Images).

    image_size, when given, must be the cache's (a cache holds one size); loader options
    are those of the prepare and cannot be changed here."""
    path = Path(data)
    if not is_cache(path):
        raise CacheError(f"{path} is not a prepared cache (no options.json and pairs.npz); "
                         f"make one with python -m gasca_core.data prepare")
    if not (path / "complete.json").is_file():
        raise CacheError(f"{path} is incomplete (its prepare was interrupted): run the same "
                         f"prepare command again to finish it")
    with open(path / "options.json", encoding="utf-8") as f:
        options = json.load(f)
    if options.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path} is a cache of format {options.get('format')}, this version "
                         f"reads format {CACHE_FORMAT}; prepare it again")
    h, w = options["image_size"]
    size = normalize_size(image_size)
    if size is not None and tuple(size) != (h, w):
        raise CacheError(f"{path} holds {h}x{w} images, {size[0]}x{size[1]} were asked for; "
                         f"prepare another cache at that size")
    if opts:
        raise CacheError(f"{path}: loader options ({', '.join(opts)}) were fixed when the cache "
                         f"was prepared ({options['opts']}); prepare another cache to change them")
    n_images = int(options["images"])
    expected = n_images * h * w
    got = os.path.getsize(path / "images.u8")
    if got != expected:
        raise CacheError(f"{path}/images.u8 holds {got} bytes, {expected} expected "
                         f"({n_images} images of {h}x{w}): damaged; prepare it again")
    store = U8File(path / "images.u8", (n_images, h, w))
    with np.load(path / "pairs.npz") as z:
        inputs = U8Images(store, z["input_index"])
        targets = U8Images(store, z["target_index"])
        labels = {str(k): z[f"label_{k}"] for k in z["label_names"]}
    return PairDataset(inputs, targets, labels, name=f"cache:{path.name}", check=False)


def cache_summary(path: "str | os.PathLike[str]") -> dict:
    """options.json of a cache, with "complete" and "chunks_done" / "chunks"."""
    path = Path(path)
    with open(path / "options.json", encoding="utf-8") as f:
        options = json.load(f)
    n_chunks = -(-int(options["images"]) // int(options.get("chunk", CHUNK)))
    done = np.fromfile(path / "done.u8", dtype=np.uint8) if (path / "done.u8").exists() else []
    return {**options, "complete": (path / "complete.json").is_file(),
            "chunks": n_chunks, "chunks_done": int(np.sum(done))}
