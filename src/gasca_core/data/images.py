"""Reading one image file as a grey float32 array in [0, 1], the way every loader does.

Conversions (documented, so that users know what the network sees):

- 8-bit grey ("L"), black-and-white ("1"), palette ("P"): value / 255.
- colour ("RGB", "CMYK", "YCbCr", ...): luma, Pillow's ITU-R 601 weights
  L = 0.299 R + 0.587 G + 0.114 B, then / 255.
- with transparency ("RGBA", "LA", "PA", palette with a transparent index): composited over
  black, i.e. grey value * alpha (a transparent pixel reads as 0).
- 16-bit grey ("I;16", "I;16B", "I;16L", and "I" as Pillow opens 16-bit PNGs): / 65535.
  An "I" image with values outside [0, 65535] is refused.
- 32-bit float ("F", e.g. from TIFF): used as is; must be finite and within [0, 1].
- EXIF orientation (phone photos) is applied first.
- cropping (when a face box is given, gasca_core.data.crop): a square cut from the frame,
  padded with 0 where it leaves the frame, before any resizing.
- resizing (when a size is asked for): Pillow's bicubic filter on the float image (which
  low-passes when shrinking), then clipped to [0, 1]. The aspect ratio is not kept (crop
  to a square first to keep it).

Anything that cannot be decoded (not an image, truncated, unreadable) raises
:class:`ImageReadError` naming the file and Pillow's reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Suffixes the loaders treat as images (lower case); other files in a folder are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")

ImageSize = Union[int, Sequence[int], None]


class ImageReadError(ValueError):
    """An image file could not be read or converted; the message names the file."""


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is one of IMAGE_SUFFIXES (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def normalize_size(image_size: ImageSize, name: str = "image_size") -> Optional[tuple[int, int]]:
    """None, an int s or (h, w) -> None or (h, w); raises ValueError for anything else."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        hw = (int(image_size), int(image_size))
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except TypeError:
            raise ValueError(f"{name} must be None, an int or (height, width), "
                             f"got {image_size!r}") from None
        if len(hw) != 2:
            raise ValueError(f"{name} must be None, an int or (height, width), got {image_size!r}")
    if min(hw) < 1:
        raise ValueError(f"{name} must be positive, got {image_size!r}")
    return hw  # type: ignore[return-value]


def _to_gray_array(img: Image.Image, path: Path) -> np.ndarray:
    """Decoded Pillow image -> (H, W) float32 in [0, 1] following the module's rules."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode == "I":
        a = np.asarray(img, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer image with values in "
                                 f"[{a.min()}, {a.max()}]; expected 16-bit values in [0, 65535]")
        return a.astype(np.float32) / 65535.0
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0.0 or a.max() > 1.0)):
            raise ImageReadError(f"{path}: float image must hold finite values in [0, 1], "
                                 f"got range [{np.nanmin(a)}, {np.nanmax(a)}]")
        return a.copy()
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        return gray * alpha
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def resize_gray(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) float image to size = (h, w) with Pillow's bicubic filter, clipped."""
    if a.shape == tuple(size):
        return a
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    out = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def read_gray(path: "str | os.PathLike[str]", image_size: ImageSize = None,
              crop_box=None) -> np.ndarray:
    """Read one image file as grey float32 (H, W) in [0, 1]; cropped to the square
    crop_box = (cx, cy, side) first when one is given (in pixels of a 640 x 480 frame,
    scaled to the file's frame; gasca_core.data.crop), then resized if image_size is given.
    crop_box may also be a function of the decoded (H, W) frame that returns the box or None
    (a loader that crops only frames of some shape, or finds the face in the frame).

    Raises ImageReadError (a ValueError) naming the file when it is missing, not an image,
    truncated or otherwise undecodable, or holds values that cannot be mapped to [0, 1].
    """
    path = Path(path)
    size = normalize_size(image_size)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)
            a = _to_gray_array(img, path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read "
                             f"(unknown or broken format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from None
    if a.ndim != 2 or a.size == 0:
        raise ImageReadError(f"{path}: decoded to shape {a.shape}, expected a non-empty 2-D image")
    if callable(crop_box):
        crop_box = crop_box(a)
    if crop_box is not None:
        from .crop import crop_square, scale_box
        a = crop_square(a, scale_box(crop_box, a.shape))
    return resize_gray(a, size) if size is not None else a
