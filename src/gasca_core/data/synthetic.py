"""Built-in synthetic faces: a parametric 3D head, ray-cast at many yaws and lights.

This is the library's stand-in for Multi-PIE (licensed, cannot ship). It poses the same
problem the paper solves: map a face seen at some yaw and lighting to the same face seen
frontally under neutral light.

The head
--------
Each identity is a union of ten axis-aligned ellipsoids in *head coordinates* (x toward the
subject's left, which is the image's right at yaw 0; y up; z out of the face; lengths in
image half-widths, the image spanning about [-1, 1]):

    cranium, jaw (together: head shape and chin), neck, two eyeballs (a cap of each sticks
    out of the face: white sclera, dark iris and pupil, dark upper lid), nose, lips, two
    ears, and a hair shell (a slightly larger ellipsoid kept only above the hairline).

Painted on the skin: eyebrows, darker eye sockets, nostrils, the mouth line. Every size,
position and albedo (skin, hair, iris) is sampled per identity (:func:`sample_identities`).

Rendering
---------
An orthographic camera looks down -z at the world; the head is turned by ``yaw`` about the
vertical axis (positive yaw: the face turns toward the image's right, the subject's left).
Rather than moving the head we move the rays into head coordinates (x_head = R^T x_world),
intersect each ray with every ellipsoid in closed form (a quadratic), and keep the nearest
entry point: a z-buffer over analytic surfaces, so features really move in 3D and hide one
another (turned by 60 degrees, the far eye is half hidden and the far ear gone, while the
near ear comes into view). The normal of an ellipsoid, (x/a^2, y/b^2, z/c^2) about its
centre, gives per-pixel Lambertian + ambient shading (attached shadows, no cast shadows):

    I = albedo * (ambient + (1 - ambient) * max(0, n . l))

for each light direction l. Geometry is computed once per (identity, yaw) and shaded for
all lights. Each image is rendered at ``supersample`` times the resolution and box-averaged
(anti-aliasing), then quantized to 8 bits like a photograph, so the cache can hold uint8.

Everything is vectorised NumPy over a chunk of (identity, yaw) images and their pixels;
the default set (337 persons, as many as Multi-PIE, x 9 yaws x 5 lights) renders in about
6 seconds and is then cached (see :func:`cache_dir`).

Lights (``DEFAULT_LIGHTS``, azimuth/elevation in degrees, positive azimuth = from the
image's right): 0 frontal (neutral: the targets), 1 left 35 / up 15, 2 right 35 / up 15,
3 left 70 / up 25, 4 right 70 / up 25.

Expressions
-----------
Opt-in (``SyntheticFacesConfig.expressions``; the dataset ``synthetic-expressions``): every
person also shows the seven basic classes of ``EXPRESSIONS`` (neutral, happy, sad,
surprised, angry, disgusted, fearful), made from six controls (``EXPRESSION_FACES``):

    mouth   curve (corners up for happy, down for sad), a one-sided sneer (disgusted) and
            an opening on a dark interior (surprised: a round "O"; fearful: wide; the lips
            ellipsoid grows taller to hold it)
    brows   angle (inner ends down for angry, up for sad and fearful) and height (raised
            for surprised and fearful, lowered for angry and disgusted)
    eyes    opening: the upper lid lifts and the eyeball comes forward (surprised,
            fearful), or the upper lid drops and the lower one rises (happy, angry,
            disgusted)

Each person shows all of them with one strength in ``EXPRESSIVENESS_RANGE`` (0.6 to 1.2
times the table), drawn from the person's own stream after the face. Controls are painted
in head coordinates (or change the ellipsoids), so they turn with the head like the
other features. Rows of (person, expression) (:func:`expression_params`) go through the
same renderer as persons do; the neutral row renders exactly the expression-free face, and
without expressions the cache key and every pixel are those of the set before expressions
existed. The target keeps the expression: the same person and expression at yaw 0 under
lights[0]; label ``expression`` = index in EXPRESSIONS.

Size: 337 x 7 x 9 x 5 would be 106,155 pairs, 3.5 GB of float32 inputs and targets
before any code of the greedy stages (gasca-64's first code is 8 images large), so the
expression set defaults to 100 people (``DEFAULT_EXPRESSION_IDENTITIES``): 31,500 pairs.
Measured on 2 shared cores at 64 x 64 (``/usr/bin/time -v``): rendered in 13 s with a peak
of 0.31 GB (576 views, each under every light, rendered and quantized at a time), 129 MB
cached; loaded as a PairDataset (0.52 GB inputs + 0.52 GB targets) the process peaks at
1.3 GB, and reading it from the cache takes 1 s. Its first-level codes for gasca-64
(32 x 32 x 32 per image, inputs and targets) would take 8.3 GB for all 31,500 pairs,
inside 24 GB with room.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .grid import file_mode
from ..rng import person_stream
from .pairs import PairDataset

# Bump whenever a change to this file changes any rendered pixel: it is part of the cache key.
RENDERER_VERSION = 1

# As many people as Multi-PIE (337): 15,165 pairs; rendered in about 6 s on 2 cores with
# a peak of 0.25 GB (measured; rendered in blocks, see render_dataset), 62 MB of uint8 in
# the cache.
DEFAULT_IDENTITIES = 337
DEFAULT_YAWS: tuple[float, ...] = (-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0)
# Light directions as (azimuth, elevation) in degrees, in world (camera) coordinates:
# azimuth 0 = from the camera, positive = from the image's right; elevation positive = from
# above. lights[0] is the neutral frontal light of the targets.
DEFAULT_LIGHTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (-35.0, 15.0), (35.0, 15.0), (-70.0, 25.0), (70.0, 25.0),
)

# Facial expressions: the seven basic classes; a pair's "expression" label is its index here.
EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprised", "angry", "disgusted",
                                "fearful")
# What each expression does, at full strength, to six controls (0 everywhere = neutral):
#   mouth_curve  > 0 lifts the mouth corners (a smile), < 0 drops them;
#   mouth_tilt   > 0 lifts one half of the mouth (the subject's left, the image's right at
#                yaw 0): a sneer;
#   mouth_open   > 0 parts the lips on a dark mouth interior (tall and round when large);
#   brow_angle   > 0 lifts the inner ends of the brows (sad, fearful), < 0 lowers them (angry);
#   brow_raise   > 0 lifts the whole brow, < 0 lowers it;
#   eye_open     > 0 lifts the upper lid off the iris and brings the eyeball forward, so
#                more of it shows (wide eyes), < 0 lowers the upper lid and lifts the
#                lower one (narrowed eyes).
# Their sizes in head units are in _paint and build_primitives (EXPRESSION_SCALE).
EXPRESSION_CONTROLS: tuple[str, ...] = ("mouth_curve", "mouth_tilt", "mouth_open",
                                        "brow_angle", "brow_raise", "eye_open")
EXPRESSION_FACES: dict[str, tuple[float, ...]] = {
    #             curve  tilt  open  angle  raise   eye
    "neutral":   (0.0,  0.0,  0.0,   0.0,   0.0,   0.0),
    "happy":     (1.0,  0.0,  0.2,   0.0,   0.1,  -0.6),
    "sad":       (-0.9, 0.0,  0.0,   1.0,   0.0,  -0.3),
    "surprised": (0.0,  0.0,  1.0,   0.2,   1.0,   1.0),
    "angry":     (-0.4, 0.0,  0.0,  -1.0,  -0.4,  -0.5),
    "disgusted": (-0.5, 1.0,  0.15, -0.5,  -0.6,  -0.7),
    "fearful":   (-0.4, 0.0,  0.6,   0.9,   0.7,   0.8),
}
# Head-unit size of one unit of each control (an image pixel at 64 x 64 is 0.0275 units):
# mouth corners rise by 0.045, a sneer lifts one end by 0.035, the mouth opens to a
# half-height of 0.05, the inner brow ends move by 0.035 and the whole brow by 0.045.
EXPRESSION_SCALE = {"mouth_curve": 0.045, "mouth_tilt": 0.035, "mouth_open": 0.05,
                    "brow_angle": 0.035, "brow_raise": 0.045}
# How strongly person i shows every expression: one factor drawn uniformly from this range
# (from the person's own stream, after the face; see sample_expressiveness).
EXPRESSIVENESS_RANGE = (0.6, 1.2)
# Part of the cache key of data sets with expressions only (the expression-free data set's
# key and pixels never change with it): bump whenever the expressions' pixels change.
EXPRESSIONS_VERSION = 1
# The expression data set's default size: 100 people x 7 expressions x 9 yaws x 5 lights =
# 31,500 pairs (see load_synthetic_expressions for why, and what it costs).
DEFAULT_EXPRESSION_IDENTITIES = 100

# Primitive indices, the order of the K = 10 ellipsoids.
CRANIUM, JAW, NECK, EYE_L, EYE_R, NOSE, LIPS, EAR_L, EAR_R, HAIR = range(10)
N_PRIMITIVES = 10

# The camera: an orthographic view of the square [-VIEW_HALF_SIZE, VIEW_HALF_SIZE]^2 around
# (0, VIEW_CENTER_Y), looking down -z from the plane z = Z_CAMERA (in front of every head).
VIEW_HALF_SIZE = 0.88
VIEW_CENTER_Y = 0.06
Z_CAMERA = 3.0


@dataclass(frozen=True)
class SyntheticFacesConfig:
    """Every parameter that changes the rendered data set (all part of the cache key).

    n_identities: people; each is rendered at every yaw under every light.
    image_size: output height = width in pixels.
    yaws: head yaws in degrees; must contain 0 (the target pose).
    lights: (azimuth, elevation) in degrees; lights[0] is the neutral light of the targets.
    seed: identity parameters of person i depend only on (seed, i), so a smaller data set
        is a prefix of a bigger one.
    supersample: rays per pixel along each axis (anti-aliasing).
    background: grey level of the empty background, in [0, 1].
    ambient: share of light that reaches every surface, in [0, 1].
    expressions: names from EXPRESSIONS, each rendered for every person, yaw and light;
        () (the default) is the expression-free data set, every face neutral. True means
        all seven; a comma-separated string is split. With none, the cache key and every
        pixel are those of the data set before expressions existed.
    """

    n_identities: int = DEFAULT_IDENTITIES
    image_size: int = 64
    yaws: tuple[float, ...] = DEFAULT_YAWS
    lights: tuple[tuple[float, float], ...] = DEFAULT_LIGHTS
    seed: int = 0
    supersample: int = 2
    background: float = 0.25
    ambient: float = 0.3
    expressions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "expressions", _expression_names(self.expressions))
        # Normalise sequences to tuples of floats so that equal configs hash equally.
        object.__setattr__(self, "yaws", tuple(float(y) for y in self.yaws))
        object.__setattr__(self, "lights",
                           tuple((float(a), float(e)) for a, e in self.lights))
        if int(self.n_identities) < 1:
            raise ValueError(f"n_identities must be >= 1, got {self.n_identities}")
        if int(self.image_size) < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if int(self.supersample) < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if not self.yaws or 0.0 not in self.yaws:
            raise ValueError(f"yaws must contain 0 (the target pose), got {self.yaws}")
        if any(abs(y) > 90.0 for y in self.yaws):
            raise ValueError(f"yaws must lie in [-90, 90] degrees, got {self.yaws}")
        if not self.lights:
            raise ValueError("lights must hold at least one (azimuth, elevation) pair")
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"background must lie in [0, 1], got {self.background}")
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError(f"ambient must lie in [0, 1], got {self.ambient}")

    def to_json(self) -> str:
        """Every field and the renderer version, as canonical JSON. Without expressions the
        field is left out, so the expression-free data set keeps the key it always had."""
        fields = dataclasses.asdict(self)
        if self.expressions:
            fields["expressions_version"] = EXPRESSIONS_VERSION
        else:
            del fields["expressions"]
        return json.dumps({"renderer": RENDERER_VERSION, **fields}, sort_keys=True)

    def cache_key(self) -> str:
        """A short hash of to_json(): changes with any field or the renderer version."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _expression_names(value) -> tuple[str, ...]:
    """The expressions option as a tuple of names from EXPRESSIONS (see the config)."""
    if value is True:
        return EXPRESSIONS
    if value is None or value is False:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(str(v) for v in value)
    unknown = [v for v in names if v not in EXPRESSIONS]
    if unknown:
        raise ValueError(f"unknown expression(s) {', '.join(map(repr, unknown))}; expected "
                         f"names from {', '.join(EXPRESSIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"expressions must not repeat a name, got {names}")
    return names


def light_directions(lights: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Unit vectors toward each light, (L, 3), from (azimuth, elevation) in degrees."""
    az = np.radians([a for a, _ in lights])
    el = np.radians([e for _, e in lights])
    return np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], axis=1)


# The face of a person: name -> (low, high), drawn uniformly, in this order.
IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "head_w": (0.50, 0.60), "head_h": (0.68, 0.78), "head_d": (0.60, 0.70),
    "head_y": (0.10, 0.18),
    "jaw_w": (0.72, 0.90), "jaw_h": (0.42, 0.52), "jaw_d": (0.78, 0.90),
    "jaw_drop": (0.30, 0.38), "jaw_z": (0.00, 0.06),
    "skin": (0.50, 0.88), "hair": (0.05, 0.65),
    "hairline": (0.40, 0.62), "hair_back": (-0.30, 0.50), "hair_thick": (0.02, 0.06),
    "eye_x": (0.17, 0.23), "eye_y": (0.04, 0.12), "eye_r": (0.060, 0.075),
    "iris": (0.08, 0.45), "iris_deg": (36.0, 46.0),
    "brow_dy": (0.10, 0.14), "brow_w": (0.09, 0.13), "brow_t": (0.025, 0.045),
    "nose_drop": (0.13, 0.19), "nose_h": (0.12, 0.17), "nose_w": (0.055, 0.080),
    "nose_d": (0.12, 0.18),
    "mouth_gap": (0.08, 0.13), "mouth_w": (0.11, 0.16), "mouth_h": (0.030, 0.045),
    "lip": (0.55, 0.78), "ear_h": (0.11, 0.15),
}


def sample_identities(n: int, seed: int) -> dict[str, np.ndarray]:
    """Draw the identity parameters of persons 0..n-1: a dict of float64 arrays, each (n,).

    Person i draws from its own stream, gasca_core.rng.person_stream(seed, i)
    (= SeedSequence(seed).spawn(n)[i]), so its face does not depend on n. Lengths are in image half-widths (the image spans [-1, 1]).
    """
    ranges = IDENTITY_RANGES
    draws = np.empty((int(n), len(ranges)))
    lows = np.array([lo for lo, _ in ranges.values()])
    highs = np.array([hi for _, hi in ranges.values()])
    for i in range(int(n)):
        draws[i] = person_stream(seed, i).uniform(lows, highs)
    return {name: draws[:, j] for j, name in enumerate(ranges)}


def sample_expressiveness(n: int, seed: int) -> np.ndarray:
    """How strongly persons 0..n-1 show their expressions: (n,) factors in
    EXPRESSIVENESS_RANGE, drawn from each person's own stream right after the face (so the
    face is unchanged, and the factor, like the face, does not depend on n)."""
    lo, hi = EXPRESSIVENESS_RANGE
    out = np.empty(int(n))
    for i in range(int(n)):
        rng = person_stream(seed, i)
        rng.uniform(size=len(IDENTITY_RANGES))   # the face's draws (sample_identities)
        out[i] = rng.uniform(lo, hi)
    return out


def expression_params(params: dict[str, np.ndarray], expressions: tuple[str, ...],
                      expressiveness: np.ndarray) -> dict[str, np.ndarray]:
    """Parameters of every (person, expression), row i * E + e for person i showing
    expressions[e]: the person's face plus the controls (EXPRESSION_CONTROLS) of that
    expression times the person's expressiveness. The renderers take these rows as they
    take persons; a row of the neutral expression renders exactly the expression-free face.
    """
    E = len(expressions)
    rows = {name: np.repeat(v, E) for name, v in params.items()}
    table = np.array([EXPRESSION_FACES[name] for name in expressions])     # (E, controls)
    strength = np.repeat(np.asarray(expressiveness, dtype=np.float64), E)
    for j, control in enumerate(EXPRESSION_CONTROLS):
        rows[control] = np.tile(table[:, j], len(expressiveness)) * strength
    return rows


def _front_z(cx, cy, cz, a, b, c, x, y):
    """z of the front (+z) surface of an ellipsoid at (x, y); 0 where (x, y) misses it."""
    s = 1.0 - ((x - cx) / a) ** 2 - ((y - cy) / b) ** 2
    return cz + c * np.sqrt(np.clip(s, 0.0, None))


def build_primitives(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoids of each head: centers (n, K, 3), semi-axes (n, K, 3), albedo (n, K)."""
    n = p["head_w"].shape[0]
    centers = np.zeros((n, N_PRIMITIVES, 3))
    axes = np.ones((n, N_PRIMITIVES, 3))
    albedo = np.zeros((n, N_PRIMITIVES))
    a, b, c, hy = p["head_w"], p["head_h"], p["head_d"], p["head_y"]

    def put(k, center, axis, alb):
        centers[:, k] = np.stack(center, axis=-1)
        axes[:, k] = np.stack(axis, axis=-1)
        albedo[:, k] = alb

    zero = np.zeros(n)
    skin = p["skin"]
    jaw_y = hy - p["jaw_drop"]
    jaw = (p["jaw_w"] * a, p["jaw_h"], p["jaw_d"] * c)
    put(CRANIUM, (zero, hy, zero), (a, b, c), skin)
    put(JAW, (zero, jaw_y, p["jaw_z"]), jaw, skin)
    put(NECK, (zero, jaw_y - 0.55, -0.12 + zero), (0.62 * jaw[0], 0.55 + zero, 0.30 + zero),
        0.8 * skin)

    def face_z(x, y):  # front surface of cranium-union-jaw
        return np.maximum(_front_z(0, hy, 0, a, b, c, x, y),
                          _front_z(0, jaw_y, p["jaw_z"], *jaw, x, y))

    # Eyeballs: sunk along the cranium's normal so that a cap of radius ~0.87 r shows.
    ex, ey, er = p["eye_x"], p["eye_y"], p["eye_r"]
    sink = 0.5 + zero
    if "eye_open" in p:  # wide eyes: the ball stands further out, a larger cap shows
        sink = sink - 0.2 * np.maximum(p["eye_open"], 0)
    for k, side in ((EYE_L, -1.0), (EYE_R, 1.0)):
        x = side * ex
        z = face_z(x, ey)
        normal = np.stack([x / a**2, (ey - hy) / b**2, z / c**2], axis=-1)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        center = np.stack([x, ey, z], axis=-1) - (sink * er)[:, None] * normal
        put(k, tuple(center.T), (er, er, er), 0.9 + zero)

    ny = ey - p["nose_drop"]
    put(NOSE, (zero, ny, face_z(0, ny) - 0.3 * p["nose_d"]),
        (p["nose_w"], p["nose_h"], p["nose_d"]), np.minimum(1.0, 1.05 * skin))
    my = ny - p["nose_h"] - p["mouth_gap"] + 0.5 * p["mouth_h"]
    lips_h = p["mouth_h"]
    if "mouth_open" in p:  # an open mouth: the lips part around the interior (see _paint)
        lips_h = lips_h + 0.9 * EXPRESSION_SCALE["mouth_open"] * np.maximum(p["mouth_open"], 0)
    put(LIPS, (zero, my, face_z(0, my) - 0.04), (p["mouth_w"], lips_h, 0.07 + zero),
        p["lip"] * skin)
    for k, side in ((EAR_L, -1.0), (EAR_R, 1.0)):
        put(k, (side * 0.96 * a, ey - 0.06, -0.06 + zero), (0.05 + zero, p["ear_h"], 0.09 + zero),
            0.92 * skin)
    t = p["hair_thick"]
    put(HAIR, (zero, hy + 0.5 * t, -0.5 * t), (a + t, b + t, c + 0.5 * t), p["hair"])
    return centers, axes, albedo


def _yaw_matrices(yaw_deg: np.ndarray) -> np.ndarray:
    """Rotations about the vertical axis, (n, 3, 3): world = R @ head. +z turns toward +x."""
    t = np.radians(yaw_deg)
    cos, sin = np.cos(t), np.sin(t)
    R = np.zeros((len(t), 3, 3))
    R[:, 0, 0], R[:, 0, 2] = cos, sin
    R[:, 1, 1] = 1.0
    R[:, 2, 0], R[:, 2, 2] = -sin, cos
    return R


def _hairline(p: dict[str, np.ndarray], px, pz, idx):
    """Height above which hair grows, at head-surface points (px, pz) of heads idx: (M,).

    Highest on the forehead (azimuth 0), lowest at the back of the head.
    """
    front = (p["head_y"] + p["hairline"] * p["head_h"])[idx]
    back = (p["head_y"] - p["hair_back"] * p["head_h"])[idx]
    forwardness = ((1.0 + pz / np.sqrt(px**2 + pz**2 + 1e-12)) / 2.0) ** 2
    return back + (front - back) * forwardness


RENDER_CHUNK = 9  # (identity, yaw) images ray-cast together by render_heads


def render_heads(params: dict[str, np.ndarray], identity: np.ndarray, yaw_deg: np.ndarray,
                 lights: np.ndarray, image_size: int, supersample: int = 2,
                 background: float = 0.25, ambient: float = 0.3,
                 chunk: int = RENDER_CHUNK) -> np.ndarray:
    """Render heads ``identity`` (B,) at ``yaw_deg`` (B,) under ``lights`` (L, 3).
    (``identity`` indexes the rows of params: persons, or (person, expression) rows made by
    expression_params.)

    Returns float32 images (B, L, image_size, image_size) in [0, 1]; row 0 is the top.
    """
    identity = np.asarray(identity, dtype=np.int64)
    yaw_deg = np.asarray(yaw_deg, dtype=np.float64)
    lights = np.asarray(lights, dtype=np.float64)
    out = np.empty((len(identity), len(lights), image_size, image_size), dtype=np.float32)
    centers, axes, albedo = build_primitives(params)
    for start in range(0, len(identity), chunk):
        sl = slice(start, start + chunk)
        out[sl] = _render_chunk(params, centers, axes, albedo, identity[sl], yaw_deg[sl],
                                lights, image_size, supersample, background, ambient)
    return out


def render_parts(params: dict[str, np.ndarray], identity: np.ndarray, yaw_deg: np.ndarray,
                 image_size: int, supersample: int = 1) -> np.ndarray:
    """Which part (CRANIUM, ..., HAIR; -1 = background) each pixel sees after the z-buffer:
    int8 (B, image_size * supersample, image_size * supersample). For tests and teaching:
    shows what is visible, e.g. that the far eye hides behind the nose at large yaw."""
    identity = np.asarray(identity, dtype=np.int64)
    centers, axes, albedo = build_primitives(params)
    return _render_chunk(params, centers, axes, albedo, identity,
                         np.asarray(yaw_deg, dtype=np.float64), np.zeros((1, 3)), image_size,
                         supersample, 0.0, 0.0, parts=True)


def _render_chunk(params, centers, axes, albedo, idx, yaw_deg, lights, image_size,
                  supersample, background, ambient, parts=False) -> np.ndarray:
    f = np.float32
    B, S = len(idx), image_size * supersample
    # Pixel centres on the image plane, a square window around the head; v grows upward.
    grid = ((np.arange(S) + 0.5) * (2.0 / S) - 1.0) * VIEW_HALF_SIZE
    u, v = grid, VIEW_CENTER_Y - grid                                  # (S,) each
    # A ray leaves the plane z = Z_CAMERA at (u, v) and runs along -z. In head coordinates
    # (x_head = R^T x_world, R the yaw rotation) the point at depth t along it is
    #   u r_x + v e_y + (Z_CAMERA - t) r_z,  r_x = R^T e_x = (cos, 0, sin),
    #                                        r_z = R^T e_z = (-sin, 0, cos).
    yaw = np.radians(yaw_deg)
    cos, sin = np.cos(yaw), np.sin(yaw)                                # (B,)
    zero = np.zeros(B)
    r_x = np.stack([cos, zero, sin], axis=-1)                          # (B, 3)
    r_z = np.stack([-sin, zero, cos], axis=-1)
    e_y = np.array([0.0, 1.0, 0.0])

    def points(uk, vk, t, cb, sb):
        """Head-coordinate points (..., 3) at depth t on the rays through (uk, vk)."""
        depth = Z_CAMERA - t
        return uk * cb - depth * sb, vk + 0.0 * t, uk * sb + depth * cb

    c, ax = centers[idx], axes[idx]                                    # (B, K, 3)
    # A z-buffer over the ellipsoids: nearest depth so far and which part it belongs to.
    t_min = np.full((B, S, S), np.inf, dtype=f)
    kind = np.zeros((B, S, S), dtype=np.int8)
    t_skin = {}  # full depth maps of cranium and jaw, for blending their normals
    for k in range(N_PRIMITIVES):
        ck, axk = c[:, k], ax[:, k]                                    # (B, 3)
        # Only rays inside the ellipsoid's projected bounding box (over the chunk) can hit:
        # small parts (eyes, nose, lips, ears) cost a few hundred rays, not S^2.
        x_mid = cos * ck[:, 0] + sin * ck[:, 2]                        # world x of centre
        half_w = np.sqrt((cos * axk[:, 0]) ** 2 + (sin * axk[:, 2]) ** 2)
        cols = np.flatnonzero((u >= (x_mid - half_w).min()) & (u <= (x_mid + half_w).max()))
        rows = np.flatnonzero((v >= (ck[:, 1] - axk[:, 1]).min())
                              & (v <= (ck[:, 1] + axk[:, 1]).max()))
        if len(cols) == 0 or len(rows) == 0:
            continue
        cs, rs = slice(cols[0], cols[-1] + 1), slice(rows[0], rows[-1] + 1)
        # In the frame where ellipsoid k is the unit sphere the ray starts at
        # u a + v b + g and runs along dd; |start + t dd|^2 = 1 is a quadratic in t:
        #   A t^2 + 2 h t + C = 0,  h = start . dd,  C = |start|^2 - 1.
        # h and C split into a part that depends on the column (u) only and one that
        # depends on the row (v) only, because a . b = 0 (r_x has no vertical part): so
        # each costs O(S) per image, and only the discriminant is O(S^2).
        a, b = r_x / axk, e_y / axk
        g = (Z_CAMERA * r_z - ck) / axk
        dd = -r_z / axk
        uk, vk = u[cs], v[rs]

        def dot(x, y):
            return (x * y).sum(-1)[:, None]

        A = dot(dd, dd)[:, :, None].astype(f)                          # (B, 1, 1)
        h_u = (uk * dot(a, dd) + dot(g, dd)).astype(f)                 # (B, S_u)
        h_v = (vk * dot(b, dd)).astype(f)                              # (B, S_v)
        C_u = (uk**2 * dot(a, a) + 2 * uk * dot(a, g) + dot(g, g) - 1.0).astype(f)
        C_v = (vk**2 * dot(b, b) + 2 * vk * dot(b, g)).astype(f)
        h = h_v[:, :, None] + h_u[:, None, :]                          # (B, S_v, S_u)
        disc = h * h - A * (C_v[:, :, None] + C_u[:, None, :])
        miss = disc <= 0.0
        np.sqrt(np.maximum(disc, 0.0, out=disc), out=disc)
        t = (-h - disc) / A                                            # nearest entry
        t[miss] = np.inf
        if k == HAIR:  # keep the hair shell only above the hairline
            px, py, pz = points(uk[None, None, :], vk[None, :, None], np.where(miss, 0, t),
                                cos[:, None, None], sin[:, None, None])
            t[py <= _hairline(params, px, pz, idx[:, None, None])] = np.inf
        if k in (CRANIUM, JAW):
            t_skin[k] = np.full((B, S, S), np.inf, dtype=f)
            t_skin[k][:, rs, cs] = t
        nearer = t < t_min[:, rs, cs]
        t_min[:, rs, cs][nearer] = t[nearer]
        kind[:, rs, cs][nearer] = k

    if parts:  # which ellipsoid each ray sees, -1 for the background: (B, S, S)
        return np.where(np.isfinite(t_min), kind, -1).astype(np.int8)

    # From here on only the M rays that hit a head are touched: flat arrays (M,), one per
    # coordinate (x, y, z kept apart: contiguous vectors are much faster than (M, 3)).
    P = S * S
    flat = np.flatnonzero(np.isfinite(t_min).ravel())
    bi, pix = flat // P, flat % P
    row, col = pix // S, pix % S
    kind, t = kind.ravel()[flat].astype(np.intp), t_min.ravel()[flat]
    cb, sb = cos.astype(f)[bi], sin.astype(f)[bi]
    uk, vk = u.astype(f)[col], v.astype(f)[row]
    c_all = c.astype(f).reshape(-1, 3).T.copy()                        # (3, B*K)
    ax_all = ax.astype(f).reshape(-1, 3).T.copy()

    def surface_normal(sel, k, t_sel):
        """Unit normals (3 arrays) of ellipsoid k (per ray) at depth t_sel, rays sel."""
        prim = bi[sel] * N_PRIMITIVES + k
        q = points(uk[sel], vk[sel], t_sel, cb[sel], sb[sel])
        n = [(q[i] - c_all[i][prim]) / ax_all[i][prim] ** 2 for i in range(3)]
        norm = np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2) + 1e-12
        return [x / norm for x in n]

    everything = slice(None)
    px, py, pz = points(uk, vk, t, cb, sb)
    nx, ny, nz = surface_normal(everything, kind, t)
    # Cranium and jaw meet in a crease; blend their normals near it (the weight falls off
    # with the depth gap between the two surfaces) so that the union reads as one head.
    on_cranium = kind == CRANIUM
    t_other = np.where(on_cranium, t_skin[JAW].ravel()[flat], t_skin[CRANIUM].ravel()[flat])
    near = np.flatnonzero(((kind == CRANIUM) | (kind == JAW)) & (t_other - t < 0.3))
    w = np.exp(-(t_other[near] - t[near]) / 0.04)
    n_other = surface_normal(near, np.where(on_cranium[near], JAW, CRANIUM), t_other[near])
    blended = [n[near] + w * o for n, o in zip((nx, ny, nz), n_other)]
    norm = np.sqrt(blended[0] ** 2 + blended[1] ** 2 + blended[2] ** 2) + 1e-12
    nx[near], ny[near], nz[near] = (x / norm for x in blended)

    alb = albedo.astype(f)[idx].ravel()[bi * N_PRIMITIVES + kind]      # (M,)
    prim = bi * N_PRIMITIVES + kind
    _paint(params, idx, bi, kind, px, py, pz,
           [c_all[i][prim] for i in range(3)], alb)

    # Normals to world coordinates (n_world = R n), then Lambert + ambient for each light.
    wx, wz = cb * nx + sb * nz, -sb * nx + cb * nz
    L = len(lights)
    shade = np.full((L, B * P), background, dtype=f)
    for j, (lx, ly, lz) in enumerate(lights.astype(f)):
        lambert = np.maximum(wx * lx + ny * ly + wz * lz, 0.0)
        shade[j, flat] = alb * (ambient + (1.0 - ambient) * lambert)
    # Box-average supersample x supersample blocks: (L, B, S, S) -> (B, L, H, W), as a sum
    # of strided views (much faster than .mean over inner axes).
    shade = shade.reshape(L, B, S, S)
    img = np.zeros((L, B, image_size, image_size), dtype=f)
    for i in range(supersample):
        for j in range(supersample):
            img += shade[:, :, i::supersample, j::supersample]
    img *= 1.0 / supersample**2
    return np.clip(img.transpose(1, 0, 2, 3), 0.0, 1.0)


