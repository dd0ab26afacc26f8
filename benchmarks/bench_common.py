"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import argparse

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


def parse_args_with_threads(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Add `--threads N`, parse, and apply the limit (to torch, FAISS, BLAS/OpenMP) when given."""
    p.add_argument("--threads", type=int, help="limit torch, FAISS and BLAS/OpenMP threads for every method "
                   "(1 gives stable ratios on a machine shared with other work)")
    args = p.parse_args()
    if args.threads:
        limit_threads(args.threads)
    return args
