"""Optimisers and parameter groups (BatchFormer gets its own lr multiplier)."""
from __future__ import annotations

import torch
from torch import nn

from .config import Config


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """Trainable parameters split into the main group and BatchFormer's group.

    Each group carries `lr_scale` (multiplied into the scheduled lr every step).
    """
    bf = getattr(model, "batchformer", None)
    bf_ids = {id(p) for p in bf.parameters()} if bf is not None else set()
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in bf_ids]
    groups = [{"params": main, "lr_scale": 1.0, "weight_decay": cfg.train.weight_decay, "name": "main"}]
    if bf_ids:
        wd = cfg.batchformer.weight_decay
        groups.append({"params": [p for p in bf.parameters() if p.requires_grad],
                       "lr_scale": cfg.batchformer.lr_scale, "name": "batchformer",
                       "weight_decay": cfg.train.weight_decay if wd is None else wd})
    return groups


def build_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.sgd_momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=t.weight_decay)
    raise ValueError(f"optimizer '{t.optimizer}' is not available yet")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
