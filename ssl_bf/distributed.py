"""Process-group set-up (env://, torchrun or SLURM via submitit) and collective helpers."""
from __future__ import annotations

import datetime
import os
from typing import Callable

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by env:// variables when WORLD_SIZE > 1.

    Returns True when running distributed. NCCL on CUDA, gloo on CPU.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    # a long timeout: rank 0 alone runs the k-NN monitor while the others wait at a barrier
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(hours=3))
    return True


def barrier() -> None:
    if is_initialized():
        dist.barrier()


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (N, ...) from every rank along dim 0 (no gradient): (world * N, ...)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank's copy of its rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather_rows_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(N, C) -> (world * N, C) with gradient, plus the slice of this rank's rows."""
    n = x.shape[0]
    if world_size() == 1:
        return x, slice(0, n)
    return _GatherWithGrad.apply(x), slice(rank() * n, (rank() + 1) * n)


@torch.no_grad()
def shuffle_batch(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Shuffle the batch (across ranks under DDP) for shuffle-BN; returns (x', restore).

    `restore(y)` maps per-row outputs of x' back to the original rows of this rank.
    """
    n = x.shape[0]
    if world_size() == 1:
        perm = torch.randperm(n, device=x.device)  # (N,)
        inverse = torch.argsort(perm)
        return x[perm], lambda y: y[inverse]
    x_all = gather_rows(x)  # (W*N, ...)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    inverse = torch.argsort(perm)
    mine = slice(rank() * n, (rank() + 1) * n)

    def restore(y: torch.Tensor) -> torch.Tensor:
        return gather_rows(y)[inverse][mine]

    return x_all[perm][mine], restore
