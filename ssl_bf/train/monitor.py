"""The online k-NN monitor: k-NN top-1 of the backbone's features during pretraining.

Its bank is the train split and its queries the test split, or with `data.val_holdout` the
held-out train images (the test split is then never opened). Fixed random subsets
(`monitor.bank_subset` / `query_subset`) keep the checks short; `full` uses the whole sets.
Features are extracted in eval mode, without BatchFormer, every rank its shard; rank 0 votes.
An unreadable image stops the run naming the file, or with `data.skip_unreadable` its row is left
out of the bank or the queries (the trainer's `UnreadableLog` lists it).
With a long-tailed pretraining set (`class_counts`), each check also gives the top-1 of the
many / medium / few classes (thirds by pretraining count) and the std of the per-class top-1.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed as dist_utils
from ..config import Config
from ..data import build_dataset
from ..data.augment import EvalTransform
from ..data.long_tail import GROUPS, Groups, make_groups, per_group_accuracy
from ..knn.features import extract_features
from ..knn.index import gpu_resources, use_gpu
from ..knn.vote import knn_evaluate
from ..validate import ArrayError
from .train_subset import TrainSubset


class KnnMonitor:
    """The monitor of one run; `enabled` is False for unlabelled data or when no check is asked."""

    groups: Optional[Groups] = None  # many / medium / few, from the pretraining counts (long tails)
    per_group: Optional[dict] = None  # the last check's figures by group (rank 0)

    def __init__(self, cfg: Config, device: torch.device, image_size: int, labelled: bool,
                 chosen: Optional[TrainSubset] = None):
        self.cfg, self.device, self.image_size = cfg, device, image_size
        m, d = cfg.monitor, cfg.data
        self.enabled = labelled and bool(m.knn_every or m.knn_at_start)
        self.groups = make_groups(chosen.class_counts) if chosen is not None else None
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
            # FAISS on the trainer's own GPU when it has GPUs (not GPU 0), its resources freed after the check
            faiss_device = str(self.device) if self.device.type == "cuda" and use_gpu("auto") else "cpu"
            try:
                with gpu_resources():
                    result = knn_evaluate(bank[0], bank[1], query[0], query[1], ks=(k,), device=faiss_device,
                                          temperatures=(m.knn_temperature,), num_classes=len(self.bank_set.classes),
                                          keep_predictions=self.groups is not None)
                top1 = float(result.results[0]["top1"])
                self.per_group = self._by_group(result.predictions, query[1])
            except ArrayError as err:  # features with no direction (zero or non-finite rows): no figure
                print(f"k-NN monitor: skipped, the backbone's {err}", flush=True)
                top1 = float("nan")
        dist_utils.wait_for_main()  # the others wait for the vote on the long-wait group
        return top1

    def group_fields(self) -> dict:
        """The knn event's `per_group` (empty without a long tail)."""
        return {"per_group": self.per_group} if self.per_group else {}

    def _by_group(self, predictions: dict, labels: torch.Tensor) -> Optional[dict]:
        """many / medium / few top-1 (%) and class_std of one check's top-1 predictions."""
        if self.groups is None:
            return None
        top1 = next(iter(predictions.values()))[:, 0]  # (Q,) the best class of each query
        figures = per_group_accuracy(top1, torch.as_tensor(labels).numpy(), self.groups)
        return {name: figures[name] for name in (*GROUPS, "class_std")}


def knn_text(top1: Optional[float], per_group: Optional[dict]) -> str:
    """The epoch line's k-NN part: `  knn_top1 70.10  many/medium/few 81.2/60.4/33.0` ("" when off)."""
    if top1 is None:
        return ""
    if not per_group:
        return f"  knn_top1 {top1:.2f}"
    shown = "/".join("-" if per_group[g] is None else f"{per_group[g]:.1f}" for g in GROUPS)
    return f"  knn_top1 {top1:.2f}  many/medium/few {shown}"
