"""Embeddings files: the native safetensors format, `.npy` pairs and DINO `.pth` dumps.

Native format (the contract other programs may also write):
- safetensors with `embeddings` (N, D) float32/float16/bfloat16 and `labels` (N,) integer;
- string metadata: `format`, `checkpoint`, `features`, `dataset`, `split`, `classes` (a JSON
  list of class names), `normalized` ("true"/"false"), and anything else as plain strings;
- optionally `image_paths`: a uint8 tensor holding the newline-joined UTF-8 paths.
Writes are atomic (temp file beside the target, then `os.replace`).

Readers for what users already have:
- `X.npy` + its labels `.npy` (found by name or given), or one `.npz` with both arrays;
- DINO `eval_knn.py` dumps: `trainfeat.pth` + `trainlabels.pth` (loaded with weights_only=True).
Every error names the file and the mismatch.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ssl_bf.io import atomic_path
from ssl_bf.knn.vote import integer_labels

FORMAT = "ssl-bf-embeddings/1"
EMBEDDINGS_KEY = "embeddings"
LABELS_KEY = "labels"
PATHS_KEY = "image_paths"
_FEATURE_KEYS = ("embeddings", "features", "feats", "feat", "x")
_LABEL_KEYS = ("labels", "targets", "y")


class EmbeddingsError(ValueError):
    """An embeddings file that cannot be used; the message names the file and the problem."""


@dataclass
class Embeddings:
    """Features of one split with their labels and descriptive metadata."""

    embeddings: np.ndarray  # (N, D) float32 or float16 (or a knn_stream.FileRows: see open_embeddings)
    labels: np.ndarray  # (N,) int64
    metadata: dict[str, str] = field(default_factory=dict)
    path: str = "<memory>"
    image_paths: Optional[list[str]] = None

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def classes(self) -> Optional[list[str]]:
        """Class names from the metadata (index i names label i), if recorded."""
        raw = self.metadata.get("classes")
        if not raw:
            return None
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            raise EmbeddingsError(f"{self.path}: metadata 'classes' is not a JSON list") from None
        return [str(c) for c in names] if isinstance(names, list) and names else None

    @property
    def num_classes(self) -> Optional[int]:
        classes = self.classes
        return len(classes) if classes else None

    @property
    def normalized(self) -> bool:
        return self.metadata.get("normalized", "false").lower() == "true"


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def make_embeddings(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                    checkpoint: str = "", features: str = "", dataset: str = "", split: str = "",
                    classes: Optional[Sequence[str]] = None, normalized: bool = False,
                    image_paths: Optional[Sequence[str]] = None,
                    extra: Optional[dict[str, str]] = None, path: str = "<memory>") -> Embeddings:
    """Embeddings with the standard metadata, validated (float32 features, int64 labels)."""
    x = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    metadata = {"format": FORMAT, "checkpoint": str(checkpoint), "features": str(features),
                "dataset": str(dataset), "split": str(split),
                "classes": json.dumps(list(classes)) if classes else "",
                "normalized": "true" if normalized else "false"}
    metadata.update({str(k): str(v) for k, v in (extra or {}).items()})
    paths = [str(p) for p in image_paths] if image_paths is not None else None
    emb = Embeddings(_float_matrix(x, path), _int_labels(y, path), metadata, path, paths)
    validate(emb)
    if paths is not None and len(paths) != len(emb):
        raise EmbeddingsError(f"{path}: {len(paths)} image paths for {len(emb)} rows")
    return emb


def write_embeddings(path: str, emb: Embeddings, dtype: str = "float32") -> None:
    """Write `emb` as safetensors, atomically; `dtype` is the stored precision (float32, float16)."""
    from safetensors.torch import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype}")
    stored = torch.from_numpy(np.ascontiguousarray(emb.embeddings)).to(getattr(torch, dtype))
    if dtype == "float16" and not torch.isfinite(stored).all():
        raise EmbeddingsError(f"{path}: some features exceed the float16 range (|x| > 65504); "
                              f"store them with --dtype float32")
    tensors = {EMBEDDINGS_KEY: stored,
               LABELS_KEY: torch.from_numpy(np.ascontiguousarray(emb.labels, dtype=np.int64))}
    if emb.image_paths is not None:
        if any("\n" in p for p in emb.image_paths):
            raise EmbeddingsError(f"{path}: an image path contains a newline; it cannot be stored")
        blob = "\n".join(emb.image_paths).encode()
        tensors[PATHS_KEY] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob \
            else torch.zeros(0, dtype=torch.uint8)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=dict(emb.metadata))
    emb.path = path


def save_embeddings(path: str, embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    *, dtype: str = "float32", **metadata) -> Embeddings:
    """`make_embeddings(embeddings, labels, **metadata)`, written to `path`; returns it."""
    emb = make_embeddings(embeddings, labels, path=path, **metadata)
    write_embeddings(path, emb, dtype)
    return emb


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def load_embeddings(path: str, labels_path: Optional[str] = None, check: bool = True) -> Embeddings:
    """Read embeddings from safetensors, `.npy` (+ labels), `.npz` or a DINO `.pth` dump.

    Args:
        path: the features file. A folder holding DINO dumps is not enough: name the file.
        labels_path: the labels file for `.npy` / `.pth` features; by default it is found by
            name (`trainfeat.pth` -> `trainlabels.pth`, `x_features.npy` -> `x_labels.npy`,
            `x.npy` -> `x_labels.npy` or `x.labels.npy`).
        check: run `validate` (shapes, dtypes, finite values).
    """
    if not os.path.exists(path):
        raise EmbeddingsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise EmbeddingsError(f"{path} is a folder; name the features file inside it "
                              f"(e.g. {os.path.join(path, 'trainfeat.pth')})")
    if os.path.getsize(path) == 0:
        raise EmbeddingsError(f"{path}: the file is empty (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        emb = _read_safetensors(path)
    elif ext == ".npz":
        emb = _read_npz(path)
    elif ext in (".npy", ".pth", ".pt"):
        x = _read_array(path)
        if isinstance(x, dict):  # a .pth holding {"embeddings"/"features": ..., "labels": ...}
            emb = _from_mapping(x, path)
        else:
            lpath = labels_path or find_labels_file(path)
            x = _float_matrix(x, path)
            emb = Embeddings(x, _read_labels(lpath, path, len(x)), {}, path)
    else:
        raise EmbeddingsError(f"{path}: unknown embeddings format '{ext}'; use .safetensors, "
                              f".npy (+ labels .npy), .npz or DINO .pth dumps")
    if labels_path and ext in (".safetensors", ".npz"):
        emb.labels = _read_labels(labels_path, path, len(emb))
    if check:
        validate(emb)
    return emb


def open_embeddings(path: str, labels_path: Optional[str] = None) -> Embeddings:
    """Like `load_embeddings`, but a .safetensors or .npy matrix stays in its file: `embeddings` is
    a `ssl_bf.knn_stream.FileRows` read in row blocks (labels and metadata are loaded). Other
    formats are loaded whole. Non-finite rows are found block by block when the rows are read."""
    from ssl_bf.knn.stream import open_rows

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".safetensors", ".npy") or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return load_embeddings(path, labels_path)
    try:
        rows = open_rows(path, EMBEDDINGS_KEY)
    except (ValueError, OSError, KeyError, struct.error) as err:
        if ext == ".safetensors":  # let the full reader say what is wrong with the file
            return load_embeddings(path, labels_path)
        raise EmbeddingsError(f"{path}: {err}") from None
    if ext == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
                if LABELS_KEY not in set(f.keys()):
                    raise EmbeddingsError(f"{path}: missing tensor 'labels' (N,) beside 'embeddings'")
                labels = _int_labels(f.get_tensor(LABELS_KEY), path)
        except SafetensorError as err:
            raise EmbeddingsError(f"{path}: not a readable safetensors file ({err})") from None
        if labels_path:
            labels = _read_labels(labels_path, path, len(rows))
    else:
        metadata, labels = {}, _read_labels(labels_path or find_labels_file(path), path, len(rows))
    emb = Embeddings(rows, labels, metadata, path)
    validate(emb)
    return emb


def find_labels_file(features_path: str) -> str:
    """The labels file that goes with a `.npy` / `.pth` features file, found by name."""
    folder, name = os.path.split(features_path)
    stem, ext = os.path.splitext(name)
    candidates = []
    swapped = re.sub(r"(embeddings|embeds|features|feats|feat)(?!.*(embeddings|embeds|features|feats|feat))",
                     "labels", stem)
    if swapped != stem:
        candidates.append(swapped + ext)
    candidates += [f"{stem}_labels{ext}", f"{stem}.labels{ext}", f"{stem}-labels{ext}"]
    for c in candidates:
        full = os.path.join(folder, c)
        if os.path.isfile(full):
            return full
    raise EmbeddingsError(f"{features_path}: no labels file found (looked for "
                          f"{', '.join(candidates)} beside it); pass the labels file explicitly")


def _read_safetensors(path: str) -> Embeddings:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            metadata = dict(f.metadata() or {})
            missing = [k for k in (EMBEDDINGS_KEY, LABELS_KEY) if k not in keys]
            if missing:
                raise EmbeddingsError(f"{path}: missing tensor(s) {missing}; an embeddings file holds "
                                      f"'embeddings' (N, D) and 'labels' (N,), found {sorted(keys)}")
            x = f.get_tensor(EMBEDDINGS_KEY)
            y = f.get_tensor(LABELS_KEY)
            blob = f.get_tensor(PATHS_KEY) if PATHS_KEY in keys else None
    except SafetensorError as err:
        raise EmbeddingsError(f"{path}: not a readable safetensors file ({err})") from None
    emb = Embeddings(_float_matrix(x, path), _int_labels(y, path), metadata, path)
    if blob is not None:
        try:
            text = blob.numpy().tobytes().decode()
        except UnicodeDecodeError:
            raise EmbeddingsError(f"{path}: its '{PATHS_KEY}' tensor is not UTF-8 text") from None
        emb.image_paths = text.split("\n")
    return emb


def _read_npz(path: str) -> Embeddings:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _from_mapping({k: z[k] for k in z.files}, path)
    except Exception as err:  # a parse boundary: zipfile, numpy and OS errors all mean "unreadable"
        raise EmbeddingsError(f"{path}: not a readable .npz file ({_numpy_reason(err)})") from None


def _from_mapping(d: dict, path: str) -> Embeddings:
    fk = next((k for k in _FEATURE_KEYS if k in d), None)
    lk = next((k for k in _LABEL_KEYS if k in d), None)
    if fk is None or lk is None:
        raise EmbeddingsError(f"{path}: expected arrays named one of {_FEATURE_KEYS} and one of "
                              f"{_LABEL_KEYS}, found {sorted(map(str, d))}")
    return Embeddings(_float_matrix(d[fk], path), _int_labels(d[lk], path), {}, path)


def _read_array(path: str):
    """A .npy array (memory-mapped), or what a torch file holds, loaded weights-only."""
    from ssl_bf.io import UnreadableFileError, load_tensors

    if os.path.getsize(path) == 0:
        raise EmbeddingsError(f"{path}: the file is empty (0 bytes)")
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False, mmap_mode="r")
        return load_tensors(path)
    except UnreadableFileError as err:
        raise EmbeddingsError(" ".join(str(err).split("\n"))) from None
    except Exception as err:  # a parse boundary: any failure means "unreadable file"
        raise EmbeddingsError(f"{path}: cannot read it ({_numpy_reason(err)})") from None


def _numpy_reason(err: Exception) -> str:
    """Why numpy could not read a file, on one line; never advice to load pickles unsafely."""
    text = str(err)
    if "pickle" in text.lower():
        return "corrupt, or it holds Python objects, which ssl-bf never loads"
    first = (text.strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _read_labels(labels_path: str, features_path: str, rows: Optional[int] = None) -> np.ndarray:
    """The labels file of `features_path`; with `rows`, it must hold that many labels."""
    if os.path.isdir(labels_path):
        raise EmbeddingsError(f"{labels_path} (labels for {features_path}) is a folder; name the labels file")
    if not os.path.isfile(labels_path):
        raise EmbeddingsError(f"{labels_path} (labels for {features_path}): no such file")
    labels = _int_labels(_read_array(labels_path), labels_path)
    if rows is not None and len(labels) != rows:
        raise EmbeddingsError(f"{labels_path} holds {len(labels)} labels but {features_path} has {rows} rows; "
                              f"give the labels file that goes with it")
    return labels


def _float_matrix(x, path: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        raise EmbeddingsError(f"{path}: expected a tensor or array of features, found {type(x).__name__}")
    if x.dtype.kind != "f":
        raise EmbeddingsError(f"{path}: embeddings must be floating point, found dtype {x.dtype}")
    if x.ndim != 2:
        raise EmbeddingsError(f"{path}: embeddings must be 2-D (N, D), found shape {tuple(x.shape)}")
    return x


def _int_labels(y, path: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    elif not isinstance(y, np.ndarray):
        raise EmbeddingsError(f"{path}: expected a tensor or array of labels, found {type(y).__name__}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind == "b":
        raise EmbeddingsError(f"{path}: labels must be integers, found dtype {y.dtype}")
    return integer_labels(y, f"{path}: labels", EmbeddingsError).copy()


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate(emb: Embeddings) -> None:
    """Raise EmbeddingsError, naming the file, unless `emb` is usable on its own."""
    n = emb.embeddings.shape[0]
    if n == 0 or emb.embeddings.shape[1] == 0:
        raise EmbeddingsError(f"{emb.path}: no embeddings (shape {tuple(emb.embeddings.shape)})")
    if emb.labels.shape != (n,):
        raise EmbeddingsError(f"{emb.path}: {n} embeddings but {emb.labels.shape[0]} labels")
    streamed = not isinstance(emb.embeddings, np.ndarray)  # a FileRows: checked as its blocks are read
    bad = np.zeros(0, np.int64) if streamed else nonfinite_rows(emb.embeddings)
    if bad.size:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise EmbeddingsError(f"{emb.path}: {bad.size} of {n} rows contain NaN or Inf (rows {shown})")
    c = emb.num_classes
    if c is not None and (emb.labels.min() < 0 or emb.labels.max() >= c):
        raise EmbeddingsError(f"{emb.path}: labels span [{emb.labels.min()}, {emb.labels.max()}] but "
                              f"the metadata lists {c} classes")


def nonfinite_rows(x: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Indices of rows holding NaN or Inf, checked block by block (no full-size temporary)."""
    bad = [start + np.flatnonzero(~np.isfinite(x[start:start + block]).all(axis=1))
           for start in range(0, x.shape[0], block)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def check_pair(train: Embeddings, test: Embeddings, ks: Sequence[int] = ()) -> None:
    """Raise EmbeddingsError unless `train` and `test` can be scored together with every k."""
    if train.dim != test.dim:
        raise EmbeddingsError(f"embedding dimensions differ: {train.path} has D={train.dim}, "
                              f"{test.path} has D={test.dim}")
    for k in ks:
        if k < 1:
            raise EmbeddingsError(f"k must be at least 1, got {k}")
        if k > len(train):
            raise EmbeddingsError(f"k={k} is larger than the train set: {train.path} has "
                                  f"{len(train)} rows; use --k values up to {len(train)}")
    ct, cs = train.classes, test.classes
    if ct and cs and ct != cs:
        raise EmbeddingsError(f"class lists differ: {train.path} has {len(ct)} classes, "
                              f"{test.path} has {len(cs)} (or the names differ)")
