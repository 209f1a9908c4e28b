"""Long runs: memory stays flat over thousands of training steps, and no step's graph
outlives the step.

The model is a tiny convolutional autoencoder (conv 1->4 k3 s2 p1, LeakyReLU, convT 4->1
k3 s2 p1 op1, Sigmoid) on 16x16 images trained with Adam, so that every kernel of the
training path runs (conv forward and both gradients, transposed convolution, bias
gradients, the fused Adam step) and a step takes about a millisecond.

Three probes, each with a control that shows the probe would notice a leak:

  * RSS (from /proc/self/statm) over 2000 steps after a warm-up: grows by less than a
    bound far below what keeping one step's graph per step would cost.
  * tracemalloc (NumPy reports its array buffers to it) over a few hundred steps: the
    arrays alive at the end are no more than at the start, give or take one step's worth.
  * weak references to an intermediate activation and to the Context of the op that made
    it: both are dead once the step returns, even though the loss tensor is kept.
"""
from __future__ import annotations

import ctypes
import gc as pygc
import os
import tracemalloc
import weakref
from typing import List, Optional

import numpy as np
import pytest

import gasca_core as gc
from gasca_core import functional as F
from gasca_core import nn, optim

BATCH, SIZE = 4, 16


def tiny_autoencoder() -> nn.Module:
    rng = np.random.default_rng(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, rng=rng), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1, rng=rng), nn.Sigmoid())