def _paint(params, idx, bi, kind, px, py, pz, c_hit, alb) -> None:
    """Surface details on top of each part's base albedo, in place on alb (M,).

    M hit points (px, py, pz) in head coordinates, of image bi (person idx[bi]) on part
    kind; c_hit: the 3 coordinates of that part's centre. Each detail only visits the
    points of its part.
    """
    f = np.float32
    expressive = "mouth_curve" in params   # rows of (person, expression): expression_params

    def person(name, sel):  # a parameter of the person seen by rays sel
        return params[name].astype(f)[idx][bi[sel]]

    # Skin: hair painted on the cranium too (so a thin shell never leaves a bald seam),
    # darker eye sockets, arched eyebrows the colour of darkened hair.
    sk = np.flatnonzero((kind == CRANIUM) | (kind == JAW))
    x, y, z = px[sk], py[sk], pz[sk]
    hair = person("hair", sk)
    on_hair = y > _hairline(params, x, z, idx[bi[sk]]) - 0.01
    a = np.where(on_hair, hair, alb[sk])
    face = (z > 0.0) & ~on_hair
    ex, ey, er = person("eye_x", sk), person("eye_y", sk), person("eye_r", sk)
    brow_dy, brow_w, brow_t = person("brow_dy", sk), person("brow_w", sk), person("brow_t", sk)
    for side in (-1.0, 1.0):
        dx = x - side * ex
        r2 = (dx**2 + (y - ey) ** 2) / (1.6 * er) ** 2
        a = np.where(face, a * (1.0 - 0.3 * np.exp(-r2)), a)
        brow_y = ey + brow_dy - 1.2 * dx**2 - 0.15 * side * dx
        if expressive:  # raise the brow, and tilt it about its middle (-side * dx > 0 inside)
            brow_y = brow_y + (EXPRESSION_SCALE["brow_raise"] * person("brow_raise", sk)
                               + EXPRESSION_SCALE["brow_angle"] * person("brow_angle", sk)
                               * (-side * dx) / brow_w)
        brow = face & (np.abs(dx) < brow_w) & (np.abs(y - brow_y) < brow_t / 2)
        a = np.where(brow, np.minimum(0.6 * hair, 0.25), a)
    if expressive:  # the mouth line, where a curve or an opening carries it off the lips
        mouth = _mouth_paint(person, sk, x, y, on_skin=True) & face
        a = np.where(mouth, 0.08, a)
    alb[sk] = a
    # Eyes: the angle from the eyeball's forward axis picks pupil, iris or sclera; the top
    # of the ball is the dark upper lid.
    ey_ = np.flatnonzero((kind == EYE_L) | (kind == EYE_R))
    r = person("eye_r", ey_)
    qy, qz = (py[ey_] - c_hit[1][ey_]) / r, (pz[ey_] - c_hit[2][ey_]) / r
    a = np.where(qz > np.cos(np.radians(person("iris_deg", ey_))), person("iris", ey_), 0.9)
    a = np.where(qz > 0.97, 0.04, a)
    if expressive:  # eye_open > 0 lifts the upper lid; < 0 lowers it and lifts the lower
        eye_open = person("eye_open", ey_)
        upper = 0.55 + np.where(eye_open > 0, 0.35, 0.75) * eye_open
        lower = -0.9 - 0.6 * np.minimum(eye_open, 0)
        a = np.where((eye_open < 0) & (qy < lower), 0.9 * person("skin", ey_), a)
        alb[ey_] = np.where(qy > upper, 0.08, a)
    else:
        alb[ey_] = np.where(qy > 0.55, 0.08, a)
    # Nostrils: two dark ellipses on the underside of the nose.
    no = np.flatnonzero(kind == NOSE)
    nw, nh = person("nose_w", no), person("nose_h", no)
    nose_y = person("eye_y", no) - person("nose_drop", no)
    nostril = ((np.abs(px[no]) - 0.45 * nw) / (0.3 * nw)) ** 2 + \
              ((py[no] - nose_y + 0.75 * nh) / (0.22 * nh)) ** 2 < 1.0
    alb[no[nostril]] = 0.1
    # Mouth: a dark line across the middle of the lips.
    li = np.flatnonzero(kind == LIPS)
    mh = person("mouth_h", li)
    mouth_y = (person("eye_y", li) - person("nose_drop", li) - person("nose_h", li)
               - person("mouth_gap", li) + 0.5 * mh)
    if expressive:
        alb[li[_mouth_paint(person, li, px[li], py[li])]] = 0.08
    else:
        alb[li[np.abs(py[li] - mouth_y) < 0.28 * mh]] = 0.08


