"""python -m gasca_core.bench_step: the training-step benchmark, which lives in
gasca_core/bench/step.py (python -m gasca_core.bench.step); this module keeps the old
command working and hands over to it."""
import sys

from .bench.step import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