class Trainer:
    """One model, one optimizer, one fixed batch; `step()` is one training iteration.

    `keep` chooses what survives a step, to show what the probes detect:
      None          nothing but the parameters and the optimizer state (the normal case)
      "loss"        the loss tensor of every step (as a training log might): harmless,
                    because backward releases the graph behind it
      "graph"       every loss *with* its graph (backward(retain_graph=True)): a real leak
    """

    def __init__(self, keep: Optional[str] = None) -> None:
        self.model = tiny_autoencoder()
        self.opt = optim.Adam(self.model.parameters(), lr=1e-3)
        rng = np.random.default_rng(1)
        self.x = gc.Tensor(rng.random((BATCH, 1, SIZE, SIZE)).astype(np.float32))
        self.keep = keep
        self.kept: List[gc.Tensor] = []
        self.last_hidden: Optional[weakref.ref] = None
        self.last_ctx: Optional[weakref.ref] = None

    def step(self) -> float:
        self.opt.zero_grad()
        hidden = self.model[1](self.model[0](self.x))  # encoder output: an intermediate
        y = self.model[3](self.model[2](hidden))
        loss = F.mse_loss(y, self.x)
        loss.backward(retain_graph=self.keep == "graph")
        self.opt.step()
        self.last_hidden = weakref.ref(hidden)
        self.last_ctx = weakref.ref(hidden._ctx) if hidden._ctx is not None else None
        if self.keep is not None:
            self.kept.append(loss)
        return float(loss.item())


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages -> bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_graph_bytes() -> int:
    """A lower bound on what one step's graph holds: its two largest activations
    (conv output and decoder output) in float32."""
    return 4 * BATCH * (4 * (SIZE // 2) ** 2 + SIZE * SIZE)


def release_free_heap() -> None:
    """Hand the allocator's free memory back to the system (glibc's malloc_trim), so that
    memory freed by earlier tests and kept by the allocator cannot absorb a leak unseen:
    after the whole suite it held enough to hide all but 2.9 MiB of the 24 MB the control
    below keeps.  Nothing to do where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_growth(trainer: Trainer, steps: int, warmup: int = 200) -> int:
    for _ in range(warmup):
        trainer.step()
    pygc.collect()
    release_free_heap()
    before = rss_bytes()
    for _ in range(steps):
        trainer.step()
    pygc.collect()
    return rss_bytes() - before


def traced_growth(trainer: Trainer, steps: int, warmup: int = 20) -> int:
    for _ in range(warmup):
        trainer.step()
    tracemalloc.start(1)
    try:
        pygc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            trainer.step()
        pygc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")

# 2000 leaked graphs would hold 2000 * one_graph_bytes() = 24 MB; a flat run grows by
# allocator noise only (a few hundred KB).  The bound sits well between the two.
RSS_STEPS = 2000
RSS_BOUND = 4 * 2**20


@needs_proc
def test_rss_stays_flat_over_2000_steps() -> None:
    trainer = Trainer(keep="loss")  # keeping the loss values must be harmless
    growth = rss_growth(trainer, RSS_STEPS)
    assert growth < RSS_BOUND, (
        f"RSS grew by {growth / 2**20:.1f} MiB over {RSS_STEPS} steps (bound "
        f"{RSS_BOUND / 2**20:.0f} MiB; one kept graph is {one_graph_bytes() / 1024:.0f} KiB)")
    assert np.isfinite(trainer.kept[-1].item())


@needs_proc
def test_rss_probe_detects_graphs_kept_alive() -> None:
    """Control: the same probe, with every step's graph kept, must see the growth.  As many
    steps as the probe itself: after the rest of the suite the heap holds free memory that
    kept graphs fill before the process grows (LeakyReLU keeps a byte mask, not a float
    slope, so a graph is smaller than it was), and half the steps could hide in it."""
    trainer = Trainer(keep="graph")
    growth = rss_growth(trainer, RSS_STEPS, warmup=50)
    assert growth > RSS_BOUND, f"only {growth / 2**20:.1f} MiB growth with graphs kept"


# tracemalloc sees allocator noise too (free lists, NumPy's small-buffer cache): a few KB,
# growing sublinearly.  100 leaked graphs would be > 100 * one_graph_bytes() = 800 KB.
TRACED_STEPS = 100
TRACED_BOUND = 64 * 1024


def test_traced_memory_stays_flat() -> None:
    growth = traced_growth(Trainer(), steps=TRACED_STEPS)
    assert growth < TRACED_BOUND, (
        f"tracemalloc: {growth} bytes more alive after {TRACED_STEPS} steps (bound "
        f"{TRACED_BOUND}); one graph holds >= {one_graph_bytes()} bytes")


def test_traced_memory_probe_detects_graphs_kept_alive() -> None:
    growth = traced_growth(Trainer(keep="graph"), steps=TRACED_STEPS)
    assert growth > TRACED_BOUND, f"only {growth} bytes traced with {TRACED_STEPS} graphs kept"


def test_no_intermediate_outlives_its_step() -> None:
    trainer = Trainer(keep="loss")
    for _ in range(3):
        trainer.step()
    assert trainer.last_ctx is not None, "the encoder output should have been recorded"
    # No gc.collect(): reference counting alone must free the graph (no cycles either).
    assert trainer.last_hidden() is None, "the encoder activation outlived its step"
    assert trainer.last_ctx() is None, "the Context of the op that made it outlived its step"


def test_weakref_probe_detects_graphs_kept_alive() -> None:
    trainer = Trainer(keep="graph")
    trainer.step()
    pygc.collect()
    assert trainer.last_hidden() is not None and trainer.last_ctx() is not None


def test_a_training_step_creates_no_reference_cycles() -> None:
    """Graphs are freed by reference counting the moment a step ends, never left for the
    cycle collector: with it switched off, a collection afterwards finds no garbage."""
    trainer = Trainer(keep="loss")
    for _ in range(3):
        trainer.step()
    was_enabled = pygc.isenabled()
    pygc.collect()
    pygc.disable()
    pygc.set_debug(pygc.DEBUG_SAVEALL)  # keep what a collection finds, in gc.garbage
    try:
        for _ in range(20):
            trainer.step()
        pygc.collect()
        garbage = list(pygc.garbage)
    finally:
        pygc.set_debug(0)
        pygc.garbage.clear()
        if was_enabled:
            pygc.enable()
    kinds = sorted({type(o).__name__ for o in garbage})
    assert not garbage, f"{len(garbage)} objects in reference cycles after 20 steps: {kinds}"
