"""python -m gasca_core._bench_gpu: the GPU benchmark, which lives in gasca_core/bench/gpu.py
(python -m gasca_core.bench.gpu); this module keeps the old command working."""
import sys

from .bench.gpu import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
