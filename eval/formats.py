"""Embeddings files: the native safetensors format, `.npy` pairs and DINO `.pth` dumps.

Native format (the contract other programs may also write):
- safetensors with `embeddings` (N, D) float32/float16/bfloat16 and `labels` (N,) integer;
- string metadata: `format`, `checkpoint`, `features`, `dataset`, `split`, `classes` (a JSON
  list of class names), `normalized` ("true"/"false"), and anything else as plain strings;
- optionally `image_paths`: a uint8 tensor holding the newline-joined UTF-8 paths.
Writes pass the output guard and are atomic (`ssl_bf.atomic_write`).

Readers for what users already have:
- `X.npy` + its labels `.npy` (found by name or given), or one `.npz` with both arrays;
- DINO `eval_knn.py` dumps: `trainfeat.pth` + `trainlabels.pth` (loaded with weights_only=True).
Every array read here (and every array written) passes the one validator, `ssl_bf.validate`:
finite, non-zero feature rows, labels that are integers >= 0 exactly representable in int64, and
matching lengths; every error names the file and the row or mismatch.
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

from ssl_bf.atomic_write import write_safetensors
from ssl_bf.run_layout import Owner
from ssl_bf.validate import as_array, check_feature_layout, check_features, check_labels
from ssl_bf.validate import check_pair as check_shapes

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
    """Embeddings with the standard metadata, validated (float32 features, int64 labels). Errors
    name `path`, or for embeddings not yet bound to a file, the checkpoint that computed them."""
    source = f"{checkpoint} ({split or 'its'} features)" if path == "<memory>" and checkpoint else path
    x = embeddings if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    y = labels if isinstance(labels, torch.Tensor) else np.asarray(labels)
    metadata = {"format": FORMAT, "checkpoint": str(checkpoint), "features": str(features),
                "dataset": str(dataset), "split": str(split),
                "classes": json.dumps(list(classes)) if classes else "",
                "normalized": "true" if normalized else "false"}
    metadata.update({str(k): str(v) for k, v in (extra or {}).items()})
    paths = [str(p) for p in image_paths] if image_paths is not None else None
    emb = Embeddings(_float_matrix(x, source), check_labels(y, source, error=EmbeddingsError), metadata, path, paths)
    validate(emb, source)
    if paths is not None and len(paths) != len(emb):
        raise EmbeddingsError(f"{path}: {len(paths)} image paths for {len(emb)} rows")
    return emb


def write_embeddings(path: str, emb: Embeddings, dtype: str = "float32", *, option: str = "output",
                     owner: Optional[Owner] = None) -> None:
    """Write `emb` as safetensors, atomically; `dtype` is the stored precision (float32, float16).
    `option` and `owner`: how the output guard names the file and whose run file it may be."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype}")
    stored = torch.from_numpy(np.ascontiguousarray(emb.embeddings)).to(getattr(torch, dtype))
    try:  # what is written can be read back: float16 turns |x| > 65504 into Inf and tiny rows into 0
        check_features(stored, path, EmbeddingsError)
    except EmbeddingsError as err:
        raise EmbeddingsError(f"{err} once stored as {dtype}; store them with --dtype float32") from None
    tensors = {EMBEDDINGS_KEY: stored,
               LABELS_KEY: torch.from_numpy(np.ascontiguousarray(emb.labels, dtype=np.int64))}
    if emb.image_paths is not None:
        if any("\n" in p for p in emb.image_paths):
            raise EmbeddingsError(f"{path}: an image path contains a newline; it cannot be stored")
        blob = "\n".join(emb.image_paths).encode()
        tensors[PATHS_KEY] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob \
            else torch.zeros(0, dtype=torch.uint8)
    write_safetensors(tensors, emb.metadata, path, option=option, owner=owner)
    emb.path = path


