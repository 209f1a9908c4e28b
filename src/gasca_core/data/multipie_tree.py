"""A Multi-PIE-shaped tree drawn by the built-in renderer: the real data's layout, frame
size and face placement, for the tests and benchmarks of the multipie loader, its crops and
the prepared cache (Multi-PIE itself is licensed and cannot ship).

    python -m gasca_core.data make-multipie --out DIR --subjects 20

writes ``DIR/session01/multiview/001/01/05_1/001_01_01_051_07.png`` and so on:
session SS / multiview / subject / recording / camera (written "05_1" for camera 051) /
subject_session_recording_camera_flash.png, as in the real tree. Each file is a 640 x 480
8-bit grey frame (a studio backdrop, darker at the bottom) with one face pasted into the
camera's face box (:data:`gasca_core.data.crop.CAMERA_BOXES`), moved and scaled a little
per recording (``jitter`` pixels and 2 x jitter / 256 of the size, seeded), so that a crop
with the default boxes finds the face in its middle but not at an exact pixel.

- Cameras: the 13 at head height render the head at their yaw (multipie.CAMERA_YAW, -90 to
  +90 degrees); the two overhead cameras 081 and 191 at -30 and +30 (they have no yaw in
  the loader's table and are skipped by it, as on real data).
- Flashes (``FLASH_LIGHTS``, our mapping, not Multi-PIE's geometry): 00 is the no-flash
  shot (ambient light only), 07 is frontal (the loader's default target light), 01-14
  sweep from the image's left to its right in 13-degree steps, 15-19 come from above.
- A person is one synthetic identity (the same per subject number and seed in every
  session: people keep their face between sessions).
- ``missing``: the share of (subject, session, recording) whose target (camera 051 under
  flash 07) is left out, to exercise the loader's ``on_missing``.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from ..rng import stream
from .crop import CAMERA_BOXES, FRAME_SIZE, box_bounds
from .multipie import CAMERA_YAW
from .synthetic import light_directions, render_heads, sample_identities

OVERHEAD_YAW = {"081": -30.0, "191": 30.0}
ALL_CAMERAS: tuple[str, ...] = tuple(CAMERA_BOXES)

# flash -> (azimuth, elevation) in degrees, the renderer's convention (positive azimuth from
# the image's right). Flash 0: light from behind the head, so only the ambient term lights
# the face (the no-flash shot).
FLASH_LIGHTS: dict[int, tuple[float, float]] = {
    0: (180.0, 0.0),
    **{f: (float(np.clip((f - 7) * 13.0, -89.0, 89.0)), 0.0) for f in range(1, 15)},
    15: (-45.0, 40.0), 16: (0.0, 45.0), 17: (45.0, 40.0), 18: (-20.0, 60.0), 19: (20.0, 60.0),
}


def camera_dir(camera: str) -> str:
    """Camera "051" -> its folder name in the tree, "05_1"."""
    return f"{camera[:2]}_{camera[2:]}"


def file_path(root: Path, subject: int, session: int, recording: int, camera: str,
              flash: int) -> Path:
    """Where the real tree keeps this image."""
    name = f"{subject:03d}_{session:02d}_{recording:02d}_{camera}_{flash:02d}.png"
    return (root / f"session{session:02d}" / "multiview" / f"{subject:03d}" /
            f"{recording:02d}" / camera_dir(camera) / name)


def backdrop(frame_hw: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """The studio backdrop, (H, W) float32: 0.30 at the top to 0.18 at the bottom."""
    h, w = frame_hw
    return np.repeat(np.linspace(0.30, 0.18, h, dtype=np.float32)[:, None], w, axis=1)


def placed_box(camera: str, subject: int, session: int, recording: int, seed: int,
               jitter: float) -> tuple[float, float, float]:
    """The box the face of this recording is pasted into: the camera's default box moved by
    up to `jitter` pixels and scaled by up to 2 x jitter / 256 (seeded per recording and
    camera, the same for every flash)."""
    cx, cy, side = CAMERA_BOXES[camera]
    rng = stream("multipie-tree", seed, subject, session, recording, int(camera))
    dx, dy, ds = rng.uniform(-1.0, 1.0, size=3) * jitter
    return cx + dx, cy + dy, side * (1.0 + 2.0 * ds / 256.0)


def render_frames(subject: int, session: int, recording: int, camera: str,
                  flashes: Sequence[int], *, seed: int = 0, jitter: float = 4.0,
                  render_size: int = 96, params=None) -> np.ndarray:
    """The frames of one (subject, session, recording, camera), one per flash: uint8
    (F, 480, 640)."""
    yaw = CAMERA_YAW.get(camera, OVERHEAD_YAW.get(camera))
    if yaw is None:
        raise ValueError(f"camera {camera!r} is not a Multi-PIE camera ({', '.join(ALL_CAMERAS)})")
    if params is None:
        params = sample_identities(subject, seed)
    lights = light_directions(tuple(FLASH_LIGHTS[f] for f in flashes))
    faces = render_heads(params, np.array([subject - 1]), np.array([yaw]), lights,
                         render_size)[0]                                   # (F, r, r)
    left, top, n = box_bounds(placed_box(camera, subject, session, recording, seed, jitter))
    h, w = FRAME_SIZE
    y0, y1, x0, x1 = max(top, 0), min(top + n, h), max(left, 0), min(left + n, w)
    out = np.empty((len(flashes), h, w), dtype=np.uint8)
    base = backdrop()
    for i, face in enumerate(faces):
        big = Image.fromarray(face, mode="F").resize((n, n), Image.Resampling.BICUBIC)
        frame = base.copy()
        frame[y0:y1, x0:x1] = np.asarray(big)[y0 - top:y1 - top, x0 - left:x1 - left]
        out[i] = np.rint(np.clip(frame, 0.0, 1.0) * 255.0)
    return out


def _write_group(job) -> int:
    root, subject, session, recording, camera, flashes, seed, jitter, render_size, skip = job
    paths = [file_path(root, subject, session, recording, camera, f) for f in flashes]
    todo = [i for i, p in enumerate(paths) if not p.exists() and (camera, flashes[i]) not in skip]
    if not todo:
        return 0
    frames = render_frames(subject, session, recording, camera, [flashes[i] for i in todo],
                           seed=seed, jitter=jitter, render_size=render_size,
                           params=sample_identities(subject, seed))
    for frame, i in zip(frames, todo):
        paths[i].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[i].with_name(paths[i].name + ".tmp")
        Image.fromarray(frame, mode="L").save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, paths[i])   # a killed writer never leaves a half file under the name
    return len(todo)


def write_multipie_tree(root: "str | os.PathLike[str]", subjects: int = 4,
                        sessions: Iterable[int] = (1,), recordings: Iterable[int] = (1,),
                        cameras: Optional[Iterable[str]] = None,
                        flashes: Iterable[int] = (0, 5, 7, 9, 16), *, missing: float = 0.0,
                        seed: int = 0, jitter: float = 4.0, render_size: int = 96,
                        workers: int = 1, progress: bool = False) -> dict:
    """Write the tree (see the module docstring) under `root`; files already there are kept,
    so an interrupted call continues. Returns {"files": written now, "total": files in the
    tree, "missing_targets": recordings left without their target}."""
    root = Path(root)
    cameras = tuple(ALL_CAMERAS if cameras is None else (f"{int(c):03d}" for c in cameras))
    flashes = tuple(int(f) for f in flashes)
    bad = [c for c in cameras if c not in CAMERA_BOXES]
    if bad:
        raise ValueError(f"unknown cameras {bad}; Multi-PIE's are {', '.join(ALL_CAMERAS)}")
    bad_f = [f for f in flashes if f not in FLASH_LIGHTS]
    if bad_f:
        raise ValueError(f"unknown flashes {bad_f}; Multi-PIE's are 0-19")
    if int(subjects) < 1 or not 0.0 <= float(missing) < 1.0:
        raise ValueError(f"need subjects >= 1 and 0 <= missing < 1, got {subjects}, {missing}")
    groups = [(s, e, r) for s in range(1, int(subjects) + 1) for e in sessions for r in recordings]
    gone = set()
    if missing > 0:
        pick = stream("multipie-tree-missing", seed).random(len(groups)) < missing
        gone = {g for g, p in zip(groups, pick) if p}
    jobs = [(root, s, e, r, c, flashes, seed, jitter, render_size,
             {("051", 7)} if (s, e, r) in gone else set())
            for (s, e, r) in groups for c in cameras]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="rendering frames", unit="camera")
    written = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            for n in pool.map(_write_group, jobs, chunksize=4):
                written += n
                if bar is not None:
                    bar.update(1)
    else:
        for job in jobs:
            written += _write_group(job)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    total = sum(len(flashes) - sum((j[4], f) in j[-1] for f in flashes) for j in jobs)
    lost = sum(1 for g in gone if "051" in cameras and 7 in flashes)
    return {"files": written, "total": total, "missing_targets": lost}
