"""PairDataset, the seeded batching iterator (exact resume), image grids and the preview CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gasca_core.data as data_pkg
from gasca_core.data import BatchIterator, PairDataset, make_image_grid, save_image_grid
from gasca_core.data.__main__ import main as data_main


def small_dataset(n=10, rng=None):
    rng = rng or np.random.default_rng(0)
    x = rng.random((n, 1, 4, 4)).astype(np.float32)
    return PairDataset(x, x[::-1].copy(), {"identity": np.arange(n) // 2}, name="toy")


# ------------------------------------------------------------------------- PairDataset
def test_pair_dataset_items_and_validation():
    ds = small_dataset()
    x, t, lab = ds[3]
    assert x.shape == t.shape == (1, 4, 4) and lab == {"identity": 1}
    assert ds[-1][2]["identity"] == 4
    sub = ds.subset([0, 5])
    assert len(sub) == 2 and sub.labels["identity"].tolist() == [0, 2]
    with pytest.raises(IndexError, match="out of range"):
        ds[10]
    # (N, H, W) is given a channel axis.
    assert PairDataset(np.zeros((2, 3, 3)), np.zeros((2, 3, 3))).inputs.shape == (2, 1, 3, 3)
    with pytest.raises(ValueError, match="same shape"):
        PairDataset(np.zeros((2, 1, 3, 3)), np.zeros((2, 1, 3, 4)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        PairDataset(np.full((2, 1, 3, 3), 1.5), np.zeros((2, 1, 3, 3)))
    with pytest.raises(ValueError, match="labels\\['yaw'\\]"):
        PairDataset(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), {"yaw": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        PairDataset(np.zeros((2, 1, 3, 3, 3)), np.zeros((2, 1, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        PairDataset(np.zeros((2, 3)), np.zeros((2, 3)))
    # Codes (many channels, any range) are pairs too, unchecked.
    codes = PairDataset(np.full((2, 8, 3, 3), -2.0), np.zeros((2, 8, 3, 3)), check=False)
    assert codes.image_shape == (8, 3, 3) and codes.inputs.dtype == np.float32


# ---------------------------------------------------------------------- BatchIterator
def test_batch_iterator_streams_are_the_named_ones_and_batch_at_matches_iteration():
    """Epoch e of stream (name, seed, *keys) is ordered by default_rng([seed, id, *keys, e]):
    the trainer's batches ("batches", seed, phase) are the first release's
    default_rng([seed, 7, phase, epoch])."""
    ds = small_dataset()
    it = BatchIterator(ds, 3, seed=4, stream="batches", keys=(2,))
    for epoch in range(3):
        np.testing.assert_array_equal(
            it.order(epoch), np.random.default_rng([4, 7, 2, epoch]).permutation(len(ds)))
    walk = BatchIterator(ds, 3, seed=4, stream="batches", keys=(2,))
    for step in range(3 * len(walk)):
        by_step, epoch = it.batch_at(step)
        assert epoch == step // len(walk)
        np.testing.assert_array_equal(by_step.indices, walk.next_batch().indices)
    with pytest.raises(ValueError, match="unknown random stream"):
        BatchIterator(ds, 3, stream="nope")
    with pytest.raises(ValueError, match="step must be >= 0"):
        it.batch_at(-1)


def collect(it, batches):
    return [it.next_batch().indices.tolist() for _ in range(batches)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    ds = small_dataset(10)
    it = BatchIterator(ds, batch_size=3, seed=5)
    assert len(it) == 4
    epochs = []
    for _ in range(3):
        seen = [i for b in it for i in b.indices.tolist()]
        assert sorted(seen) == list(range(10))
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]
    b = BatchIterator(ds, batch_size=3, seed=5).next_batch()
    assert b.inputs.shape == (3, 1, 4, 4)
    np.testing.assert_array_equal(b.inputs, ds.inputs[b.indices])
    np.testing.assert_array_equal(b.targets, ds.targets[b.indices])
    np.testing.assert_array_equal(b.labels["identity"], ds.labels["identity"][b.indices])


def test_same_seed_same_stream_other_seed_other_stream():
    ds = small_dataset(10)
    a = collect(BatchIterator(ds, 4, seed=1), 9)
    assert a == collect(BatchIterator(ds, 4, seed=1), 9)
    assert a != collect(BatchIterator(ds, 4, seed=2), 9)
    # A Generator is accepted; its state decides the seed.
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    assert collect(BatchIterator(ds, 4, seed=g1), 5) == collect(BatchIterator(ds, 4, seed=g2), 5)


@pytest.mark.parametrize("stop", [1, 3, 4, 7])  # mid-epoch and exactly at epoch ends
def test_resume_from_state_continues_exactly(stop):
    ds = small_dataset(10)
    whole = collect(BatchIterator(ds, 3, seed=11), 12)
    first = BatchIterator(ds, 3, seed=11)
    head = collect(first, stop)
    state = first.get_state()
    assert set(state) == {"seed", "epoch", "position"}
    resumed = BatchIterator(ds, 3, seed=0)  # the seed comes back from the state
    resumed.set_state(dict(state))
    assert head + collect(resumed, 12 - stop) == whole


def test_resume_inside_a_for_loop():
    ds = small_dataset(10)
    ref = BatchIterator(ds, 4, seed=3)
    reference = [[b.indices.tolist() for b in ref] for _ in range(2)]
    it = BatchIterator(ds, 4, seed=3)
    got = []
    for b in it:
        got.append(b.indices.tolist())
        if len(got) == 2:
            break  # interrupted after two batches of epoch 0
    again = BatchIterator(ds, 4, seed=99)
    again.set_state(it.get_state())
    got += [b.indices.tolist() for b in again]
    assert got == reference[0]
    assert [b.indices.tolist() for b in again] == reference[1]


def test_drop_last_no_shuffle_and_bad_arguments():
    ds = small_dataset(10)
    it = BatchIterator(ds, 4, shuffle=False, drop_last=True)
    assert len(it) == 2
    assert [b.indices.tolist() for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(ds, 0)
    with pytest.raises(ValueError, match="drop_last"):
        BatchIterator(ds, 11, drop_last=True)
    with pytest.raises(ValueError, match="state"):
        it.set_state({"seed": 1})
    with pytest.raises(ValueError, match="does not fit"):
        it.set_state({"seed": 1, "epoch": 0, "position": 50})


# ------------------------------------------------------------------------------- grids
def test_grid_layout_and_pixels(tmp_path, rng):
    rows = [rng.random((3, 1, 5, 6)).astype(np.float32) for _ in range(2)]
    img = make_image_grid(rows, scale=2, padding=1)
    assert img.size == (1 + 3 * (12 + 1), 1 + 2 * (10 + 1))
    a = np.asarray(img)
    # Row 1, column 2 starts at x = 1 + 2 * 13, y = 1 + 11.
    tile = a[12:22:2, 27:39:2]
    np.testing.assert_array_equal(tile, np.rint(rows[1][2, 0] * 255).astype(np.uint8))
    path = save_image_grid(rows + [np.clip(rows[0] + 0.5, 0, 1)], tmp_path / "out" / "g.png",
                           labels=["input", "output", "target"], col_labels=["a", "b", "c"])
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.mode == "L"
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temp file left behind


def test_grid_bad_arguments_are_named(tmp_path):
    a, b = np.zeros((3, 1, 4, 4)), np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"rows\[1\] has shape"):
        make_image_grid([a, b])
    with pytest.raises(ValueError, match="labels has 1"):
        make_image_grid([a, a], labels=["x"])
    with pytest.raises(ValueError, match="NaN"):
        make_image_grid([np.full((1, 1, 2, 2), np.nan)])
    with pytest.raises(ValueError, match="unknown image suffix"):
        save_image_grid([a], tmp_path / "grid.nope")


# --------------------------------------------------------------------------------- CLI
def test_preview_cli_writes_a_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GASCA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "grid.png"
    assert data_main(["preview", "--opt", "n_identities=2", "--image-size", "32", "-n", "5",
                      "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.width > 5 * 32 * 2 and img.height > 2 * 32 * 2
        assert np.asarray(img).std() > 10
    assert "wrote" in capsys.readouterr().out
    # A bad path is one clear line and exit status 2, not a traceback.
    assert data_main(["preview", "--data", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_preview_cli_as_a_module(tmp_path):
    # Runs `python -m gasca_core.data` for real, from the same source tree as this import.
    src = str(Path(data_pkg.__file__).resolve().parents[2])
    env = dict(os.environ, GASCA_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "prev.png"
    done = subprocess.run([sys.executable, "-m", "gasca_core.data", "preview", "--opt",
                           "n_identities=2", "--image-size", "24", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.stat().st_size > 0
