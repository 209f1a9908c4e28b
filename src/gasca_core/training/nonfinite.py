"""What happens when a loss or a gradient is NaN or infinite: the run stops ("stop", the
default), or that update is skipped ("skip") until too many are skipped in a row."""
from __future__ import annotations

import math
from typing import Callable, Optional

from .. import backend


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient (the run stops; the last good
    checkpoint is left as it was)."""


def grads_finite(params: list) -> bool:
    """True when every parameter's gradient (where it has one) is finite."""
    for p in params:
        if p.grad is not None:
            xp = backend.get_array_module(p.grad)
            if not bool(xp.isfinite(p.grad).all()):
                return False
    return True


class NonFiniteGuard:
    """Applies one update, or refuses it when its loss or a gradient is not finite.

    policy: "stop" raises NonFiniteLossError at the first bad update; "skip" zeroes the
    gradients, counts the skip and goes on, until more than max_skips updates in a row were
    skipped. log: where the skip warnings go.
    """

    def __init__(self, policy: str, max_skips: int, log: Callable[[str], None] = print) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got '{policy}'")
        self.policy, self.max_skips, self.log = policy, max_skips, log
        self.consecutive = 0  # skipped updates since the last good step

    def apply(self, loss, opt, name: str, where: Callable[[], str],
              reduce: Optional[Callable[[float, Optional[str]], tuple]] = None
              ) -> tuple[float, bool]:
        """Backward and opt.step(), unless the loss or a gradient is not finite: returns
        (the loss value, whether the update was made). `where` says where we are, for the
        message.

        reduce: for data-parallel training (gasca_core.distributed): called after the
        backward pass as reduce(value, problem), with problem None or what was not finite
        on this rank; it sums the gradients and the values over the ranks and returns the
        global (value, problem), so that every rank decides alike. loss may then be None
        (a rank with an empty slice of the batch: no backward, nothing to add)."""
        value = float(loss.item()) if loss is not None else 0.0
        opt.zero_grad()
        problem = None if math.isfinite(value) else name
        if problem is None and loss is not None:
            loss.backward()
            if not grads_finite([p for group in opt.param_groups for p in group["params"]]):
                problem = f"gradient of the {name}"
        if reduce is not None:
            value, problem = reduce(value, problem)
        if problem is None:
            opt.step()
            return value, True
        opt.zero_grad()
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite {problem} ({value}) in {where()}; the last good checkpoint is left "
                f"as it was. Try a lower --lr, or --on-nonfinite skip.")
        self.consecutive += 1
        self.log(f"warning: skipped a step: non-finite {problem} ({value}) in {where()}")
        if self.consecutive > self.max_skips:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive non-finite steps, the last in {where()}: "
                f"training has diverged")
        return value, False

    def step_done(self, ok: bool) -> None:
        """A step ended; a good one ends a run of skips."""
        if ok:
            self.consecutive = 0
