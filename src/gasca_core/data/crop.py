"""Face boxes and square crops: what a loader cuts out of a frame before resizing it.

A Multi-PIE frame is 640 x 480 and the face fills a part of it that depends on the camera;
squashing the whole frame to 64 x 64 would teach the network a smudge. Every image is
therefore cropped to a *face box* first, then resized:

- a box is ``(cx, cy, side)``: the centre (x right, y down, in pixels of the frame) and the
  side of a square; the crop keeps the aspect ratio (it is square, like the network's input)
  and where the box leaves the frame the missing pixels are padded with black (0);
- ``crop="detect"`` finds the face in each frame instead (OpenCV's Haar cascade, the optional
  "detect" extra: :func:`detect_face_box`) and falls back to the camera's box where it finds
  none;
- boxes are given for a frame of ``FRAME_SIZE`` (640 x 480); on a frame of another size
  the centre is scaled with each axis and the side with the height, so that the crop
  stays square (:func:`scale_box`).

``CAMERA_BOXES`` holds the default box of each Multi-PIE camera. They are **our
estimates**, not measured on the licensed data (which cannot ship): a face about 256
pixels high near the middle of the frame at the frontal camera, moving toward the side
the head turns to and shrinking a little for the outer cameras, lower and smaller for the
two overhead cameras. The generated Multi-PIE-shaped tree (:mod:`.multipie_tree`) puts its
faces in these boxes. On a real copy, look at the crops first
(``python -m gasca_core.data preview --dataset multipie --data DIR --out crops.png``) and
override the boxes that are off with a small JSON file, camera -> [cx, cy, side]::

    {"051": [330, 236, 260], "240": [520, 250, 240]}

passed as ``--opt crop=boxes.json`` (cameras not in the file keep their default). The
folder loader takes one box for every image (``crop=[cx, cy, side]``) or such a file
keyed by file name (``"*"`` for the rest).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

FRAME_SIZE = (480, 640)   # (height, width) of a Multi-PIE frame: the boxes' coordinates

Box = tuple[float, float, float]

# camera -> (cx, cy, side) in a 640 x 480 frame. Yaws (multipie.CAMERA_YAW): 110 -90,
# 120 -75, 090 -60, 080 -45, 130 -30, 140 -15, 051 0, 050 +15, 041 +30, 190 +45, 200 +60,
# 010 +75, 240 +90; 081 and 191 are the overhead cameras (no yaw: the loader skips them).
# The outermost boxes reach past the frame's edge on purpose: real framings do, and the
# crop pads there.
CAMERA_BOXES: dict[str, Box] = {
    "110": (150.0, 250.0, 300.0), "120": (190.0, 246.0, 272.0), "090": (226.0, 242.0, 264.0),
    "080": (256.0, 240.0, 260.0), "130": (282.0, 238.0, 258.0), "140": (302.0, 236.0, 256.0),
    "051": (320.0, 236.0, 256.0),
    "050": (338.0, 236.0, 256.0), "041": (358.0, 238.0, 258.0), "190": (384.0, 240.0, 260.0),
    "200": (414.0, 242.0, 264.0), "010": (450.0, 246.0, 272.0), "240": (540.0, 250.0, 300.0),
    "081": (300.0, 280.0, 220.0), "191": (340.0, 280.0, 220.0),
}


def _check_box(box: Sequence[float], where: str) -> Box:
    try:
        cx, cy, side = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a face box is [cx, cy, side] (three numbers, pixels of a "
                         f"{FRAME_SIZE[1]}x{FRAME_SIZE[0]} frame), got {box!r}") from None
    if not all(np.isfinite((cx, cy, side))) or side < 1:
        raise ValueError(f"{where}: a face box needs finite numbers and a side >= 1 pixel, "
                         f"got {box!r}")
    return cx, cy, side


def load_boxes(path: "str | os.PathLike[str]") -> dict[str, Box]:
    """A JSON file {key: [cx, cy, side], ...} -> {key: box}; errors name the file and key."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"crop boxes file {path}: not found") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"crop boxes file {path}: cannot read it as JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"crop boxes file {path}: expected an object "
                         f'{{"051": [cx, cy, side], ...}}, got {type(raw).__name__}')
    return {str(k): _check_box(v, f"{path}, key {k!r}") for k, v in raw.items()}


CropSpec = Union[None, str, Sequence[float], Mapping[str, Sequence[float]]]


def camera_boxes(crop: CropSpec) -> Optional[dict[str, Box]]:
    """The Multi-PIE loader's ``crop`` option -> the box of every camera, or None (no crop).

    "camera" (the default): CAMERA_BOXES. "none" / None: the whole frame. A path to a
    JSON file, or a dict: those boxes over the defaults."""
    if crop is None or (isinstance(crop, str) and crop.lower() == "none"):
        return None
    if isinstance(crop, str) and crop.lower() == "camera":
        return dict(CAMERA_BOXES)
    if isinstance(crop, (str, os.PathLike)):
        return {**CAMERA_BOXES, **{f"{int(k):03d}" if k.isdigit() else k: v
                                   for k, v in load_boxes(crop).items()}}
    if isinstance(crop, Mapping):
        return {**CAMERA_BOXES, **{str(k): _check_box(v, f"crop[{k!r}]") for k, v in crop.items()}}
    raise ValueError(f"crop must be 'camera', 'none' or a JSON file of boxes for the "
                     f"multipie dataset, got {crop!r}")


