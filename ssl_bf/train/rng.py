"""Every random number generator a training step uses, seeded, saved and restored as tensors (so
checkpoints stay weights_only-loadable). Restoring rank 0's saved state makes a one-process
resume exact on CPU."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Python's, NumPy's, torch's CPU (and CUDA's) generator states, as tensors."""
    _, keys, pos, *_ = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.append(keys.astype(np.int64), pos)),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"].numpy()
    np.random.set_state(("MT19937", numpy_state[:-1].astype(np.uint32), int(numpy_state[-1])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
