"""Optimisers and parameter groups (BatchFormer gets its own lr multiplier)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config


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


class LARS(torch.optim.Optimizer):
    """SGD + momentum with a layer-wise trust ratio (MoCo-v3's ResNet optimiser).

    Parameters with more than one dimension get weight decay and the update scaled by
    `trust_coefficient * ||w|| / ||g + wd * w||`; 1-D parameters (BatchNorm, biases) get neither.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["trust_coefficient"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.sgd_momentum, weight_decay=t.weight_decay)
    if t.optimizer == "lars":
        return LARS(groups, lr=lr, weight_decay=t.weight_decay, momentum=t.sgd_momentum)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=t.weight_decay)
    raise ValueError(f"unknown optimizer '{t.optimizer}'")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
