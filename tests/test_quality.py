"""Quality metrics (metrics.py), the recognizer and the identity protocol (recognition.py)
and the quality report (evaluation.py), pinned to known answers on tiny inputs."""
import json
import warnings

import numpy as np
import pytest

from gasca_core import metrics as M
from gasca_core import recognition as R
from gasca_core.data import PairDataset
from gasca_core.data.synthetic import load_synthetic_faces
from gasca_core.evaluation import quality_metrics, quality_tables, results_tables


# ----------------------------------------------------------------------------- helpers

def smooth_images(n=6, size=32, seed=0):
    """Gaussian blobs on a grey background: smooth, no periodic texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        s = rng.uniform(0.1, 0.3)
        out.append(0.3 + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)))
    return np.array(out)[:, None]


def grid(period, size=32, amplitude=0.02):
    """A checkerboard of period `period` px (cells of period/2 px), +-amplitude."""
    i = np.arange(size) // (period // 2)
    return amplitude * (2.0 * ((i[:, None] + i[None, :]) % 2) - 1.0)


def blur(x):
    return (x + np.roll(x, 1, 2) + np.roll(x, -1, 2) + np.roll(x, 1, 3) + np.roll(x, -1, 3)) / 5


def mean_free(x):
    """An embedding: each image's pixels minus its mean (a constant image gives 0)."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return flat - flat.mean(axis=1, keepdims=True)


