"""The dataset base classes, the shared constants and the in-process cache of decoded arrays.

Every dataset returns `(uint8 tensor (C, H, W), int label)`; in-memory ones (`TensorImageDataset`)
also offer `get_batch(indices)`, so the trainer can slice whole batches without collation.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validate import check_images, check_labels

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# name -> (mean, std) per channel, in [0, 1] units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": IMAGENET_STATS,
    "imagefolder": IMAGENET_STATS,
    "folder": IMAGENET_STATS,
}

CACHE_DIR = os.path.join("~", ".cache", "ssl-bf")  # default home of downloaded / unpacked data


class DataError(RuntimeError):
    """Missing or unreadable data; the message names the path and the fix."""


def expand_path(path: str) -> str:
    """`~` expanded, made absolute."""
    return os.path.abspath(os.path.expanduser(path))


# ----------------------------------------------------------------------------------------------
# Dataset classes
# ----------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """Base: `__getitem__(i) -> (uint8 (C, H, W), int label)` plus descriptive attributes."""

    def __init__(self, name: str, root: str, classes: list[str], num_channels: int,
                 image_size: int, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
        self.name = name
        self.root = root
        self.classes = classes
        self.num_channels = num_channels
        self.image_size = image_size
        self.mean, self.std = stats

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def take_first(self, n: int) -> None:
        """Keep only the first `n` samples (used by `subset`)."""
        raise NotImplementedError

    def label_array(self) -> "np.ndarray":
        """Every sample's label, (N,) int64 (-1: unlabelled), in dataset order."""
        raise NotImplementedError

    def select(self, indices: "np.ndarray") -> None:
        """Keep only the samples at `indices` (sorted, distinct), in that order (the long-tail subset)."""
        raise ValueError(f"{self.name}: a subset of chosen images needs fashion-mnist, cifar10/100 or imagefolder")

    def split_last(self, n: int) -> "ImageDataset":
        """Remove the last `n` samples and return them as a dataset of their own (a validation
        split carved from train). In-memory datasets only: a folder is sorted by class."""
        raise ValueError(f"{self.name}: a held-out validation split needs an in-memory dataset "
                         f"(fashion-mnist, cifar10, cifar100), whose order is not sorted by class")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={self.root!r}, n={len(self)}, "
                f"classes={len(self.classes)}, channels={self.num_channels}, size={self.image_size})")


class TensorImageDataset(ImageDataset):
    """All images in memory as one uint8 tensor (N, C, H, W); labels int64 (N,)."""

    def __init__(self, name: str, root: str, classes: list[str], images: torch.Tensor,
                 labels: torch.Tensor) -> None:
        check_images(images, f"{name} images", 4)  # (N, C, H, W) uint8
        check_labels(labels, f"{name} labels", rows=images.shape[0], num_classes=len(classes) or None)
        super().__init__(name, root, classes, num_channels=images.shape[1],
                         image_size=images.shape[2], stats=DATASET_STATS[name])
        self.images = images.contiguous()  # (N, C, H, W) uint8
        self.labels = labels.to(torch.int64)  # (N,)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])  # (C, H, W) uint8

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice a whole batch: images (B, C, H, W) uint8, labels (B,) int64."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return self.images.index_select(0, indices), self.labels.index_select(0, indices)

    def take_first(self, n: int) -> None:
        """Keep only the first `n` samples (views, no copy)."""
        self.images, self.labels = self.images[:n], self.labels[:n]

    def label_array(self) -> np.ndarray:
        return self.labels.numpy().astype(np.int64)  # (N,)

    def select(self, indices: np.ndarray) -> None:
        keep = torch.as_tensor(np.asarray(indices, dtype=np.int64))  # (M,)
        self.images, self.labels = self.images.index_select(0, keep), self.labels.index_select(0, keep)

    def split_last(self, n: int) -> "TensorImageDataset":
        if not 0 < n < len(self):
            raise ValueError(f"cannot hold out {n} of the {len(self)} images of {self.name}")
        held = copy.copy(self)
        held.images, held.labels = self.images[-n:], self.labels[-n:]
        self.take_first(len(self) - n)
        return held


# ----------------------------------------------------------------------------------------------
# In-process cache of decoded arrays (keyed by path, size and mtime, so edits invalidate it)
# ----------------------------------------------------------------------------------------------

_ARRAY_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def cached_arrays(files: Sequence[str], loader: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `loader()`, memoised on the files' identities. Callers must not modify the result."""
    key = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key not in _ARRAY_CACHE:
        _ARRAY_CACHE[key] = loader()
    return _ARRAY_CACHE[key]
