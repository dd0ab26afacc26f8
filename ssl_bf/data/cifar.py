"""CIFAR-10 / CIFAR-100 in the official python-pickle or binary layout.

The pickles are read with the restricted unpickler of `ssl_bf.io`, allowed to rebuild numpy arrays
and nothing else: a CIFAR file never runs code.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional, Sequence

import numpy as np
import torch

from ..io import NUMPY_ARRAY_GLOBALS, safe_unpickle
from ..validate import check_images, check_labels
from .base import CACHE_DIR, DataError, TensorImageDataset, cached_arrays, expand_path

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


def read_cifar_pickle(path: str) -> object:
    """Load a CIFAR pickle, only numpy arrays allowed in it; DataError on refusal or corruption."""
    try:
        return safe_unpickle(path, NUMPY_ARRAY_GLOBALS, "numpy array reconstruction")
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


def _read_cifar_pickle_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _str_keys(read_cifar_pickle(path), path)
    data = _pickle_field(entry, "data", path)
    labels = _pickle_field(entry, label_key, path)
    return _checked_batch(data, labels, path, num_classes)


def _checked_batch(data, labels, path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch through the one array validator (ssl_bf.validate): uint8 (N, 3072) pixels and N
    labels in 0..num_classes-1."""
    try:
        data = np.asarray(data) if isinstance(data, (list, tuple)) else data
        labels = np.asarray(labels) if isinstance(labels, (list, tuple)) else labels
        data = check_images(data, path, 2, error=DataError)  # (N, 3072)
        if data.shape[1] != _CIFAR_PIXELS:
            raise DataError(f"{path}: images must be uint8 (N, {_CIFAR_PIXELS}), found shape {data.shape}")
        labels = check_labels(labels, path, rows=len(data), num_classes=num_classes, error=DataError)
    except (DataError, ValueError, OverflowError) as err:  # np.asarray of a ragged or huge list
        raise DataError(f"{err}; re-download it" if str(err).startswith(path) else
                        f"{path}: unreadable arrays ({err}); re-download it") from None
    return data, labels


def _read_cifar_bin_batch(path: str, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a multiple of the {record}-byte record; "
                        f"the file is corrupt, re-download it")
    rows = raw.reshape(-1, record)  # (N, label_bytes + 3072)
    labels = rows[:, label_bytes - 1]  # CIFAR-100: (coarse, fine) -> fine
    return _checked_batch(rows[:, label_bytes:], labels, path, num_classes)  # (N, 3072), (N,)


def _decode_names(values: Sequence[object]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_classes_pickle(folder: str, spec: dict) -> list[str]:
    meta_file, key = spec["py_meta"]
    path = os.path.join(folder, meta_file)
    if not os.path.isfile(path):
        return [str(i) for i in range(spec["num_classes"])]
    names = _pickle_field(_str_keys(read_cifar_pickle(path), path), key, path)
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
        parts = [_read_cifar_pickle_batch(f, spec["py_label_key"], spec["num_classes"]) for f in files]
    else:
        parts = [_read_cifar_bin_batch(f, spec["label_bytes"], spec["num_classes"]) for f in files]
    data = np.concatenate([p[0] for p in parts])  # (N, 3072)
    labels = np.concatenate([p[1] for p in parts])  # (N,)
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))  # (N, 3, 32, 32)
    return images, torch.from_numpy(labels)


def build_cifar(name: str, root: Optional[str], split: str) -> TensorImageDataset:
    spec = _CIFAR[name]
    base = expand_path(root if root is not None else os.path.join(CACHE_DIR, name))
    found = _cifar_layout(base, spec, split)
    if found is None:
        raise DataError(
            f"{name} {split} files not found in {base}. Expected {spec['py_dir']}/ (python "
            f"version) or {spec['bin_dir']}/ (binary version) there. Fix: download and unpack the "
            f"official archive from https://www.cs.toronto.edu/~kriz/cifar.html into {base}, or "
            f"set data.root=DIR to the folder that holds it")
    layout, folder, files = found
    images, labels = cached_arrays(files, lambda: _load_cifar_arrays(layout, files, spec))
    classes = (_cifar_classes_pickle if layout == "pickle" else _cifar_classes_bin)(folder, spec)
    if len(classes) != spec["num_classes"]:
        raise DataError(f"{folder}: found {len(classes)} class names, expected {spec['num_classes']}")
    return TensorImageDataset(name, folder, classes, images, labels)
