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


VIT_SHAPES = {"vit_small": ViTShape(12, 6, 384, 1536), "vit_tiny": ViTShape(6, 3, 192, 768)}
