"""The one device resolver: config strings and `--device` options to a torch.device."""
from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: this process's GPU when CUDA is available, else the CPU. A bare `cuda` is this
    process's GPU too (LOCAL_RANK modulo the visible count, as torchrun and SLURM set it);
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
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device
