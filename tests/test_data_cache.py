"""Real datasets at full size: face boxes and crops, the Multi-PIE-shaped generated tree,
the prepared on-disk cache (resumable, refusing other options) and training that streams
from it."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from gasca_core.data import get_splits, infer_dataset, load_dataset
from gasca_core.data.cache import (CacheError, U8Images, cache_summary, load_cache,
                                   prepare_cache)
from gasca_core.data.crop import (CAMERA_BOXES, FRAME_SIZE, box_bounds, camera_boxes,
                                  crop_square, scale_box)
from gasca_core.data.multipie import CAMERA_YAW, load_multipie
from gasca_core.data.multipie_tree import (FLASH_LIGHTS, OVERHEAD_YAW, backdrop, file_path,
                                           render_frames, write_multipie_tree)
from gasca_core.data.pairs import PairDataset
from gasca_core.data.synthetic import light_directions, render_heads, sample_identities

HEAD_HEIGHT_CAMERAS = sorted(CAMERA_YAW, key=CAMERA_YAW.get)
# The shared tree leaves some recordings without their target on purpose (on_missing="skip").
pytestmark = pytest.mark.filterwarnings("ignore:.*no frontal partner")


# ----------------------------------------------------------------------------- crops
def test_crop_square_cuts_the_box_and_pads_outside_the_frame():
    a = np.arange(6 * 8, dtype=np.float32).reshape(6, 8) + 1
    # a 4x4 box centred at (x=2, y=2): rows 0..3, columns 0..3
    np.testing.assert_array_equal(crop_square(a, (2.0, 2.0, 4.0)), a[0:4, 0:4])
    # a box over the top-left corner: the part outside the frame is 0
    c = crop_square(a, (0.0, 0.0, 4.0))
    assert c.shape == (4, 4)
    np.testing.assert_array_equal(c[:2, :], 0)
    np.testing.assert_array_equal(c[:, :2], 0)
    np.testing.assert_array_equal(c[2:, 2:], a[0:2, 0:2])
    # wholly outside: all padding, still square
    assert not crop_square(a, (100.0, 100.0, 3.0)).any()
    assert box_bounds((320.0, 236.0, 256.0)) == (192, 108, 256)
    # boxes are given for 640x480 and follow the frame: at half size, half the box
    assert scale_box((320.0, 236.0, 256.0), (240, 320)) == (160.0, 118.0, 128.0)


def test_crop_boxes_file_overrides_some_cameras_and_bad_files_are_named(tmp_path):
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps({"51": [300, 200, 240], "240": [500, 250, 250]}))
    boxes = camera_boxes(str(f))
    assert boxes["051"] == (300.0, 200.0, 240.0) and boxes["240"] == (500.0, 250.0, 250.0)
    assert boxes["050"] == CAMERA_BOXES["050"]
    assert camera_boxes("none") is None
    f.write_text(json.dumps({"051": [1, 2]}))
    with pytest.raises(ValueError, match=r"boxes\.json, key '051'.*three numbers"):
        camera_boxes(str(f))
    f.write_text("{not json")
    with pytest.raises(ValueError, match=r"boxes\.json: cannot read it as JSON"):
        camera_boxes(str(f))
    with pytest.raises(ValueError, match="not found"):
        camera_boxes(str(tmp_path / "absent.json"))


# ----------------------------------------------------------------------------- the tree
def test_generated_tree_has_the_real_layout_frames_and_missing_partners(tmp_path):
    summary = write_multipie_tree(tmp_path, subjects=3, flashes=(0, 7), missing=0.5, seed=2)
    path = tmp_path / "session01" / "multiview" / "001" / "01" / "05_1" / "001_01_01_051_07.png"
    assert path == file_path(tmp_path, 1, 1, 1, "051", 7)
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == summary["total"] == 3 * 15 * 2 - summary["missing_targets"]
    lost = [s for s in (1, 2, 3) if not file_path(tmp_path, s, 1, 1, "051", 7).exists()]
    assert summary["missing_targets"] == len(lost) >= 1   # seeded: some recordings lose theirs
    with Image.open(files[0]) as im:
        assert im.size == (FRAME_SIZE[1], FRAME_SIZE[0]) and im.mode == "L"
    cams = {p.parent.name for p in files}
    assert {"08_1", "19_1", "05_1", "11_0", "24_0"} <= cams   # overhead cameras too
    # a second call keeps what is there and writes nothing
    assert write_multipie_tree(tmp_path, subjects=3, flashes=(0, 7), missing=0.5,
                               seed=2)["files"] == 0
    # the loader: overhead cameras skipped, missing partners skipped on request
    with pytest.warns(UserWarning):
        ds = load_multipie(tmp_path, image_size=16, on_missing="skip")
    assert set(ds.labels["camera"]) <= set(CAMERA_YAW)


def _head_centroid(img: np.ndarray, background: float, valid: np.ndarray) -> np.ndarray:
    """(row, column) centre of the valid pixels that differ from the rendered background."""
    rows, cols = np.nonzero((np.abs(img - background) > 0.03) & valid)
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize("camera", HEAD_HEIGHT_CAMERAS + ["081", "191"])
def test_cropping_puts_the_rendered_face_in_the_middle_of_the_crop(camera):
    """Each camera's default box cut from a generated frame and resized to 64 x 64 shows the
    face where a direct render at 64 x 64 has it: the same image when the face sits exactly
    in the box, and the head's centre within 1.5 px when it is moved by up to 4 px and
    scaled by up to 3% (as the tree does per recording). Where a box leaves the frame (the
    outermost cameras), only the part inside is compared: the rest is padding. The two
    overhead cameras (no yaw in the loader's table) are drawn at -30 / +30 degrees."""
    size = 64
    yaw = CAMERA_YAW.get(camera, OVERHEAD_YAW.get(camera))
    direct = render_heads(sample_identities(2, 0), np.array([1]), np.array([yaw]),
                          light_directions((FLASH_LIGHTS[7],)), size)[0, 0]
    left, top, n = box_bounds(CAMERA_BOXES[camera])
    cols = (np.arange(size) + 0.5) * n / size + left          # frame column of each crop column
    rows = (np.arange(size) + 0.5) * n / size + top
    valid = np.outer((rows > 2) & (rows < FRAME_SIZE[0] - 2), (cols > 2) & (cols < FRAME_SIZE[1] - 2))
    assert valid.mean() > 0.6
    exact = read_gray_array(render_frames(2, 1, 1, camera, [7], seed=0, jitter=0.0)[0],
                            CAMERA_BOXES[camera], size)
    assert float(np.mean((exact - direct)[valid] ** 2)) < 5e-4, camera
    moved = read_gray_array(render_frames(2, 1, 1, camera, [7], seed=0)[0],
                            CAMERA_BOXES[camera], size)
    shift = _head_centroid(moved, 0.25, valid) - _head_centroid(direct, 0.25, valid)
    assert np.all(np.abs(shift) < 1.5), (camera, shift)


def read_gray_array(frame: np.ndarray, box, size: int) -> np.ndarray:
    """What the loader does to one frame: crop to the box, resize to size x size."""
    from gasca_core.data.images import resize_gray
    a = frame.astype(np.float32) / 255.0
    return resize_gray(crop_square(a, scale_box(box, a.shape)), (size, size))


def test_multipie_loader_crops_frames_and_leaves_square_faces_whole(tmp_path):
    write_multipie_tree(tmp_path, subjects=2, cameras=("051", "041"), flashes=(7, 9))
    ds = load_multipie(tmp_path, image_size=32)
    assert len(ds) == 2 * 2 * 2
    i = int(np.flatnonzero((ds.labels["camera"] == "041") & (ds.labels["light"] == 9))[0])
    frame = np.asarray(Image.open(file_path(tmp_path, int(ds.labels["subject"][i]), 1, 1, "041", 9)))
    np.testing.assert_allclose(ds.inputs[i, 0], read_gray_array(frame, CAMERA_BOXES["041"], 32),
                               atol=1e-6)
    whole = load_multipie(tmp_path, image_size=32, crop="none")
    assert float(np.mean((whole.inputs - ds.inputs) ** 2)) > 1e-3   # a squashed frame differs
    # the backdrop shows at the frame's edge, not in the middle of the crop
    assert abs(float(whole.inputs[i, 0, -1, 0]) - float(backdrop()[-1, 0])) < 0.02


# ----------------------------------------------------------------------------- the cache
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpie")
    write_multipie_tree(root, subjects=6, cameras=("051", "050", "140", "041", "130"),
                        flashes=(0, 7, 9), missing=0.2, seed=1)
    return root


@pytest.fixture(scope="module")
def long_tree(tmp_path_factory):
    """A tree with enough chunks (about 450 images) that a prepare stopped after its first
    chunk is surely mid-way: on an idle machine two workers finish `tree` in well under a
    second, so a signal sent after its first chunk could arrive after the end."""
    root = tmp_path_factory.mktemp("mpie_long")
    write_multipie_tree(root, subjects=24, cameras=("051", "050", "140", "041", "130"),
                        flashes=(0, 5, 7, 9, 16), missing=0.2, seed=2)
    return root


def test_prepare_then_train_tools_read_the_cache(tree, tmp_path):
    out = prepare_cache("multipie", tree, tmp_path / "c", 16, {"on_missing": "skip"},
                        workers=1, progress=False, log=lambda s: None)
    assert infer_dataset(out) == "cache"
    ds = load_dataset(data=out, image_size=16)
    assert isinstance(ds.inputs, U8Images) and ds.lazy
    with pytest.warns(UserWarning):
        ref = load_multipie(tree, image_size=16, on_missing="skip")
    assert len(ds) == len(ref)
    # 8 bits after the crop and resize: within half a grey level of the float loader
    np.testing.assert_allclose(ds.inputs[np.arange(len(ds))], ref.inputs, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(ds.labels["camera"], ref.labels["camera"])
    # targets shared by several inputs are stored once
    assert cache_summary(out)["images"] < 2 * len(ds)
    # splits by subject, still lazy
    train, val, test = get_splits(data=out, image_size=16)
    assert train.lazy and not set(train.labels["subject"]) & set(test.labels["subject"])
    with pytest.raises(CacheError, match="holds 16x16 images, 32x32 were asked for"):
        load_cache(out, image_size=32)


def test_a_cache_made_with_other_options_is_refused(tree, tmp_path):
    out = tmp_path / "c"
    prepare_cache("multipie", tree, out, 16, {"on_missing": "skip"}, workers=1,
                  progress=False, log=lambda s: None)
    with pytest.raises(CacheError, match="image_size is"):
        prepare_cache("multipie", tree, out, 24, {"on_missing": "skip"}, workers=1,
                      progress=False, log=lambda s: None)
    with pytest.raises(CacheError, match="opts is"):
        prepare_cache("multipie", tree, out, 16, {"on_missing": "skip", "crop": "none"},
                      workers=1, progress=False, log=lambda s: None)


def test_an_interrupted_prepare_continues_to_the_same_cache(tree, tmp_path, monkeypatch):
    """Interrupted after 2 of its chunks, the cache reads as incomplete; the same command
    then finishes it, and it is byte for byte the cache of one uninterrupted prepare."""
    import gasca_core.data.cache as cache
    whole = prepare_cache("multipie", tree, tmp_path / "whole", 16, {"on_missing": "skip"},
                          workers=1, progress=False, log=lambda s: None, chunk=16)
    real, calls = cache._read_chunk, []

    def dying(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job[0])
        return real(job)
    monkeypatch.setattr(cache, "_read_chunk", dying)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        prepare_cache("multipie", tree, part, 16, {"on_missing": "skip"}, workers=1,
                      progress=False, log=lambda s: None, chunk=16)
    assert cache_summary(part)["chunks_done"] == 2 and not cache_summary(part)["complete"]
    with pytest.raises(CacheError, match="incomplete"):
        load_cache(part)
    monkeypatch.setattr(cache, "_read_chunk", real)
    said = []
    prepare_cache("multipie", tree, part, 16, {"on_missing": "skip"}, workers=1,
                  progress=False, log=said.append, chunk=16)
    assert "2 of" in said[0]
    for name in ("images.u8", "done.u8"):
        assert (part / name).read_bytes() == (whole / name).read_bytes(), name
    a, b = np.load(part / "pairs.npz"), np.load(whole / "pairs.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_killed_prepare_process_continues_to_the_same_cache(long_tree, tmp_path):
    """SIGKILL at a random moment of a prepare run as a command (two workers), then the
    same command again: the result equals one uninterrupted prepare."""
    tree = long_tree
    whole = prepare_cache("multipie", tree, tmp_path / "whole", 16, {"on_missing": "skip"},
                          workers=1, progress=False, log=lambda s: None, chunk=4)
    part = tmp_path / "part"
    code = ("import sys; from gasca_core.data.cache import prepare_cache; "
            f"prepare_cache('multipie', {str(tree)!r}, {str(part)!r}, 16, "
            "{'on_missing': 'skip'}, workers=2, progress=False, chunk=4)")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_a_chunk(proc, part)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if os.path.isdir("/proc"):   # its decoding workers notice and end by themselves
        deadline = time.time() + 15
        while _processes_with(str(part)) and time.time() < deadline:
            time.sleep(0.2)
        assert not _processes_with(str(part)), "the killed prepare's workers are still running"
    state = cache_summary(part)
    assert not state["complete"] and 1 <= state["chunks_done"] < state["chunks"], state
    with pytest.raises(CacheError, match="incomplete"):
        load_cache(part)
    subprocess.run([sys.executable, "-c", code], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (part / "images.u8").read_bytes() == (whole / "images.u8").read_bytes()
    assert cache_summary(part)["complete"]


def _wait_for_a_chunk(proc: subprocess.Popen, cache) -> None:
    """Wait until the prepare in proc has marked a chunk done; it must still be running."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (cache / "done.u8").exists() and np.fromfile(cache / "done.u8", np.uint8).sum() >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the prepare ended before it could be stopped mid-way"


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line holds marker (Linux /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_u8images_reads_only_what_is_asked_in_any_order():
    store = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    x = U8Images(store, np.array([4, 0, 2, 2]))
    assert x.shape == (4, 1, 2, 3) and len(x) == 4
    np.testing.assert_array_equal(x[1], store[0][None] / np.float32(255))
    np.testing.assert_array_equal(x[[3, 0]][:, 0], store[[2, 4]] / np.float32(255))
    np.testing.assert_array_equal(x[1:3][:, 0], store[[0, 2]] / np.float32(255))
    np.testing.assert_array_equal(np.asarray(x)[:, 0], store[[4, 0, 2, 2]] / np.float32(255))
    np.testing.assert_array_equal(x.subset([0, 3]).index, [4, 2])
    with pytest.raises(ValueError, match="within"):
        U8Images(store, np.array([5]))
    ds = PairDataset(x, x, {"k": np.arange(4)})
    assert ds.lazy and ds.subset([2]).inputs.index.tolist() == [2]
    with pytest.raises(ValueError, match="both"):
        PairDataset(x, np.zeros((4, 1, 2, 3), np.float32))


@pytest.mark.parametrize("method", ["gangglw", "joint"])
def test_training_from_the_cache_equals_training_from_arrays(tree, tmp_path, method):
    """The streamed path (memory-mapped batches, lazy splits, per-batch codes) trains, bit
    for bit, the network the same pairs held in memory train."""
    from gasca_core.models import GascaConfig
    from gasca_core.training import Trainer, TrainConfig
    out = prepare_cache("multipie", tree, tmp_path / "c", 16, {"on_missing": "skip"},
                        workers=1, progress=False, log=lambda s: None)
    lazy = load_cache(out)
    held = PairDataset(np.asarray(lazy.inputs), np.asarray(lazy.targets), lazy.labels)
    from gasca_core.data.splits import split_dataset
    mc = GascaConfig(image_size=16, channels=[4, 6, 8], kernel_sizes=[3, 3, 3])
    tc = TrainConfig(method=method, steps=12, batch_size=8, seed=1, adv_weight=1e-2)
    params = []
    for ds in (lazy, held):
        train, val, _ = split_dataset(ds, seed=0)
        t = Trainer(mc, tc, train, val, progress=False)
        t.run()
        params.append(t.G.state_dict())
    for k, v in params[1].items():
        np.testing.assert_array_equal(params[0][k], v, err_msg=k)


def test_data_commands_on_a_tree_decode_only_what_they_show(tree, tmp_path, capsys,
                                                             monkeypatch):
    """preview and info of a Multi-PIE tree read file names, and decode only the pairs the
    preview shows; prepare and make-multipie work as commands; info reports a cache."""
    from gasca_core.data import images
    from gasca_core.data.__main__ import main as data_main
    decoded = []
    real = images.read_gray

    def counting(path, *a, **k):
        decoded.append(path)
        return real(path, *a, **k)
    monkeypatch.setattr(images, "read_gray", counting)
    import gasca_core.data.folder as folder
    monkeypatch.setattr(folder, "read_gray", counting)
    out = tmp_path / "crops.png"
    assert data_main(["preview", "--data", str(tree), "--out", str(out), "-n", "4",
                      "--opt", "on_missing=skip"]) == 0
    assert out.exists() and len(decoded) <= 8          # 4 inputs and at most 4 targets
    with Image.open(out) as im:
        assert im.size[1] > 2 * 64
    assert data_main(["preview", "--data", str(tree), "--split", "test", "--out", str(out),
                      "-n", "3", "--opt", "on_missing=skip"]) == 0
    assert data_main(["info", "--data", str(tree), "--opt", "on_missing=skip"]) == 0
    text = capsys.readouterr().out
    assert "dataset: multipie" in text and "persons" in text and "label camera" in text
    assert len(decoded) <= 8 + 6
    cache = tmp_path / "cache"
    assert data_main(["prepare", "--data", str(tree), "--out", str(cache), "--image-size", "16",
                      "--opt", "on_missing=skip", "--workers", "1", "--no-progress"]) == 0
    assert data_main(["info", "--data", str(cache), "--image-size", "16"]) == 0
    assert "complete" in capsys.readouterr().out
    assert data_main(["prepare", "--data", str(tree), "--out", str(cache), "--image-size", "32",
                      "--opt", "on_missing=skip", "--no-progress"]) == 2
    assert "other options: image_size" in capsys.readouterr().err
    small = tmp_path / "small"
    assert data_main(["make-multipie", "--out", str(small), "--subjects", "1", "--cameras",
                      "051,050", "--flashes", "7,9"]) == 0
    assert len(list(small.rglob("*.png"))) == 4
    assert data_main(["make-multipie", "--out", str(small), "--cameras", "999"]) == 2


def test_detected_boxes_find_the_face_and_fall_back_to_the_camera_box(tmp_path):
    """crop="detect" (OpenCV's cascade, the "detect" extra): near-frontal faces are found
    near where they were pasted; profile views, where the cascade finds nothing, get the
    camera's box; without OpenCV the option is refused with the install line."""
    from gasca_core.data import crop as crop_mod
    from gasca_core.data.multipie import multipie_box_of
    from gasca_core.data.multipie_tree import placed_box
    try:
        crop_mod.require_detector()
    except ValueError as e:
        assert "gasca_core[detect]" in str(e)
        with pytest.raises(ValueError, match=r"gasca_core\[detect\]"):
            multipie_box_of("detect")
        pytest.skip(f"OpenCV is not installed: {e}")
    box_of = multipie_box_of("detect")
    found = 0
    for subject in (1, 2, 3):
        for camera in ("051", "050", "140"):
            frame = render_frames(subject, 1, 1, camera, [7])[0] / np.float32(255)
            box = box_of(file_path(tmp_path, subject, 1, 1, camera, 7), frame)
            truth = placed_box(camera, subject, 1, 1, 0, 4.0)
            if box != CAMERA_BOXES[camera]:
                found += 1
                assert abs(box[0] - truth[0]) < 0.25 * truth[2], (camera, box, truth)
                assert abs(box[1] - truth[1]) < 0.15 * truth[2], (camera, box, truth)
                assert 0.8 < box[2] / truth[2] < 1.25, (camera, box, truth)
    assert found >= 7
    side = render_frames(1, 1, 1, "240", [7])[0] / np.float32(255)   # +90 degrees
    assert box_of(file_path(tmp_path, 1, 1, 1, "240", 7), side) == CAMERA_BOXES["240"]


def test_ctrl_c_stops_a_two_worker_prepare_at_once_and_the_command_continues_it(long_tree, tmp_path):
    """SIGINT to `python -m gasca_core.data prepare` with two workers: it stops within
    seconds (no waiting for the queued chunks), says how to continue, leaves an incomplete
    cache, and the same command then completes it."""
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "gasca_core.data", "prepare", "--data", str(long_tree), "--out",
           str(out), "--image-size", "16", "--opt", "on_missing=skip", "--workers", "2",
           "--chunk", "1", "--no-progress"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_a_chunk(proc, out)
    os.killpg(proc.pid, signal.SIGINT)     # as Ctrl-C does: to the parent and its workers
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 20 and proc.returncode == 130, (proc.returncode, err)
    assert "run the same command again to continue" in err
    assert not cache_summary(out)["complete"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert cache_summary(out)["complete"] and len(load_cache(out)) > 0
