"""The one device resolver: config strings and `--device` options to a torch.device."""
from __future__ import annotations

import torch

from .process_env import launch_env


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: this process's GPU when CUDA is available, else the CPU. A bare `cuda` is this
    process's GPU too (its local rank modulo the visible count: torchrun's LOCAL_RANK, or
    SLURM_LOCALID under a plain srun; `ssl_bf.process_env`);
    `cuda:N` is used as given. Asking for CUDA where torch sees none is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{name}' was asked for but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", launch_env().local_rank % torch.cuda.device_count())
    return device


def tune_for_fixed_shapes(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the fastest
    (`torch.backends.cudnn.benchmark`): pretraining and embedding feed fixed-size batches, so the
    search is paid once. Never set on the CPU (no cuDNN there; the setting is left as it was)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
