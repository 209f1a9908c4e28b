"""Shared test fixtures: optional oracles (PyTorch) and devices (CUDA) are skipped cleanly."""
import numpy as np
import pytest


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
