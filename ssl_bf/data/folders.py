"""Image files decoded with PIL: labelled class folders (`imagefolder`) and unlabeled folder trees
(`folder`).

A bad file never crashes an epoch: it is warned about once, recorded in `dataset.skipped` (per
process: DataLoader workers keep their own copy) and replaced by the next readable sample.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
import torch

from .base import DATASET_STATS, DataError, ImageDataset, expand_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolderDataset(ImageDataset):
    """Image files decoded with PIL to RGB uint8 (3, S, S): shorter side resized to S, centre crop.

    Label -1 and `classes == []` for unlabeled folders. A file that cannot be read is warned
    about once, added to `skipped`, and the next readable sample is returned instead.
    """

    def __init__(self, name: str, root: str, classes: list[str],
                 samples: list[tuple[str, int]], load_size: int) -> None:
        super().__init__(name, root, classes, num_channels=3, image_size=load_size,
                         stats=DATASET_STATS[name])
        self.samples = samples
        self.load_size = load_size
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for step in range(n):
            path, label = self.samples[(index + step) % n]
            if path in self.skipped:
                continue
            try:
                return load_image(path, self.load_size), label  # (3, S, S) uint8
            except Exception as err:  # a decode boundary: any failure means "bad file"
                self.mark_unreadable(path, err)
        raise DataError(f"no readable image left in {self.root} ({len(self.skipped)} files failed "
                        f"to decode); check the files or point data.root at another folder")

    def take_first(self, n: int) -> None:
        """Keep only the first `n` samples."""
        self.samples = self.samples[:n]

    def mark_unreadable(self, path: str, err: Exception) -> None:
        """Warn about `path` once and leave it out from now on (in this process)."""
        self.skipped.add(path)
        warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=3)


def load_image(path: str, size: int) -> torch.Tensor:
    """Decode to RGB, resize the shorter side to `size`, centre crop: uint8 (3, size, size)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, never below `size`
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = np.array(img, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, S, S)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: str) -> list[str]:
    """Image files under `folder`, recursively, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def _class_dirs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _require_dir(root: Optional[str], name: str, expected: str) -> str:
    if root is None:
        raise DataError(f"dataset {name!r} needs a folder. Fix: set data.root=DIR ({expected})")
    path = expand_path(root)
    if not os.path.isdir(path):
        raise DataError(f"{name} root {path} does not exist or is not a folder. Fix: set "
                        f"data.root=DIR ({expected})")
    return path


_IMAGEFOLDER_EXPECTED = ("DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (or DIR/test/), or "
                         "DIR/<class>/*.jpg for one folder used as both splits")


def _imagefolder_split_dirs(root: str) -> tuple[Optional[str], Optional[str]]:
    """(train dir, test dir) under root; a flat root of class folders serves as both, with a warning."""
    train = os.path.join(root, "train")
    tests = [os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))]
    test = tests[0] if tests else None
    if os.path.isdir(train):
        return train, test
    if test is None and _class_dirs(root):
        warnings.warn(f"{root} has no train/ folder: using its class folders for BOTH the train and "
                      f"test splits, so test scores are measured on training images", stacklevel=4)
        return root, root
    return None, test


def build_imagefolder(root: Optional[str], split: str, load_size: int) -> ImageFolderDataset:
    base = _require_dir(root, "imagefolder", _IMAGEFOLDER_EXPECTED)
    train_dir, test_dir = _imagefolder_split_dirs(base)
    folder = train_dir if split == "train" else test_dir
    if folder is None:
        want = "train/" if split == "train" else "val/ or test/"
        raise DataError(f"imagefolder: no {want} folder in {base}. Expected {_IMAGEFOLDER_EXPECTED}")
    # One class list for both splits (sorted union), so label i means the same class in each.
    classes = sorted(set(_class_dirs(train_dir or folder)) | set(_class_dirs(test_dir or folder)))
    samples = [(path, label) for label, cls in enumerate(classes)
               for path in find_images(os.path.join(folder, cls))]
    if not samples:
        raise DataError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders "
                        f"of {folder}. Expected {_IMAGEFOLDER_EXPECTED}")
    return ImageFolderDataset("imagefolder", folder, classes, samples, load_size)


def build_unlabeled_folder(root: Optional[str], load_size: int) -> ImageFolderDataset:
    expected = "any folder tree of images: jpg, jpeg, png, bmp, webp, tif"
    base = _require_dir(root, "folder", expected)
    samples = [(path, -1) for path in find_images(base)]
    if not samples:
        raise DataError(f"folder: no images found under {base}. Expected {expected}")
    return ImageFolderDataset("folder", base, [], samples, load_size)
