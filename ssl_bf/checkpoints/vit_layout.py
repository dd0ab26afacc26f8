"""ViT weights in timm's key layout and in ssl-bf's (torchvision's VisionTransformer): shape, names,
position embeddings.

timm, MoCo-v3 (`vits.py`, built on timm) and DINO (`vision_transformer.py`) name a ViT's tensors
`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.i.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}`, `norm`. ssl-bf's `ViTBackbone` holds torchvision's VisionTransformer, whose
tensors map one to one onto those (the fused `qkv` is q, k, v stacked like `in_proj`). The head
count is not in the shapes; callers decide it (see docs/checkpoint-formats.md).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# timm name (after `blocks.i.`) -> torchvision name (after `encoder.layers.encoder_layer_i.`)
_BLOCK = {"norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
          "attn.qkv.weight": "self_attention.in_proj_weight", "attn.qkv.bias": "self_attention.in_proj_bias",
          "attn.proj.weight": "self_attention.out_proj.weight", "attn.proj.bias": "self_attention.out_proj.bias",
          "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
          "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
          "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias"}
_TOP = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
        "patch_embed.proj.weight": "conv_proj.weight", "patch_embed.proj.bias": "conv_proj.bias",
        "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_LAYER_KEY = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")


class ViTLayoutError(ValueError):
    """ViT weights that do not have the timm / torchvision layout expected; the message says what."""


@dataclass(frozen=True)
class ViTGeometry:
    """What a timm-layout ViT state dict says about its network (everything but the head count)."""
    layers: int
    dim: int
    mlp_dim: int
    patch_size: int
    in_channels: int
    grid: int  # patches per side of the position embedding
    qkv_bias: bool

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size


def is_timm_vit(state: dict) -> bool:
    return "cls_token" in state and "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def timm_geometry(state: dict) -> ViTGeometry:
    """Depth, width, MLP width, patch size, channels and grid of a timm-layout ViT state dict."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise ViTLayoutError(f"a timm-layout ViT needs '{key}', which is missing")
    proj = state["patch_embed.proj.weight"]  # (D, C, P, P)
    if proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        raise ViTLayoutError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}, not (D, C, P, P)")
    dim = int(state["cls_token"].shape[-1])
    tokens = int(state["pos_embed"].shape[1])
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ViTLayoutError(f"pos_embed holds {tokens} tokens, not 1 class token + a square grid of patches")
    layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    return ViTGeometry(layers, dim, int(state["blocks.0.mlp.fc1.weight"].shape[0]), int(proj.shape[-1]),
                       int(proj.shape[1]), grid, "blocks.0.attn.qkv.bias" in state)


def timm_to_torchvision(state: dict, prefix: str = "vit.") -> tuple[dict, list[str]]:
    """Rename a timm-layout ViT state dict to torchvision's VisionTransformer names under `prefix`.

    Returns (renamed, keys it does not know). A missing `qkv` bias (timm's qkv_bias=False) is
    filled with zeros, which computes the same as no bias.
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key in _TOP:
            out[prefix + _TOP[key]] = value
        elif (m := _BLOCK_KEY.match(key)) and m.group(2) in _BLOCK:
            out[f"{prefix}encoder.layers.encoder_layer_{m.group(1)}.{_BLOCK[m.group(2)]}"] = value
        else:
            unknown.append(key)
    geo = timm_geometry(state)
    for i in range(geo.layers):
        bias = f"{prefix}encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"
        if bias not in out:
            out[bias] = torch.zeros(3 * geo.dim, dtype=state["cls_token"].dtype)
    return out, unknown


def torchvision_to_timm(state: dict, prefix: str = "vit.") -> dict:
    """ssl-bf's ViT state dict (torchvision names under `prefix`) renamed to timm's names; every key
    must map (ViTLayoutError otherwise)."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out = {}
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if name in top:
            out[top[name]] = value
        elif (m := _LAYER_KEY.match(name)) and m.group(2) in block:
            out[f"blocks.{m.group(1)}.{block[m.group(2)]}"] = value
        else:
            raise ViTLayoutError(f"'{key}' has no timm name: not a torchvision VisionTransformer tensor")
    return out


def sincos_pos_embed(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo-v3's fixed 2-D sin-cos position embedding (a zero class-token row first): (1, 1 + G*G, D).

    Follows `build_2d_sincos_position_embedding` in moco-v3's vits.py, including its meshgrid
    order ('ij' over (w, h)), so it reproduces the stored tensor exactly.
    """
    if dim % 4:
        raise ViTLayoutError(f"a 2-D sin-cos position embedding needs a width divisible by 4, not {dim}")
    coords = torch.arange(grid, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="ij")  # (G, G) each
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    out_w = grid_w.flatten()[:, None] * omega[None]  # (G*G, D/4)
    out_h = grid_h.flatten()[:, None] * omega[None]
    pos = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)  # (G*G, D)
    return torch.cat([torch.zeros(1, dim), pos])[None]  # (1, 1 + G*G, D)


def is_sincos(pos_embed: torch.Tensor) -> bool:
    """Whether `pos_embed` (1, 1 + G*G, D) is MoCo-v3's fixed sin-cos embedding."""
    tokens, dim = pos_embed.shape[1], pos_embed.shape[-1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1 or dim % 4:
        return False
    return torch.allclose(pos_embed.float(), sincos_pos_embed(grid, dim), atol=1e-5)


def resize_pos_embed(pos_embed: torch.Tensor, grid: int, sincos: bool = False) -> torch.Tensor:
    """A (1, 1 + g*g, D) position embedding for a `grid` x `grid` patch grid.

    The class-token row is kept; the patch rows are interpolated bicubically (learned embeddings,
    as DINO and timm do for other image sizes), or computed anew for the fixed sin-cos embedding.
    """
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    if sincos:
        return sincos_pos_embed(grid, dim).to(pos_embed.dtype)
    patches = pos_embed[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)  # (1, G*G, D)
    return torch.cat([pos_embed[:, :1], patches], dim=1)
