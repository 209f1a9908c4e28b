"""Shared test fixtures: optional oracles (PyTorch) and devices (CUDA) are skipped cleanly."""
import signal

import numpy as np
import pytest

# The Ctrl-C tests send SIGINT to the commands they start, as a terminal does. A shell that
# starts pytest in the background (`pytest &`, nohup) sets SIGINT to "ignore", children
# inherit that, and Python then installs no KeyboardInterrupt handler: the command would
# run to its end and the test would read that as a failure of the command. A handler in
# this process is reset to the default in every child it starts, which is what a user's
# terminal gives the command.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _torch():
    try:
        import torch  # noqa: F401
        return torch
    except Exception:  # not installed, or broken install
        return None


@pytest.fixture
def torch():
    t = _torch()
    if t is None:
        pytest.skip("PyTorch is not installed: the PyTorch oracle checks are skipped")
    t.backends.cudnn.allow_tf32 = False
    t.backends.cuda.matmul.allow_tf32 = False
    return t


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shifted_pairs():
    """`write_shifted_pairs` below, for the modules' own dataset fixtures."""
    return write_shifted_pairs


def write_shifted_pairs(path, n: int = 96, yaws: bool = False) -> str:
    """The tools' small .npz dataset: 16x16 blocky inputs, targets the inputs shifted by a
    pixel (and dimmed), four images per identity; with yaws, a label_yaw cycling -30, 0, 30.
    Returns the path as a string."""
    rng = np.random.default_rng(0)
    x = np.kron(rng.random((n, 4, 4)), np.ones((4, 4))).astype(np.float32)
    y = np.clip(0.7 * np.roll(x, 1, axis=-1) + 0.15, 0, 1).astype(np.float32)
    labels = {"label_identity": np.repeat(np.arange(n // 4), 4)}
    if yaws:
        labels["label_yaw"] = np.tile([-30, 0, 30], n // 3)
    np.savez(path, inputs=x, targets=y, **labels)
    return str(path)
