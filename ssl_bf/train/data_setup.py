"""What pretraining trains on: the train images (after data.val_holdout, the long tail or
data.indices_file, and data.subset: train_subset.py), how they are loaded, and the two-view augmentation on the device.

Tensor datasets (Fashion-MNIST, CIFAR) go to the device whole and are cropped there; image
folders have both crops cut from the whole image in the DataLoader workers (TwoCropFolder), and
shards the same in workers that stream their own shards (ShardCropStream); the views apply the
rest on the device. With `data.skip_unreadable` an unreadable image of a folder is replaced
(crops.py) and `UnreadableLog` lists it in metrics.jsonl; otherwise it stops the run naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data import TwoCropFolder, build_dataset
from ..data.augment import RecipeRangeError, build_two_views, check_image_size, recipe_crop_scale
from ..data.folders import unreadable_everywhere
from ..data.shards import ShardCropStream
from .train_subset import TrainSubset, choose_images, chooses_images, train_subset

FOLDER_TRAIN_SIZE = 224  # image folders without augment.image_size: the standard 224 px crops


@dataclass
class PretrainingData:
    train_set: object  # the dataset the epoch order indexes
    loader_set: object  # what the DataLoader reads (TwoCropFolder for image folders, ShardCropStream for shards)
    views: nn.Module  # uint8 batch (or crop pair) -> two normalised views, on the device
    crops_in_workers: bool
    image_size: int
    in_channels: int
    chosen: Optional[TrainSubset] = None  # the long-tailed or listed images (None: all of them)


def train_set(cfg: Config) -> tuple[object, Optional[TrainSubset]]:
    """The pretraining images and, when some are chosen, which: data.val_holdout takes the last N
    first, then the long tail (or data.indices_file) chooses from the rest, then data.subset."""
    d = cfg.data
    if d.name != "shards" and d.root is not None and os.path.exists(os.path.expanduser(d.root)) \
            and not os.path.isdir(os.path.expanduser(d.root)):
        raise ConfigError(f"data.root {d.root} is a file; give the folder that holds the {d.name} data")
    chosen = None
    try:
        late_subset = bool(d.val_holdout) or chooses_images(cfg)
        images = build_dataset(d.name, d.root, "train", None if late_subset else d.subset, d.load_size,
                               skip_unreadable=d.skip_unreadable)
        if d.val_holdout:
            images.split_last(d.val_holdout)  # the held-out images are the monitor's
        indices = choose_images(cfg, images)
        if d.subset is not None and late_subset:
            remain = len(images) if indices is None else len(indices)
            if d.subset > remain:
                raise ValueError(f"subset={d.subset} is out of range: {remain} train images remain after "
                                 f"data.val_holdout={d.val_holdout}" + (" and the long tail" if indices is not None
                                                                       else ""))
            if indices is None:
                images.take_first(d.subset)
            else:
                indices = indices[:d.subset]
        if indices is not None:
            chosen = train_subset(images, indices)
    except ValueError as e:  # a subset larger than the data
        if isinstance(e, ConfigError):
            raise
        key = "data.subset" if "subset" in str(e) else "data"
        raise ConfigError(f"{key}: {e}; lower {key} (null: every image)" if key == "data.subset"
                          else f"{key}: {e}") from None
    return images, chosen


def pretraining_data(cfg: Config, device: torch.device) -> PretrainingData:
    a = cfg.augment
    images, chosen = train_set(cfg)
    crops_in_workers = not hasattr(images, "get_batch")
    if crops_in_workers:
        image_size = a.image_size or FOLDER_TRAIN_SIZE
        scale = (recipe_crop_scale(a.recipe, a.crop_scale_min), 1.0)
        if cfg.data.name == "shards":
            loader_set = shard_stream(cfg, images, image_size, scale)
        else:
            loader_set = TwoCropFolder(images, image_size, scale=scale, seed=cfg.seed)
    else:
        image_size = a.image_size or images.image_size
        loader_set = images
    check_image_size(a.recipe, image_size, a.blur, native=not a.image_size)
    try:
        views = build_two_views(a.recipe, image_size, images.num_channels, images.mean, images.std,
                                None if a.crop_scale_min <= 0 else a.crop_scale_min, a.jitter_strength, a.blur,
                                crop=not crops_in_workers).to(device)
    except RecipeRangeError as e:
        raise ConfigError(f"augment.jitter_strength: {e}") from None
    return PretrainingData(images, loader_set, views, crops_in_workers, image_size, images.num_channels, chosen)


def shard_stream(cfg: Config, images, image_size: int, scale: tuple[float, float]) -> ShardCropStream:
    """The shards' loader set; data.num_workers must divide data.shard_streams (the order's unit)."""
    d = cfg.data
    if d.num_workers and d.shard_streams % d.num_workers:
        fits = [w for w in range(1, d.shard_streams + 1) if d.shard_streams % w == 0]
        raise ConfigError(f"data.num_workers={d.num_workers} does not divide data.shard_streams={d.shard_streams}: "
                          f"each worker reads whole streams, so the batch order is the same for any worker "
                          f"count that divides it. Use data.num_workers=0 or one of {fits}, or set "
                          f"data.shard_streams (a new run: it defines the order)")
    return ShardCropStream(images, image_size, scale=scale, seed=cfg.seed, streams=d.shard_streams,
                           buffer=d.shuffle_buffer)


class UnreadableLog:
    """The images that pretraining (its crops and the k-NN monitor's sets) found unreadable and
    replaced or left out, each logged once to metrics.jsonl as `{"event": "unreadable", ...}` and
    named on stderr. `log` is a collective under a process group when `data.skip_unreadable` is on
    (every rank calls it at the same step); with the key off an unreadable image stops the run instead."""

    def __init__(self, cfg: Config, datasets: list) -> None:
        self.enabled = cfg.data.skip_unreadable
        self.datasets = [d for d in datasets if hasattr(d, "unreadable")]  # image folders only
        self.logged: set[str] = set()

    def log(self, logger, step: int, epoch: int, device: torch.device, is_main: bool) -> None:
        """Log the images found unreadable (on any rank) since the last call."""
        import sys

        if not self.enabled or not self.datasets:
            return
        paths = unreadable_everywhere(self.datasets, device)  # rank 0: every rank's, else None
        new = sorted(set(paths or []) - self.logged)
        if not new or not is_main:
            return
        self.logged.update(new)
        logger.log({"event": "unreadable", "step": step, "epoch": epoch, "paths": new})
        for path in new:
            print(f"ssl-bf pretrain: note: data.skip_unreadable: replaced or left out unreadable image {path}",
                  file=sys.stderr, flush=True)
