"""Fashion-MNIST from its IDX files (optionally gzipped): an explicit root, else the Debian
package's folder, the cache folder, and last a torchvision download into the cache."""
from __future__ import annotations

import gzip
import os
from typing import Optional

import numpy as np
import torch

from ..validate import check_images, check_labels
from .base import CACHE_DIR, DataError, TensorImageDataset, cached_arrays, expand_path

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist

_IDX_DTYPES = {0x08: np.uint8}
_FMNIST_PREFIX = {"train": "train", "test": "t10k"}
_FMNIST_FIX = ("install the Debian package (apt-get install -y dataset-fashion-mnist), or set "
               "data.root=DIR to a folder holding train-images-idx3-ubyte[.gz], "
               "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")


def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a uint8 array; DataError if malformed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; re-download or reinstall it") from err
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX uint8 file (bad magic number {raw[:4].hex()}); "
                        f"re-download or reinstall it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; re-download or reinstall it")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but "
                        f"{len(raw) - header} bytes follow; the file is corrupt, re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(folder: str, stem: str) -> Optional[str]:
    for candidate in (stem, stem + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _find_fmnist_files(root: str, split: str) -> Optional[tuple[str, str]]:
    """(images, labels) files for `split` under root, root/raw or root/FashionMNIST/raw."""
    prefix = _FMNIST_PREFIX[split]
    for folder in (root, os.path.join(root, "raw"), os.path.join(root, "FashionMNIST", "raw")):
        images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def _load_fmnist_arrays(images_path: str, labels_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two IDX files through the one array validator (ssl_bf.validate): uint8 (N, 28, 28)
    images, N labels in 0..9."""
    try:
        images = check_images(read_idx(images_path), images_path, 3, error=DataError)  # (N, 28, 28)
        labels = check_labels(read_idx(labels_path), labels_path, rows=len(images),
                              num_classes=len(FASHION_MNIST_CLASSES), error=DataError)  # (N,) int64
    except DataError as err:
        raise DataError(f"{err}; re-download or reinstall Fashion-MNIST") from None
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return x, torch.from_numpy(labels)


def _download_fmnist(cache: str) -> Optional[str]:
    """Try torchvision's downloader into `cache`; return an error message, or None on success."""
    try:
        import torchvision

        torchvision.datasets.FashionMNIST(cache, train=True, download=True)
        torchvision.datasets.FashionMNIST(cache, train=False, download=True)
    except Exception as err:  # offline, mirror down, no torchvision: report, do not crash here
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    return None


def _resolve_fmnist(root: Optional[str], split: str) -> tuple[str, str]:
    """Find the IDX files: an explicit root only, else the system folder, cache, then download."""
    if root is not None:
        folder = expand_path(root)
        found = _find_fmnist_files(folder, split)
        if found is None:
            raise DataError(f"Fashion-MNIST {split} files not found in {folder} (also looked "
                            f"in its raw/ and FashionMNIST/raw/ subfolders). Fix: {_FMNIST_FIX}")
        return found
    cache = expand_path(os.path.join(CACHE_DIR, "fashion-mnist"))
    for folder in (FASHION_MNIST_SYSTEM_DIR, cache):
        found = _find_fmnist_files(folder, split)
        if found:
            return found
    error = _download_fmnist(cache)
    found = _find_fmnist_files(cache, split)
    if found is None:
        raise DataError(f"Fashion-MNIST not found in {FASHION_MNIST_SYSTEM_DIR} or {cache}, and the "
                        f"download into {cache} failed ({error}). Fix: {_FMNIST_FIX}")
    return found


def build_fashion_mnist(root: Optional[str], split: str) -> TensorImageDataset:
    images_path, labels_path = _resolve_fmnist(root, split)
    images, labels = cached_arrays([images_path, labels_path],
                                   lambda: _load_fmnist_arrays(images_path, labels_path))
    folder = os.path.dirname(images_path)  # the folder that really holds the files
    return TensorImageDataset("fashion-mnist", folder, list(FASHION_MNIST_CLASSES), images, labels)
