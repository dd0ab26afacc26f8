"""Projector and predictor MLPs."""
from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = False,
        last_bn: bool = False) -> nn.Sequential:
    """Linear -> [BN] -> ReLU blocks, then a final Linear (optionally a non-affine BN after it).

    With `batch_norm` no Linear has a bias (the MoCo-v3 reference); without it every Linear has one
    (the MoCo-v2 reference).

    MoCo-v2 projector: `mlp(d, 2048, 128)` (no BN). MoCo-v3 projector:
    `mlp(d, 4096, 256, layers=3, batch_norm=True, last_bn=True)`; predictor:
    `mlp(256, 4096, 256, layers=2, batch_norm=True)`.
    """
    if layers < 1:
        raise ValueError("an MLP needs at least one layer")
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            blocks.append(nn.BatchNorm1d(hidden_dim))
        blocks.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim, bias=not batch_norm))  # MoCo-v3: no Linear has a bias
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*blocks)
