"""A train command whose rank FAIL_RANK raises at global step FAIL_STEP (environment
variables): what tests/test_distributed.py uses to check that one rank's failure ends every
rank with a message naming it. Run as: mpiexec -n N python tests/mpi_planted_failure.py ARGS"""
import os
import sys

from gasca_core.cli.train import main
from gasca_core.training import Trainer

RANK, STEP = int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_STEP"])
_step = Trainer.step


def failing_step(self, *args, **kwargs):
    if self.world.rank == RANK and self.counters["global_step"] == STEP:
        raise RuntimeError(f"planted failure at global step {STEP}")
    return _step(self, *args, **kwargs)


Trainer.step = failing_step
sys.exit(main(sys.argv[1:]))
