"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import torch


def limit_threads(n: int) -> None:
    """The same thread count for torch, FAISS, numpy/scipy BLAS and OpenMP."""
    import threadpoolctl

    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
