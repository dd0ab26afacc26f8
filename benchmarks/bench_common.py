"""Helpers shared by the benchmark scripts: thread limits, and one optimiser step of a model."""
from __future__ import annotations

import argparse
from typing import Callable

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


def training_step(model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
                  loss_of: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                  device: torch.device, amp: bool = True, channels_last: bool = False
                  ) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`step(x1, x2)`: one optimiser step (forward, backward, update) of `model` on two normalised
    float view batches (N, C, S, S); no host sync. `loss_of(model, x1, x2)` is the scalar loss;
    `amp`: bf16 autocast on CUDA (not on a CPU); `channels_last`: model and views in channels-last."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model)
    use_amp = amp and device.type == "cuda"

    def step(x1: torch.Tensor, x2: torch.Tensor) -> None:
        if channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_of(model, x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step
