"""Long-tailed subsets of a balanced train split, and the class groups the long-tail literature
reports on (SDCLR, BCL, Liu et al. 2022, Kukleva et al. 2023).

- Class sizes: `exp` gives class c the count n_c = floor(n_max * ratio^(-c / (C - 1))) (LDAM's
  and SDCLR's formula: class 0 keeps n_max, class C-1 gets n_max / ratio); `step` keeps n_max for
  the first half of the classes and n_max / ratio for the rest. `ratio` = n_max / n_min; 1 is off.
- The images of each class are a seeded draw (`split` picks the draw), so a split is rebuilt
  exactly from (labels, ratio, kind, split); the chosen indices are also saved with every run.
- Groups: "many", "medium" and "few" classes by their count in the pretraining set. With
  thresholds (ImageNet-LT: more than 100, 20-100, fewer than 20 images) a class's count decides;
  without (10- and 100-class sets) the classes sorted by count, most first, are cut into thirds:
  round(C / 3) many, round(C / 3) few, the rest medium (ties keep the class order).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

KINDS = ("exp", "step")
GROUPS = ("many", "medium", "few")


class LongTailError(ValueError):
    """A long-tail setting or index file that cannot give a valid subset (the message says why)."""


def class_counts(labels: np.ndarray, num_classes: Optional[int] = None) -> np.ndarray:
    """Images per class, (C,) int64, for integer labels in [0, C)."""
    labels = np.asarray(labels)
    return np.bincount(labels, minlength=num_classes or (int(labels.max()) + 1 if labels.size else 0)).astype(np.int64)


def long_tail_counts(available: Sequence[int], ratio: float, kind: str = "exp") -> np.ndarray:
    """Target images per class (C,) for a long tail of imbalance `ratio` over classes with
    `available` images each (n_max is the smallest of them, so every target is available)."""
    available = np.asarray(available, dtype=np.int64)
    if kind not in KINDS:
        raise LongTailError(f"data.long_tail.kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if not math.isfinite(ratio) or ratio < 1:
        raise LongTailError(f"data.long_tail.ratio must be at least 1 (1: no long tail), got {ratio}")
    c = len(available)
    if c < 2:
        raise LongTailError(f"a long tail needs at least 2 classes, the train split has {c}")
    n_max = int(available.min())
    if kind == "exp":
        counts = np.floor(n_max * ratio ** (-np.arange(c) / (c - 1)) + 1e-9).astype(np.int64)
    else:
        counts = np.where(np.arange(c) < c // 2, n_max, int(math.floor(n_max / ratio + 1e-9))).astype(np.int64)
    empty = np.flatnonzero(counts < 1)
    if empty.size:
        raise LongTailError(f"data.long_tail.ratio={ratio:g} ({kind}) leaves class {int(empty[0])} without images "
                            f"(n_max = {n_max}): use a ratio of at most {n_max}")
    return counts


def draw_long_tail(labels: np.ndarray, ratio: float, kind: str = "exp", split: int = 0) -> np.ndarray:
    """Sorted indices into `labels` of the long-tailed subset: for each class c, counts[c] of its
    images drawn without replacement by a generator seeded with `split`."""
    labels = np.asarray(labels)
    counts = long_tail_counts(class_counts(labels), ratio, kind)
    rng = np.random.default_rng(np.random.SeedSequence([int(split), 0x1071]))
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in enumerate(counts)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def check_indices(indices: np.ndarray, size: int, source: str) -> np.ndarray:
    """`indices` as a sorted int64 array of distinct indices into a split of `size` images."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or arr.size == 0:
        raise LongTailError(f"{source}: expected a non-empty 1-D list of image indices, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise LongTailError(f"{source}: image indices must be integers, got {arr.dtype}")
        if np.abs(arr.astype(np.float64)).max() >= 2 ** 53:
            raise LongTailError(f"{source}: image index {arr[np.argmax(np.abs(arr))]:g} is out of range")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        raise LongTailError(f"{source}: index {int(arr[bad[0]])} (entry {int(bad[0])}) is outside the train split "
                            f"(0-{size - 1})")
    unique = np.unique(arr)
    if unique.size != arr.size:
        raise LongTailError(f"{source}: {arr.size - unique.size} image indices are listed twice")
    return unique


def load_index_array(path: str, source: str) -> np.ndarray:
    """The array of a .npy file (never unpickled), or LongTailError naming `source`."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # a decode boundary: a damaged header fails in numpy's parser in many ways
        raise LongTailError(f"{source} is not a readable .npy array ({type(err).__name__}: {err})".replace("\n", " ")
                            ) from None


def read_index_file(path: str, size: int, image_paths: Optional[Sequence[str]] = None,
                    root: Optional[str] = None) -> np.ndarray:
    """A user's index file: `.npy` of integer indices into the train split (SDCLR's CIFAR splits),
    or text lines `RELATIVE/PATH [label]` naming images of an image-folder train split (SDCLR's
    ImageNet-LT lists), resolved against `image_paths` (relative to `root` or absolute)."""
    if not os.path.isfile(path):
        raise LongTailError(f"data.indices_file {path} does not exist")
    if path.endswith(".npy"):
        return check_indices(load_index_array(path, f"data.indices_file {path}"), size, f"data.indices_file {path}")
    if image_paths is None:
        raise LongTailError(f"data.indices_file {path}: a list of image paths needs an image-folder dataset; give "
                            f"a .npy of indices for tensor datasets")
    where = {}
    for i, p in enumerate(image_paths):
        where[os.path.normpath(p)] = i
        if root:
            where[os.path.normpath(os.path.relpath(p, root))] = i
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.split()[0] for ln in f if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise LongTailError(f"data.indices_file {path} is not a readable text list ({err})") from None
    found = []
    for n, name in enumerate(lines, 1):
        key = os.path.normpath(name)
        if key not in where:
            raise LongTailError(f"data.indices_file {path}: line {n} names {name}, which is not an image of the "
                                f"train split")
        found.append(where[key])
    return check_indices(np.asarray(found, dtype=np.int64), size, f"data.indices_file {path}")


@dataclass(frozen=True)
class Groups:
    """Which classes are many / medium / few, from the pretraining set's counts."""

    counts: tuple[int, ...]  # images per class in the pretraining set
    members: dict  # group name -> tuple of class indices
    rule: str  # how the groups were cut, for the report

    def of(self, class_index: int) -> str:
        return next(g for g, cls in self.members.items() if class_index in cls)


