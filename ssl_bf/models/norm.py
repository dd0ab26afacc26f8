"""Split BatchNorm: per-group batch statistics, state dict identical to nn.BatchNorm2d.

On one process, MoCo's shuffle-BN has nothing to shuffle across, so the batch is cut into G
contiguous groups along N and each group is normalised with its own statistics (the
known-correct single-process substitute). Group g holds rows [g*N/G, (g+1)*N/G), exactly what
rank g of a G-process DDP run would see. Parameters and buffers keep BatchNorm2d's names and shapes, so a
checkpoint loads into a plain torchvision ResNet with `strict=True`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of the batch."""

    def __init__(self, num_features: int, groups: int = 8, **kwargs):
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        if not self.training or g <= 1:
            return super().forward(x)
        if n % g:
            raise ValueError(f"SplitBatchNorm2d: batch {n} is not divisible by {g} groups")
        # Running stats: each group updates a copy; the mean of the copies is stored.
        mean_g = self.running_mean.repeat(g)  # (G*C,)
        var_g = self.running_var.repeat(g)  # (G*C,)
        folded = x.view(g, n // g, c, h, w).transpose(0, 1).reshape(n // g, g * c, h, w)  # groups -> channels
        out = F.batch_norm(
            folded, mean_g, var_g,
            self.weight.repeat(g) if self.affine else None,
            self.bias.repeat(g) if self.affine else None,
            True, self.momentum if self.momentum is not None else 0.1, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean_g.view(g, c).mean(0))
            self.running_var.copy_(var_g.view(g, c).mean(0))
            self.num_batches_tracked += 1
        out = out.view(n // g, g, c, h, w).transpose(0, 1).reshape(n, c, h, w)  # (N, C, H, W)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)  # the next conv stays channels_last
        return out


@dataclass(frozen=True)
class NormPlan:
    """How BatchNorm meets the batch in this run: split groups, SyncBN, and a sentence for the log."""

    split_bn_groups: int
    sync_bn: bool
    description: str
