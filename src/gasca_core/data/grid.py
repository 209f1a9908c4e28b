"""Image grids with Pillow: rows of images (inputs, outputs, targets), written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _as_images(row: np.ndarray, r: int) -> np.ndarray:
    """One row as (N, H, W) float in [0, 1]; accepts (N, 1, H, W) or (N, H, W)."""
    a = np.asarray(row)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"rows[{r}] must have shape (N, 1, H, W) or (N, H, W), got {a.shape}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"rows[{r}] holds NaN or infinite values")
    return np.clip(a, 0.0, 1.0)  # model outputs may overshoot a little; show them clipped


def file_mode() -> int:
    """Permission bits a plain open() would give a new file (0o666 less the umask):
    mkstemp makes files private (0o600), which is wrong for pictures and caches."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(image: Image.Image, path: "str | os.PathLike[str]") -> Path:
    """Save a Pillow image so that ``path`` is either the old file or the whole new one.

    Writes a temporary file in the same directory, then renames it over ``path``
    (os.replace is atomic on POSIX and Windows). The format follows the suffix.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path {str(path)!r}: unknown image suffix {path.suffix!r} "
                         f"(expected e.g. .png or .jpg)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def make_image_grid(rows: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None,
                    col_labels: Optional[Sequence[str]] = None, scale: int = 2,
                    padding: int = 2) -> Image.Image:
    """Tile rows of grey images into one Pillow image (mode "L").

    rows: sequence of R arrays, each (N, 1, H, W) or (N, H, W), values in [0, 1] (clipped);
        all with the same N, H, W. Row r is drawn left to right.
    labels: R strings written left of each row (e.g. "input", "output", "target").
    col_labels: N strings written above each column (e.g. the yaw).
    scale: integer magnification (nearest neighbour), so small images stay readable.
    """
    if len(rows) == 0:
        raise ValueError("rows must hold at least one array of images")
    imgs = [_as_images(r, i) for i, r in enumerate(rows)]
    n, h, w = imgs[0].shape
    for i, a in enumerate(imgs):
        if a.shape != (n, h, w):
            raise ValueError(f"rows[{i}] has shape {a.shape}, expected {(n, h, w)} like rows[0]")
    if labels is not None and len(labels) != len(imgs):
        raise ValueError(f"labels has {len(labels)} entries, expected one per row ({len(imgs)})")
    if col_labels is not None and len(col_labels) != n:
        raise ValueError(f"col_labels has {len(col_labels)} entries, expected one per column ({n})")
    if int(scale) < 1 or int(padding) < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got {scale}, {padding}")
    scale, padding = int(scale), int(padding)
    font = ImageFont.load_default()
    text_h = 12
    left = (max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(s, font=font))
                for s in labels) + 2 * padding) if labels else 0
    top = text_h + padding if col_labels else 0
    cell_h, cell_w = h * scale + padding, w * scale + padding
    canvas = Image.new("L", (left + padding + n * cell_w, top + padding + len(imgs) * cell_h), 255)
    draw = ImageDraw.Draw(canvas)
    for r, a in enumerate(imgs):
        y = top + padding + r * cell_h
        if labels:
            draw.text((padding, y + (h * scale - text_h) // 2), str(labels[r]), fill=0, font=font)
        for j in range(n):
            tile = Image.fromarray(np.rint(a[j] * 255.0).astype(np.uint8), mode="L")
            if scale > 1:
                tile = tile.resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(tile, (left + padding + j * cell_w, y))
    if col_labels:
        for j, s in enumerate(col_labels):
            draw.text((left + padding + j * cell_w, padding // 2), str(s), fill=0, font=font)
    return canvas


def save_image_grid(rows: Sequence[np.ndarray], path: "str | os.PathLike[str]",
                    labels: Optional[Sequence[str]] = None,
                    col_labels: Optional[Sequence[str]] = None, scale: int = 2,
                    padding: int = 2) -> Path:
    """Save rows of images as one grid picture at ``path`` (atomic write); returns the path.

    Typical use: ``save_image_grid([inputs, outputs, targets], "grid.png",
    labels=["input", "output", "target"])`` with arrays (N, 1, H, W) in [0, 1].
    See :func:`make_image_grid` for the arguments.
    """
    return atomic_save(make_image_grid(rows, labels, col_labels, scale, padding), path)
