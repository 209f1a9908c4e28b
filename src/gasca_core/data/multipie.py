"""A Multi-PIE-style tree: files named subject_session_recording_camera_light.<suffix>.

Example: ``001_01_01_051_07.png`` is subject 001, session 01, recording 01, camera 05_1
(written 051), flash 07. Files are searched in all subfolders (the real tree nests them as
session01/multiview/001/01/05_1/...), and only the name matters.

Each image is paired with the image of the *same subject, session and recording* seen by
the frontal camera 051 under the frontal flash 07 (``target_camera``, ``target_light`` to
choose others). When that partner is missing, ``on_missing="error"`` (the default) stops
with a message naming the file and the partner it needs; ``on_missing="skip"`` leaves such
images out and warns once with the count.

Yaw per camera, in degrees, from the usual table for the 13 cameras at head height:

    110 -90, 120 -75, 090 -60, 080 -45, 130 -30, 140 -15, 051 0,
    050 +15, 041 +30, 190 +45, 200 +60, 010 +75, 240 +90

The sign follows that table (cameras 110..140 negative, 050..240 positive); it is a label,
nothing in training depends on which side is called positive. Files of other cameras (the
overhead 081 and 191) have no yaw and are skipped with a warning.

Labels: subject, session, recording, light (int64), camera (text, e.g. "051"), yaw
(float32, degrees). The splits keep each subject in one split.

Frames as shipped (640 x 480) are cropped to their camera's face box before resizing
(``crop``, gasca_core.data.crop); square images (faces cropped already) are used whole.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .crop import CropSpec, camera_boxes, detect_face_box, require_detector
from .pairs import PairDataset
from .folder import read_pairs
from .images import IMAGE_SUFFIXES, ImageSize, is_image_file

CAMERA_YAW: dict[str, float] = {
    "110": -90.0, "120": -75.0, "090": -60.0, "080": -45.0, "130": -30.0, "140": -15.0,
    "051": 0.0,
    "050": 15.0, "041": 30.0, "190": 45.0, "200": 60.0, "010": 75.0, "240": 90.0,
}
NAME_PATTERN = re.compile(r"^(\d{3})_(\d{2})_(\d{2})_(\d{3})_(\d{2})$")
NAME_FORMAT = "subject_session_recording_camera_light, e.g. 001_01_01_051_07.png"


def parse_name(path: Path) -> tuple[int, int, int, str, int]:
    """(subject, session, recording, camera, light) from a file name; ValueError if the
    name does not follow the Multi-PIE pattern."""
    m = NAME_PATTERN.match(path.stem)
    if m is None:
        raise ValueError(f"{path}: name does not follow the Multi-PIE pattern {NAME_FORMAT}")
    subject, session, recording, camera, light = m.groups()
    return int(subject), int(session), int(recording), camera, int(light)


def load_multipie(data: "str | os.PathLike[str]", image_size: ImageSize = 64, *,
                  target_camera: str = "051", target_light: int = 7,
                  lights: Optional[Iterable[int]] = None, max_abs_yaw: Optional[float] = None,
                  on_missing: str = "error", crop: CropSpec = "auto") -> PairDataset:
    """Load a Multi-PIE-style tree (see the module docstring).

    lights: keep only input images under these flashes (default: all).
    max_abs_yaw: keep only cameras with |yaw| <= this many degrees (the paper uses 60).
    on_missing: "error" or "skip", for an image whose frontal partner is not in the tree.
    crop: the face box each image is cut to before resizing (gasca_core.data.crop):
        "auto" (the default) crops frames of Multi-PIE's 4:3 shape (640 x 480 as shipped)
        with their camera's box and leaves square images (faces cropped already) whole;
        "camera" crops every image; "none" none; a JSON file of boxes overrides cameras;
        "detect" finds the face in each frame (OpenCV, the "detect" extra) and falls back
        to the camera's box where it finds none.
    """
    files, labels, root = multipie_pairs(data, target_camera=target_camera,
                                         target_light=target_light, lights=lights,
                                         max_abs_yaw=max_abs_yaw, on_missing=on_missing)
    inputs, targets = read_pairs(files, image_size, str(root), multipie_box_of(crop))
    return PairDataset(inputs, targets, labels, name=f"multipie:{root.name}")


class CameraBoxOf:
    """box_of(path, frame) for a Multi-PIE tree: the face box of the file's camera (a class,
    not a closure, so that prepare's worker processes can receive it). With detect, the
    face found in the frame by detect_face_box where there is one (crop="detect")."""

    def __init__(self, boxes: dict, auto: bool, detect: bool = False) -> None:
        self.boxes, self.auto, self.detect = boxes, auto, detect

    def __call__(self, path: Path, frame: Optional[np.ndarray] = None):
        if self.auto and frame is not None and frame.shape[1] * 3 != frame.shape[0] * 4:
            return None   # not a 4:3 frame: a face cropped already
        if self.detect and frame is not None:
            found = detect_face_box(frame)
            if found is not None:
                return found
        return self.boxes.get(parse_name(Path(path))[3])


def multipie_box_of(crop: CropSpec) -> Optional[CameraBoxOf]:
    """crop (see load_multipie) -> box_of(path, frame): the face box of a file, or None for
    no cropping at all."""
    mode = crop.lower() if isinstance(crop, str) else None
    if mode == "detect":
        require_detector()
    boxes = camera_boxes("camera" if mode in ("auto", "detect") else crop)
    return None if boxes is None else CameraBoxOf(boxes, mode == "auto", mode == "detect")


def multipie_pairs(data: "str | os.PathLike[str]", *, target_camera: str = "051",
                   target_light: int = 7, lights: Optional[Iterable[int]] = None,
                   max_abs_yaw: Optional[float] = None, on_missing: str = "error"):
    """The pairs of a Multi-PIE-style tree without reading an image: ([(input file, target
    file)], labels, root). Arguments as load_multipie."""
    if data is None:
        raise ValueError("the multipie dataset needs --data DIR (the root of the tree)")
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    target_camera = f"{int(target_camera):03d}" if str(target_camera).isdigit() else \
        str(target_camera)
    if target_camera not in CAMERA_YAW:
        raise ValueError(f"target_camera {target_camera!r} is not one of the cameras with a "
                         f"known yaw: {', '.join(CAMERA_YAW)}")
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such directory")
    keep_lights = None if lights is None else {int(x) for x in lights}

    by_key: dict[tuple[int, int, int, str, int], Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not is_image_file(path):
            continue
        key = parse_name(path)
        if key in by_key:
            raise ValueError(f"{by_key[key]} and {path} name the same image "
                             f"(subject, session, recording, camera, light)")
        by_key[key] = path
    if not by_key:
        raise ValueError(f"{root} holds no image files (looked for {', '.join(IMAGE_SUFFIXES)}"
                         f" named {NAME_FORMAT})")

    files, keys, missing, no_yaw = [], [], [], []
    for key, path in by_key.items():
        subject, session, recording, camera, light = key
        if camera not in CAMERA_YAW:
            no_yaw.append(path)
            continue
        if max_abs_yaw is not None and abs(CAMERA_YAW[camera]) > max_abs_yaw:
            continue
        if keep_lights is not None and light not in keep_lights:
            continue
        partner = by_key.get((subject, session, recording, target_camera, int(target_light)))
        if partner is None:
            missing.append(path)
            continue
        files.append((path, partner))
        keys.append(key)
    if no_yaw:
        warnings.warn(f"{len(no_yaw)} images are from cameras without a yaw in the table "
                      f"(e.g. {no_yaw[0]}) and are skipped")
    if missing:
        first = missing[0]
        s, e, r, _, _ = parse_name(first)
        partner = f"{s:03d}_{e:02d}_{r:02d}_{target_camera}_{int(target_light):02d}"
        if on_missing == "error":
            more = f" ({len(missing) - 1} more images lack theirs)" if len(missing) > 1 else ""
            raise ValueError(f"{first} has no frontal partner: expected {partner}.png somewhere "
                             f"under {root}{more}; pass on_missing='skip' to leave such "
                             f"images out")
        warnings.warn(f"{len(missing)} images have no frontal partner and are skipped, e.g. "
                      f"{first} (needs {partner})")
    if not files:
        raise ValueError(f"{root}: no image could be paired with its frontal partner")
    k = list(zip(*keys))
    labels = {
        "subject": np.array(k[0], dtype=np.int64), "session": np.array(k[1], dtype=np.int64),
        "recording": np.array(k[2], dtype=np.int64), "camera": np.array(k[3], dtype=str),
        "yaw": np.array([CAMERA_YAW[c] for c in k[3]], dtype=np.float32),
        "light": np.array(k[4], dtype=np.int64),
    }
    return files, labels, root
