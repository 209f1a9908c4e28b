"""The built-in synthetic faces: shapes, ranges, labels, determinism, the target rule, real
3D rotation (occlusion, mirror symmetry), the cache, and identity-disjoint splits."""

import numpy as np
import pytest

from gasca_core.data import get_splits, load_dataset, split_indices
from gasca_core.data import synthetic as S

N_IDS = 4  # keep renders small: 4 persons x 9 yaws x 5 lights = 180 pairs


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GASCA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def faces():
    # Rendered once for the module, without touching any cache.
    return S.load_synthetic_faces(n_identities=N_IDS, cache=False)


def test_shapes_dtypes_ranges_and_labels(faces):
    n = N_IDS * 9 * 5
    assert len(faces) == n
    assert faces.inputs.shape == faces.targets.shape == (n, 1, 64, 64)
    assert faces.inputs.dtype == faces.targets.dtype == np.float32
    for a in (faces.inputs, faces.targets):
        assert a.min() >= 0.0 and a.max() <= 1.0
        assert a.std() > 0.05  # not blank
    assert faces.labels["identity"].dtype == np.int64
    assert sorted(np.unique(faces.labels["identity"])) == list(range(N_IDS))
    assert list(np.unique(faces.labels["yaw"])) == list(range(-60, 61, 15))
    assert list(np.unique(faces.labels["light"])) == list(range(5))
    x, t, lab = faces[7]
    assert x.shape == t.shape == (1, 64, 64)
    assert set(lab) == {"identity", "yaw", "light"}


def test_yaw0_neutral_inputs_equal_their_targets(faces):
    frontal = (faces.labels["yaw"] == 0) & (faces.labels["light"] == 0)
    assert frontal.sum() == N_IDS
    np.testing.assert_array_equal(faces.inputs[frontal], faces.targets[frontal])
    # Every pair of one person shares that person's frontal target.
    for i in range(N_IDS):
        mine = faces.labels["identity"] == i
        assert np.all(faces.targets[mine] == faces.targets[mine][:1])


def test_nonzero_yaw_differs_and_more_for_bigger_yaw(faces):
    neutral = faces.labels["light"] == 0
    err = {}
    for yaw in (15, 30, 45, 60):
        for sign in (-1, 1):
            m = neutral & (faces.labels["yaw"] == sign * yaw)
            e = ((faces.inputs[m] - faces.targets[m]) ** 2).mean(axis=(1, 2, 3))
            assert np.all(e > 1e-4), f"yaw {sign * yaw} input equals its target"
            err[sign * yaw] = e.mean()
    for sign in (-1, 1):
        steps = [err[sign * y] for y in (15, 30, 45, 60)]
        assert steps == sorted(steps), f"error does not grow with |yaw|: {steps}"


def test_persons_and_lights_differ(faces):
    frontal = (faces.labels["yaw"] == 0) & (faces.labels["light"] == 0)
    t = faces.targets[frontal]
    assert min(np.abs(t[i] - t[j]).mean() for i in range(N_IDS) for j in range(i)) > 0.01
    m0 = (faces.labels["identity"] == 0) & (faces.labels["yaw"] == 0)
    lit = faces.inputs[m0]
    assert min(np.abs(lit[i] - lit[j]).mean() for i in range(5) for j in range(i)) > 0.01


def test_deterministic_by_seed_and_prefix_stable():
    a = S.load_synthetic_faces(n_identities=2, cache=False, image_size=32)
    b = S.load_synthetic_faces(n_identities=2, cache=False, image_size=32)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    c = S.load_synthetic_faces(n_identities=2, cache=False, image_size=32, data_seed=1)
    assert np.abs(a.inputs - c.inputs).mean() > 0.005
    # Person i depends only on (seed, i): a smaller set is a prefix of a bigger one.
    d = S.load_synthetic_faces(n_identities=3, cache=False, image_size=32)
    np.testing.assert_array_equal(d.inputs[:len(a)], a.inputs)


def test_pose_change_is_a_3d_rotation_with_occlusion():
    params = S.sample_identities(3, seed=0)
    ids = np.arange(3)

    def visible(yaw, part):
        parts = S.render_parts(params, ids, np.full(3, float(yaw)), 64, 2)
        return (parts == part).sum(axis=(1, 2))

    # Frontal: both eyes and ears equally visible.
    np.testing.assert_array_equal(visible(0, S.EYE_L), visible(0, S.EYE_R))
    np.testing.assert_array_equal(visible(0, S.EAR_L), visible(0, S.EAR_R))
    # Turned +60 (face toward the image's right): the right eye (x > 0) turns away and is
    # partly hidden, the right ear disappears behind the head, the left ear comes into view.
    assert np.all(visible(60, S.EYE_R) < 0.7 * visible(60, S.EYE_L))
    assert np.all(visible(60, S.EAR_R) == 0)
    assert np.all(visible(60, S.EAR_L) > visible(0, S.EAR_L))
    # The head is left-right symmetric and lights[0] frontal: yaw -y is the mirror of +y.
    imgs = S.render_heads(params, np.repeat(ids, 2), np.tile([-45.0, 45.0], 3),
                          S.light_directions(S.DEFAULT_LIGHTS[:1]), 32)
    np.testing.assert_allclose(imgs[0::2, 0], imgs[1::2, 0, :, ::-1], atol=1e-4)
    # ... but not a shifted or mirrored copy of the frontal view.
    frontal = S.render_heads(params, ids, np.zeros(3), S.light_directions(S.DEFAULT_LIGHTS[:1]),
                             32)[:, 0]
    assert np.abs(imgs[1::2, 0] - frontal).mean() > 0.02


