"""BatchIterator: the one way gasca_core draws mini-batches (the trainer, the classify tool,
the training-step benchmark and user code all use it).

The order of the pairs in epoch e is a permutation drawn from the random stream
(stream, seed, *keys, e) of gasca_core.rng. The trainer's stream is ("batches", seed,
phase, e): batches are a pure function of (seed, phase, epoch, position), which is what
lets a resumed run draw exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple, Sequence, Union

import numpy as np

from ..rng import stream as random_stream
from .pairs import Labels, PairDataset


class Batch(NamedTuple):
    inputs: Any          # (B, C, H, W) float32, on the dataset's device
    targets: Any         # (B, C, H, W) float32
    labels: Labels       # name -> (B,)
    indices: np.ndarray  # (B,) positions in the dataset


class BatchIterator:
    """Shuffled mini-batches over a PairDataset, exactly resumable.

    dataset: the pairs. batch_size: pairs per batch; the last batch of an epoch is short
        unless drop_last=True skips it.
    seed: an int, or a numpy Generator from which one seed is drawn at construction.
    stream, keys: the random stream that orders each epoch (see gasca_core.rng): epoch e
        is ordered by stream(stream, seed, *keys, e). The trainer passes keys=(phase,).
    shuffle=False walks the pairs in order.

    Two ways to walk it:
    - as an iterator: ``for batch in it`` runs through the rest of the current epoch, then
      moves to the next; ``it.next_batch()`` returns one batch and moves into the next
      epoch by itself. ``get_state()`` / ``set_state()`` save and restore the position
      (seed, epoch, position: plain ints, e.g. for a checkpoint).
    - by step: ``it.batch_at(step)`` is the step-th batch counted from the start (epoch
      step // len(it)), without moving the iterator: for trainers that count steps;
      ``it.indices_at(step)`` its positions alone.
    """

    def __init__(self, dataset: PairDataset, batch_size: int,
                 seed: Union[int, np.random.Generator] = 0, stream: str = "batches",
                 keys: Sequence[int] = (), shuffle: bool = True, drop_last: bool = False) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} is empty: nothing to batch")
        if drop_last and int(batch_size) > len(dataset):
            raise ValueError(f"batch_size {batch_size} is larger than the dataset "
                             f"({len(dataset)} pairs) and drop_last=True: no batch would be made")
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2**63 - 1))
        random_stream(stream, 0)  # an unknown stream name fails here, not at the first batch
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = stream
        self.keys = tuple(int(k) for k in keys)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0  # pairs of the current epoch already handed out
        self._order_epoch = -1
        self._order = np.arange(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the pairs, (N,)."""
        if epoch != self._order_epoch:
            n = len(self.dataset)
            if self.shuffle:
                rng = random_stream(self.stream, self.seed, *self.keys, int(epoch))
                self._order = rng.permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = epoch
        return self._order

    def _batch(self, idx: np.ndarray) -> Batch:
        inputs, targets = self.dataset.take(idx)
        return Batch(inputs, targets, {k: v[idx] for k, v in self.dataset.labels.items()}, idx)

    def indices_at(self, step: int) -> tuple[np.ndarray, int]:
        """(the dataset positions of the step-th batch from the start, its epoch), without
        reading the pairs (data-parallel ranks read only their slice); the iterator does
        not move."""
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, pos = divmod(int(step), len(self))
        return self.order(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size], epoch

    def batch_at(self, step: int) -> tuple[Batch, int]:
        """(the step-th batch from the start, its epoch); the iterator does not move."""
        idx, epoch = self.indices_at(step)
        return self._batch(idx), epoch

    def _epoch_left(self) -> bool:
        left = len(self.dataset) - self.position
        return left >= self.batch_size if self.drop_last else left > 0

    def next_batch(self) -> Batch:
        """The next batch, moving into the next epoch when this one is used up."""
        if not self._epoch_left():
            self.epoch, self.position = self.epoch + 1, 0
        idx = self.order(self.epoch)[self.position:self.position + self.batch_size]
        self.position += len(idx)
        return self._batch(idx)

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; afterwards the next epoch begins."""
        if not self._epoch_left():  # the previous epoch ended exactly: start the next one
            self.epoch, self.position = self.epoch + 1, 0
        while self._epoch_left():
            yield self.next_batch()
        self.epoch, self.position = self.epoch + 1, 0

    def get_state(self) -> dict[str, int]:
        """{"seed", "epoch", "position"}: all that determines the rest of the stream."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state from get_state() (same dataset and batch size)."""
        try:
            seed, epoch, position = (int(state[k]) for k in ("seed", "epoch", "position"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"state must hold integer 'seed', 'epoch' and 'position', "
                             f"got {state!r}") from None
        if not 0 <= position <= len(self.dataset) or epoch < 0:
            raise ValueError(f"state {dict(state)!r} does not fit a dataset of "
                             f"{len(self.dataset)} pairs")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._order_epoch = -1
