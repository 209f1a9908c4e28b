"""The folder, Multi-PIE and npz loaders on small fixtures built here, including the bad
cases: each works (converted as documented) or stops with an error naming the file."""

import numpy as np
import pytest
from PIL import Image

from gasca_core.data import ImageReadError, get_splits, infer_dataset, load_dataset, read_gray
from gasca_core.data.folder import load_folder
from gasca_core.data.multipie import CAMERA_YAW, load_multipie
from gasca_core.data.npz import load_npz, save_npz


def write_gray(path, a):
    """Save a uint8 (H, W) array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(a, dtype=np.uint8), mode="L").save(path)
    return path


def noise(rng, h=12, w=12):
    return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


# ----------------------------------------------------------------------------- reading
def test_read_gray_8bit_rgb_16bit_rgba(tmp_path, rng):
    a = noise(rng)
    np.testing.assert_array_equal(read_gray(write_gray(tmp_path / "g.png", a)), a / np.float32(255))
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    luma = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L")) / np.float32(255)
    np.testing.assert_array_equal(read_gray(tmp_path / "c.png"), luma)
    # 16-bit grey: full precision, scaled by 65535.
    a16 = rng.integers(0, 65536, size=(7, 9), dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "d16.png")
    np.testing.assert_allclose(read_gray(tmp_path / "d16.png"), a16 / 65535.0, atol=1e-7)
    # RGBA: composited over black, grey * alpha.
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 128
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = read_gray(tmp_path / "t.png")
    assert out[0, 0] == 0.0
    np.testing.assert_allclose(out[1, 1], (200 / 255) * (128 / 255), rtol=1e-6)


def test_read_gray_float_and_32bit_integer_images(tmp_path, rng):
    f = rng.random((5, 5)).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_gray(tmp_path / "f.tif"), f)
    Image.fromarray(f * 3, mode="F").save(tmp_path / "hot.tif")
    with pytest.raises(ImageReadError, match=r"hot\.tif: float image must hold finite values"):
        read_gray(tmp_path / "hot.tif")
    Image.fromarray(np.full((3, 3), 70000, dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    with pytest.raises(ImageReadError, match=r"i\.tif: 32-bit integer image"):
        read_gray(tmp_path / "i.tif")


def test_read_gray_resizes_and_keeps_range(tmp_path, rng):
    out = read_gray(write_gray(tmp_path / "big.png", noise(rng, 40, 30)), image_size=(16, 20))
    assert out.shape == (16, 20) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_not_an_image_and_truncated_png_name_the_file(tmp_path, rng):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    with pytest.raises(ImageReadError, match="notes.png.*not an image"):
        read_gray(fake)
    good = write_gray(tmp_path / "cut.png", noise(rng, 64, 64))
    data = good.read_bytes()
    good.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_gray(good)
    with pytest.raises(ImageReadError, match="absent.png.*not found"):
        read_gray(tmp_path / "absent.png")


# ------------------------------------------------------------------------------ folder
def make_folder(root, rng, names=("a", "b", "c"), size=(12, 12)):
    pairs = {}
    for name in names:
        x, t = noise(rng, *size), noise(rng, *size)
        write_gray(root / "inputs" / f"{name}.png", x)
        write_gray(root / "targets" / f"{name}.png", t)
        pairs[name] = (x, t)
    return pairs


def test_folder_pairs_matched_by_name(tmp_path, rng):
    pairs = make_folder(tmp_path, rng)
    # Subfolders and a different suffix on the target side still pair by relative stem.
    x, t = noise(rng), noise(rng)
    write_gray(tmp_path / "inputs" / "sub" / "d.png", x)
    write_gray(tmp_path / "targets" / "sub" / "d.bmp", t)
    pairs["sub/d"] = (x, t)
    (tmp_path / "inputs" / "README.txt").write_text("ignored: not an image suffix")
    ds = load_folder(tmp_path, image_size=None)
    assert len(ds) == 4 and ds.inputs.shape == (4, 1, 12, 12)
    for i, name in enumerate(ds.labels["name"]):
        np.testing.assert_array_equal(ds.inputs[i, 0], pairs[name][0] / np.float32(255))
        np.testing.assert_array_equal(ds.targets[i, 0], pairs[name][1] / np.float32(255))
    assert infer_dataset(tmp_path) == "folder"
    assert load_dataset(None, tmp_path, image_size=8).inputs.shape == (4, 1, 8, 8)


def test_folder_missing_partner_names_it(tmp_path, rng):
    make_folder(tmp_path, rng)
    write_gray(tmp_path / "inputs" / "lonely.png", noise(rng))
    with pytest.raises(ValueError, match=r"lonely\.png has no partner.*targets.*lonely"):
        load_folder(tmp_path)


def test_folder_target_without_input_is_skipped_with_warning(tmp_path, rng):
    make_folder(tmp_path, rng)
    write_gray(tmp_path / "targets" / "extra.png", noise(rng))
    with pytest.warns(UserWarning, match="extra.png"):
        ds = load_folder(tmp_path)
    assert len(ds) == 3


def test_folder_unreadable_file_names_it(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "targets" / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageReadError, match=r"targets[/\\]b\.png"):
        load_folder(tmp_path)


def test_folder_mixed_sizes_error_or_resize(tmp_path, rng):
    make_folder(tmp_path, rng)
    write_gray(tmp_path / "inputs" / "z.png", noise(rng, 20, 16))
    write_gray(tmp_path / "targets" / "z.png", noise(rng, 20, 16))
    with pytest.raises(ValueError, match=r"z\.png: image is 16x20.*must share one size"):
        load_folder(tmp_path, image_size=None)
    ds = load_folder(tmp_path, image_size=10)
    assert ds.inputs.shape == (4, 1, 10, 10)


def test_folder_missing_and_empty_directories(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "inputs").mkdir()
    with pytest.raises(ValueError, match="targets.*is missing"):
        load_folder(tmp_path)
    (tmp_path / "targets").mkdir()
    with pytest.raises(ValueError, match="inputs holds no image files"):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="needs --data"):
        load_folder(None)


def test_folder_non_ascii_names(tmp_path, rng):
    name = "visage_é_ü_日本"
    x = noise(rng)
    write_gray(tmp_path / "inputs" / f"{name}.png", x)
    write_gray(tmp_path / "targets" / f"{name}.png", noise(rng))
    ds = load_folder(tmp_path, image_size=None)
    assert ds.labels["name"][0] == name
    np.testing.assert_array_equal(ds.inputs[0, 0], x / np.float32(255))
    write_gray(tmp_path / "inputs" / "données_ñ.png", noise(rng))
    with pytest.raises(ValueError, match="données_ñ.png has no partner"):
        load_folder(tmp_path)


def test_folder_csv_of_pairs_with_labels(tmp_path, rng):
    [write_gray(tmp_path / "img" / f"front{i}.png", noise(rng)) for i in range(4)]
    rows = ["input,target,identity,yaw"]
    for i in range(4):
        for yaw in (-30, 0, 30):
            write_gray(tmp_path / "img" / f"p{i}_{yaw}.png", noise(rng))
            rows.append(f"img/p{i}_{yaw}.png,img/front{i}.png,{i},{yaw}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = load_folder(tmp_path, image_size=None)
    assert len(ds) == 12
    assert ds.labels["identity"].dtype == np.int64 and ds.labels["yaw"].tolist()[:3] == [-30, 0, 30]
    np.testing.assert_array_equal(ds.targets[0], ds.targets[2])  # shared target
    train, val, test = get_splits("folder", tmp_path, image_size=None, fractions=(0.5, 0.25, 0.25))
    sets = [set(s.labels["identity"].tolist()) for s in (train, val, test)]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    # A row naming a missing file is reported with its line.
    (tmp_path / "pairs.csv").write_text("input,target\nimg/none.png,img/front0.png\n")
    with pytest.raises(ValueError, match=r"pairs\.csv, line 2: input file .*none\.png"):
        load_folder(tmp_path)
    (tmp_path / "pairs.csv").write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match="'input' and 'target'"):
        load_folder(tmp_path)


# ---------------------------------------------------------------------------- multipie
def make_multipie(root, rng, subjects=(1, 2), cameras=("051", "080", "130", "050"),
                  lights=(7, 0)):
    images = {}
    for s in subjects:
        for cam in cameras:
            for light in lights:
                name = f"{s:03d}_01_01_{cam}_{light:02d}.png"
                # Nested like the real tree: session01/multiview/SSS/01/CAM/
                path = root / "session01" / "multiview" / f"{s:03d}" / "01" / cam / name
                images[name] = noise(rng)
                write_gray(path, images[name])
    return images


def test_multipie_pairs_with_frontal_camera_and_light(tmp_path, rng):
    images = make_multipie(tmp_path, rng)
    ds = load_multipie(tmp_path, image_size=None)
    assert len(ds) == 2 * 4 * 2
    lab = ds.labels
    for i in range(len(ds)):
        s = int(lab["subject"][i])
        target = images[f"{s:03d}_01_01_051_07.png"] / np.float32(255)
        np.testing.assert_array_equal(ds.targets[i, 0], target)
        assert lab["yaw"][i] == CAMERA_YAW[str(lab["camera"][i])]
    frontal = (lab["camera"] == "051") & (lab["light"] == 7)
    np.testing.assert_array_equal(ds.inputs[frontal], ds.targets[frontal])
    assert sorted(set(lab["yaw"].tolist())) == [-45.0, -30.0, 0.0, 15.0]
    assert infer_dataset(tmp_path) == "multipie"
    # Another target light; a subset of lights; a yaw limit.
    ds0 = load_multipie(tmp_path, image_size=None, target_light=0, lights=[7])
    assert len(ds0) == 8
    np.testing.assert_array_equal(ds0.targets[0, 0], images["001_01_01_051_00.png"] / np.float32(255))
    assert len(load_multipie(tmp_path, image_size=None, max_abs_yaw=30)) == 2 * 3 * 2


def test_multipie_missing_partner_error_or_skip(tmp_path, rng):
    make_multipie(tmp_path, rng)
    write_gray(tmp_path / "003_02_01_080_07.png", noise(rng))
    with pytest.raises(ValueError, match=r"003_02_01_080_07\.png has no frontal partner: "
                                         r"expected 003_02_01_051_07"):
        load_multipie(tmp_path)
    with pytest.warns(UserWarning, match="no frontal partner"):
        ds = load_multipie(tmp_path, on_missing="skip")
    assert len(ds) == 16


def test_multipie_bad_names_overhead_cameras_and_empty(tmp_path, rng):
    make_multipie(tmp_path, rng)
    write_gray(tmp_path / "001_01_01_081_07.png", noise(rng))  # overhead camera: no yaw
    with pytest.warns(UserWarning, match="without a yaw"):
        assert len(load_multipie(tmp_path)) == 16
    write_gray(tmp_path / "portrait.png", noise(rng))
    with pytest.raises(ValueError, match=r"portrait\.png: name does not follow"):
        load_multipie(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        load_multipie(empty)
    with pytest.raises(ValueError, match="no such directory"):
        load_multipie(tmp_path / "absent")


def test_multipie_splits_by_subject(tmp_path, rng):
    make_multipie(tmp_path, rng, subjects=(1, 2, 3, 4, 5, 6))
    parts = get_splits("multipie", tmp_path, image_size=None, fractions=(0.5, 0.25, 0.25))
    subjects = [set(p.labels["subject"].tolist()) for p in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    assert set().union(*subjects) == {1, 2, 3, 4, 5, 6}


# --------------------------------------------------------------------------------- npz
def test_npz_uint8_float_and_labels(tmp_path, rng):
    x = rng.integers(0, 256, size=(6, 10, 10), dtype=np.uint8)
    t = rng.random((6, 1, 10, 10)).astype(np.float64)
    rec = np.rec.fromarrays([np.arange(6) // 2, np.linspace(-30, 30, 6)], names="identity,yaw")
    np.savez(tmp_path / "d.npz", inputs=x, targets=t, labels=rec, label_light=np.arange(6),
             unrelated=np.zeros(3))
    ds = load_npz(tmp_path / "d.npz", image_size=None)
    np.testing.assert_array_equal(ds.inputs[:, 0], x / np.float32(255))
    np.testing.assert_allclose(ds.targets, t, rtol=1e-6)
    assert set(ds.labels) == {"identity", "yaw", "light"}
    assert infer_dataset(tmp_path / "d.npz") == "npz"
    assert load_npz(tmp_path / "d.npz", image_size=6).inputs.shape == (6, 1, 6, 6)
    a16 = rng.integers(0, 65536, size=(2, 3, 3), dtype=np.uint16)
    np.savez(tmp_path / "w.npz", inputs=a16, targets=a16)
    np.testing.assert_allclose(load_npz(tmp_path / "w.npz", image_size=None).inputs[:, 0],
                               a16 / 65535.0, atol=1e-7)


def test_npz_round_trip_with_save_npz(tmp_path, rng):
    x = rng.random((4, 1, 6, 6)).astype(np.float32)
    from gasca_core.data import PairDataset
    ds = PairDataset(x, x[::-1].copy(), {"identity": np.arange(4), "camera": np.array(list("abcd"))})
    back = load_npz(save_npz(ds, tmp_path / "out" / "pairs.npz"), image_size=None)
    np.testing.assert_array_equal(back.inputs, ds.inputs)
    np.testing.assert_array_equal(back.targets, ds.targets)
    assert back.labels["camera"].tolist() == list("abcd")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pairs.npz"]


@pytest.mark.parametrize("arrays, match", [
    (dict(inputs=np.zeros((2, 4, 4))), "no array 'targets'"),
    (dict(inputs=np.zeros((2, 4, 4)), targets=np.zeros((3, 4, 4))), "same shape"),
    (dict(inputs=np.full((2, 4, 4), 2.0), targets=np.zeros((2, 4, 4))), r"values in \[0, 1\]"),
    (dict(inputs=np.full((2, 4, 4), np.nan), targets=np.zeros((2, 4, 4))), "NaN"),
    (dict(inputs=np.zeros((2, 4, 4), np.int32), targets=np.zeros((2, 4, 4))), "dtype int32"),
    (dict(inputs=np.zeros((2, 3, 4, 4)), targets=np.zeros((2, 3, 4, 4))), "shape"),
    (dict(inputs=np.zeros((2, 4, 4)), targets=np.zeros((2, 4, 4)), label_yaw=np.zeros(5)),
     "label 'yaw'"),
])
def test_npz_bad_contents_are_named(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz", image_size=None)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npz: not a readable \.npz"):
        load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load_npz(tmp_path / "single.npy")
    with pytest.raises(ValueError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "pickled.npz", inputs=obj, targets=obj)
    with pytest.raises(ValueError, match="pickled.npz: cannot read its arrays"):
        load_npz(tmp_path / "pickled.npz")


def test_npz_plain_labels_array_becomes_label(tmp_path):
    from gasca_core.data import load_dataset
    x = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "p.npz", inputs=x, targets=x, labels=np.arange(6) % 3)
    ds = load_dataset("npz", tmp_path / "p.npz", image_size=None)
    np.testing.assert_array_equal(ds.labels["label"], np.arange(6) % 3)
    np.savez(tmp_path / "bad.npz", inputs=x, targets=x, labels=np.zeros((6, 2)))
    with pytest.raises(ValueError, match="bad.npz.*'labels' must be"):
        load_dataset("npz", tmp_path / "bad.npz", image_size=None)
