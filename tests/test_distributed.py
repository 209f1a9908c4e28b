"""Data-parallel training (gasca_core.distributed, docs/DISTRIBUTED.md).

The pieces without MPI: slices, launch detection, the bucket on one process, importing
without MPI. Then real jobs under ``mpiexec`` (one thread per rank), skipped with the
reason where mpi4py or mpiexec is missing (pip install ".[mpi]"):

- 2 ranks x half the batch reach the parameters of 1 process x the whole batch, for every
  phase kind (joint; GANGGLW's greedy stages, the second on codes, and its G and D
  fine-tunes), with batches of 3 over 10 pairs: slices of 1 and 2, and a last batch of one
  pair where rank 0's slice is empty;
- mpiexec -n 1 is bit for bit the run without mpiexec;
- a rank that raises ends the job with a message naming it; the checkpoint saved before
  stays, and resumes on 1 process;
- a rank killed with SIGKILL ends the job within seconds.

The tolerance. The 2-rank gradient is the same sum in another order, so it differs from
the 1-process gradient by a few float32 roundings: a relative 1e-6 or so. Adam passes a
relative difference of the gradient through to its step (the step is lr m/(sqrt(v) + eps),
homogeneous of degree 0 in the gradient), so a parameter moves differently by about
1e-6 lr per update, and after U updates by about 1e-6 lr U. We allow 100 times that,
1e-4 lr U, for 99% of the parameters. The others may have a gradient near 0, where the
normalisation can turn a rounding difference into a step of another sign: each step is at
most about lr in size, so no parameter may differ by more than 2 lr U. A wrong weighting
(the mean of the per-rank means) misses the first bound by orders of magnitude: its
median difference is about 0.4 lr in this very run.
"""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gasca_core
from gasca_core.distributed import GradientBucket, World, find_mpiexec, launched_by_mpi, shard
from gasca_core.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SRC = str(Path(gasca_core.__file__).resolve().parents[1])
LR = 2e-3
TINY = ["--image-size", "16", "--channels", "4,6", "--kernel-sizes", "3,3", "--batch-size", "3",
        "--max-train", "10", "--no-progress", "--adv-weight", "0.1", "--lr", str(LR)]
# gangglw with 2 levels and --steps 16 at --finetune-share 0.5: greedy-1 (4 steps),
# greedy-2 on codes (4), finetune_g-2 (8), finetune_d-2 (2); batches of 3 over 10 pairs:
# 3, 3, 3, 1, so every greedy stage ends on the batch of one pair.
GANGGLW = ["--method", "gangglw", "--steps", "16", "--finetune-share", "0.5"]
JOINT = ["--method", "joint", "--steps", "8"]


# ----------------------------------------------------------------------------- no MPI


