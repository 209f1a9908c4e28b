"""Expressions in the built-in faces: each expression changes the face in
its named features (mouth, brows, eyes) and in the right direction, keeps the person, moves
with the head; the expression-free data set is untouched; labels round-trip."""

from pathlib import Path

import numpy as np
import pytest

from gasca_core.data import load_dataset, save_npz
from gasca_core.data import synthetic as S
from gasca_core.data.__main__ import main as data_main
from gasca_core.data.npz import load_npz

E = {name: i for i, name in enumerate(S.EXPRESSIONS)}
N_IDS = 3


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GASCA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def frontal_faces(n=N_IDS, size=128, yaws=(0.0,), seed=0):
    """uint8 faces (n, 7, len(yaws), H, W) under the neutral light, as float in [0, 1]."""
    config = S.SyntheticFacesConfig(n_identities=n, image_size=size, yaws=yaws,
                                    lights=((0.0, 0.0),), seed=seed, expressions=True)
    return S.render_dataset(config)[:, :, :, 0].astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def faces128():
    return frontal_faces()


@pytest.fixture(scope="module")
def params():
    return S.sample_identities(N_IDS, 0)


def to_pixel(x, y, size):
    """(row, col) at yaw 0 of head point (x, y): the inverse of the renderer's pixel grid."""
    col = ((x / S.VIEW_HALF_SIZE) + 1.0) * size / 2.0 - 0.5
    row = ((S.VIEW_CENTER_Y - y) / S.VIEW_HALF_SIZE + 1.0) * size / 2.0 - 0.5
    return row, col


def box(x0, x1, y0, y1, size):
    """Slices (rows, cols) of the head rectangle x in [x0, x1], y in [y0, y1] at yaw 0."""
    r0, c0 = to_pixel(x0, y1, size)
    r1, c1 = to_pixel(x1, y0, size)
    return slice(int(np.floor(r0)), int(np.ceil(r1)) + 1), \
        slice(int(np.floor(c0)), int(np.ceil(c1)) + 1)


def mouth_y(p, i):
    return (p["eye_y"][i] - p["nose_drop"][i] - p["nose_h"][i] - p["mouth_gap"][i]
            + 0.5 * p["mouth_h"][i])


def regions(p, i, size):
    """Boxes around person i's mouth, each brow and each eye, at yaw 0."""
    mw, ex, ey, er = p["mouth_w"][i], p["eye_x"][i], p["eye_y"][i], p["eye_r"][i]
    my = mouth_y(p, i)
    brow = ey + p["brow_dy"][i]
    bw = p["brow_w"][i]
    return {
        "mouth": box(-1.2 * mw, 1.2 * mw, my - 0.08, my + 0.07, size),
        # each brow from the top of its eye up to above the highest raised brow
        "brows": [box(s * ex - 1.1 * bw, s * ex + 1.1 * bw, ey + 0.9 * er, brow + 0.1, size)
                  for s in (-1.0, 1.0)],
        "eyes": [box(s * ex - er, s * ex + er, ey - er, ey + er, size) for s in (-1.0, 1.0)],
    }


def changed(a, b, where):
    """How many pixels of the box `where` differ by more than 0.05 between faces a and b."""
    return int((np.abs(a[where] - b[where]) > 0.05).sum())


def dark_rows(face, where, cols, dark=0.6):
    """Mean row of the dark pixels (below `dark` times the box's median) in columns `cols`
    of the box `where` (cols: a boolean mask over the box's columns)."""
    patch = face[where]
    dark = patch < dark * np.median(patch)
    rows = np.nonzero(dark[:, cols])[0]
    assert len(rows) > 0, "no dark pixels where a feature should be"
    return rows.mean()