def save_embeddings(path: str, embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    *, dtype: str = "float32", owner: Optional[Owner] = None, **metadata) -> Embeddings:
    """`make_embeddings(embeddings, labels, **metadata)`, written to `path` (`owner`: as for
    `write_embeddings`); returns it."""
    emb = make_embeddings(embeddings, labels, path=path, **metadata)
    write_embeddings(path, emb, dtype, owner=owner)
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
    metadata: dict[str, str] = {}
    labels = None
    if ext == ".safetensors":  # safetensors checks the header (offsets, sizes) before rows are read
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
                if LABELS_KEY not in set(f.keys()):
                    return load_embeddings(path, labels_path)  # it says what is missing
                labels = as_array(f.get_tensor(LABELS_KEY), path, "labels", EmbeddingsError)
        except SafetensorError:
            return load_embeddings(path, labels_path)  # it says what is wrong with the file
    try:
        rows = open_rows(path, EMBEDDINGS_KEY)
    except (ValueError, OSError, KeyError, TypeError, struct.error):
        return load_embeddings(path, labels_path)  # not streamable as stored (e.g. float64): held whole
    check_feature_layout(rows.shape, rows.dtype, path, EmbeddingsError)
    if labels_path or labels is None:
        labels = _read_labels(labels_path or find_labels_file(path), path, len(rows))
    emb = Embeddings(rows, check_labels(labels, path, error=EmbeddingsError), metadata, path)
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
    emb = Embeddings(_float_matrix(x, path), check_labels(y, path, error=EmbeddingsError), metadata, path)
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
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # a parse boundary: zipfile, numpy and OS errors all mean "unreadable"
        raise EmbeddingsError(f"{path}: not a readable .npz file ({_numpy_reason(err)})") from None
    return _from_mapping(arrays, path)


def _from_mapping(d: dict, path: str) -> Embeddings:
    fk = next((k for k in _FEATURE_KEYS if k in d), None)
    lk = next((k for k in _LABEL_KEYS if k in d), None)
    if fk is None or lk is None:
        raise EmbeddingsError(f"{path}: expected arrays named one of {_FEATURE_KEYS} and one of "
                              f"{_LABEL_KEYS}, found {sorted(map(str, d))}")
    return Embeddings(_float_matrix(d[fk], path), check_labels(d[lk], path, error=EmbeddingsError), {}, path)


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
    labels = check_labels(_read_array(labels_path), labels_path, error=EmbeddingsError)
    if rows is not None and len(labels) != rows:
        raise EmbeddingsError(f"{labels_path} holds {len(labels)} labels but {features_path} has {rows} rows; "
                              f"give the labels file that goes with it")
    return labels


def _float_matrix(x, path: str) -> np.ndarray:
    """A floating-point (N, D) array (rows are checked by `validate`)."""
    x = as_array(x, path, "embeddings", EmbeddingsError)
    check_feature_layout(x.shape, x.dtype, path, EmbeddingsError)
    return x


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate(emb: Embeddings, source: Optional[str] = None) -> None:
    """Raise EmbeddingsError, naming the file (`source`, default `emb.path`) and the rows, unless
    `emb` is usable on its own. In-memory rows are checked here; the rows of a `FileRows` as the
    search reads them."""
    source = source or emb.path
    check_feature_layout(emb.embeddings.shape, emb.embeddings.dtype, source, EmbeddingsError)
    if isinstance(emb.embeddings, np.ndarray):
        check_features(emb.embeddings, source, EmbeddingsError)
    emb.labels = check_labels(emb.labels, source, rows=emb.embeddings.shape[0], num_classes=emb.num_classes,
                              error=EmbeddingsError)


def check_pair(train: Embeddings, test: Embeddings, ks: Sequence[int] = ()) -> None:
    """Raise EmbeddingsError unless `train` and `test` can be scored together with every k."""
    check_shapes(train.embeddings.shape, test.embeddings.shape, train.path, test.path, ks, EmbeddingsError)
    ct, cs = train.classes, test.classes
    if ct and cs and ct != cs:
        raise EmbeddingsError(f"class lists differ: {train.path} has {len(ct)} classes, "
                              f"{test.path} has {len(cs)} (or the names differ)")
