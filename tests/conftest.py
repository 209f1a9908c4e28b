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