def _mouth_paint(person, sel, x, y, on_skin=False):
    """Which points (x, y) (head coordinates, rays sel) are dark mouth, for rows with
    expression controls: the mouth line, bent by mouth_curve (corners up or down, the
    middle a little the other way) and mouth_tilt (its +x half only: a sneer), and with
    mouth_open > 0 a dark interior, an ellipse that narrows as it grows taller (a round
    "O" when surprised, wide when fearful).
    On the skin (on_skin) only a bent or open mouth is painted: with every control 0 this
    is the neutral mouth line, on the lips only."""
    mw, mh = person("mouth_w", sel), person("mouth_h", sel)
    mouth_y = (person("eye_y", sel) - person("nose_drop", sel) - person("nose_h", sel)
               - person("mouth_gap", sel) + 0.5 * mh)
    curve, open_ = person("mouth_curve", sel), person("mouth_open", sel)
    u = x / mw                                     # -1 .. 1 across the mouth
    bend = EXPRESSION_SCALE["mouth_curve"] * curve * (u * u - 0.3)
    tilt = person("mouth_tilt", sel)
    bend = bend + EXPRESSION_SCALE["mouth_tilt"] * tilt * np.maximum(u, 0) ** 2
    line = (np.abs(y - mouth_y - bend) < 0.28 * mh) & (np.abs(u) < 1.05)
    if on_skin:  # the neutral mouth line lies on the lips alone
        line &= (curve != 0) | (tilt != 0) | (open_ != 0)
    half_h = EXPRESSION_SCALE["mouth_open"] * np.maximum(open_, 0)
    half_w = mw * (0.85 - 0.3 * np.maximum(open_, 0))
    inside = (u * mw / half_w) ** 2 + ((y - mouth_y) / np.maximum(half_h, 1e-6)) ** 2 < 1.0
    return line | ((open_ > 0) & inside)


