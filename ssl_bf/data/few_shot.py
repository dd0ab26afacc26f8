"""Class-balanced labelled subsets for the low-label probes: N images per class (`--shots N`,
drawn R times with seeds `seed + r`) and a fraction of each class (`--label-fraction`, SimCLR's 1%
and 10% tables: round(fraction x class count) images of each class, at least one)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


class FewShotError(ValueError):
    """A shot count or label fraction the train labels cannot give (the message says why)."""


def _rng(seed: int, draw: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(draw), 0x5407]))


def shot_indices(labels: np.ndarray, shots: int, seed: int = 0, draw: int = 0,
                 classes: Optional[np.ndarray] = None) -> np.ndarray:
    """Sorted indices of `shots` images of every class in `classes` (default: every label value),
    drawn without replacement. Refused when a class has fewer than `shots` images."""
    labels = np.asarray(labels)
    if shots < 1:
        raise FewShotError(f"--shots must be at least 1, got {shots}")
    values, counts = np.unique(labels, return_counts=True)
    classes = values if classes is None else np.asarray(classes)
    have = dict(zip(values.tolist(), counts.tolist()))
    short = [(int(c), have.get(int(c), 0)) for c in classes if have.get(int(c), 0) < shots]
    if short:
        c, n = min(short, key=lambda cn: cn[1])
        raise FewShotError(f"--shots {shots} is more than the {n} train images of class {c} (the smallest class); "
                           f"use --shots {n} or fewer")
    rng = _rng(seed, draw)
    picked = [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0, draw: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced `fraction` of the train images: round(fraction x n_c)
    of class c (at least 1), drawn without replacement."""
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise FewShotError(f"--label-fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    rng = _rng(seed, draw)
    picked = [rng.choice(np.flatnonzero(labels == c), size=max(1, int(round(fraction * n))), replace=False)
              for c, n in zip(values, counts)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one draw) of the draws' figures."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