# --------------------------------------------------------------- the expression-free set
def test_without_expressions_pixels_and_cache_key_are_unchanged():
    # The key is a hash of the config's JSON, recorded before expressions existed.
    assert S.SyntheticFacesConfig().cache_key() == "713cf4e0189192be"
    assert S.SyntheticFacesConfig(n_identities=3, image_size=32).cache_key() == \
        "8daa826508ad0b8d"
    # tests/data/synthetic_reference_2x24.npz: the renderer's output before expressions
    # existed (commit a5052d3).  The pixels are float32 arithmetic quantized to 8 bits, so
    # another CPU or NumPy may move a value that sits on a rounding boundary by one level:
    # allow that, for a handful of pixels, and nothing more.
    ref = np.load(Path(__file__).parent / "data" / "synthetic_reference_2x24.npz")["images"]
    images = S.render_dataset(S.SyntheticFacesConfig(n_identities=2, image_size=24))
    assert images.shape == ref.shape == (2, 9, 5, 24, 24)
    diff = np.abs(images.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1, f"pixels moved by up to {diff.max()} levels"
    assert (diff > 0).mean() <= 1e-3, f"{(diff > 0).mean():.2%} of the pixels moved"


def test_neutral_expression_renders_exactly_the_expression_free_face():
    plain = S.render_dataset(S.SyntheticFacesConfig(n_identities=2, image_size=48))
    both = S.render_dataset(S.SyntheticFacesConfig(n_identities=2, image_size=48,
                                                   expressions=("neutral", "happy")))
    assert both.shape == (2, 2, 9, 5, 48, 48)
    np.testing.assert_array_equal(both[:, 0], plain)
    assert (both[:, 1] != plain).any()
    # and through the loader: the neutral pairs are the expression-free pairs
    a = S.load_synthetic_faces(n_identities=2, image_size=32, cache=False)
    b = S.load_synthetic_faces(n_identities=2, image_size=32, expressions=("neutral",),
                               cache=False)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert "expression" not in a.labels and np.all(b.labels["expression"] == E["neutral"])


def test_expression_free_loader_gives_the_same_pairs_as_before():
    # The loader now divides in place; the pairs must be those of images / 255 as before.
    config = S.SyntheticFacesConfig(n_identities=2, image_size=24)
    images = S.render_dataset(config)
    ds = S.load_synthetic_faces(n_identities=2, image_size=24, cache=False)
    old_inputs = images.reshape(-1, 1, 24, 24).astype(np.float32) / np.float32(255.0)
    old_frontal = images[:, 4, 0].astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(ds.inputs, old_inputs)
    np.testing.assert_array_equal(ds.targets, old_frontal[np.repeat([0, 1], 45)][:, None])
    assert list(ds.labels) == ["identity", "yaw", "light"] and ds.name == "synthetic-faces"


def test_expression_configs_get_their_own_cache_keys():
    keys = {S.SyntheticFacesConfig().cache_key(),
            S.SyntheticFacesConfig(expressions=True).cache_key(),
            S.SyntheticFacesConfig(expressions=("neutral",)).cache_key(),
            S.SyntheticFacesConfig(expressions=("happy", "sad")).cache_key()}
    assert len(keys) == 4
    assert S.SyntheticFacesConfig(expressions=True) == \
        S.SyntheticFacesConfig(expressions=S.EXPRESSIONS) == \
        S.SyntheticFacesConfig(expressions=",".join(S.EXPRESSIONS))
    assert '"expressions_version"' in S.SyntheticFacesConfig(expressions=True).to_json()
    assert "expressions" not in S.SyntheticFacesConfig().to_json()


# ------------------------------------------------------------ what each expression does
EXPECTED = {  # which named features each expression must change (yaw 0)
    "happy": {"mouth"}, "sad": {"mouth", "brows"}, "surprised": {"mouth", "brows", "eyes"},
    "angry": {"brows"}, "disgusted": {"mouth", "brows"}, "fearful": {"mouth", "brows", "eyes"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_expression_changes_its_named_features(faces128, params, name):
    for i in range(N_IDS):
        neutral, face = faces128[i, E["neutral"], 0], faces128[i, E[name], 0]
        reg = regions(params, i, 128)
        counts = {"mouth": changed(face, neutral, reg["mouth"]),
                  "brows": sum(changed(face, neutral, b) for b in reg["brows"]),
                  "eyes": sum(changed(face, neutral, b) for b in reg["eyes"])}
        for feature in EXPECTED[name]:
            assert counts[feature] >= 6, (name, i, counts)
        # Everything outside the three regions stays (nearly) as it was.
        outside = np.ones_like(face, dtype=bool)
        for b in [reg["mouth"], *reg["brows"], *reg["eyes"]]:
            outside[b] = False
        assert outside.sum() > 0.9 * face.size
        assert int((np.abs(face - neutral)[outside] > 0.05).sum()) <= 3, (name, i)


def test_far_regions_hair_ears_neck_background_are_untouched(faces128):
    parts = S.render_parts(S.sample_identities(N_IDS, 0), np.arange(N_IDS),
                           np.zeros(N_IDS), 128, supersample=2)      # (n, 256, 256)
    far = np.isin(parts, (S.HAIR, S.EAR_L, S.EAR_R, S.NECK, -1))
    far = far.reshape(N_IDS, 128, 2, 128, 2).all(axis=(2, 4))       # all 4 rays far
    for i in range(N_IDS):
        assert far[i].sum() > 3000
        for name in S.EXPRESSIONS[1:]:
            np.testing.assert_array_equal(faces128[i, E[name], 0][far[i]],
                                          faces128[i, E["neutral"], 0][far[i]])


def test_mouth_corners_rise_for_happy_and_fall_for_sad(faces128, params):
    for i in range(N_IDS):
        rows, cols = regions(params, i, 128)["mouth"]
        u = (np.arange(cols.start, cols.stop) + 0.5) / 64.0 - 1.0   # image x of each column
        u = u * S.VIEW_HALF_SIZE / params["mouth_w"][i]             # -1 .. 1 across the mouth
        middle, corners = np.abs(u) < 0.3, (np.abs(u) > 0.6) & (np.abs(u) < 0.95)

        def lift(name):  # how much higher (in rows) the corners sit than the middle
            face = faces128[i, E[name], 0]
            # the mouth line (albedo 0.08), not the shaded underside of the lips
            return (dark_rows(face, (rows, cols), middle, dark=0.3)
                    - dark_rows(face, (rows, cols), corners, dark=0.3))

        assert lift("happy") > lift("neutral") + 1.0, i
        assert lift("sad") < lift("neutral") - 1.0, i


def test_mouth_opens_dark_for_surprised_and_fearful(faces128, params):
    for i in range(N_IDS):
        where = regions(params, i, 128)["mouth"]
        dark = {name: int((faces128[i, E[name], 0][where] < 0.15).sum())
                for name in ("neutral", "surprised", "fearful")}
        assert dark["surprised"] > 2.5 * dark["neutral"], dark
        assert dark["fearful"] > 1.5 * dark["neutral"], dark


def test_brows_tilt_and_rise(faces128, params):
    for i in range(N_IDS):
        ex, bw = params["eye_x"][i], params["brow_w"][i]
        for side, where in zip((-1.0, 1.0), regions(params, i, 128)["brows"]):
            x = ((np.arange(where[1].start, where[1].stop) + 0.5) / 64.0 - 1.0) \
                * S.VIEW_HALF_SIZE
            inner_side = -side * (x - side * ex)           # > 0 toward the nose
            inner = (inner_side > 0.4 * bw) & (inner_side < 0.9 * bw)
            outer = (inner_side < -0.4 * bw) & (inner_side > -0.9 * bw)

            def tilt(name):  # how much lower (in rows) the inner end sits than the outer
                face = faces128[i, E[name], 0]
                return dark_rows(face, where, inner) - dark_rows(face, where, outer)

            def height(name):  # mean row of the whole brow (smaller = higher)
                return dark_rows(faces128[i, E[name], 0], where, inner | outer)

            assert tilt("angry") > tilt("neutral") + 1.0, (i, side)
            assert tilt("sad") < tilt("neutral") - 1.0, (i, side)
            assert tilt("fearful") < tilt("neutral") - 1.0, (i, side)
            assert height("surprised") < height("neutral") - 2.0, (i, side)


def test_eyes_open_wide_or_narrow(faces128, params):
    # Wide eyes show more white (the upper lid lifts, more of the eyeball shows): the eye
    # boxes grow brighter; narrowed eyes (lids closing in) grow darker.
    for i in range(N_IDS):
        eyes = regions(params, i, 128)["eyes"]

        def brightness(name):
            return np.mean([faces128[i, E[name], 0][b].mean() for b in eyes])

        assert brightness("surprised") > brightness("neutral") + 0.01, i
        assert brightness("fearful") > brightness("neutral") + 0.008, i
        for narrowed in ("happy", "angry", "disgusted"):
            assert brightness(narrowed) < brightness("neutral") - 0.01, (i, narrowed)


def test_expressions_move_with_the_head_in_3d():
    # At yaw 45 a smile still changes the mouth, which has moved with the head: the changed
    # pixels' columns sit away from the frontal mouth's, toward where the face turned.
    faces = frontal_faces(n=1, size=64, yaws=(0.0, 45.0))
    moved = []
    for y in range(2):
        diff = np.abs(faces[0, E["happy"], y] - faces[0, E["neutral"], y]) > 0.05
        assert diff.sum() >= 4
        moved.append(np.nonzero(diff)[1].mean())
    assert moved[1] > moved[0] + 4   # positive yaw turns the face toward the image's right


# ----------------------------------------------------------------------- identity kept
def test_identity_is_kept_across_expressions():
    # Six people, every expression, at yaw 30 under a side light: each expressive face is
    # nearer (pixel distance) to its own person's neutral face than to anyone else's.
    config = S.SyntheticFacesConfig(n_identities=6, image_size=64, yaws=(0.0, 30.0),
                                    lights=((0.0, 0.0), (35.0, 15.0)), expressions=True)
    faces = S.render_dataset(config)[:, :, 1, 1].astype(np.float64) / 255.0   # (6, 7, H, W)
    neutral = faces[:, E["neutral"]].reshape(6, -1)
    for p in range(6):
        for e in range(1, 7):
            d = np.linalg.norm(neutral - faces[p, e].reshape(1, -1), axis=1)
            assert np.argmin(d) == p, (p, S.EXPRESSIONS[e], d)
            assert d[p] < 0.6 * np.delete(d, p).min()


def test_expressiveness_is_per_person_deterministic_and_bounded():
    lo, hi = S.EXPRESSIVENESS_RANGE
    s = S.sample_expressiveness(50, 0)
    assert np.all((s >= lo) & (s <= hi)) and s.std() > 0.1
    np.testing.assert_array_equal(S.sample_expressiveness(10, 0), s[:10])   # prefix-stable
    assert not np.allclose(S.sample_expressiveness(10, 1), s[:10])
    # The face itself is drawn as before: expressions do not change who a person is.
    np.testing.assert_array_equal(S.sample_identities(5, 0)["head_w"],
                                  S.sample_identities(50, 0)["head_w"][:5])
    # A stronger person moves the mouth corners more.
    rows = S.expression_params(S.sample_identities(2, 0), ("happy",), np.array([0.6, 1.2]))
    np.testing.assert_allclose(rows["mouth_curve"], [0.6, 1.2])


def test_render_is_deterministic_by_seed_and_prefix_stable():
    a = frontal_faces(n=2, size=32)
    np.testing.assert_array_equal(a, frontal_faces(n=2, size=32))
    np.testing.assert_array_equal(a[:1], frontal_faces(n=1, size=32))
    assert np.abs(a - frontal_faces(n=2, size=32, seed=1)).mean() > 0.01


# ------------------------------------------------------------------------------ labels
@pytest.fixture(scope="module")
def expr_ds():
    return S.load_synthetic_faces(n_identities=2, image_size=32, expressions=True,
                                  cache=False)


def test_pairs_labels_and_targets_keep_the_expression(expr_ds):
    ds = expr_ds
    assert len(ds) == 2 * 7 * 9 * 5 and ds.name == "synthetic-expressions"
    assert list(ds.labels) == ["identity", "expression", "yaw", "light"]
    assert ds.labels["expression"].dtype == np.int64
    # identity-major, then expression, yaw, light
    i = 1 * 315 + 3 * 45 + 2 * 5 + 4
    assert (ds.labels["identity"][i], ds.labels["expression"][i], ds.labels["yaw"][i],
            ds.labels["light"][i]) == (1, 3, -30.0, 4)
    for p in range(2):
        for e in range(7):
            mine = (ds.labels["identity"] == p) & (ds.labels["expression"] == e)
            frontal = mine & (ds.labels["yaw"] == 0) & (ds.labels["light"] == 0)
            assert mine.sum() == 45 and frontal.sum() == 1
            # every pair's target: same person, same expression, yaw 0, neutral light
            assert np.all(ds.targets[mine] == ds.inputs[frontal])
    # and the 14 targets, one per (person, expression), all differ
    t = ds.targets[(ds.labels["yaw"] == 0) & (ds.labels["light"] == 0)]
    assert len(t) == 14 and len({x.tobytes() for x in t}) == 14


def test_a_subset_keeps_the_global_class_numbers():
    ds = S.load_synthetic_faces(n_identities=1, image_size=16, yaws=(0.0,),
                                expressions=("fearful", "happy"), cache=False)
    assert list(np.unique(ds.labels["expression"])) == [E["happy"], E["fearful"]]
    assert ds.labels["expression"][0] == E["fearful"]


def test_labels_round_trip_through_npz(expr_ds, tmp_path):
    path = save_npz(expr_ds, tmp_path / "expr.npz")
    back = load_npz(path, image_size=32)
    for key, value in expr_ds.labels.items():
        np.testing.assert_array_equal(back.labels[key], value)
    np.testing.assert_array_equal(back.inputs, expr_ds.inputs)
    np.testing.assert_array_equal(back.targets, expr_ds.targets)


def test_labels_and_images_round_trip_through_the_cache(private_cache, expr_ds):
    first = S.load_synthetic_faces(n_identities=2, image_size=32, expressions=True)
    files = list(private_cache.glob("synthetic-faces-*.npz"))
    assert len(files) == 1
    second = S.load_synthetic_faces(n_identities=2, image_size=32, expressions=True)
    assert list(private_cache.glob("synthetic-faces-*.npz")) == files   # read, not rewritten
    for ds in (first, second):
        np.testing.assert_array_equal(ds.inputs, expr_ds.inputs)
        for key, value in expr_ds.labels.items():
            np.testing.assert_array_equal(ds.labels[key], value)
    # The expression-free set lives in its own file beside it.
    S.load_synthetic_faces(n_identities=2, image_size=32)
    assert len(list(private_cache.glob("synthetic-faces-*.npz"))) == 2


def test_dataset_name_and_split_by_person():
    train, val, test = (load_dataset("synthetic-expressions", split=s, seed=0, image_size=16,
                                     n_identities=10) for s in ("train", "val", "test"))
    ids = [set(np.unique(d.labels["identity"])) for d in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for d in (train, val, test):   # every person of a split shows all seven
        assert sorted(np.unique(d.labels["expression"])) == list(range(7))
    assert sum(map(len, (train, val, test))) == 10 * 315


@pytest.mark.parametrize("bad, match", [
    (("happy", "grin"), "unknown expression.*'grin'"),
    ("Happy", "unknown expression"),
    (("sad", "sad"), "must not repeat"),
])
def test_bad_expression_names_are_refused_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        S.SyntheticFacesConfig(expressions=bad)
    with pytest.raises(ValueError, match=match):
        load_dataset("synthetic-expressions", image_size=16, n_identities=1, expressions=bad)


def test_preview_shows_one_person_every_expression_at_every_yaw(tmp_path, capsys):
    from PIL import Image
    out = tmp_path / "person.png"
    rc = data_main(["preview", "--dataset", "synthetic-expressions", "--image-size", "16",
                    "--opt", "n_identities=2", "--person", "1", "--scale", "1",
                    "--out", str(out)])
    assert rc == 0 and "7 expression(s)" in capsys.readouterr().out
    w, h = Image.open(out).size
    assert h > 7 * 16 and w > 9 * 16          # 7 rows, 9 columns of 16-pixel faces
    rc = data_main(["preview", "--dataset", "synthetic-expressions", "--image-size", "16",
                    "--opt", "n_identities=2", "--person", "5", "--out", str(out)])
    assert rc == 2 and "no person 5" in capsys.readouterr().err
