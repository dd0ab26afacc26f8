"""Feature arrays as the k-NN code takes them: numpy views of tensors or arrays, and L2 normalisation."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
_EPS = 1e-12


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view (or copy, for tensors on a device) of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def l2_normalise(x: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Row-wise L2 normalisation to a new float32 array (the input is never modified)."""
    x = as_numpy(x)
    out = np.empty(x.shape, dtype=np.float32) if out is None else out
    step = max(1, (64 << 20) // max(1, x.shape[1] * 4))  # ~64 MiB of rows at a time
    for start in range(0, x.shape[0], step):
        block = x[start:start + step].astype(np.float32)  # (B, D)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]  # (B, 1)
        np.divide(block, np.maximum(norms, _EPS), out=out[start:start + step])
    return out
