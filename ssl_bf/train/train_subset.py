"""The long-tailed (or user-chosen) pretraining set: which train images a run uses, the file that
records them (RUN/data_indices.npy) and the per-class counts its start event and monitor report.

Order (docs/protocols.md): data.val_holdout is carved first from the balanced train split (the
monitor's queries stay balanced), then the long tail is drawn from what remains (or
data.indices_file is read), then data.subset takes the first N of the chosen images. The indices
are into the full train split, as `ssl-bf embed --split train` orders it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..atomic_write import write_npy
from ..config import Config, ConfigError
from ..data.long_tail import LongTailError, check_indices, draw_long_tail, load_index_array, read_index_file
from ..run_layout import Owner

INDICES_FILE = "data_indices.npy"


@dataclass(frozen=True)
class TrainSubset:
    """The chosen train images and their classes."""

    indices: np.ndarray  # (M,) int64, sorted, into the full train split
    class_counts: tuple[int, ...]  # (C,) images per class in the pretraining set

    def fields(self) -> dict:
        """What the start event and the summary record."""
        return {"class_counts": list(self.class_counts), "train_images": int(self.indices.size)}


def subset_fields(chosen: Optional[TrainSubset]) -> dict:
    """The start event's and the summary's `class_counts` and `train_images` (empty: every image)."""
    return chosen.fields() if chosen is not None else {}


def chooses_images(cfg: Config) -> bool:
    """Whether the run trains on a chosen subset (a long tail or an index file)."""
    return cfg.data.long_tail.ratio > 1 or cfg.data.indices_file is not None


def choose_images(cfg: Config, images) -> Optional[np.ndarray]:
    """Indices into `images` (the train split after data.val_holdout) of the pretraining set, or
    None when every image is used. A setting that cannot give a subset is a ConfigError naming it."""
    d = cfg.data
    if not chooses_images(cfg):
        return None
    try:
        if d.indices_file is not None:
            paths = [p for p, _ in images.samples] if d.name in ("imagefolder", "folder") else None
            return read_index_file(os.path.expanduser(d.indices_file), len(images), paths, images.root)
        labels = images.label_array()  # (N,)
        if labels.size and labels.min() < 0:
            raise LongTailError(f"data.long_tail.ratio needs labelled images; {d.name} has none")
        chosen = draw_long_tail(labels, d.long_tail.ratio, d.long_tail.kind, d.long_tail.split)
        return check_indices(chosen, len(images), "data.long_tail")
    except LongTailError as err:
        raise ConfigError(f"{err}{hint_for(cfg, images)}") from None


def hint_for(cfg: Config, images) -> str:
    """Where out-of-range indices may come from: the images data.val_holdout keeps for the monitor."""
    if cfg.data.indices_file is not None and cfg.data.val_holdout:
        return f" (data.val_holdout={cfg.data.val_holdout} keeps the last images for the monitor: {len(images)} remain)"
    return ""


def train_subset(images, indices: np.ndarray) -> TrainSubset:
    """Keep `indices` of `images` and describe them."""
    images.select(indices)
    labels = images.label_array()  # (M,)
    counts = np.bincount(labels[labels >= 0], minlength=len(images.classes)).astype(np.int64)  # (C,)
    return TrainSubset(np.asarray(indices, dtype=np.int64), tuple(int(c) for c in counts))


def indices_path(run_dir: str) -> str:
    return os.path.join(run_dir, INDICES_FILE)


def check_saved_indices(run_dir: str, subset: Optional[TrainSubset], resuming: bool) -> None:
    """On a resume, the chosen images must be those the run started with (RUN/data_indices.npy):
    else a ConfigError naming the file (a changed data folder or index file)."""
    path = indices_path(run_dir)
    if not resuming or subset is None or not os.path.isfile(path):
        return
    try:
        saved = load_index_array(path, path)
    except LongTailError as err:
        raise ConfigError(f"{err}; it records the run's training images: restore it, or start a new run.dir") from None
    if saved.shape != subset.indices.shape or not np.array_equal(saved, subset.indices):
        raise ConfigError(f"{path}: the run trained on {saved.size} chosen images, but this config now chooses "
                          f"{subset.indices.size} others (data.indices_file or the data changed); resume with "
                          f"the data it started with, or start a new run.dir")


def write_indices(run_dir: str, subset: Optional[TrainSubset]) -> None:
    """RUN/data_indices.npy (int64), atomically; nothing when every image is used."""
    if subset is not None:
        write_npy(subset.indices, indices_path(run_dir), option="the run's data indices", owner=Owner.PRETRAIN)