def test_cache_is_written_reused_and_repaired(private_cache):
    a = S.load_synthetic_faces(n_identities=2, image_size=32)
    files = list(private_cache.glob("synthetic-faces-*.npz"))
    assert len(files) == 1
    assert not [p for p in private_cache.iterdir() if p.suffix == ".tmp"]
    # A second load reads the file: make its content recognisably different and see it come back.
    with np.load(files[0]) as z:
        images, config = z["images"].copy(), z["config"]
    images[0, 0, 0, 0, 0] = 7
    np.savez(files[0], images=images, config=config)
    b = S.load_synthetic_faces(n_identities=2, image_size=32)
    assert b.inputs[0, 0, 0, 0] == np.float32(7 / 255)
    # A different configuration has a different key, so a second file.
    S.load_synthetic_faces(n_identities=2, image_size=32, data_seed=5)
    assert len(list(private_cache.glob("synthetic-faces-*.npz"))) == 2
    # A broken cache file is reported and replaced by a fresh render.
    files[0].write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        c = S.load_synthetic_faces(n_identities=2, image_size=32)
    np.testing.assert_array_equal(c.inputs, a.inputs)


def test_cache_key_covers_every_parameter():
    base = S.SyntheticFacesConfig()
    keys = {base.cache_key()}
    for change in (dict(n_identities=3), dict(image_size=32), dict(seed=1), dict(supersample=1),
                   dict(background=0.5), dict(ambient=0.2), dict(yaws=(0.0, 30.0)),
                   dict(lights=((0.0, 0.0),))):
        keys.add(S.SyntheticFacesConfig(**change).cache_key())
    assert len(keys) == 9


@pytest.mark.parametrize("bad, match", [
    (dict(yaws=(15.0, 30.0)), "contain 0"), (dict(n_identities=0), "n_identities"),
    (dict(image_size=4), "image_size"), (dict(background=2.0), "background"),
])
def test_bad_configuration_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        S.SyntheticFacesConfig(**bad)


def test_data_path_is_refused_for_the_builtin_set():
    with pytest.raises(ValueError, match="not used by the built-in"):
        S.load_synthetic_faces("/some/folder")


def test_splits_are_identity_disjoint_and_cover_everything():
    train, val, test = get_splits("synthetic-faces", seed=3, n_identities=10, image_size=32)
    ids = [set(np.unique(s.labels["identity"])) for s in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(range(10))
    assert [len(i) for i in ids] == [7, 2, 1]  # 7 + 1.5 + 1.5: the tie goes to val
    assert len(train) + len(val) + len(test) == 10 * 45
    # Another seed shuffles persons differently; the same seed repeats.
    again = get_splits("synthetic-faces", seed=3, n_identities=10, image_size=32)
    np.testing.assert_array_equal(again.test.inputs, test.inputs)
    other = [set(np.unique(s.labels["identity"]))
             for s in get_splits("synthetic-faces", seed=4, n_identities=10, image_size=32)]
    assert other != ids


def test_max_train_caps_and_load_dataset_split():
    train, val, test = get_splits(seed=0, n_identities=6, image_size=32, max_train=50,
                                  max_eval=20)
    assert len(train) == 50 and len(val) <= 20 and len(test) <= 20
    ds = load_dataset("synthetic-faces", split="test", seed=0, n_identities=6, image_size=32)
    assert set(np.unique(ds.labels["identity"])).isdisjoint(np.unique(train.labels["identity"]))


def test_split_indices_by_index_and_bad_fractions():
    tr, va, te = split_indices(100, None, (0.7, 0.15, 0.15), seed=0)
    assert (len(tr), len(va), len(te)) == (70, 15, 15)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, None, (0.5, 0.2, 0.2))
    assert [len(p) for p in split_indices(3, None, (0.7, 0.15, 0.15))] == [1, 1, 1]
    assert [len(p) for p in split_indices(9, None, (1.0, 0.0, 0.0))] == [9, 0, 0]
    with pytest.raises(ValueError, match="too few"):
        split_indices(2, np.array([0, 0]), (0.7, 0.15, 0.15))