def render_dataset(config: SyntheticFacesConfig,
                   block: int = 64 * RENDER_CHUNK) -> np.ndarray:
    """Render every identity (showing every expression, if any) at every yaw under every
    light.

    Returns uint8 images (n_identities, n_yaws, n_lights, H, W), or with expressions
    (n_identities, n_expressions, n_yaws, n_lights, H, W); value / 255 is the image.
    Rendered `block` (identity, yaw) images at a time and quantized at once, so the float
    images of only one block are ever held (block is a multiple of render_heads' chunk, so
    the chunks, and the pixels, are those of one call over everything).
    """
    n, Y, L, S = (config.n_identities, len(config.yaws), len(config.lights),
                  config.image_size)
    params = sample_identities(n, config.seed)
    shape: tuple[int, ...] = (n, Y, L, S, S)
    rows = n
    if config.expressions:
        E = len(config.expressions)
        params = expression_params(params, config.expressions,
                                   sample_expressiveness(n, config.seed))
        shape, rows = (n, E, Y, L, S, S), n * E
    row = np.repeat(np.arange(rows), Y)
    yaw = np.tile(np.array(config.yaws), rows)
    lights = light_directions(config.lights)
    out = np.empty((len(row), L, S, S), dtype=np.uint8)
    for start in range(0, len(row), block):
        sl = slice(start, start + block)
        images = render_heads(params, row[sl], yaw[sl], lights, S, config.supersample,
                              config.background, config.ambient)
        out[sl] = np.rint(images * 255.0).astype(np.uint8)
    return out.reshape(shape)


