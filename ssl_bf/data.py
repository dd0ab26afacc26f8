"""Datasets that yield uint8 images: Fashion-MNIST, CIFAR-10/100, ImageFolder, unlabeled folders.

Augmentation is not done here: every dataset returns `(uint8 tensor (C, H, W), int label)` and
the two views are made later, batched on the device. In-memory datasets (Fashion-MNIST, CIFAR)
also offer `get_batch(indices)`, so the trainer can slice whole batches without collation.

Decisions (see `build_dataset`):
- An explicit `root` is the only place looked at; default locations are searched only when
  `root` is None. A wrong root should fail loudly, not silently read another copy.
- CIFAR pickles are read with a restricted unpickler that only rebuilds numpy arrays.
- Folder datasets never crash an epoch on a bad file: it is warned about once, recorded in
  `dataset.skipped` (per process: DataLoader workers keep their own copy) and replaced by the
  next readable sample.
"""
from __future__ import annotations

import gzip
import os
import pickle
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

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

DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "folder")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: dataset-fashion-mnist
CACHE_DIR = os.path.join("~", ".cache", "ssl-bf")


class DataError(RuntimeError):
    """Missing or unreadable data; the message names the path and the fix."""


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

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={self.root!r}, n={len(self)}, "
                f"classes={len(self.classes)}, channels={self.num_channels}, size={self.image_size})")


class TensorImageDataset(ImageDataset):
    """All images in memory as one uint8 tensor (N, C, H, W); labels int64 (N,)."""

    def __init__(self, name: str, root: str, classes: list[str], images: torch.Tensor,
                 labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
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
                self._skip(path, err)
        raise DataError(f"no readable image left in {self.root} ({len(self.skipped)} files failed "
                        f"to decode); check the files or point data.root at another folder")

    def take_first(self, n: int) -> None:
        """Keep only the first `n` samples."""
        self.samples = self.samples[:n]

    def _skip(self, path: str, err: Exception) -> None:
        self.skipped.add(path)
        warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=3)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def build_dataset(name: str, root: Optional[str] = None, split: str = "train",
                  subset: Optional[int] = None, load_size: int = 256) -> ImageDataset:
    """Build a dataset by name; see the module docstring for the layout rules.

    Args:
        name: fashion-mnist | cifar10 | cifar100 | imagefolder | folder.
        root: data folder; None searches the defaults (Fashion-MNIST, CIFAR cache folder).
        split: "train" or "test" (unlabeled `folder` ignores it: the folder is the data).
        subset: keep only the first N samples; ValueError if N exceeds the dataset.
        load_size: decoded image size for folder datasets.
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
        dataset: ImageDataset = _build_fashion_mnist(root, split)
    elif name in ("cifar10", "cifar100"):
        dataset = _build_cifar(name, root, split)
    elif name == "imagefolder":
        dataset = _build_imagefolder(root, split, load_size)
    else:
        dataset = _build_unlabeled_folder(root, load_size)
    if subset is not None:
        _apply_subset(dataset, subset)
    return dataset


def _apply_subset(dataset: ImageDataset, subset: int) -> None:
    if subset <= 0 or subset > len(dataset):
        raise ValueError(f"subset={subset} is out of range: {dataset.name} at {dataset.root} "
                         f"has {len(dataset)} images")
    dataset.take_first(subset)


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


# ----------------------------------------------------------------------------------------------
# In-process cache of decoded arrays (keyed by path, size and mtime, so edits invalidate it)
# ----------------------------------------------------------------------------------------------

_ARRAY_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _cached(files: Sequence[str], loader: Callable[[], tuple[torch.Tensor, torch.Tensor]]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `loader()`, memoised on the files' identities. Callers must not modify the result."""
    key = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key not in _ARRAY_CACHE:
        _ARRAY_CACHE[key] = loader()
    return _ARRAY_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ----------------------------------------------------------------------------------------------

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
    images = read_idx(images_path)  # (N, 28, 28)
    labels = read_idx(labels_path)  # (N,)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST files disagree: {images_path} has shape {images.shape}, "
                        f"{labels_path} has shape {labels.shape}; re-download them")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0..9; re-download it")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return x, y


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
        found = _find_fmnist_files(_expand(root), split)
        if found is None:
            raise DataError(f"Fashion-MNIST {split} files not found in {_expand(root)} (also looked "
                            f"in its raw/ and FashionMNIST/raw/ subfolders). Fix: {_FMNIST_FIX}")
        return found
    cache = _expand(os.path.join(CACHE_DIR, "fashion-mnist"))
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


def _build_fashion_mnist(root: Optional[str], split: str) -> TensorImageDataset:
    images_path, labels_path = _resolve_fmnist(root, split)
    images, labels = _cached([images_path, labels_path],
                             lambda: _load_fmnist_arrays(images_path, labels_path))
    folder = os.path.dirname(images_path)  # the folder that really holds the files
    return TensorImageDataset("fashion-mnist", folder, list(FASHION_MNIST_CLASSES), images, labels)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python-pickle and binary layouts)
# ----------------------------------------------------------------------------------------------

# The only globals a CIFAR pickle needs: numpy array reconstruction (numpy 1.x and 2.x module
# names, pickle protocols 2-5) and `_codecs.encode`, which Python 3 uses for bytes in protocol 2.
_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}

