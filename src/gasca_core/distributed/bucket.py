"""GradientBucket: one all-reduce per optimizer update, over a flat buffer.

The loss of a step is a mean over the global batch of B pairs. Rank r holds n_r of them
(sum n_r = B) and its backward pass gives the gradient g_r of the mean over its own n_r.
The gradient of the global mean is then

    g = sum_r (n_r / B) g_r          (= (1/B) sum over all B pairs of each pair's gradient)

so each rank scales its gradient by its weight w_r = n_r / B while copying it into the
bucket, and one all-reduce (a sum) leaves g on every rank. Never the mean of the per-rank
means (sum_r g_r / N): with uneven slices (the last batch of an epoch) that would weight
the pairs of a small slice more. A rank with an empty slice sends zeros with weight 0.
With one rank w = 1 exactly, so the gradient passes through the bucket bit for bit.

Layout of the buffer (the parameters' dtype, float32 in gasca_core):

    [ grad_1 | grad_2 | ... | grad_P | values (3) | status (one per rank) | clock | stop ]

    values  w_r times the rank's loss and up to two more loss terms (summed: the weighted
            means over the global batch, the figures the run logs)
    status  rank r writes RANK_STATUS of its own update in slot r, the others 0: after the
            sum every rank knows which ranks saw a NaN or an infinity, and all decide alike
    clock   rank 0's reading of its training clock, the others 0 (so that time budgets and
            time-driven schedules decide alike on every rank)
    stop    1 where the rank was asked to stop (SIGINT/SIGTERM), else 0

One buffer per optimizer (G's and D's), allocated once per phase on the parameters'
device; one all-reduce of (P + 5 + N) floats per update, where P is the number of
parameters. MPI and NCCL split a large message into pipelined chunks themselves.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from .. import backend

# What rank r writes in its status slot.
RANK_STATUS = {0: "ok", 1: "non-finite loss", 2: "non-finite gradient"}
VALUES = 3


class Reduced(NamedTuple):
    """What one all-reduce tells every rank."""
    values: list          # the global (weighted-mean) values, as given to all_reduce
    bad: dict             # rank -> RANK_STATUS code, for the ranks that saw a problem
    finite: bool          # whether the summed gradient is finite
    clock: float          # rank 0's clock reading
    stop: bool            # whether any rank was asked to stop


class GradientBucket:
    """The gradients of `params` and a few scalars, summed over the ranks of `world` in
    one all-reduce (the module docstring)."""

    def __init__(self, params: Sequence[Any], world: Any) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("GradientBucket: no parameters")
        dtypes = {str(p.data.dtype) for p in self.params}
        if len(dtypes) != 1:
            raise TypeError(f"GradientBucket: parameters of one dtype expected, got {sorted(dtypes)}")
        self.world = world
        self.sizes = [int(p.data.size) for p in self.params]
        self.n_grad = sum(self.sizes)
        xp = backend.get_array_module(self.params[0].data)
        self.xp = xp
        self.buffer = xp.zeros(self.n_grad + VALUES + world.size + 2, dtype=self.params[0].data.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes each rank sends into one all-reduce."""
        return int(self.buffer.nbytes)

    def all_reduce(self, weight: float, values: Sequence[Optional[float]], status: int,
                   clock: float = 0.0, stop: bool = False) -> Reduced:
        """Sum weight * (each parameter's gradient, each value) over the ranks, and gather
        the ranks' status codes, rank 0's clock and the stop requests; the parameters'
        .grad then hold the summed gradient (on every rank, alike).

        weight: n_r / B (0 for an empty slice). values: this rank's loss terms (None where
        it has none: an empty slice, or a term the update does not have); status: a
        RANK_STATUS code; clock: rank 0's training clock (ignored elsewhere)."""
        if len(values) > VALUES:
            raise ValueError(f"at most {VALUES} values per all-reduce, got {len(values)}")
        buf, xp, w = self.buffer, self.xp, self.buffer.dtype.type(weight)
        offset = 0
        for p, n in zip(self.params, self.sizes):
            part = buf[offset:offset + n]
            if p.grad is None or weight == 0:
                part[...] = 0
            else:
                xp.multiply(p.grad.reshape(-1), w, out=part)
            offset += n
        tail = np.zeros(VALUES + self.world.size + 2, dtype=buf.dtype)
        for i, v in enumerate(values):
            tail[i] = 0.0 if v is None or weight == 0 else weight * v
        tail[VALUES + self.world.rank] = status
        tail[-2] = clock if self.world.rank == 0 else 0.0
        tail[-1] = float(bool(stop))
        buf[self.n_grad:] = backend.to_device(tail, backend.device_of(buf))

        self.world.all_reduce_sum(buf)

        offset = 0
        for p, n in zip(self.params, self.sizes):
            summed = buf[offset:offset + n].reshape(p.data.shape)
            if p.grad is None:
                p.grad = summed.copy()
            else:
                p.grad[...] = summed
            offset += n
        tail = backend.to_numpy(buf[self.n_grad:]).astype(np.float64)
        finite = bool(xp.isfinite(buf[:self.n_grad]).all())
        codes = tail[VALUES:VALUES + self.world.size]
        bad = {r: int(c) for r, c in enumerate(codes) if c != 0}
        reduced_values = [float(tail[i]) for i in range(len(values))]
        return Reduced(reduced_values, bad, finite, float(tail[-2]), bool(tail[-1] > 0))


def describe_bad(name: str, bad: dict, finite: bool) -> Optional[str]:
    """What went wrong in an update, naming the ranks ("G loss on rank 1"), or None."""
    if not bad and finite:
        return None
    if not bad:
        return f"gradient of the {name} (its sum over the ranks overflowed)"
    by_kind: dict = {}
    for r, code in sorted(bad.items()):
        by_kind.setdefault(code, []).append(str(r))
    parts = []
    for code, ranks in sorted(by_kind.items()):
        what = name if code == 1 else f"gradient of the {name}"
        parts.append(f"{what} on rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}")
    return "; ".join(parts)