def people_dataset(n_people=5, size=16, yaws=(-30.0, 0.0, 30.0), lights=(0, 1, 2), seed=0,
                   labels=("identity", "yaw", "light")):
    """A hand-built PairDataset: person p is a random pattern; its input at (yaw, light) is
    the pattern shifted by yaw/15 px and brightened by light; its target the pattern."""
    rng = np.random.default_rng(seed)
    faces = rng.uniform(0.2, 0.8, size=(n_people, 1, size, size))
    inputs, targets, lab = [], [], {"identity": [], "yaw": [], "light": []}
    for p in range(n_people):
        for y in yaws:
            for li in lights:
                inputs.append(np.clip(np.roll(faces[p], int(y // 15), axis=2) + 0.05 * li, 0, 1))
                targets.append(faces[p])
                lab["identity"].append(p)
                lab["yaw"].append(y)
                lab["light"].append(li)
    return PairDataset(np.array(inputs), np.array(targets),
                       {k: np.array(v) for k, v in lab.items() if k in labels}, name="people")


@pytest.fixture(scope="module")
def faces():
    """8 synthetic people at 3 yaws x 5 lights, 32x32 (renders in ~0.05 s, not cached)."""
    return load_synthetic_faces(n_identities=8, image_size=32, yaws=(-30.0, 0.0, 30.0),
                                cache=False)


# ----------------------------------------------------------------------------- sharpness

def test_sharpness_identical_is_one_blur_below_noise_above(rng):
    x = smooth_images() * 0.8 + 0.1 * rng.random((6, 1, 32, 32))
    assert M.sharpness_ratio(x, x) == pytest.approx(1.0, abs=1e-15)
    assert M.sharpness_ratio(blur(x), x) < 0.7
    assert M.sharpness_ratio(x + 0.05 * rng.standard_normal(x.shape), x) > 1.2
    e = M.gradient_energy_per_image(x)
    assert e.shape == (6,) and (e > 0).all()
    assert M.gradient_energy_per_image(np.full((2, 1, 8, 8), 0.4)).tolist() == [0.0, 0.0]


def test_gradient_energy_known_value():
    # A vertical ramp rising 0.1 per row: squared forward differences along H are 0.01
    # everywhere, none along W.
    x = np.tile((0.1 * np.arange(5))[:, None], (1, 4))[None, None]
    assert M.gradient_energy_per_image(x)[0] == pytest.approx(0.01)


# ----------------------------------------------------------------------------- grid artefacts

def test_stride_peaks_smooth_near_one_planted_grids_far_above():
    x = smooth_images()
    base = M.stride_peak_ratio(x)
    assert 0.5 < base < 2.0
    assert M.artefact_ratio(x, x) == pytest.approx(1.0)
    for period in (2, 4, 8):
        with_grid = np.clip(x + grid(period), 0, 1)
        assert M.stride_peak_ratio(with_grid) > 20 * base, period
        assert M.artefact_ratio(with_grid, x) > 20, period


def test_stride_peaks_ignore_edge_jumps():
    # A ramp is far from periodic (a jump between its left and right edges); the periodic
    # component keeps that jump from lighting up the stride bins on the axes.
    ramp = np.tile(np.linspace(0.1, 0.9, 32), (32, 1))[None, None]
    assert 0.5 < M.stride_peak_ratio(ramp) < 2.0
    assert M.stride_peak_ratio(np.full((1, 1, 16, 16), 0.3)) == pytest.approx(1.0)


def test_noise_is_not_a_grid(rng):
    assert 0.7 < M.stride_peak_ratio(rng.random((16, 1, 32, 32))) < 1.4


# ----------------------------------------------------------------------------- Frechet distance

def _ssim_loops(x, y, size=11, sigma=1.5, c1=0.01 ** 2, c2=0.03 ** 2):
    """SSIM of one (H, W) pair by plain loops over every valid 11x11 window."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (w * a).sum(), (w * b).sum()
            vx, vy = (w * a * a).sum() - mx * mx, (w * b * b).sum() - my * my
            cxy = (w * a * b).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_plain_loops_and_is_one_for_identical_images(rng):
    # 37 pairs: more than one of ssim_per_image's chunks, the last one partial.
    x = rng.random((37, 1, 14, 15))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    got = M.ssim_per_image(x, y)
    assert got.shape == (37,)
    for k in (0, 15, 16, 36):
        assert got[k] == pytest.approx(_ssim_loops(x[k, 0], y[k, 0]), rel=1e-10)
    # each image's SSIM is its own, whatever else is in the batch
    np.testing.assert_array_equal(got[20:23], M.ssim_per_image(x[20:23], y[20:23]))
    np.testing.assert_allclose(M.ssim_per_image(x, x), 1.0, rtol=1e-12)


def test_periodic_spectrum_is_the_mean_of_the_images_spectra(rng):
    x = rng.random((37, 1, 16, 16))
    each = np.mean([M.periodic_power_spectrum(x[k:k + 1]) for k in range(37)], axis=0)
    np.testing.assert_allclose(M.periodic_power_spectrum(x), each, rtol=1e-12)


def test_frechet_identical_is_zero(rng):
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 3.0
    d = M.frechet_distance(a, a)
    assert d == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    # Whitened samples scaled to exactly known (diagonal) covariances and means: the
    # distance is |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)

    def sample(mu, var, n=500):
        z = rng.normal(size=(n, 2))
        z -= z.mean(axis=0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # cov = I
        return z * np.sqrt(var) + mu
    mu_a, var_a, mu_b, var_b = np.array([1.0, -2.0]), np.array([4.0, 0.25]), \
        np.array([0.0, 1.0]), np.array([1.0, 9.0])
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert M.frechet_distance(sample(mu_a, var_a), sample(mu_b, var_b)) == \
        pytest.approx(expected, rel=1e-9)


def test_frechet_one_dimensional():
    a = np.array([[0.0], [2.0]])          # mean 1, variance 2
    b = np.array([[4.0], [6.0], [8.0]])   # mean 6, variance 4
    assert M.frechet_distance(a, b) == pytest.approx(25 + (np.sqrt(2) - 2) ** 2)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, match", [
    (lambda: M.stride_peak_ratio(np.zeros((2, 1, 30, 32))), "not divisible by period"),
    (lambda: M.stride_peak_ratio(np.zeros((2, 1, 32, 32)), period=3), "not divisible"),
    (lambda: M.stride_peak_ratio(np.zeros((2, 32, 32))), r"\(N, C, H, W\)"),
    (lambda: M.stride_peak_ratio(np.zeros((0, 1, 32, 32))), "empty"),
    (lambda: M.artefact_ratio(np.zeros((2, 1, 32, 32)), np.zeros((3, 1, 32, 32))), "one shape"),
    (lambda: M.sharpness_ratio(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9))), "one shape"),
    (lambda: M.sharpness_ratio(np.zeros((0, 1, 8, 8)), np.zeros((0, 1, 8, 8))), "empty"),
    (lambda: M.sharpness_ratio(np.ones((2, 1, 8, 8)), np.full((2, 1, 8, 8), 0.5)), "constant"),
    (lambda: M.gradient_energy_per_image(np.zeros((4, 4))), r"\(N, C, H, W\)"),
    (lambda: M.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4))), "same feature size"),
    (lambda: M.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3))), "at least 2"),
    (lambda: M.frechet_distance(np.zeros(5), np.zeros((5, 1))), r"\(N, d\)"),
    (lambda: M.frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2))), "NaN"),
    (lambda: R.Recognizer(1, 30, 4), "divisible by 8"),
    (lambda: R.identity_rank1(np.zeros((3, 1, 16, 16)), people_dataset(), mean_free), "aligned"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- the protocol

def gallery_images_for(ds):
    """For each pair, the gallery image of its person (input at yaw 0 under light 1)."""
    ids, yaw, light = (ds.labels[k] for k in ("identity", "yaw", "light"))
    out = np.empty_like(ds.inputs)
    for p in np.unique(ids):
        g = np.flatnonzero((ids == p) & (yaw == 0) & (light == 1))
        assert len(g) == 1
        out[ids == p] = ds.inputs[g[0]]
    return out


def test_gallery_is_frontal_non_neutral_and_not_a_probe():
    ds = people_dataset()
    idx, ids = R.choose_gallery(ds)
    assert ids.tolist() == [0, 1, 2, 3, 4]
    assert (ds.labels["yaw"][idx] == 0).all() and (ds.labels["light"][idx] == 1).all()
    idx2, _ = R.choose_gallery(ds, gallery_light=2)
    assert (ds.labels["light"][idx2] == 2).all()
    r = R.identity_rank1(ds.targets, ds, mean_free)
    assert r["n"] == len(ds) - 5 and r["n_gallery"] == 5 and r["chance"] == pytest.approx(0.2)
    assert r["per_yaw"][0]["n"] == 5 * 3 - 5 and r["per_yaw"][-30]["n"] == 15


def test_rank1_is_one_when_probes_are_the_gallery_images():
    ds = people_dataset()
    r = R.identity_rank1(gallery_images_for(ds), ds, mean_free)
    assert r["rank1"] == 1.0
    assert all(v["rank1"] == 1.0 for v in r["per_yaw"].values())


def test_rank1_of_a_constant_image_is_exactly_chance():
    ds = people_dataset(n_people=7)
    r = R.identity_rank1(np.full(ds.inputs.shape, 0.5, np.float32), ds, mean_free)
    assert r["rank1"] == 1 / 7  # every probe ties with all 7 gallery images: 1/7 each
    assert all(v["rank1"] == 1 / 7 for v in r["per_yaw"].values())


def test_rank1_ties_score_one_over_t():
    g = np.eye(3)
    probes = np.array([[1.0, 1.0, 0.0],   # person 0, tied between 0 and 1: 1/2
                       [1.0, 1.0, 1.0],   # person 2, tied between all three: 1/3
                       [0.0, 0.0, 1.0],   # person 1, nearest is 2: 0
                       [0.0, 1.0, 0.0]])  # person 1, right: 1
    scores = R._rank1_scores(R.l2_normalize(probes), np.array([0, 2, 1, 1]), g,
                             np.array([0, 1, 2]))
    assert scores.tolist() == pytest.approx([0.5, 1 / 3, 0.0, 1.0])


def test_eigenfaces_rank_the_gallery_images_first():
    ds = people_dataset()
    eig = R.Eigenfaces.fit(ds.inputs, n_components=10)
    e = eig.embed(ds.inputs[:4])
    assert e.shape == (4, 10) and np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert R.identity_rank1(gallery_images_for(ds), ds, eig)["rank1"] == 1.0


def test_identity_report_rows_and_skips():
    ds = people_dataset()
    report, note = R.identity_report(ds.inputs, ds, mean_free)
    assert set(report["rows"]) == {"outputs", "inputs", "targets", "chance"}
    assert report["rows"]["outputs"] == report["rows"]["inputs"]
    assert report["rows"]["chance"]["rank1"] == pytest.approx(0.2)
    assert report["gallery_light"] == [1] and "5 people" in note
    json.dumps(report)
    for bad, why in ((people_dataset(labels=("yaw", "light")), "identity"),
                     (people_dataset(labels=("identity", "light")), "yaw"),
                     (people_dataset(lights=(0,)), "light other than 0")):
        report, note = R.identity_report(bad.inputs, bad, mean_free)
        assert report is None and "skipped" in note and why in note and "\n" not in note


def test_gallery_never_the_targets_own_image():
    # Light 1 at yaw 0 identical to the target (as the neutral light would be): it is not
    # taken; light 2 is.
    ds = people_dataset()
    sel = (ds.labels["yaw"] == 0) & (ds.labels["light"] == 1)
    ds.inputs[sel] = ds.targets[sel]
    idx, _ = R.choose_gallery(ds)
    assert (ds.labels["light"][idx] == 2).all()


# ----------------------------------------------------------------------------- the recognizer

def test_recognizer_set_keeps_at_most_a_fixed_number_of_frontal_images_a_person(rng):
    """Multi-PIE has up to ~160 frontal inputs a person: the recognizer's training set keeps
    MAX_FRONTAL_PER_PERSON of them, spread evenly, so its memory does not grow with the
    dataset; people with fewer keep all of theirs, and their targets come once."""
    n_a, n_b = 70, 4
    x = rng.random((n_a + n_b + 6, 1, 8, 8)).astype(np.float32)
    y = np.concatenate([np.repeat(x[:1], n_a, 0), np.repeat(x[n_a:n_a + 1], n_b, 0),
                        x[n_a + n_b:]])
    ids = np.array([1] * n_a + [2] * n_b + [3] * 6)
    yaw = np.array([0.0] * (n_a + n_b) + [30.0] * 6, dtype=np.float32)
    ds = PairDataset(x, y, {"identity": ids, "yaw": yaw})
    images, who = R.frontal_training_images(ds)
    assert (who == 1).sum() == R.MAX_FRONTAL_PER_PERSON   # input 0 is also person 1's target
    assert (who == 2).sum() == n_b and (who == 3).sum() == 1
    kept = [i for i in range(n_a) if any(np.array_equal(x[i], im) for im in images)]
    assert kept[0] == 0 and kept[-1] == n_a - 1          # spread over all of them



def test_recognizer_learns_the_training_people(faces):
    """A failing-if-broken check: an untrained network's random features already rank
    these people well above chance (about 0.5 here), so the trained one must do clearly
    better than that, not only than chance."""
    images, ids = R.frontal_training_images(faces)
    assert images.shape == (8 * 5, 1, 32, 32)  # 5 lights at yaw 0; the target is one of them
    untrained, _ = R.train_recognizer(faces, steps=1, batch_size=32, progress=False, log=None)
    model, info = R.train_recognizer(faces, steps=150, batch_size=32, lr=3e-3, progress=False,
                                     log=None)
    assert info["n_identities"] == 8 and info["n_images"] == 40 and info["steps"] == 150
    assert info["final_train_accuracy"] >= 0.8 and info["train_seconds"] > 0
    before = R.identity_rank1(faces.inputs, faces, untrained)["rank1"]
    after = R.identity_rank1(faces.inputs, faces, model)
    assert after["rank1"] > 0.75 and after["rank1"] > before + 0.2, (before, after["rank1"])
    assert after["per_yaw"][0]["rank1"] >= 0.9
    e = model.embed(faces.inputs[:5])
    assert e.shape == (5, 128) and np.allclose(np.linalg.norm(e, axis=1), 1.0)


def test_get_recognizer_caches_and_survives_a_corrupt_file(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("GASCA_CACHE", str(tmp_path))
    kw = dict(steps=5, batch_size=16, progress=False, log=None)
    m1, i1 = R.get_recognizer(faces, **kw)
    assert i1["cached"] is False
    m2, i2 = R.get_recognizer(faces, **kw)
    assert i2["cached"] is True and i2["train_seconds"] == i1["train_seconds"]
    assert np.array_equal(m1.embed(faces.inputs), m2.embed(faces.inputs))
    files = list((tmp_path / "recognizers").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "recognizers").glob("*.tmp"))
    # Another training configuration is another cache entry.
    _, i3 = R.get_recognizer(faces, **{**kw, "steps": 6})
    assert i3["cached"] is False
    for garbage in (b"not a zip file", files[0].read_bytes()[:200]):
        files[0].write_bytes(garbage)
        with pytest.warns(UserWarning, match="corrupt"):
            m4, i4 = R.get_recognizer(faces, **kw)
        assert i4["cached"] is False  # trained again: the same seed gives the same network
        assert np.array_equal(m4.embed(faces.inputs), m1.embed(faces.inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert R.get_recognizer(faces, **kw)[1]["cached"] is True  # rewritten whole


# ----------------------------------------------------------------------------- the report

def test_quality_metrics_and_tables(faces):
    model, _ = R.train_recognizer(faces, steps=5, batch_size=16, progress=False, log=None)
    q = quality_metrics(blur(faces.targets), faces, faces, recognizer=model)
    assert json.loads(json.dumps(q))["n"] == len(faces)
    o = q["overall"]["outputs"]
    assert o["sharpness"] < 1.0 and o["realism"] >= 0.0 and o["ssim"] < 1.0
    assert q["overall"]["inputs"]["mse"] == pytest.approx(
        float(M.mse_per_image(faces.inputs, faces.targets).mean()))
    assert [r["yaw"] for r in q["per_yaw"]] == [-30, 0, 30]
    for k in ("recognizer", "eigenfaces"):
        assert q["identity"][k]["rows"]["chance"]["rank1"] == pytest.approx(1 / 8)
    t = quality_tables(q)
    for text in ("sharpness", "artefact", "realism", "rank-1 outputs", "eigenfaces",
                 "true targets (ceiling)"):
        assert text in t
    # The targets themselves: sharpness, artefact 1, realism 0; no recognizer: no identity.
    q = quality_metrics(faces.targets, faces, faces, recognizer=False, eigenfaces=False)
    assert q["overall"]["outputs"]["sharpness"] == 1.0
    assert q["overall"]["outputs"]["artefact"] == 1.0
    assert q["identity"] == {"recognizer": None, "eigenfaces": None}
    assert "identity rank-1:" not in quality_tables(q)
    assert "MSE" in results_tables("G", faces.targets, faces, faces)


def test_quality_metrics_without_references_scores_the_outputs_alike(faces):
    model, _ = R.train_recognizer(faces, steps=5, batch_size=16, progress=False, log=None)
    out = blur(faces.targets)
    full = quality_metrics(out, faces, faces, recognizer=model)
    lean = quality_metrics(out, faces, faces, recognizer=model, references=False)
    assert lean["overall"] == {"outputs": full["overall"]["outputs"]}
    assert lean["per_yaw"] == full["per_yaw"]
    for k in ("recognizer", "eigenfaces"):
        assert set(lean["identity"][k]["rows"]) == {"outputs"}
        assert lean["identity"][k]["rows"]["outputs"] == full["identity"][k]["rows"]["outputs"]
    t = quality_tables(lean)
    assert "raw inputs" not in t and "rank-1 outputs" in t
    with pytest.raises(ValueError, match="rows must be among"):
        R.identity_report(out, faces, model, rows=("outputs", "gallery"))


def test_quality_metrics_without_labels_notes_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GASCA_CACHE", str(tmp_path))
    ds = people_dataset(labels=("yaw", "light"))
    q = quality_metrics(ds.inputs, ds, ds)
    assert q["identity"] == {"recognizer": None, "eigenfaces": None} and q["recognizer"] is None
    assert any("identity" in n for n in q["notes"])
    assert "note:" in quality_tables(q)