# ------------------------------------------------------------------- dataset and cache
def cache_dir() -> Path:
    """Where generated data sets are kept: $GASCA_CACHE, else ~/.cache/gasca_core."""
    env = os.environ.get("GASCA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gasca_core"


def _read_cache(path: Path, config: SyntheticFacesConfig) -> Optional[np.ndarray]:
    """The cached images for config, or None if absent or unusable (then re-rendered)."""
    if not path.is_file():
        return None
    expected = (config.n_identities,
                *((len(config.expressions),) if config.expressions else ()),
                len(config.yaws), len(config.lights), config.image_size, config.image_size)
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            stored = str(z["config"])
    except Exception as e:  # a broken or foreign file: say so, then render afresh
        warnings.warn(f"synthetic-faces cache {path} is unreadable ({e}); rendering again")
        return None
    if images.shape != expected or images.dtype != np.uint8 or \
            stored != config.to_json():
        warnings.warn(f"synthetic-faces cache {path} does not match its key; rendering again")
        return None
    return images


def write_cache_npz(path: Path, what: str, arrays: dict) -> None:
    """Write a cache file of `arrays` (np.savez) atomically: temp file, flush, rename, so a
    reader sees the old file or the whole new one.  A cache that cannot be written is not
    an error: a warning says so (naming `what`) and the run goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        warnings.warn(f"cannot write the {what} cache in {path.parent} ({e}); set GASCA_CACHE "
                      f"to a writable directory to keep it")
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp's 0o600 would hide the cache from others
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"cannot write the {what} cache {path} ({e})")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_cache(path: Path, images: np.ndarray, config: SyntheticFacesConfig) -> None:
    write_cache_npz(path, "synthetic-faces", {"images": images, "config": np.array(config.to_json())})


def synthetic_faces_images(config: SyntheticFacesConfig, cache: bool = True) -> np.ndarray:
    """uint8 images (n_identities, [n_expressions,] n_yaws, n_lights, H, W) for config,
    rendered or cached."""
    path = cache_dir() / f"synthetic-faces-{config.cache_key()}.npz"
    images = _read_cache(path, config) if cache else None
    if images is None:
        images = render_dataset(config)
        if cache:
            _write_cache(path, images, config)
    return images


def load_synthetic_faces(data: None = None, image_size: Optional[int] = 64, *,
                         n_identities: int = DEFAULT_IDENTITIES, data_seed: int = 0,
                         yaws: tuple[float, ...] = DEFAULT_YAWS,
                         lights: tuple[tuple[float, float], ...] = DEFAULT_LIGHTS,
                         supersample: int = 2, background: float = 0.25, ambient: float = 0.3,
                         expressions=(), cache: bool = True) -> PairDataset:
    """The built-in data set: every identity at every yaw under every light -> its frontal,
    neutrally lit image.

    N = n_identities * len(yaws) * len(lights) pairs, ordered identity-major, then yaw, then
    light. Input: the face at that yaw and light; target: the same face at yaw 0 under
    lights[0]. Labels: "identity" (int64), "yaw" (float32, degrees, positive = face turned
    toward the image's right), "light" (int64, index into lights; 0 = neutral frontal).
    Images are rendered once per configuration and cached (see cache_dir); data_seed picks
    the persons, image_size the render resolution (square; None means 64).

    expressions (names from EXPRESSIONS, or True for all seven; default none): every person
    also shows each of them, N = n_identities * len(expressions) * len(yaws) * len(lights),
    ordered identity, expression, yaw, light; the target keeps the expression (same person,
    same expression, yaw 0, lights[0]) and the label "expression" (int64) is its index in
    EXPRESSIONS (so 1 is always "happy", whichever subset is rendered).
    """
    if data is not None:
        raise ValueError(f"--data {str(data)!r} is not used by the built-in synthetic-faces "
                         f"dataset; to load your own pairs choose --dataset folder, multipie "
                         f"or npz")
    if image_size is not None and not isinstance(image_size, (int, np.integer)):
        hw = tuple(image_size)
        if len(hw) != 2 or hw[0] != hw[1]:
            raise ValueError(f"image_size for synthetic-faces must be one int (square), "
                             f"got {image_size!r}")
        image_size = hw[0]
    config = SyntheticFacesConfig(n_identities=int(n_identities),
                                  image_size=int(image_size or 64), yaws=tuple(yaws),
                                  lights=tuple(lights), seed=int(data_seed),
                                  supersample=int(supersample), background=float(background),
                                  ambient=float(ambient), expressions=expressions)
    images = synthetic_faces_images(config, cache)
    E = len(config.expressions) or 1      # the expression-free set: one (neutral) face each
    n, Y, L, H, W = images.shape[0], *images.shape[-4:]
    target_yaw = config.yaws.index(0.0)
    # In place: one float copy of the inputs at a time (the same values as images / 255).
    inputs = images.reshape(n * E * Y * L, 1, H, W).astype(np.float32)
    np.divide(inputs, np.float32(255.0), out=inputs)
    frontal = images[..., target_yaw, 0, :, :].reshape(n * E, H, W)  # (n [* E], H, W)
    face = np.repeat(np.arange(n * E, dtype=np.int64), Y * L)        # row of frontal
    targets = frontal[face][:, None].astype(np.float32)
    np.divide(targets, np.float32(255.0), out=targets)
    labels = {"identity": face // E}
    if config.expressions:
        codes = np.array([EXPRESSIONS.index(e) for e in config.expressions], dtype=np.int64)
        labels["expression"] = codes[face % E]
    labels["yaw"] = np.tile(np.repeat(np.array(config.yaws, dtype=np.float32), L), n * E)
    labels["light"] = np.tile(np.arange(L, dtype=np.int64), n * E * Y)
    name = "synthetic-expressions" if config.expressions else "synthetic-faces"
    return PairDataset(inputs, targets, labels, name=name, check=False)


def load_synthetic_expressions(data: None = None, image_size: Optional[int] = 64, *,
                               n_identities: int = DEFAULT_EXPRESSION_IDENTITIES,
                               expressions=EXPRESSIONS, **options) -> PairDataset:
    """The built-in faces showing the seven basic expressions (dataset
    "synthetic-expressions"): load_synthetic_faces with expressions on, and by default 100
    people: 100 x 7 expressions x 9 yaws x 5 lights = 31,500 pairs.

    Why 100 people and not Multi-PIE's 337: 337 x 7 x 9 x 5 is 106,155 pairs, 3.5 GB of
    float32 inputs and targets, and the greedy stages hold codes of the pairs that are
    larger than the images (gasca-64's first code, 32 x 32 x 32, is 8 times an image: 28 GB
    for 106k pairs' inputs and targets). 31,500 pairs hold 1.0 GB of images and at most 8.3
    GB of first-level codes, well inside 24 GB. Pass n_identities (--opt n_identities=N) for
    more or fewer; the people are a prefix of the expression-free set's (same faces).
    Measured on 2 cores at 64 x 64: rendered in 13 s (peak 0.31 GB), loaded at a 1.3 GB
    peak, 1 s from the cache (module docstring, Expressions).
    """
    return load_synthetic_faces(data, image_size, n_identities=n_identities,
                                expressions=expressions, **options)
