"""The one validator of every array ssl-bf reads: features, labels and images.

Every reader passes what it read through these checks before anything is computed: embeddings
files (safetensors, `.npy` pairs, `.npz`, DINO `.pth` dumps), the bank rows streamed from a file,
Fashion-MNIST IDX files and CIFAR batches, and the in-memory entry points of the k-NN vote and
the linear probes. A malformed array is refused with one line naming the file (or the array) and
the row, whichever reader it came through. What is checked:

- features: a floating-point (N, D) matrix, N and D at least 1, every row finite and not all
  zeros (a zero row has no direction, so its cosine similarity is undefined);
- labels: (N,) integers >= 0 exactly representable in int64. Integral floats are accepted; NaN,
  infinities, fractions, floats beyond int64 (1e19 would collapse into one class), booleans,
  strings and Python objects are not. With `rows`, N must match; with `num_classes`, every
  label is below it;
- images: uint8 arrays of the stated ndim with at least one image, N matching the labels;
- a train/test pair: the same feature dimension and every k in [1, train rows].

Errors are `ArrayError` (a ValueError) unless the reader names its own error type (`error=`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

INT64_LIMIT = 2.0 ** 63  # floats in [-2**63, 2**63) that are integral convert to int64 exactly
_BLOCK_BYTES = 16 << 20  # rows checked at a time: no temporary larger than this
_SHOWN = 5  # rows named in a message


class ArrayError(ValueError):
    """A malformed array; the message names the file (or the array) and the rows at fault."""


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_SHOWN])
    return shown + (", ..." if len(rows) > _SHOWN else "")


def as_array(x, source: str, what: str, error: type[Exception] = ArrayError) -> np.ndarray:
    """A numpy array (a view where possible) of a numpy array or torch tensor; torch's
    low-precision floats (bfloat16, float8) become float32. Anything else is refused."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()
        try:
            return x.numpy()
        except (TypeError, RuntimeError):
            raise error(f"{source}: {what} have dtype {x.dtype}, which ssl-bf cannot read") from None
    if isinstance(x, np.ndarray):
        return x
    raise error(f"{source}: expected a tensor or array of {what}, found {type(x).__name__}")


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def check_labels(y, source: str, *, rows: Optional[int] = None, num_classes: Optional[int] = None,
                 error: type[Exception] = ArrayError) -> np.ndarray:
    """Labels as a new int64 array (N,), or `error` naming `source` and the first bad row.

    An (N, 1) column is taken as (N,). See the module docstring for what is refused.
    """
    y = as_array(y, source, "labels", error)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "iuf":
        raise error(f"{source}: labels must be integers, found dtype {y.dtype}")
    if y.ndim != 1:
        raise error(f"{source}: labels must be 1-D (N,), found shape {tuple(y.shape)}")
    if y.size == 0:
        raise error(f"{source}: no labels (an empty array)")
    if y.dtype.kind == "f":
        _check_integral_floats(y, source, error)
    elif y.dtype.kind == "u" and y.dtype.itemsize == 8:
        _refuse_rows(y > np.iinfo(np.int64).max, y, source, "labels must be integers that fit int64", error)
    labels = y.astype(np.int64)  # exact: every value is an integer in int64's range
    _refuse_rows(labels < 0, labels, source, "labels must be >= 0 (class indices)", error)
    if rows is not None and len(labels) != rows:
        raise error(f"{source}: {len(labels)} labels for {rows} rows")
    if num_classes is not None:
        over = labels >= num_classes
        if over.any():
            first = int(np.flatnonzero(over)[0])
            raise error(f"{source}: labels span [{labels.min()}, {labels.max()}] but the metadata lists "
                        f"{num_classes} classes (label {labels[first]} at row {first})")
    return labels


def _check_integral_floats(y: np.ndarray, source: str, error: type[Exception]) -> None:
    finite = np.isfinite(y)
    _refuse_rows(~finite, y, source, "labels must be integers", error)
    _refuse_rows(y != np.floor(y), y, source, "labels must be integers", error)
    _refuse_rows((y < -INT64_LIMIT) | (y >= INT64_LIMIT), y, source,
                 "labels must be integers that fit int64 (larger floats collapse into one class)", error)


