"""The command-line entry points, run as a user runs them: python -m gasca_core.<tool>.

Includes the hard case for checkpoints: a real training process killed with SIGKILL at
arbitrary moments (during checkpoint writes included), then resumed, must end with exactly
the parameters of an uninterrupted run."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gasca_core.training import load_checkpoint

TINY = ["--image-size", "16", "--channels", "4,6", "--kernel-sizes", "3,3", "--batch-size", "8",
        "--no-progress"]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory, shifted_pairs):
    """A small .npz dataset: targets are inputs shifted by a pixel, with identities."""
    return shifted_pairs(tmp_path_factory.mktemp("data") / "pairs.npz")


def run(args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True,
                          timeout=timeout, **kw)


def train_args(npz, out, steps=40, extra=()):
    return (["gasca_core.train", "--dataset", "npz", "--data", npz, "--out", out,
             "--steps", str(steps)] + TINY + list(extra))


def final_params(out):
    meta, states = load_checkpoint(os.path.join(out, "latest.npz"))
    assert meta["finished"]
    return meta, states


def test_train_help_explains_every_flag():
    r = run(["gasca_core.train", "--help"])
    assert r.returncode == 0
    for flag in ("--method", "--dataset", "--data", "--epochs", "--batch-size", "--lr", "--seed",
                 "--device", "--out", "--resume", "--max-train", "--steps", "--adv-loss"):
        assert flag in r.stdout, flag


@pytest.mark.parametrize("args, message", [
    (["--method", "magic"], "invalid choice"),
    (["--batch-size", "0"], "positive integer"),
    (["--lr", "-1"], "finite number >= 0"),
    (["--steps", "5", "--epochs", "2"], "either --steps"),
    (["--dataset", "folder"], "needs --data"),
    (["--dataset", "folder", "--data", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--channels", "4,6", "--kernel-sizes", "3"], "one per level"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
    r = run(["gasca_core.train", "--out", str(tmp_path / "o"), "--no-progress"] + args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_train_evaluate_frontalize_round_trip(tmp_path, npz_data):
    out = str(tmp_path / "run")
    r = run(train_args(npz_data, out, steps=30))
    assert r.returncode == 0, r.stderr
    assert "output = input" in r.stdout and "mean target face" in r.stdout
    for name in ("latest.npz", "best.npz", "metrics.jsonl", "report.md"):
        assert os.path.exists(os.path.join(out, name)), name
    assert [f for f in os.listdir(out) if f.startswith("grid_")]
    # A second run into the same directory is refused unless resumed or overwritten.
    again = run(train_args(npz_data, out, steps=30))
    assert again.returncode != 0 and "--resume" in again.stderr

    ev = run(["gasca_core.evaluate", os.path.join(out, "latest.npz"), "--dataset", "npz",
              "--data", npz_data, "--grid", str(tmp_path / "eval.png")])
    assert ev.returncode == 0, ev.stderr
    assert "MSE" in ev.stdout and os.path.exists(tmp_path / "eval.png")

    from PIL import Image
    img = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)).save(img)
    fr = run(["gasca_core.frontalize", os.path.join(out, "latest.npz"), str(img),
              "--out", str(tmp_path / "front")])
    assert fr.returncode == 0, fr.stderr
    with Image.open(tmp_path / "front" / "face.png") as im:
        assert im.size == (16, 16)
    bad = run(["gasca_core.frontalize", os.path.join(out, "latest.npz"), str(tmp_path / "nope.png"),
               "--out", str(tmp_path / "front")])
    assert bad.returncode != 0 and "nope.png" in bad.stderr and "Traceback" not in bad.stderr


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, npz_data):
    steps = 60
    extra = ["--method", "gangglw", "--checkpoint-every", "1", "--eval-every", "5", "--seed", "4"]
    ref = str(tmp_path / "ref")
    r = run(train_args(npz_data, ref, steps, extra))
    assert r.returncode == 0, r.stderr
    ref_meta, ref_states = final_params(ref)

    out = str(tmp_path / "killed")
    kills = 0
    rng = np.random.default_rng(1)

    def start(resume):
        return subprocess.Popen([sys.executable, "-m"] + train_args(npz_data, out, steps, extra)
                                + (["--resume"] if resume else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = start(False)
    resumed = False
    for attempt in range(30):
        latest = os.path.join(out, "latest.npz")
        t0 = time.time()
        while not os.path.exists(latest) and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:   # it finished before the kill
            assert proc.returncode == 0
            if resumed:
                break
            shutil.rmtree(out)        # no resume happened yet: start over
            proc = start(False)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        # Whatever moment the kill hit, the checkpoint on disk is whole.
        meta, _ = load_checkpoint(latest)
        if meta["finished"]:
            # The kill landed after the last checkpoint (in the final report): the run is
            # complete, and a killed process is its expected end.
            proc = None
            if resumed:
                break
            shutil.rmtree(out)
            proc = start(False)
            continue
        resumed = True
        proc = start(True)
        if kills >= 3:
            break
    if proc is not None:
        assert proc.wait(timeout=300) == 0
    assert kills >= 1 and resumed
    meta, states = final_params(out)
    assert meta["counters"] == ref_meta["counters"]
    for net in ("g", "d"):
        assert states[net].keys() == ref_states[net].keys()
        for k in states[net]:
            np.testing.assert_array_equal(states[net][k], ref_states[net][k], err_msg=f"{net}/{k}")
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]  # torn temporaries swept


def test_device_cuda_without_a_gpu_says_what_is_missing(tmp_path):
    from gasca_core import backend
    try:
        backend.require_cuda()
        pytest.skip("a usable GPU is present")
    except RuntimeError:
        pass
    r = run(["gasca_core.train", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert any(w in r.stderr for w in ("CuPy", "GPU", "_C_cuda")), r.stderr


def test_classify_reports_pretrained_and_scratch_accuracy(tmp_path):
    rng = np.random.default_rng(2)
    n = 120
    yaw = np.repeat([-30, 0, 30], n // 3)
    ident = np.tile(np.arange(n // 3), 3)
    x = rng.random((n, 16, 16)).astype(np.float32) * 0.2
    for i, y in enumerate(yaw):  # the "pose" is where a bright bar sits
        c = 8 + y // 6
        x[i, :, c - 2:c + 2] = 0.9
    data = tmp_path / "yaw.npz"
    np.savez(data, inputs=x, targets=x[yaw == 0][ident % (n // 3)], label_yaw=yaw,
             label_identity=ident)
    out = str(tmp_path / "run")
    r = run(["gasca_core.train", "--dataset", "npz", "--data", str(data), "--out", out,
             "--steps", "20"] + TINY)
    assert r.returncode == 0, r.stderr
    c = run(["gasca_core.classify", os.path.join(out, "latest.npz"), "--dataset", "npz",
             "--data", str(data), "--label", "yaw", "--steps", "30", "--batch-size", "16",
             "--seeds", "1,2"])
    assert c.returncode == 0, c.stderr
    assert "pre-trained" in c.stdout and "from scratch" in c.stdout
    rows = [line for line in c.stdout.splitlines() if line.startswith("| GASCA") or line.startswith("| raw")]
    assert len(rows) == 3                                   # pre-trained, scratch x 2 budgets
    for line in rows:
        cells = [x.strip() for x in line.strip("|").split("|")]
        assert cells[1] == "2" and 0.0 <= float(cells[2]) <= 1.0   # 2 seeds each
    # identity: the classes are the test split's people, whom G never saw
    c = run(["gasca_core.classify", os.path.join(out, "latest.npz"), "--dataset", "npz",
             "--data", str(data), "--label", "identity", "--steps", "10", "--batch-size", "16",
             "--seeds", "1", "--no-equal-updates"])
    assert c.returncode == 0, c.stderr
    assert "test split's people (never seen by G)" in c.stdout

    bad = run(["gasca_core.classify", os.path.join(out, "latest.npz"), "--dataset", "npz",
               "--data", str(data), "--label", "colour"])
    assert bad.returncode != 0 and "colour" in bad.stderr and "Traceback" not in bad.stderr

    # Recognition across poses: per-yaw accuracy, the frontalize-first pipeline, and two
    # checkpoints of one data split: the scratch-on-raw row runs once per classifier seed.
    plot = tmp_path / "per_yaw.png"
    c = run(["gasca_core.classify", os.path.join(out, "latest.npz"), os.path.join(out, "latest.npz"),
             "--dataset", "npz", "--data", str(data), "--label", "yaw", "--steps", "10",
             "--batch-size", "16", "--seeds", "1,2", "--no-equal-updates", "--per-yaw",
             "--frontalized", "--plot", str(plot)])
    assert c.returncode == 0, c.stderr
    overall = c.stdout.split("test accuracy per yaw")[0]
    table = {cells[0]: cells for cells in
             ([x.strip() for x in line.strip("|").split("|")] for line in overall.splitlines()
              if line.startswith("| "))}
    assert table["raw faces: same network from scratch, equal classification steps"][1] == "2"
    assert any(k.startswith("GASCA encoder pre-trained by") and v[1] == "4" for k, v in table.items())
    assert any("frontalized faces" in k and v[1] == "4" for k, v in table.items())
    assert "test accuracy per yaw" in c.stdout
    per_yaw_header = [line for line in c.stdout.splitlines() if line.startswith("| network") and "+30" in line]
    assert per_yaw_header and "-30" in per_yaw_header[0] and "+0" in per_yaw_header[0]
    try:
        import matplotlib  # noqa: F401
        assert plot.exists() and plot.stat().st_size > 1000
    except ImportError:
        assert "matplotlib is not installed" in c.stdout
    bad = run(["gasca_core.classify", os.path.join(out, "latest.npz"), "--dataset", "npz",
               "--data", str(data), "--plot", str(plot)])
    assert bad.returncode != 0 and "--per-yaw" in bad.stderr and "Traceback" not in bad.stderr


def test_classify_keeps_layer_variants_apart(tmp_path):
    """A plain and a symmetric+local-global G of one method and seed: each gets its own
    pre-trained row and its own network from scratch (with its own layers), none pooled."""
    rng = np.random.default_rng(3)
    n = 60
    yaw = np.repeat([-30, 0, 30], n // 3)
    x = rng.random((n, 16, 16)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, inputs=x, targets=x, label_yaw=yaw)
    plain, other = str(tmp_path / "plain"), str(tmp_path / "other")
    for out, extra in ((plain, []), (other, ["--symmetric-levels", "1",
                                             "--local-global-levels", "2", "--local-global-grid", "2"])):
        r = run(["gasca_core.train", "--dataset", "npz", "--data", str(data), "--out", out,
                 "--steps", "6"] + TINY + extra)
        assert r.returncode == 0, r.stderr
    c = run(["gasca_core.classify", os.path.join(plain, "latest.npz"), os.path.join(other, "latest.npz"),
             "--dataset", "npz", "--data", str(data), "--label", "yaw", "--steps", "3",
             "--batch-size", "8", "--seeds", "1", "--no-equal-updates"])
    assert c.returncode == 0, c.stderr
    names = [line.strip("|").split("|")[0].strip() for line in c.stdout.splitlines()
             if line.startswith("| GASCA") or line.startswith("| raw")]
    suffix = " [symmetric levels 1; local+global levels 2 (grid 2)]"
    method = [k for k in names if k.startswith("GASCA encoder pre-trained by") and "[" not in k]
    assert len(method) == 1 and method[0].replace(", fine-tuned", suffix + ", fine-tuned") in names
    raw = "raw faces: same network from scratch, equal classification steps"
    assert raw in names and raw + suffix in names and len(names) == 4


def test_per_group_accuracy_splits_by_the_group_label():
    from gasca_core.cli.classify import per_group_accuracy
    correct = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    yaw = np.array([-30, -30, 0, 0, 30, 30])
    assert per_group_accuracy(correct, yaw) == {-30.0: 0.5, 0.0: 1.0, 30.0: 0.0}


def test_flags_become_one_config_in_every_tool():
    """train and compare turn the architecture flags into a GascaConfig in one place: a
    network keeps its architecture's name only when no flag changes one of its fields."""
    from gasca_core.cli import compare, train
    from gasca_core.models import DEFAULT_ARCHITECTURE, GascaConfig, architecture
    for parser in (train.build_parser(), compare.build_parser()):
        from gasca_core.cli.common import model_config_from_args
        default = model_config_from_args(parser.parse_args([]))
        assert default.to_dict() == architecture(DEFAULT_ARCHITECTURE).to_dict()
        g64 = model_config_from_args(parser.parse_args(["--arch", "gasca-64"]))
        assert g64.to_dict() == GascaConfig().to_dict() and g64.name == "gasca-64"
        same = model_config_from_args(parser.parse_args(["--arch", "gasca-64", "--channels",
                                                         "32,64,128", "--decoder", "transposed"]))
        assert same.name == "gasca-64"
        resize = model_config_from_args(parser.parse_args(["--arch", "gasca-64", "--decoder", "resize"]))
        assert resize.name == "custom" and resize.decoder == "resize"
        tanh = model_config_from_args(parser.parse_args(["--hidden-activation", "tanh"]))
        assert tanh.name == "custom" and tanh.hidden_activation == "tanh"
        small = model_config_from_args(parser.parse_args(["--image-size", "32"]))
        assert small.name == "custom" and small.image_size == 32


