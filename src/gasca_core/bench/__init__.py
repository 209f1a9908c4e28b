"""Benchmarks, each also a command:

    python -m gasca_core.bench          kernels.py: every CPU kernel pass of the gasca-64
                                        layers, each version, vs NumPy and PyTorch; then the
                                        training step (and the GPU section where a GPU is)
    python -m gasca_core.bench --ladder ladder.py: every version combination, built-in and
                                        registered, pass by pass and on the whole training
                                        step, beside the sgemm ceiling
    python -m gasca_core.bench.step     step.py: the trainer's own training step vs PyTorch
    python -m gasca_core.bench.profile  profile.py: where that step's time goes, region by
                                        region, beside its FLOPs and the sgemm limit
    python -m gasca_core.bench.gpu      gpu.py: the CUDA kernels vs cuDNN
    python -m gasca_core.bench --sections distributed
                                        distributed.py: the training step on N = 1 and 2
                                        MPI ranks, updates/s and the all-reduce's share

Importing this package loads nothing compiled; each module loads what it times.
"""