def make_groups(counts: Sequence[int], thresholds: Optional[tuple[float, float]] = None) -> Groups:
    """Groups by count: with thresholds (high, low) many > high >= medium >= low > few; without,
    thirds of the classes sorted by count (most first; ties keep the class order)."""
    counts = tuple(int(c) for c in counts)
    c = len(counts)
    if c == 0:
        raise LongTailError("group counts are empty")
    if thresholds is not None:
        high, low = thresholds
        if not (math.isfinite(high) and math.isfinite(low) and high >= low >= 0):
            raise LongTailError(f"--group-thresholds wants HIGH LOW with HIGH >= LOW >= 0, got {high:g} {low:g}")
        members = {"many": tuple(i for i in range(c) if counts[i] > high),
                   "medium": tuple(i for i in range(c) if low <= counts[i] <= high),
                   "few": tuple(i for i in range(c) if counts[i] < low)}
        return Groups(counts, members, f"many: more than {high:g} images, medium: {low:g}-{high:g}, few: fewer "
                                       f"than {low:g}")
    order = sorted(range(c), key=lambda i: (-counts[i], i))
    third = int(round(c / 3))
    members = {"many": tuple(sorted(order[:third])), "medium": tuple(sorted(order[third:c - third])),
               "few": tuple(sorted(order[c - third:]))}
    return Groups(counts, members, f"thirds of the {c} classes by training count ({third} many, "
                                   f"{c - 2 * third} medium, {third} few)")


def per_group_accuracy(predictions: np.ndarray, labels: np.ndarray, groups: Groups) -> dict:
    """Top-1 (%) over the test images of each group's classes, and `class_std`: the population
    standard deviation (ddof 0) of the per-class top-1 (%) over the classes with test images.
    `predictions` and `labels` (Q,) are class indices. A group without test images is None."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    correct = predictions == labels
    per_class = {int(k): 100.0 * float(correct[labels == k].mean()) for k in np.unique(labels)}
    out: dict = {}
    for name in GROUPS:
        mask = np.isin(labels, np.asarray(groups.members[name], dtype=labels.dtype))
        out[name] = 100.0 * float(correct[mask].mean()) if mask.any() else None
    out["class_std"] = float(np.std(list(per_class.values()))) if per_class else None
    out["per_class"] = {str(k): v for k, v in sorted(per_class.items())}
    out["groups"] = {name: list(cls) for name, cls in groups.members.items()}
    out["rule"] = groups.rule
    return out