def test_train_without_an_adversary_and_with_a_d_ratio(tmp_path, npz_data):
    """--adv-weight 0: no D fine-tunes, no D updates, records without D probabilities, and
    the tools still work; --d-ratio 0.5 halves the D updates of the alternating phases."""
    import json
    out = str(tmp_path / "w0")
    r = run(train_args(npz_data, out, steps=20, extra=["--adv-weight", "0", "--eval-every", "4"]))
    assert r.returncode == 0, r.stderr
    assert "finetune_d" not in r.stdout and " 0 D updates" in r.stdout
    assert "s of training clock" in r.stdout and "s wall" in r.stdout
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert recs and all(rec["d_real"] is None and rec["d_fake"] is None for rec in recs)
    meta, _ = final_params(out)
    assert meta["counters"]["d_updates"] == 0 and meta["wall_seconds"] >= meta["elapsed"] > 0
    assert len(meta["phase_seconds"]) == 3 and abs(sum(meta["phase_seconds"]) - meta["elapsed"]) < 1e-9
    ev = run(["gasca_core.evaluate", os.path.join(out, "latest.npz"), "--dataset", "npz",
              "--data", npz_data])
    assert ev.returncode == 0, ev.stderr

    half = str(tmp_path / "half")
    r = run(train_args(npz_data, half, steps=20, extra=["--method", "joint", "--d-ratio", "0.5"]))
    assert r.returncode == 0, r.stderr
    meta, _ = final_params(half)
    assert meta["counters"]["g_updates"] == 20 and meta["counters"]["d_updates"] == 10
    bad = run(train_args(npz_data, str(tmp_path / "bad"), extra=["--d-ratio", "2"]))
    assert bad.returncode != 0 and "--d-ratio" in bad.stderr and "Traceback" not in bad.stderr


def test_classification_never_tests_on_what_pretraining_saw():
    """Identity: classes are the test split's people (G trained on the training split's),
    every person on both sides, no image on both; yaw: tested on the test split alone."""
    from gasca_core.cli.classify import leak_free_split
    from gasca_core.data import get_splits
    train, _, test = get_splits("synthetic-faces", seed=0, n_identities=12, image_size=16)
    xtr, ytr, xte, yte, classes = leak_free_split(train, test, "identity", seed=1)
    assert set(classes) == set(np.unique(test.labels["identity"]))
    assert not set(classes) & set(np.unique(train.labels["identity"]))
    assert set(ytr) == set(yte) == set(range(len(classes)))
    assert len(xtr) + len(xte) == len(test)
    again = leak_free_split(train, test, "identity", seed=1)
    np.testing.assert_array_equal(again[3], yte)             # a pure function of the seed
    xtr, _, xte, _, _ = leak_free_split(train, test, "yaw", seed=1)
    assert len(xtr) == len(train) and len(xte) == len(test)
