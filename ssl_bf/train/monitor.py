"""The online k-NN monitor: k-NN top-1 of the backbone's features during pretraining.

Its bank is the train split and its queries the test split, or with `data.val_holdout` the
held-out train images (the test split is then never opened). Fixed random subsets
(`monitor.bank_subset` / `query_subset`) keep the checks short; `full` uses the whole sets.
Features are extracted in eval mode, without BatchFormer, every rank its shard; rank 0 votes.
An unreadable image stops the run naming the file, or with `data.skip_unreadable` its row is left
out of the bank or the queries (the trainer's `UnreadableLog` lists it).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed as dist_utils
from ..config import Config
from ..data import build_dataset
from ..data.augment import EvalTransform
from ..knn.features import extract_features
from ..knn.vote import knn_accuracy


class KnnMonitor:
    """The monitor of one run; `enabled` is False for unlabelled data or when no check is asked."""

    def __init__(self, cfg: Config, device: torch.device, image_size: int, labelled: bool):
        self.cfg, self.device, self.image_size = cfg, device, image_size
        m, d = cfg.monitor, cfg.data
        self.enabled = labelled and bool(m.knn_every or m.knn_at_start)
        self.bank_set = self.query_set = None
        if self.enabled:
            self.bank_set = build_dataset(d.name, d.root, "train", None, d.load_size,
                                          skip_unreadable=d.skip_unreadable)
            if d.val_holdout:  # tuning: the held-out train images against the rest; no test image
                self.query_set = self.bank_set.split_last(d.val_holdout)
            else:
                self.query_set = build_dataset(d.name, d.root, "test", None, d.load_size,
                                               skip_unreadable=d.skip_unreadable)

    def features(self, backbone: nn.Module, dataset, limit: Optional[int] = None,
                 batch_size: int = 512) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Backbone features and labels of `limit` images (a fixed random subset; None: all).
        Every rank extracts its shard; rank 0 gets the result, the others None."""
        if limit is None or limit >= len(dataset):
            order = torch.arange(len(dataset))
        else:  # a fixed random subset: folder datasets are sorted by class
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        transform = EvalTransform(self.image_size, dataset.mean, dataset.std).to(self.device)
        amp = torch.bfloat16 if self.device.type == "cuda" and self.cfg.train.amp else None
        result = extract_features(backbone, dataset, transform, self.device, indices=order,
                                  batch_size=batch_size, num_workers=self.cfg.data.num_workers,
                                  progress=False, desc="monitor", autocast_dtype=amp)
        if result is not None and len(result.skipped) and not len(result.positions):
            raise dataset.no_readable_image()  # every image asked for was left out: nothing to vote with
        return result

    def top1(self, backbone: nn.Module, full: bool) -> Optional[float]:
        """k-NN top-1 (%) of the queries against the bank (rank 0's figure; the other ranks help
        extract and get None). None when the monitor is off."""
        if not self.enabled:
            return None
        m = self.cfg.monitor
        bank = self.features(backbone, self.bank_set, None if full else m.bank_subset)
        query = self.features(backbone, self.query_set, None if full else m.query_subset)
        top1 = None
        if dist_utils.is_main():
            k = min(m.knn_k, len(bank[0]))  # a train split smaller than k: vote over all of it
            result = knn_accuracy(bank[0], bank[1], query[0], query[1], ks=(k,),
                                  temperatures=(m.knn_temperature,), num_classes=len(self.bank_set.classes))
            top1 = float(result[0]["top1"])
        dist_utils.barrier()  # the others wait for the vote (a short CPU job) here
        return top1
