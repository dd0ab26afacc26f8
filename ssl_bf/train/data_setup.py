"""What pretraining trains on: the train images (after data.subset and data.val_holdout), how they
are loaded, and the two-view augmentation on the device.

Tensor datasets (Fashion-MNIST, CIFAR) go to the device whole and kornia crops there; image
folders have both crops cut from the whole image in the DataLoader workers (TwoCropFolder) and
kornia applies the rest on the device. With `data.skip_unreadable` an unreadable image is replaced
(crops.py) and `UnreadableLog` lists it in metrics.jsonl; otherwise it stops the run naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data import TwoCropFolder, build_dataset
from ..data.folders import unreadable_everywhere
from ..data.augment import build_two_views, recipe_crop_scale

FOLDER_TRAIN_SIZE = 224  # image folders without augment.image_size: the standard 224 px crops


@dataclass
class PretrainingData:
    train_set: object  # the dataset the epoch order indexes
    loader_set: object  # what the DataLoader reads (TwoCropFolder for image folders)
    views: nn.Module  # uint8 batch (or crop pair) -> two normalised views, on the device
    crops_in_workers: bool
    image_size: int
    in_channels: int


def train_set(cfg: Config):
    """The pretraining images: data.subset, after data.val_holdout has taken the last N."""
    d = cfg.data
    if d.root is not None and os.path.exists(os.path.expanduser(d.root)) \
            and not os.path.isdir(os.path.expanduser(d.root)):
        raise ConfigError(f"data.root {d.root} is a file; give the folder that holds the {d.name} data")
    try:
        images = build_dataset(d.name, d.root, "train", d.subset if not d.val_holdout else None, d.load_size,
                               skip_unreadable=d.skip_unreadable)
        if d.val_holdout:
            images.split_last(d.val_holdout)  # the held-out images are the monitor's
            if d.subset is not None:
                if d.subset > len(images):
                    raise ValueError(f"subset={d.subset} is out of range: {len(images)} train "
                                     f"images remain after data.val_holdout={d.val_holdout}")
                images.take_first(d.subset)
    except ValueError as e:  # a subset larger than the data
        key = "data.subset" if "subset" in str(e) else "data"
        raise ConfigError(f"{key}: {e}; lower {key} (null: every image)" if key == "data.subset"
                          else f"{key}: {e}") from None
    return images


def pretraining_data(cfg: Config, device: torch.device) -> PretrainingData:
    a = cfg.augment
    images = train_set(cfg)
    crops_in_workers = not hasattr(images, "get_batch")
    if crops_in_workers:
        image_size = a.image_size or FOLDER_TRAIN_SIZE
        loader_set = TwoCropFolder(images, image_size, scale=(recipe_crop_scale(a.recipe, a.crop_scale_min), 1.0),
                                   seed=cfg.seed)
    else:
        image_size = a.image_size or images.image_size
        loader_set = images
    views = build_two_views(a.recipe, image_size, images.num_channels, images.mean, images.std,
                            None if a.crop_scale_min <= 0 else a.crop_scale_min, a.jitter_strength, a.blur,
                            crop=not crops_in_workers).to(device)
    return PretrainingData(images, loader_set, views, crops_in_workers, image_size, images.num_channels)


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
