"""What the cached probes (`cached`, `logreg`) train on: validated arrays, class indices, and the
float32 features made from them, either as stored or standardised in float64.

Standardisation is scale-free: its statistics and arithmetic are in float64 on the features
divided by a power of two near their largest |value|, and its epsilon is relative (1e-6 of the
mean variance), so features scaled by any factor (1e-25 or 1e30 alike) give the same float32
inputs, hence the same probe. The saved head reproduces it for any float32-representable scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ssl_bf.knn.labels import LabelSpace
from ssl_bf.validate import check_features, check_labels, check_pair

from .linear_common import LinearHead

_BLOCK_ROWS_BYTES = 32 << 20  # float64 rows converted at a time
RELATIVE_EPS = 1e-6  # of the mean per-dimension variance


@dataclass
class ProbeInputs:
    """Validated features (numpy, as given) and class indices (int64 tensors, -1: a test class
    absent from train) of both splits."""

    train: np.ndarray  # (N, D)
    test: np.ndarray  # (Q, D)
    y: torch.Tensor  # (N,)
    yt: torch.Tensor  # (Q,)
    space: LabelSpace


def probe_inputs(train_x, train_y, test_x, test_y, num_classes: Optional[int],
                 device: torch.device) -> ProbeInputs:
    """Every array through `ssl_bf.validate` (a ValueError naming the array and the row)."""
    train = check_features(train_x, "train features")
    test = check_features(test_x, "test features")
    check_pair(train.shape, test.shape, "train features", "test features")
    ytr = check_labels(train_y, "train labels", rows=len(train))
    yte = check_labels(test_y, "test labels", rows=len(test))
    space = LabelSpace.from_train(ytr, num_classes)
    return ProbeInputs(train, test, torch.from_numpy(space.encode(ytr)).to(device),
                       torch.from_numpy(space.encode(yte)).to(device), space)


def _blocks(x: np.ndarray, rows: Optional[np.ndarray]):
    """(position in the output, float64 block) over `x[rows]` (all rows when None)."""
    n = len(x) if rows is None else len(rows)
    step = max(1, _BLOCK_ROWS_BYTES // (8 * x.shape[1]))
    for s in range(0, n, step):
        part = x[s:s + step] if rows is None else x[rows[s:s + step]]
        yield s, part.astype(np.float64)


class AsStored:
    """The features as stored, in float32 (the cached SGD probe without --bn-head)."""

    def apply(self, x: np.ndarray, rows: Optional[np.ndarray], device: torch.device, name: str) -> torch.Tensor:
        out = torch.from_numpy(np.asarray(x if rows is None else x[rows], dtype=np.float32))  # (n, D)
        if not torch.isfinite(out).all():
            top = max(abs(float(np.max(x))), abs(float(np.min(x))))
            raise ValueError(f"{name}: values up to {top:.3g} exceed float32's range (3.4e+38), in which the "
                             f"cached probe trains on the features as stored; rescale them, or add --bn-head "
                             f"(standardised in float64)")
        return out.to(device)

    def head(self, w: torch.Tensor, b: torch.Tensor) -> LinearHead:
        """A head computing `x @ w + b` (w (D, C), b (C,))."""
        head = LinearHead(w.shape[0], w.shape[1], bn=False)
        with torch.no_grad():
            head.fc.weight.copy_(w.T)
            head.fc.bias.copy_(b)
        return head.eval()


@dataclass
class Standardiser:
    """Per-dimension (x / c - mean) * inv in float64, c a power of two near the largest |value|."""

    c: float
    mean: np.ndarray  # (D,) float64, in units of c
    inv: np.ndarray  # (D,) float64

    @classmethod
    def fit(cls, x: np.ndarray, rows: Optional[np.ndarray] = None) -> "Standardiser":
        """The statistics of `x[rows]` (two passes: mean, then the variance about it)."""
        n = len(x) if rows is None else len(rows)
        top = max(max(abs(float(np.max(b))), abs(float(np.min(b)))) for _, b in _blocks(x, rows))
        c = float(np.ldexp(1.0, int(np.frexp(top)[1]) - 1))  # exact division; |x / c| < 2
        total = sum(b.sum(0) / c for _, b in _blocks(x, rows))  # (D,)
        mean = total / n
        var = sum(np.square(b / c - mean).sum(0) for _, b in _blocks(x, rows)) / n  # (D,)
        denom = var + RELATIVE_EPS * var.mean()
        inv = np.divide(1.0, np.sqrt(denom), out=np.zeros_like(denom), where=denom > 0)  # constant dims: 0
        return cls(c, mean, inv)

    def apply(self, x: np.ndarray, rows: Optional[np.ndarray], device: torch.device, name: str = "") -> torch.Tensor:
        """Standardised float32 rows (n, D) of `x[rows]` (all when None)."""
        n = len(x) if rows is None else len(rows)
        out = torch.empty((n, x.shape[1]), dtype=torch.float32)
        for s, b in _blocks(x, rows):
            out[s:s + len(b)] = torch.from_numpy(((b / self.c - self.mean) * self.inv).astype(np.float32))
        return out.to(device)

    def head(self, w: torch.Tensor, b: torch.Tensor) -> LinearHead:
        """A head computing `standardise(x) @ w + b` from raw features: its BatchNorm subtracts the
        mean (running_var is 1 - eps, so it divides by 1) and the scale is folded into fc."""
        head = LinearHead(w.shape[0], w.shape[1], bn=True)
        scale = torch.from_numpy(self.inv / self.c)  # (D,) float64
        with torch.no_grad():
            head.fc.weight.copy_((w.double() * scale[:, None]).T)  # (C, D)
            head.fc.bias.copy_(b)
            head.norm.running_mean.copy_(torch.from_numpy(self.mean * self.c))
            head.norm.running_var.fill_(1.0 - head.norm.eps)
        return head.eval()