def file_boxes(crop: CropSpec) -> Optional[dict[str, Box]]:
    """The folder loader's ``crop`` option -> {file name or "*": box}, or None (no crop).

    [cx, cy, side]: that box for every image. A path to a JSON file (or a dict) keyed by
    file name, "*" for every file not named."""
    if crop is None or (isinstance(crop, str) and crop.lower() == "none"):
        return None
    if isinstance(crop, (str, os.PathLike)):
        return load_boxes(crop)
    if isinstance(crop, Mapping):
        return {str(k): _check_box(v, f"crop[{k!r}]") for k, v in crop.items()}
    return {"*": _check_box(crop, "crop")}


def scale_box(box: Box, frame_hw: tuple[int, int]) -> Box:
    """A box given for FRAME_SIZE, moved onto a frame of (h, w): the centre scales with
    each axis, the side with the height (so the crop stays square)."""
    sy, sx = frame_hw[0] / FRAME_SIZE[0], frame_hw[1] / FRAME_SIZE[1]
    cx, cy, side = box
    return cx * sx, cy * sy, side * sy


def box_bounds(box: Box) -> tuple[int, int, int]:
    """(left, top, side) in whole pixels of the box (cx, cy, side): the square of
    round(side) pixels centred on (cx, cy)."""
    cx, cy, side = box
    n = max(1, int(round(side)))
    return int(round(cx - n / 2.0)), int(round(cy - n / 2.0)), n


def crop_square(a: np.ndarray, box: Box) -> np.ndarray:
    """The square `box` (frame coordinates, see box_bounds) cut from the (H, W) image `a`;
    pixels of the box outside the frame are 0. Always (side, side), float32."""
    left, top, n = box_bounds(box)
    h, w = a.shape
    out = np.zeros((n, n), dtype=np.float32)
    y0, y1 = max(top, 0), min(top + n, h)
    x0, x1 = max(left, 0), min(left + n, w)
    if y0 < y1 and x0 < x1:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = a[y0:y1, x0:x1]
    return out


# ----------------------------------------------------------------------------- detection
# crop="detect": OpenCV's frontal-face Haar cascade, which ships inside the
# opencv-python-headless wheel (the "detect" extra; OpenCV 5 dropped the cascades, hence
# "<5"), finds the largest face in the frame. Its box covers the inner face (brows to
# mouth); the head box is DETECT_SCALE times as wide, its centre moved by DETECT_RIGHT and
# DETECT_DOWN times the detection's side. The numbers are medians over 102 detections in
# frames of the built-in faces (cameras 051, 050, 140, 041, 130, 190, 080; 8 people; flashes
# 7 and 9), measured against the boxes the heads were pasted into (side ratio 1.36-1.62,
# horizontal offset -0.23..+0.21, vertical -0.10..-0.04 between the 10th and 90th
# percentiles): on real faces, check the preview. The cascade finds no face in profile
# views and in the no-flash shots; there the camera's box is used.
DETECT_SCALE, DETECT_RIGHT, DETECT_DOWN = 1.49, 0.0, -0.07
_cascade = None


def require_detector() -> None:
    """Raise a clear error when crop="detect" cannot run here."""
    try:
        import cv2
        cv2.CascadeClassifier
        cv2.data.haarcascades
    except (ImportError, AttributeError):
        raise ValueError('crop="detect" needs OpenCV 4 with its Haar cascades: '
                         'pip install "gasca_core[detect]" (opencv-python-headless<5)') from None


def detect_face_box(frame: np.ndarray) -> Optional[Box]:
    """The head box around the largest face OpenCV finds in the (H, W) grey frame in [0, 1],
    in pixels of a 640 x 480 frame (scaled as scale_box reads them back), or None."""
    global _cascade
    if _cascade is None:
        require_detector()
        import cv2
        _cascade = cv2.CascadeClassifier(cv2.data.haarcascades +
                                         "haarcascade_frontalface_default.xml")
    img = np.clip(np.rint(np.asarray(frame, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    h, w = img.shape
    least = max(24, int(0.15 * min(h, w)))
    faces = _cascade.detectMultiScale(img, scaleFactor=1.1, minNeighbors=4,
                                      minSize=(least, least))
    if len(faces) == 0:
        return None
    x, y, s, _ = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    cx, cy = x + s / 2.0 + DETECT_RIGHT * s, y + s / 2.0 + DETECT_DOWN * s
    sy, sx = h / FRAME_SIZE[0], w / FRAME_SIZE[1]
    return cx / sx, cy / sy, s * DETECT_SCALE / sy
