"""What every linear probe shares: the SGD recipes, the head, the result, head files.

Protocols (docs/protocols.md), one module per family:
- `mocov2` / `mocov3` (+ `--bn-head`): augmented training on a frozen backbone,
  `ssl_bf.eval.linear_images`.
- `cached` / `logreg`: no augmentation, trained on embeddings files with the lr or L2 chosen
  on a held-out part of the train set, `ssl_bf.eval.linear_cached`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ssl_bf.knn.labels import LabelSpace
from ssl_bf.run_layout import Owner

PROTOCOLS = ("mocov2", "mocov3", "cached", "logreg")


# ----------------------------------------------------------------------------------------------
# Recipes, head, metrics
# ----------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Optimisation of the linear layer. `lr` is the base lr; with `scale_lr` the used lr is
    lr x batch_size / 256 (MoCo-v3)."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str  # "step" (x0.1 at each milestone fraction) or "cosine"
    milestones: tuple[float, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    scale_lr: bool = False

    def peak_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.scale_lr else self.lr

    def lr_at(self, progress: float, lr: Optional[float] = None) -> float:
        """The lr at `progress` in [0, 1] of training (per-iteration schedules)."""
        lr = self.peak_lr() if lr is None else lr
        if self.schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return lr * 0.1 ** sum(progress >= m for m in self.milestones)


RECIPES = {
    "mocov2": Recipe(epochs=100, batch_size=256, lr=30.0, schedule="step", milestones=(0.6, 0.8)),
    "mocov3": Recipe(epochs=90, batch_size=1024, lr=0.1, schedule="cosine", scale_lr=True),
    "cached": Recipe(epochs=10, batch_size=256, lr=0.1, schedule="cosine"),
}


def recipe_for(protocol: str, epochs: Optional[int] = None, batch_size: Optional[int] = None,
               lr: Optional[float] = None, weight_decay: Optional[float] = None) -> Recipe:
    """The protocol's recipe with any given overrides."""
    if protocol not in RECIPES:
        raise ValueError(f"no SGD recipe for protocol '{protocol}'; choose one of {', '.join(RECIPES)}")
    r = Recipe(**asdict(RECIPES[protocol]))
    r.epochs = epochs if epochs is not None else r.epochs
    r.batch_size = batch_size if batch_size is not None else r.batch_size
    r.lr = lr if lr is not None else r.lr
    r.weight_decay = weight_decay if weight_decay is not None else r.weight_decay
    if r.epochs < 1 or r.batch_size < 1 or r.lr <= 0:
        raise ValueError(f"bad recipe: epochs={r.epochs}, batch_size={r.batch_size}, lr={r.lr}")
    return r


class LinearHead(nn.Module):
    """[BatchNorm1d without affine] + Linear, the weight initialised N(0, 0.01), bias 0."""

    def __init__(self, in_dim: int, num_classes: int, bn: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if bn else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))  # (N, C)


def class_hits(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: top-1 hits and test images, (C,) int64 each, of logits (Q, C) against class
    indices (Q,); a target of -1 (a class unknown to train) is in neither."""
    from .groups import hits_from_predictions

    return hits_from_predictions(logits.argmax(-1).cpu().numpy(), target.cpu().numpy(), num_classes)


def topk_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """Counts of top-1 and top-min(5, C) hits; a target of -1 never hits."""
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (N, 5)
    hits = top == target[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


@dataclass
class ProbeResult:
    """What a probe reports (accuracies in percent)."""

    protocol: str
    top1: float
    top5: float
    hyperparameters: dict
    sweep: list[dict] = field(default_factory=list)  # [{"lr" or "l2": .., "val_top1": ..}]
    note: str = ""
    seconds: float = 0.0
    num_classes: int = 0
    head: Optional[LinearHead] = None
    label_values: Optional[list[int]] = None  # class index i <-> dataset label label_values[i]
    class_hits: Optional[np.ndarray] = None  # (C,) top-1 hits per class on the test set
    class_totals: Optional[np.ndarray] = None  # (C,) test images per class
    train_counts: Optional[np.ndarray] = None  # (C,) train images per class (the image protocols)

    def to_dict(self) -> dict:
        d = {"protocol": self.protocol, "top1": self.top1, "top5": self.top5,
             "hyperparameters": self.hyperparameters, "sweep": self.sweep,
             "num_classes": self.num_classes, "seconds": round(self.seconds, 3)}
        if self.note:
            d["note"] = self.note
        return d


def save_head(path: str, result: ProbeResult, classes: Optional[Sequence[str]] = None, *,
              option: str = "--save-head", owner: Optional[Owner] = None) -> None:
    """Write the trained head (state dict + what it needs to be rebuilt) through the output guard,
    atomically (`option`, `owner`: as the guard names the file and whose run file it may be).

    Loadable with `torch.load(path, weights_only=True)`.
    """
    from ssl_bf.atomic_write import write_torch

    head = result.head
    if head is None:
        raise ValueError("this result holds no head")
    write_torch({"head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                 "in_dim": head.fc.in_features, "num_classes": head.fc.out_features,
                 "bn": isinstance(head.norm, nn.BatchNorm1d), "protocol": result.protocol,
                 "hyperparameters": result.hyperparameters, "classes": list(classes or []),
                 "label_values": result.label_values}, path, option=option, owner=owner)


def load_head(path: str) -> LinearHead:
    """Rebuild a head written by `save_head`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    head = LinearHead(blob["in_dim"], blob["num_classes"], bn=blob["bn"])
    head.load_state_dict(blob["head"])
    return head.eval()


def space_values(space: LabelSpace) -> Optional[list[int]]:
    """The dataset label of each class index (None: the labels are already 0..C-1)."""
    return None if space.values is None else [int(v) for v in space.values]
