"""One split of a shard folder as a map-style dataset (`data.name: shards` for evaluation and the
online k-NN monitor, and the sample set the pretraining stream reads).

Sample g of a split is the g-th sample in the manifest's shard order. Building one checks that
every shard of the split is there with its listed size (a stat each). `__getitem__` opens the
shard that holds it (a few stay open per process) and decodes the image as the folder readers do
(`load_image`: shorter side to `load_size`, centre square): `(uint8 (3, S, S), label)`. A member
that does not decode is a ShardError naming the shard and the member; nothing is skipped. Keys
and labels of every sample come from the split's sample list (`samples`), without opening a shard.
"""
from __future__ import annotations

import copy
import io
import os
import re
import warnings
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch

from ..base import IMAGENET_STATS, ImageDataset
from ..folders import load_image
from .layout import ShardError
from .manifest import Manifest, read_manifest
from .tar_access import ShardFile, VerifiedShards, check_file, check_present, check_sha256, rerun_hint

OPEN_SHARDS = 4  # shards a process keeps open for random access
_INDEX_LINE = re.compile(r"^([A-Za-z0-9_~%/-]+)\t(-1|[0-9]{1,9})$")


class ShardImageDataset(ImageDataset):
    """`dataset[i] -> (uint8 (3, S, S), int label)` over samples [start, stop) of one split."""

    def __init__(self, manifest: Manifest, split: str, load_size: int) -> None:
        entry = manifest.split(split)
        super().__init__("shards", manifest.path, list(manifest.classes), num_channels=3,
                         image_size=load_size, stats=IMAGENET_STATS)
        self.manifest, self.split, self.load_size = manifest, split, load_size
        self.shards = entry.shards
        for shard in self.shards:  # a missing or cut shard is refused now, before anything runs
            check_present(manifest, shard, "shard")
        self.offsets = np.cumsum([0, *(s.samples for s in self.shards)]).astype(np.int64)  # (S + 1,)
        self.start, self.stop = 0, int(self.offsets[-1])
        self.verified = VerifiedShards(len(self.shards))
        self._keys: Optional[list[str]] = None
        self._labels: Optional[np.ndarray] = None
        self._reset_open()

    def _reset_open(self) -> None:
        self._open: OrderedDict[int, ShardFile] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        state = dict(self.__dict__)
        state["_open"], state["_pid"] = OrderedDict(), None
        return state

    def __len__(self) -> int:
        return self.stop - self.start

    # --- where a sample lives ------------------------------------------------------------------
    def locate(self, g: int) -> tuple[int, int]:
        """(shard slot, sample within the shard) of the split's sample g."""
        slot = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return slot, g - int(self.offsets[slot])

    def open_shard(self, slot: int) -> ShardFile:
        """Shard `slot` opened and checked (its sha256 once per dataset, shared by the workers)."""
        return ShardFile(self.manifest, self.shards[slot], lambda check: self.verified.ensure(slot, check))

    def _shard(self, slot: int) -> ShardFile:
        if self._pid != os.getpid():  # a forked worker: the parent's files are not ours to use
            self._reset_open()
        f = self._open.pop(slot, None) or self.open_shard(slot)
        self._open[slot] = f
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()
        return f

    def read(self, g: int) -> tuple[ShardFile, int, str, bytes]:
        """(its shard, its place in the shard, member name, image bytes) of the split's sample g."""
        slot, m = self.locate(g)
        f = self._shard(slot)
        name, data = f.image_bytes(m)
        return f, m, name, data

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is out of range for {len(self)} samples")
        f, m, name, data = self.read(self.start + index)
        try:
            image = load_image(io.BytesIO(data), self.load_size)  # (3, S, S) uint8
        except Exception as err:  # a decode boundary: any failure means a bad member
            raise undecodable(f, name, err) from None
        return image, f.sample(m).label

    # --- subsets --------------------------------------------------------------------------------
    def take_first(self, n: int) -> None:
        self.stop = self.start + n

    def split_last(self, n: int) -> "ShardImageDataset":
        if not 0 < n < len(self):
            raise ValueError(f"cannot hold out {n} of the {len(self)} images of {self.root}")
        held = copy.copy(self)
        held._reset_open()
        held.start = self.stop - n
        self.stop = held.start
        return held

    # --- keys and labels, from the sample list --------------------------------------------------
    def _load_index(self) -> None:
        if self._keys is None:
            self._keys, self._labels = read_sample_index(self.manifest, self.split)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(`shard:key`, label) of every sample, in order."""
        self._load_index()
        names = np.repeat([s.name for s in self.shards], [s.samples for s in self.shards])
        return [(f"{names[g]}:{self._keys[g]}", int(self._labels[g])) for g in range(self.start, self.stop)]

    def __repr__(self) -> str:
        return (f"ShardImageDataset(manifest={self.root!r}, split={self.split!r}, n={len(self)}, "
                f"shards={len(self.shards)}, classes={len(self.classes)}, size={self.image_size})")


def undecodable(f: ShardFile, member: str, err: Exception) -> ShardError:
    """The error of a member whose bytes do not decode as an image."""
    what = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return ShardError(f"{f.where(member)} does not decode as an image ({what}); {rerun_hint(f.manifest)}")


def read_sample_index(manifest: Manifest, split: str) -> tuple[list[str], np.ndarray]:
    """(keys, labels (N,) int64) of a split, from its sample list, checked against the manifest."""
    entry = manifest.split(split)
    with check_file(manifest, entry.index, "sample list") as f:
        check_sha256(manifest, entry.index, f, "sample list")
        f.seek(0)
        text = f.read().decode("ascii", errors="replace")
    path = manifest.file_path(entry.index)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != entry.samples:
        raise ShardError(f"sample list {path} has {len(lines)} lines but {manifest.path} lists {entry.samples} "
                         f"samples; {rerun_hint(manifest)}")
    keys, labels = [], np.empty(len(lines), np.int64)
    top = len(manifest.classes) if manifest.labelled else 0
    for i, line in enumerate(lines):
        m = _INDEX_LINE.match(line)
        label = int(m.group(2)) if m else None
        if label is None or not ((0 <= label < top) if manifest.labelled else label == -1):
            raise ShardError(f"sample list {path} line {i + 1} is not `KEY<tab>LABEL` with a label the manifest "
                             f"allows; {rerun_hint(manifest)}")
        keys.append(m.group(1))
        labels[i] = label
    return keys, labels


def build_shards(root: Optional[str], split: str, load_size: int) -> ShardImageDataset:
    """The `shards` source: `root` is the manifest (or the folder holding manifest.json)."""
    if root is None:
        raise ShardError("dataset 'shards' needs its manifest. Fix: set data.root=OUT/manifest.json (written by "
                         "`ssl-bf shard SRC OUT`)")
    manifest = read_manifest(root)
    dataset = ShardImageDataset(manifest, split, load_size)
    train = manifest.splits["train"]
    if split == "test" and manifest.labelled and manifest.splits["test"].shards == train.shards:
        warnings.warn(f"{manifest.path}: the test split is the train split (shards of a flat class folder), "
                      f"so test scores are measured on training images", stacklevel=3)
    return dataset