_CIFAR = {
    "cifar10": {
        "py_dir": "cifar-10-batches-py", "bin_dir": "cifar-10-batches-bin",
        "py_files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "bin_files": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
        "py_meta": ("batches.meta", "label_names"), "bin_meta": "batches.meta.txt",
        "py_label_key": "labels", "label_bytes": 1, "num_classes": 10,
    },
    "cifar100": {
        "py_dir": "cifar-100-python", "bin_dir": "cifar-100-binary",
        "py_files": {"train": ["train"], "test": ["test"]},
        "bin_files": {"train": ["train.bin"], "test": ["test.bin"]},
        "py_meta": ("meta", "fine_label_names"), "bin_meta": "fine_label_names.txt",
        "py_label_key": "fine_labels", "label_bytes": 2, "num_classes": 100,
    },
}
_CIFAR_PIXELS = 3 * 32 * 32


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and refuses anything else."""

    def find_class(self, module: str, name: str) -> object:
        obj = _SAFE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy array reconstruction is "
                f"allowed in dataset pickles (the file may be malicious or not a CIFAR file)")
        return obj


def safe_unpickle(path: str) -> object:
    """Load a dataset pickle with `RestrictedUnpickler`; DataError on refusal or corruption."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: {err}. Fix: replace it with the official CIFAR file") from err
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); re-download it") from err


def _str_keys(obj: object, path: str) -> dict[str, object]:
    """A pickled dict with keys as str (Python-2 pickles give bytes keys)."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}; re-download it")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _pickle_field(entry: dict[str, object], key: str, path: str) -> object:
    if key not in entry:
        raise DataError(f"{path}: missing field {key!r} (keys: {sorted(entry)}); re-download it")
    return entry[key]


def _read_cifar_pickle_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _str_keys(safe_unpickle(path), path)
    data = np.asarray(_pickle_field(entry, "data", path))
    labels = np.asarray(_pickle_field(entry, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {label_key!r} has shape {labels.shape}, expected ({data.shape[0]},)")
    return data, labels.astype(np.int64)


def _read_cifar_bin_batch(path: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a multiple of the {record}-byte record; "
                        f"the file is corrupt, re-download it")
    rows = raw.reshape(-1, record)  # (N, label_bytes + 3072)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine) -> fine
    return rows[:, label_bytes:], labels  # (N, 3072), (N,)


def _decode_names(values: Sequence[object]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_classes_pickle(folder: str, spec: dict) -> list[str]:
    meta_file, key = spec["py_meta"]
    path = os.path.join(folder, meta_file)
    if not os.path.isfile(path):
        return [str(i) for i in range(spec["num_classes"])]
    names = _pickle_field(_str_keys(safe_unpickle(path), path), key, path)
    return _decode_names(names if isinstance(names, (list, tuple)) else [])


def _cifar_classes_bin(folder: str, spec: dict) -> list[str]:
    path = os.path.join(folder, spec["bin_meta"])
    if not os.path.isfile(path):
        return [str(i) for i in range(spec["num_classes"])]
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _cifar_layout(root: str, spec: dict, split: str) -> Optional[tuple[str, str, list[str]]]:
    """(layout, folder, files) for the first complete layout: pickle, then binary."""
    for layout, sub in (("pickle", spec["py_dir"]), ("binary", spec["bin_dir"])):
        names = spec["py_files" if layout == "pickle" else "bin_files"][split]
        for folder in (os.path.join(root, sub), root):
            files = [os.path.join(folder, n) for n in names]
            if all(os.path.isfile(f) for f in files):
                return layout, folder, files
    return None


def _load_cifar_arrays(layout: str, files: list[str], spec: dict
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    if layout == "pickle":
        parts = [_read_cifar_pickle_batch(f, spec["py_label_key"]) for f in files]
    else:
        parts = [_read_cifar_bin_batch(f, spec["label_bytes"]) for f in files]
    data = np.concatenate([p[0] for p in parts])  # (N, 3072)
    labels = np.concatenate([p[1] for p in parts])  # (N,)
    if labels.size and (labels.min() < 0 or labels.max() >= spec["num_classes"]):
        raise DataError(f"labels out of range 0..{spec['num_classes'] - 1} in {files}; re-download")
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))  # (N, 3, 32, 32)
    return images, torch.from_numpy(labels)


def _build_cifar(name: str, root: Optional[str], split: str) -> TensorImageDataset:
    spec = _CIFAR[name]
    base = _expand(root if root is not None else os.path.join(CACHE_DIR, name))
    found = _cifar_layout(base, spec, split)
    if found is None:
        raise DataError(
            f"{name} {split} files not found in {base}. Expected {spec['py_dir']}/ (python "
            f"version) or {spec['bin_dir']}/ (binary version) there. Fix: download and unpack the "
            f"official archive from https://www.cs.toronto.edu/~kriz/cifar.html into {base}, or "
            f"set data.root=DIR to the folder that holds it")
    layout, folder, files = found
    images, labels = _cached(files, lambda: _load_cifar_arrays(layout, files, spec))
    classes = (_cifar_classes_pickle if layout == "pickle" else _cifar_classes_bin)(folder, spec)
    if len(classes) != spec["num_classes"]:
        raise DataError(f"{folder}: found {len(classes)} class names, expected {spec['num_classes']}")
    return TensorImageDataset(name, folder, classes, images, labels)


# ----------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------


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
    path = _expand(root)
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


def _build_imagefolder(root: Optional[str], split: str, load_size: int) -> ImageFolderDataset:
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


def _build_unlabeled_folder(root: Optional[str], load_size: int) -> ImageFolderDataset:
    expected = "any folder tree of images: jpg, jpeg, png, bmp, webp, tif"
    base = _require_dir(root, "folder", expected)
    samples = [(path, -1) for path in find_images(base)]
    if not samples:
        raise DataError(f"folder: no images found under {base}. Expected {expected}")
    return ImageFolderDataset("folder", base, [], samples, load_size)
