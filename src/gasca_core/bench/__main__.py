"""python -m gasca_core.bench: the CPU kernel benchmark (gasca_core/bench/kernels.py)."""
from .kernels import main

main()
