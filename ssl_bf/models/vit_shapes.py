"""ViT sizes (depth, heads, width, MLP width) by preset name, without importing torch, so the
config can check block indices against them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTShape:
    """A ViT's size: blocks, attention heads, token width and MLP width."""
    layers: int
    heads: int
    dim: int
    mlp_dim: int


# vit_small is timm's / MoCo-v3's ViT-S. vit_mini is ssl-bf's own small ViT for CPU runs: half the
# depth of timm's vit_tiny (which has 12 blocks), hence its own name.
VIT_SHAPES = {"vit_small": ViTShape(12, 6, 384, 1536), "vit_mini": ViTShape(6, 3, 192, 768)}
