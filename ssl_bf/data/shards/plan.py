"""What `ssl-bf shard` writes where: the images of each split in order, and which shard each goes to.

The sample-to-shard assignment is a pure function of the ordered file list and the file sizes
(`cut_shards`), so a rerun over the same files cuts the same shards; `fingerprint` names a
shard's inputs (paths, sizes, modification times, labels), so a rerun reuses a finished shard
only when they are unchanged. The order is the folder readers' sorted order (`--order sorted`) or
a permutation of it drawn from `--seed` (`--order shuffled`, the default): a class-sorted shard
would give pretraining batches of one class.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..base import DataError
from ..folders import build_imagefolder, build_unlabeled_folder
from .layout import LABEL_EXT, encode_key, image_ext, shard_name

TAR_BLOCK = 512
TAR_END = 2 * TAR_BLOCK  # the two zero blocks that end an archive
PAX_NAME_LIMIT = 100  # longer member names take a pax header (about 3 blocks with its own header)


@dataclass(frozen=True)
class Image:
    """One image to shard: where it is, its path relative to its split folder, label, size, mtime."""

    path: str
    rel: str
    label: int
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return encode_key(self.rel)

    @property
    def member(self) -> str:
        return f"{self.key}.{image_ext(self.path)}"


@dataclass(frozen=True)
class SplitSource:
    """A split's folder (relative to the source) and its images in shard order."""

    folder: str
    images: tuple[Image, ...]


@dataclass(frozen=True)
class PlannedShard:
    split: str
    index: int
    images: tuple[Image, ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def list_source(src: str, unlabeled: bool) -> tuple[list[str], dict[str, SplitSource | str]]:
    """(classes, split -> its source, or the name of the split it is the same folder as).

    The folder readers' rules and order: `imagefolder` (train/ and val/ or test/ of class folders,
    or one flat folder of class folders serving as both splits) or an unlabeled tree (`folder`,
    both splits). Raises DataError naming the folder when there is nothing to shard.
    """
    with warnings.catch_warnings():  # the flat-folder warning: the manifest records it instead
        warnings.simplefilter("ignore")
        if unlabeled:
            train = build_unlabeled_folder(src, 1)
            return [], {"train": _split_source(src, train.root, train.samples), "test": "train"}
        train = build_imagefolder(src, "train", 1)
        try:
            test = build_imagefolder(src, "test", 1)
        except DataError:  # no val/ or test/ folder: a train split alone
            return train.classes, {"train": _split_source(src, train.root, train.samples)}
    if os.path.samefile(test.root, train.root):
        return train.classes, {"train": _split_source(src, train.root, train.samples), "test": "train"}
    return train.classes, {"train": _split_source(src, train.root, train.samples),
                           "test": _split_source(src, test.root, test.samples)}


def _split_source(src: str, folder: str, samples: list[tuple[str, int]]) -> SplitSource:
    images = []
    for path, label in samples:
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror or e}); fix or remove it") from None
        images.append(Image(path, os.path.relpath(path, folder), label, st.st_size, st.st_mtime_ns))
    return SplitSource(os.path.relpath(folder, src), tuple(images))


def in_shard_order(images: tuple[Image, ...], order: str, seed: int) -> tuple[Image, ...]:
    """The images as listed (`sorted`) or permuted by `seed` (`shuffled`)."""
    if order == "sorted":
        return images
    perm = np.random.default_rng([seed]).permutation(len(images))
    return tuple(images[i] for i in perm)


def _member_bytes(name: str, size: int) -> int:
    header = TAR_BLOCK + (3 * TAR_BLOCK if len(name) > PAX_NAME_LIMIT else 0)
    return header + -(-size // TAR_BLOCK) * TAR_BLOCK


def sample_bytes(image: Image, labelled: bool) -> int:
    """The bytes an image's sample takes in a shard: its member(s), headers and padding."""
    cls = _member_bytes(f"{image.key}.{LABEL_EXT}", len(str(image.label))) if labelled else 0
    return _member_bytes(image.member, image.size) + cls


def cut_shards(sizes: list[int], target: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard: samples in order, a new shard when the next sample would take
    the current one past `target` bytes (a sample larger than `target` gets a shard of its own)."""
    cuts, start, used = [], 0, TAR_END
    for i, size in enumerate(sizes):
        if i > start and used + size > target:
            cuts.append((start, i))
            start, used = i, TAR_END
        used += size
    if start < len(sizes):
        cuts.append((start, len(sizes)))
    return cuts


def fingerprint(images: tuple[Image, ...], labelled: bool) -> str:
    """sha256 over the shard's inputs: relative path, size, mtime and label of each image, in order."""
    h = hashlib.sha256()
    for im in images:
        label = im.label if labelled else -1
        h.update(os.fsencode(im.rel) + f"\x00{im.size}\x00{im.mtime_ns}\x00{label}\n".encode())
    return h.hexdigest()


def plan_split(split: str, images: tuple[Image, ...], labelled: bool, target_bytes: int) -> list[PlannedShard]:
    """The split's shards, in order (images already in shard order)."""
    cuts = cut_shards([sample_bytes(im, labelled) for im in images], target_bytes)
    return [PlannedShard(split, k, images[a:b], fingerprint(images[a:b], labelled)) for k, (a, b) in enumerate(cuts)]