def _refuse_rows(bad: np.ndarray, values: np.ndarray, source: str, rule: str, error: type[Exception]) -> None:
    if bad.any():
        rows = np.flatnonzero(bad)
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        raise error(f"{source}: {rule}, found {values[rows[0]].item()!r} at row {rows[0]}{more}")


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


def check_feature_layout(shape: Sequence[int], dtype: np.dtype, source: str,
                         error: type[Exception] = ArrayError) -> None:
    """A floating-point (N, D) matrix with N, D >= 1 (the rows themselves are checked as they are
    read: `row_scales`)."""
    if np.dtype(dtype).kind != "f":
        raise error(f"{source}: embeddings must be floating point, found dtype {dtype}")
    if len(shape) != 2:
        raise error(f"{source}: embeddings must be 2-D (N, D), found shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise error(f"{source}: no embeddings (shape {tuple(shape)})")


def check_features(x, source: str, error: type[Exception] = ArrayError) -> np.ndarray:
    """The features as a numpy (N, D) float matrix (not copied), every row checked; else `error`
    naming `source` and the rows."""
    x = as_array(x, source, "features", error)
    check_feature_layout(x.shape, x.dtype, source, error)
    step = max(1, _BLOCK_BYTES // (x.shape[1] * x.dtype.itemsize))
    for start in range(0, x.shape[0], step):
        row_scales(x[start:start + step], source, start, x.shape[0], error)
    return x


def row_scales(block: np.ndarray, source: str, start: int = 0, total: Optional[int] = None,
               error: type[Exception] = ArrayError) -> np.ndarray:
    """Each row's largest |value| (B,) float64 (what normalisation divides by first), for the rows
    `start`.. of a matrix of `total` rows. A row holding NaN or Inf, or only zeros, is refused
    naming the rows (no block-sized temporary is made)."""
    if len(block) == 0:
        return np.zeros(0, np.float64)
    high = np.max(block, axis=1).astype(np.float64)  # (B,) NaN propagates
    low = np.min(block, axis=1).astype(np.float64)  # (B,)
    scale = np.maximum(np.abs(high), np.abs(low))  # (B,)
    total = len(block) if total is None else total
    where = "" if len(block) == total else f" among rows {start}-{start + len(block) - 1}"
    bad = np.flatnonzero(~np.isfinite(scale))
    if bad.size:
        raise error(f"{source}: {bad.size} of {total} rows{where} contain NaN or Inf "
                    f"(rows {_rows_text(start + bad)})")
    zero = np.flatnonzero(scale == 0)
    if zero.size:
        raise error(f"{source}: {zero.size} of {total} rows{where} are all zeros (rows {_rows_text(start + zero)}); "
                    f"a zero row has no direction for the cosine similarity: remove those rows")
    return scale


# ----------------------------------------------------------------------------------------------
# Pairs and images
# ----------------------------------------------------------------------------------------------


def check_pair(train_shape: Sequence[int], test_shape: Sequence[int], train_source: str, test_source: str,
               ks: Sequence[int] = (), error: type[Exception] = ArrayError) -> None:
    """Train (N, D) and test (Q, D') features scored together: D == D' and every k in [1, N]."""
    if train_shape[1] != test_shape[1]:
        raise error(f"embedding dimensions differ: {train_source} has D={train_shape[1]}, "
                    f"{test_source} has D={test_shape[1]}")
    for k in ks:
        if k < 1:
            raise error(f"k must be at least 1, got {k}")
        if k > train_shape[0]:
            raise error(f"k={k} is larger than the train set: {train_source} has {train_shape[0]} rows; "
                        f"use --k values up to {train_shape[0]}")


def check_images(images, source: str, ndim: int, *, rows: Optional[int] = None,
                 error: type[Exception] = ArrayError) -> np.ndarray:
    """uint8 images with `ndim` dimensions and at least one image (and `rows` of them, when given)."""
    images = as_array(images, source, "images", error)
    if images.dtype != np.uint8 or images.ndim != ndim:
        raise error(f"{source}: images must be uint8 with {ndim} dimensions, found {images.dtype} "
                    f"{tuple(images.shape)}")
    if images.shape[0] == 0 or images.size == 0:
        raise error(f"{source}: no images (shape {tuple(images.shape)})")
    if rows is not None and images.shape[0] != rows:
        raise error(f"{source}: {images.shape[0]} images for {rows} labels")
    return images
