"""Process-group set-up and every collective ssl-bf uses (no other module calls torch.distributed).

Backends: a CUDA run initialises `"cpu:gloo,cuda:nccl"`, so CUDA tensors go over NCCL and any CPU
tensor over gloo; a CPU run uses gloo. Each helper checks that the tensors it is handed live on a
device the group's backend serves (`check_served`), so a tensor on the wrong device fails here with
a clear message instead of deep inside NCCL. Helpers run their collective whenever a process group
exists, also at world size 1 (so a forced one-process group really exercises the backend).

Two groups, two timeouts. Training collectives (the default group) give up after
`TRAINING_TIMEOUT`, so a dead rank stops the others within 30 minutes instead of hours. Waits where
rank 0 works alone (the monitor's k-NN vote, a checkpoint write) go through `wait_for_main()`, a
barrier on a separate gloo group with `LONG_WAIT_TIMEOUT`. Where the process sits in its job
(torchrun's variables, or SLURM's under a plain srun) is read by `ssl_bf.process_env`.
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .process_env import launch_env

TRAINING_TIMEOUT = datetime.timedelta(minutes=30)  # every collective of a training step
LONG_WAIT_TIMEOUT = datetime.timedelta(hours=2)  # waits for rank 0's k-NN vote or checkpoint write
_LONG_WAIT_GROUP: Optional["dist.ProcessGroup"] = None  # gloo, created with the default group

# backend name -> device types it serves (gloo kept to CPU: its CUDA support is partial)
_BACKEND_DEVICES = {"gloo": ("cpu",), "nccl": ("cuda",)}


class CollectiveDeviceError(RuntimeError):
    """A tensor handed to a collective lives on a device the process group's backend cannot serve."""


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK, or SLURM_LOCALID under a plain srun)."""
    return launch_env().local_rank


def is_main() -> bool:
    return rank() == 0


def backend_spec(device: torch.device) -> str:
    """The init string for a run on `device`: CUDA gets NCCL plus gloo for stray CPU tensors."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device, force: bool = False) -> bool:
    """Join the process group of this job when it has more than one process (or `force`).

    The job is read from torchrun's variables or, under a plain srun, SLURM's
    (`ssl_bf.process_env.launch_env`; ProcessEnvError when they are incomplete). `force` builds a
    group even for one process (e.g. `torchrun --nproc_per_node=1`), so its collectives really run.
    The default group's collectives time out after TRAINING_TIMEOUT; a gloo group with
    LONG_WAIT_TIMEOUT serves `wait_for_main`. Returns True when a process group is in use.
    """
    global _LONG_WAIT_GROUP
    if is_initialized():
        return True
    env = launch_env()
    if env.world_size <= 1 and not force:
        return False
    if env.world_size > 1:
        os.environ.update(env.torch_variables())  # a plain srun sets none of them
    else:  # a lone process outside torchrun: a one-member group on this host
        for name, default in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("RANK", "0"),
                              ("WORLD_SIZE", "1")):
            os.environ.setdefault(name, default)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend_spec(device), init_method="env://", timeout=TRAINING_TIMEOUT)
    _LONG_WAIT_GROUP = dist.new_group(backend="gloo", timeout=LONG_WAIT_TIMEOUT)
    return True


def wait_for_main() -> None:
    """Every rank waits here until all have arrived, on the long-wait gloo group (LONG_WAIT_TIMEOUT):
    the call after work that rank 0 does alone (the monitor's vote, a checkpoint write), so the
    others never sit in a training collective, whose timeout is short, while it works."""
    if is_initialized():
        dist.barrier(group=_LONG_WAIT_GROUP)


def shut_down(wait: bool = False) -> None:
    """Leave the process group (no-op without one). `wait`: first meet on the long-wait group, so no
    rank tears the group down while rank 0 still writes; without it (a failed rank must not leave
    the others waiting) the group is destroyed at once."""
    global _LONG_WAIT_GROUP
    if not is_initialized():
        return
    if wait:
        wait_for_main()
    dist.destroy_process_group()
    _LONG_WAIT_GROUP = None


def served_device_types() -> tuple[str, ...]:
    """Device types the current group's backend serves, from `dist.get_backend()`."""
    spec = str(dist.get_backend())
    if ":" in spec:  # "cpu:gloo,cuda:nccl"
        return tuple(part.split(":")[0] for part in spec.split(","))
    return _BACKEND_DEVICES.get(spec, ("cpu", "cuda"))


def check_served(op: str, *tensors: torch.Tensor) -> None:
    """Raise CollectiveDeviceError if a tensor's device is not served by the group's backend."""
    served = served_device_types()
    for t in tensors:
        if t.device.type not in served:
            raise CollectiveDeviceError(
                f"{op}: a {t.device.type} tensor was handed to a process group whose backend "
                f"({dist.get_backend()}) serves only {', '.join(served)} tensors; keep the tensor on "
                f"the training device")


_REDUCE_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of `t` over every rank (a no-op without a process group)."""
    if is_initialized():
        check_served("all_reduce", t)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]))
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of rank `src`'s `t` (a no-op without a process group)."""
    if is_initialized():
        check_served("broadcast", t)
        dist.broadcast(t, src=src)
    return t


def barrier() -> None:
    if is_initialized():
        dist.barrier()


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (N, ...) from every rank along dim 0 (no gradient): (world * N, ...)."""
    if not is_initialized():
        return x
    check_served("all_gather", x)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank's copy of its rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        check_served("all_gather", x)
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        check_served("all_reduce", grad)
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
def gather_shards_to_main(x: torch.Tensor, device: torch.device, chunk_rows: int = 8192
                          ) -> Optional[torch.Tensor]:
    """Rank 0 gets every rank's rows in rank order: (sum of N_r, ...) on the CPU; others get None.

    Shards may differ in length. Rows travel in chunks through `device` (the training device,
    so the backend serves them), which bounds the device memory to world x chunk_rows rows.
    """
    if not is_initialized():
        return x
    counts = torch.tensor([x.shape[0]], dtype=torch.int64, device=device)
    sizes = [int(c) for c in gather_rows(counts).tolist()]  # (world,)
    out = [[] for _ in sizes] if is_main() else None
    tail = tuple(x.shape[1:])
    for start in range(0, max(sizes), chunk_rows):
        piece = torch.zeros((chunk_rows, *tail), dtype=x.dtype, device=device)  # padded chunk
        mine = x[start:start + chunk_rows]
        piece[:mine.shape[0]] = mine.to(device)
        everyone = gather_rows(piece).view(len(sizes), chunk_rows, *tail)  # (world, chunk, ...)
        if out is not None:
            for r, n in enumerate(sizes):
                keep = max(0, min(chunk_rows, n - start))
                if keep:
                    out[r].append(everyone[r, :keep].cpu())
    if out is None:
        return None
    parts = [p for rows in out for p in rows]
    return torch.cat(parts) if parts else x[:0].cpu()


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
    perm = torch.randperm(x_all.shape[0], device=x.device)  # (W*N,), rank 0's draw for everyone
    broadcast_(perm, src=0)
    mine = slice(rank() * n, (rank() + 1) * n)
    back = torch.argsort(perm)[mine]  # (N,): where this rank's original rows went

    def restore(y: torch.Tensor) -> torch.Tensor:
        return gather_rows(y)[back]  # (N, ...): only this rank's rows are indexed

    return x_all[perm[mine]], restore  # (N, ...): only this rank's share of the permuted batch