@pytest.mark.parametrize("n, size", [(32, 1), (32, 2), (3, 2), (1, 2), (0, 3), (10, 4), (5, 8)])
def test_shards_cover_the_batch_once_in_order(n, size):
    parts = [shard(n, r, size) for r in range(size)]
    assert [i for p in parts for i in range(n)[p]] == list(range(n))
    lengths = [len(range(n)[p]) for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard(4, 2, 2)


def test_launch_is_detected_from_the_launchers_variables():
    assert not launched_by_mpi({"HOME": "/root"})
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        assert launched_by_mpi({name: "0"})


def test_importing_gasca_core_imports_no_mpi():
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    env["PYTHONPATH"] = SRC
    code = ("import sys, gasca_core, gasca_core.training, gasca_core.distributed, "
            "gasca_core.cli.train; assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_bucket_on_one_process_passes_gradients_bit_for_bit(rng):
    from gasca_core.nn import Parameter
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in ((3, 4), (5,))]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    bucket = GradientBucket(params, World())
    assert bucket.nbytes == 4 * (12 + 5 + 3 + 1 + 2)
    r = bucket.all_reduce(1.0, [0.25, None], status=0, clock=7.5)
    for p, g in zip(params, grads):
        assert np.array_equal(p.grad, g)
    assert r.values == [0.25, 0.0] and r.bad == {} and r.finite and r.clock == 7.5 and not r.stop
    params[0].grad[0, 0] = np.nan
    r = bucket.all_reduce(0.5, [1.0], status=2)
    assert r.bad == {0: 2} and not r.finite and r.values == [0.5]
    assert np.allclose(params[1].grad, 0.5 * grads[1])


class ThreadWorld(World):
    """`size` ranks as threads of one process, for the bucket's arithmetic without MPI:
    all_reduce_sum waits for every rank's buffer and hands each the sum."""
    distributed = True

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def all_reduce_sum(self, buffer):
        barrier, buffers = self.shared
        buffers[self.rank] = buffer.copy()
        barrier.wait()
        buffer[...] = sum(buffers[1:], buffers[0])   # every rank sums in the same order
        barrier.wait()


def test_the_bucket_weights_ranks_by_their_pairs_not_their_means(rng):
    """Two ranks holding 1 and 2 of a batch of 3 pairs end with the whole batch's gradient
    and loss; the mean of their means would not."""
    import threading

    from gasca_core import functional as F
    from gasca_core.nn import Linear
    from gasca_core.tensor import Tensor
    x = rng.standard_normal((3, 5)).astype(np.float32)
    y = rng.standard_normal((3, 2)).astype(np.float32)

    def model():
        return Linear(5, 2, rng=np.random.default_rng(7))
    whole = model()
    loss = F.mse_loss(whole(Tensor(x)), Tensor(y))
    loss.backward()
    expected = [p.grad.copy() for p in whole.parameters()]
    shared = (threading.Barrier(2), [None, None])
    got = [None, None]

    def rank(r):
        part = shard(3, r, 2)   # 1 pair on rank 0, 2 on rank 1
        m = model()
        local = F.mse_loss(m(Tensor(x[part])), Tensor(y[part]))
        local.backward()
        bucket = GradientBucket(list(m.parameters()), ThreadWorld(r, 2, shared))
        reduced = bucket.all_reduce(len(x[part]) / 3, [float(local.item())], status=0)
        got[r] = ([p.grad.copy() for p in m.parameters()], reduced, float(local.item()))
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for grads, reduced, _ in got:
        for g, e in zip(grads, expected):
            assert np.allclose(g, e, rtol=1e-5, atol=1e-7)
        assert reduced.values[0] == pytest.approx(float(loss.item()), rel=1e-6)
    mean_of_means = (got[0][2] + got[1][2]) / 2
    assert abs(mean_of_means - float(loss.item())) > 1e-3   # the trap this avoids is real here


def test_nccl_is_refused_clearly_without_cupy():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: the refusal without it cannot be seen here")
    from gasca_core.distributed import DistributedError
    from gasca_core.distributed.world import _check_gpus
    with pytest.raises(DistributedError, match="NCCL through CuPy"):
        _check_gpus(1)


# ----------------------------------------------------------------------------- under mpiexec


def _mpiexec():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip('mpi4py is not installed: pip install ".[mpi]" to run the MPI tests')
    exe = find_mpiexec()
    if exe is None:
        pytest.skip('no mpiexec on PATH (nor beside this Python): pip install ".[mpi]" brings '
                    "MPICH's")
    return exe


def _env():
    env = {k: v for k, v in os.environ.items() if not launched_by_mpi({k: v})}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return env


def _train(out, args, ranks=None, script=None, env=None, timeout=240):
    """Run the train command: under `mpiexec -n ranks`, or plain when ranks is None."""
    entry = [sys.executable, script] if script else [sys.executable, "-m", "gasca_core.train"]
    cmd = entry + ["--dataset", "npz", "--data", DATA, "--out", str(out), *TINY, *args]
    if ranks is not None:
        cmd = [_mpiexec(), "-n", str(ranks)] + cmd
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


DATA = ""


@pytest.fixture(scope="module", autouse=True)
def npz_data(tmp_path_factory, shifted_pairs):
    """The tools' small .npz dataset (tests/conftest.py: write_shifted_pairs)."""
    global DATA
    DATA = shifted_pairs(tmp_path_factory.mktemp("data") / "pairs.npz")


def _params(out):
    meta, states = load_checkpoint(os.path.join(out, "latest.npz"))
    return meta, {f"{net}.{k}": v for net in ("g", "d") for k, v in states[net].items()}


def _assert_same_training(ref_out, out, what):
    ref_meta, ref = _params(ref_out)
    meta, got = _params(out)
    assert meta["finished"] and ref_meta["finished"]
    assert meta["counters"] == ref_meta["counters"], what
    for net, updates in (("g", ref_meta["counters"]["g_updates"]),
                         ("d", ref_meta["counters"]["d_updates"])):
        keys = [k for k in ref if k.startswith(net + ".")]
        diff = np.concatenate([np.abs(got[k] - ref[k]).ravel() for k in keys])
        bulk, bound = 1e-4 * LR * updates, 2 * LR * updates
        assert np.quantile(diff, 0.99) <= bulk, (what, net, np.quantile(diff, 0.99), bulk)
        assert diff.max() <= bound, (what, net, diff.max(), bound)


@pytest.mark.parametrize("method", [GANGGLW, JOINT], ids=["gangglw", "joint"])
def test_two_ranks_train_as_one_process(tmp_path, method):
    one = _train(tmp_path / "one", method)
    assert one.returncode == 0, one.stderr
    two = _train(tmp_path / "two", method, ranks=2)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "data parallel: 2 MPI ranks" in two.stdout
    assert two.stdout.count("test set (") == 1   # rank 0 alone reports
    _assert_same_training(tmp_path / "one", tmp_path / "two", method[1])
    meta, _ = _params(tmp_path / "two")
    assert meta["world_size"] == 2
    # The losses logged are the global ones: the same as one process's, to rounding.
    def first_losses(out):
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            rec = json.loads(f.readline())
        return [rec[k] for k in sorted(rec) if k.startswith("train_")]
    assert np.allclose(first_losses(tmp_path / "two"), first_losses(tmp_path / "one"), rtol=1e-4)


def test_one_rank_under_mpiexec_is_bit_for_bit_the_plain_run(tmp_path):
    plain = _train(tmp_path / "plain", GANGGLW)
    assert plain.returncode == 0, plain.stderr
    one = _train(tmp_path / "mpi1", GANGGLW, ranks=1)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "data parallel: 1 MPI rank" in one.stdout
    _, a = _params(tmp_path / "plain")
    _, b = _params(tmp_path / "mpi1")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_failing_rank_ends_every_rank_and_the_run_resumes_on_another_n(tmp_path):
    env = {**_env(), "FAIL_RANK": "1", "FAIL_STEP": "9"}
    t0 = time.monotonic()
    r = _train(tmp_path / "run", GANGGLW + ["--eval-every", "2"], ranks=2,
               script=str(ROOT / "tests" / "mpi_planted_failure.py"), env=env, timeout=120)
    assert r.returncode != 0
    assert "rank 1 of 2 RuntimeError: planted failure at global step 9" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
    meta, _ = _params(tmp_path / "run")   # saved before the failure, intact
    assert not meta["finished"] and meta["counters"]["global_step"] == 8
    resumed = _train(tmp_path / "run", GANGGLW + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "saved on 2 process(es) and continues on 1" in resumed.stdout
    reference = _train(tmp_path / "reference", GANGGLW + ["--eval-every", "2"])
    assert reference.returncode == 0, reference.stderr
    _assert_same_training(tmp_path / "reference", tmp_path / "run", "resumed on 1 of 2")


def _descendants(pid):
    """Process ids below `pid` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        return int(env[b"PMI_RANK"]) if b"PMI_RANK" in env else None
    except (OSError, ValueError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def _start_a_long_job(out: Path) -> subprocess.Popen:
    """A 2-rank joint run far longer than any test waits, in its own process group."""
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "gasca_core.train", "--dataset", "npz",
           "--data", DATA, "--out", str(out), *TINY, *JOINT[:2], "--steps", "100000",
           "--eval-every", "5"]
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_rank_ends_the_job_within_seconds(tmp_path):
    out = tmp_path / "run"
    job = _start_a_long_job(out)
    try:
        deadline = time.monotonic() + 120
        while not (out / "latest.npz").exists():   # training is under way, a checkpoint saved
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
            time.sleep(0.2)
        victim = next(p for p in _descendants(job.pid) if _rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        output, _ = job.communicate(timeout=30)
        ended_in = time.monotonic() - t0
    finally:
        if job.poll() is None:   # never leave a job behind, whatever failed above
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0
    assert ended_in < 10, ended_in
    # MPICH names a process by pid, and the run's first lines map pids to ranks.  Which
    # one it names is a race: the killed rank, or a rank MPICH killed after it (both end
    # by signal 9), so the test asks for a pid of this job's ranks.
    assert "process ids by rank: " in output and f"1={victim}" in output, output
    ranks = dict(kv.split("=")[::-1] for kv in
                 re.search(r"process ids by rank: ([0-9=, ]+)", output).group(1).split(", "))
    named = re.search(r"PID (\d+) RUNNING", output)
    assert named and named.group(1) in ranks and "signal 9" in output, output
    meta, _ = _params(out)   # the last checkpoint is whole
    assert meta["world_size"] == 2
    assert not any(_rank_of(p) is not None for p in _descendants(job.pid))


def test_a_nan_stops_every_rank_alike_naming_the_ranks(tmp_path):
    r = _train(tmp_path / "run", JOINT + ["--lr", "1e30"], ranks=2)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.count("error: non-finite") == 1, r.stderr   # said once, by rank 0
    assert "G loss on rank" in r.stderr or "D loss on rank" in r.stderr, r.stderr


@pytest.mark.gpu
def test_nccl_smoke_run_on_one_gpu(tmp_path):
    """One rank through the NCCL path (NCCL does not run two ranks on one GPU)."""
    from gasca_core import backend
    try:
        backend.require_cuda()
    except RuntimeError as e:
        pytest.skip(f"no CUDA: {e}")
    r = _train(tmp_path / "run", JOINT + ["--device", "cuda"], ranks=1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gradients over NCCL" in r.stdout
    meta, params = _params(tmp_path / "run")
    assert meta["counters"]["g_updates"] == 8 and all(np.isfinite(v).all() for v in params.values())


def test_a_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    """Every rank reads rank 0's clock from the all-reduce: they leave each phase after the
    same step (else they would wait for each other forever, or fail the check of their
    parameters at the phase's end)."""
    r = _train(tmp_path / "run", GANGGLW[:2] + ["--steps", "100000", "--time-budget", "3",
                                                "--lr-schedule", "cosine"], ranks=2, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("time share used up") == 4, r.stdout


def test_ctrl_c_stops_every_rank_after_the_same_step_and_saves(tmp_path):
    out = tmp_path / "run"
    job = _start_a_long_job(out)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)   # mpiexec passes Ctrl-C on to every rank
        output, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 130, output
    assert output.count("interrupted in joint-2 at step") == 1, output   # rank 0 saved
    meta, _ = _params(out)
    assert not meta["finished"] and meta["phase_step"] == meta["counters"]["global_step"] > 0


def test_the_distributed_benchmark_reports_both_n(tmp_path):
    """A smoke run at a tiny size (the figures themselves are taken on an idle machine)."""
    _mpiexec()
    r = subprocess.run([sys.executable, "-m", "gasca_core.bench", "--sections", "distributed",
                        "--batch", "2", "--repeat", "1", "--threads", "2"], env=_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    for n in (1, 2):
        assert f"  N={n}: {n} rank(s)" in r.stdout and "updates/s" in r.stdout, r.stdout
    assert "1.54 MB all-reduced per step" in r.stdout, r.stdout   # gasca-64's G and D
    h = subprocess.run([sys.executable, "-m", "gasca_core.bench.distributed", "--help"],
                       env=_env(), capture_output=True, text=True)
    assert h.returncode == 0 and "usage:" in h.stdout, h.stderr


def test_mpi_without_mpi4py_is_refused_with_the_remedy(monkeypatch):
    from gasca_core.distributed import DistributedError, MPIWorld
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py now fails
    with pytest.raises(DistributedError, match=r'needs mpi4py.*pip install "\.\[mpi\]"'):
        MPIWorld()
