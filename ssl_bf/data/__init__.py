"""Datasets that yield uint8 images: Fashion-MNIST, CIFAR-10/100, ImageFolder, unlabeled folders.

Augmentation is not done here: every dataset returns `(uint8 tensor (C, H, W), int label)` and
the two views are made later, batched on the device. In-memory datasets (Fashion-MNIST, CIFAR)
also offer `get_batch(indices)`, so the trainer can slice whole batches without collation.
`TwoCropFolder` is the exception for image folders at the full MoCo crop recipe: it cuts the two
random resized crops in the DataLoader (`crops.py`).

One module per source: `base` (dataset classes, stats, decoded-array cache), `fashion_mnist`,
`cifar`, `folders`, `crops`, and `decode` (one image file -> RGB, for both folder modules).
Decisions (see `build_dataset`):
- An explicit `root` is the only place looked at; default locations are searched only when
  `root` is None. A wrong root should fail loudly, not silently read another copy.
- CIFAR pickles are read with a restricted unpickler that only rebuilds numpy arrays.
- Image folders fail closed: a file that cannot be read correctly raises `UnreadableImageError`
  naming it (one line, also from a DataLoader worker). With `skip_unreadable=True` extraction
  leaves its row out and training gets another readable image (with its own label) in its place;
  either way it is marked in `dataset.unreadable` for the caller to list (folders.py, decode.py).
"""
from __future__ import annotations

from typing import Optional

from .base import DATASET_STATS, IMAGENET_STATS, DataError, ImageDataset, TensorImageDataset
from .cifar import build_cifar
from .crops import TwoCropFolder
from .decode import UnreadableImageError
from .fashion_mnist import FASHION_MNIST_CLASSES, build_fashion_mnist, read_idx
from .folders import (ImageFolderDataset, build_imagefolder, build_unlabeled_folder, find_images,
                      load_image)
from .shards import build_shards

__all__ = [
    "DATASET_NAMES", "DATASET_STATS", "FASHION_MNIST_CLASSES", "IMAGENET_STATS", "SPLITS",
    "DataError", "ImageDataset", "ImageFolderDataset", "TensorImageDataset", "TwoCropFolder",
    "UnreadableImageError", "build_dataset", "find_images", "load_image", "read_idx",
]

DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "folder", "shards")
SPLITS = ("train", "test")


def build_dataset(name: str, root: Optional[str] = None, split: str = "train",
                  subset: Optional[int] = None, load_size: int = 256,
                  skip_unreadable: bool = False) -> ImageDataset:
    """Build a dataset by name; see the module docstring for the layout rules.

    Args:
        name: fashion-mnist | cifar10 | cifar100 | imagefolder | folder | shards.
        root: data folder (shards: the manifest); None searches the defaults (Fashion-MNIST, CIFAR cache folder).
        split: "train" or "test" (unlabeled `folder` ignores it: the folder is the data).
        subset: keep only the first N samples; ValueError if N exceeds the dataset.
        load_size: decoded image size for folder datasets.
        skip_unreadable: image folders: leave out (extraction) or replace (training) an image that
            cannot be read, instead of raising UnreadableImageError naming it.
    Raises:
        DataError: data missing, unreadable or corrupt.
        ValueError: an unknown name or split, or a bad subset / load_size.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    if load_size <= 0:
        raise ValueError(f"load_size must be positive, got {load_size}")
    if name == "fashion-mnist":
        dataset: ImageDataset = build_fashion_mnist(root, split)
    elif name in ("cifar10", "cifar100"):
        dataset = build_cifar(name, root, split)
    elif name == "imagefolder":
        dataset = build_imagefolder(root, split, load_size, skip_unreadable)
    elif name == "shards":
        if skip_unreadable:
            raise ValueError("data.skip_unreadable applies to image folders: a shard's images were checked when "
                             "`ssl-bf shard` wrote it, and a damaged one is refused naming the shard")
        dataset = build_shards(root, split, load_size)
    else:
        dataset = build_unlabeled_folder(root, load_size, skip_unreadable)
    if subset is not None:
        if subset <= 0 or subset > len(dataset):
            raise ValueError(f"subset={subset} is out of range: {dataset.name} at {dataset.root} "
                             f"has {len(dataset)} images")
        dataset.take_first(subset)
    return dataset
