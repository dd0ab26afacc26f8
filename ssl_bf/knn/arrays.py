"""Feature arrays as the k-NN code takes them: numpy views of tensors or arrays, and L2 normalisation
that gives the same unit rows whatever the features' scale (1e-30 or 1e30 alike)."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ..validate import as_array, row_scales

ArrayLike = Union[np.ndarray, torch.Tensor]
_SUBBLOCK_BYTES = 8 << 20  # float64 rows normalised at a time


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view (or copy, for tensors on a device or in bfloat16) of a tensor or array."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return as_array(x, "<array>", "values")
    return np.asarray(x)


def unit_rows_(block: np.ndarray, source: str = "features", start: int = 0, total: Optional[int] = None,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """Write the rows of `block` (B, D), divided by their L2 norm, into `out` (B, D) float32 (default:
    `block` itself, which must then be float32); returns `out`.

    Each row is first divided by its largest |value| and normed in float64, so no square overflows
    or underflows: x and c * x give the same unit row for any c > 0 the dtype can hold. Rows holding
    NaN or Inf, or only zeros, are refused naming `source` and the rows (`validate.row_scales`;
    `start` and `total` place the block in its matrix).
    """
    out = block if out is None else out
    step = max(1, _SUBBLOCK_BYTES // (8 * max(1, block.shape[1])))
    for s in range(0, len(block), step):
        part = block[s:s + step]  # (b, D)
        scale = row_scales(part, source, start + s, total)  # (b,) float64
        y = part.astype(np.float64) / scale[:, None]  # (b, D), |y| <= 1, each row's max is 1
        y /= np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]  # each row's norm in [1, sqrt(D)]
        out[s:s + step] = y
    return out


def l2_normalise(x: ArrayLike, source: str = "features", out: Optional[np.ndarray] = None) -> np.ndarray:
    """Row-wise L2 normalisation to a new float32 array (the input is never modified); see `unit_rows_`."""
    x = as_numpy(x)
    out = np.empty(x.shape, dtype=np.float32) if out is None else out
    return unit_rows_(x, source, 0, len(x), out)
