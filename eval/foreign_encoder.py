"""The network a detected checkpoint of another project describes, rebuilt as an ssl-bf encoder.

`resolve(found)` reads the architecture from the weights (ResNet depth and width from the key and
shape layout; ViT depth, width, MLP width, patch size and grid from the shapes) and decides the
ViT head count, which no shape holds: `--vit-heads` if given, else the format's convention
(MoCo-v3's ViTs: 12 heads for ViT-S/B, 16 for ViT-L/H, as its vits.py builds them; DINO, timm and
solo-learn: 64-wide heads, so 6 for ViT-S). `build(imported)` makes the module, loads the weights
strictly, and reports what it lacks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from ssl_bf.models.backbones import ViTBackbone, ViTShape, resnet
from ssl_bf.data import IMAGENET_STATS
from ssl_bf.models.registry import Encoder
from ssl_bf.checkpoints.resnet_layout import ResNetGeometry, ResNetLayoutError, resnet_geometry
from ssl_bf.checkpoints.vit_layout import ViTGeometry, ViTLayoutError, is_sincos, resize_pos_embed, timm_geometry, timm_to_torchvision

from .foreign_formats import Found

_MOCO_V3_HEADS = {384: 12, 768: 12, 1024: 16, 1280: 16}  # moco-v3 vits.py: vit_small/base/large/huge
_MOCO_V3_FORMATS = ("moco-v3-vit", "batchformer-mocov3")


class RebuildError(ValueError):
    """A detected checkpoint that cannot be rebuilt (unsupported layout, bad --vit-heads...)."""


@dataclass
class InputSpec:
    """What the network expects: channels, native image size, and the normalisation it was trained with."""
    channels: int
    image_size: int
    mean: Optional[tuple[float, ...]]  # None: the dataset's own (a layout whose channels ImageNet's do not fit)
    std: Optional[tuple[float, ...]]


@dataclass
class Imported:
    """A detected checkpoint with its architecture decided."""
    found: Found
    geometry: Union[ResNetGeometry, ViTGeometry]
    input: InputSpec
    heads: Optional[int] = None
    heads_reason: str = ""
    pos_embed: str = ""  # ViT: "fixed 2-D sin-cos (MoCo-v3)" or "learned"
    notes: list[str] = field(default_factory=list)

    @property
    def sincos(self) -> bool:
        return self.pos_embed.startswith("fixed")

    def architecture(self) -> dict:
        g = self.geometry
        if isinstance(g, ResNetGeometry):
            return {"family": "resnet", "name": g.name, "block": g.block, "stages": list(g.stages),
                    "width": g.width, "stem": g.stem, "in_channels": g.in_channels, "feature_dim": g.feature_dim}
        return {"family": "vit", "depth": g.layers, "width": g.dim, "mlp_dim": g.mlp_dim, "heads": self.heads,
                "heads_reason": self.heads_reason, "patch_size": g.patch_size, "image_size": g.image_size,
                "in_channels": g.in_channels, "pos_embed": self.pos_embed, "output": "class token after the "
                "final LayerNorm", "feature_dim": g.dim}


def resolve(found: Found, vit_heads: Optional[int] = None, sidecar: Optional[dict] = None) -> Imported:
    """Decide the architecture of `found`; `sidecar`: the JSON `ssl-bf export --format timm` wrote."""
    stats = IMAGENET_STATS
    if sidecar and isinstance(sidecar.get("mean"), list) and isinstance(sidecar.get("std"), list):
        stats = (tuple(map(float, sidecar["mean"])), tuple(map(float, sidecar["std"])))
    if found.family == "resnet":
        if vit_heads is not None:
            raise RebuildError(f"--vit-heads {vit_heads} was given, but this {found.format} checkpoint holds a ResNet")
        try:
            geo = resnet_geometry(found.backbone)
        except ResNetLayoutError as err:
            raise RebuildError(f"{found.format} checkpoint: {err}") from None
        size = 224 if geo.stem == "imagenet" else 32
        return Imported(found, geo, _spec(geo.in_channels, size, stats))
    try:
        geo = timm_geometry(found.backbone)
    except ViTLayoutError as err:
        raise RebuildError(f"{found.format} checkpoint: {err}") from None
    heads, why = _heads(found.format, geo.dim, vit_heads, sidecar)
    if geo.dim % heads:
        raise RebuildError(f"--vit-heads {heads} does not divide the ViT width {geo.dim}; choose a divisor of "
                           f"{geo.dim} (e.g. {geo.dim // 64} for 64-wide heads)")
    pos = "fixed 2-D sin-cos (MoCo-v3)" if is_sincos(found.backbone["pos_embed"]) else "learned"
    return Imported(found, geo, _spec(geo.in_channels, geo.image_size, stats), heads, why, pos)


def _spec(channels: int, size: int, stats: tuple) -> InputSpec:
    if len(stats[0]) != channels:
        return InputSpec(channels, size, None, None)
    return InputSpec(channels, size, tuple(stats[0]), tuple(stats[1]))


def _heads(fmt: str, dim: int, vit_heads: Optional[int], sidecar: Optional[dict]) -> tuple[int, str]:
    """The ViT head count and why it is that."""
    if vit_heads is not None:
        return vit_heads, "given by --vit-heads"
    if sidecar and isinstance(sidecar.get("num_heads"), int) and sidecar["num_heads"] > 0:
        return sidecar["num_heads"], "recorded by `ssl-bf export --format timm` in the JSON beside the file"
    if fmt in _MOCO_V3_FORMATS:
        if dim in _MOCO_V3_HEADS:
            return _MOCO_V3_HEADS[dim], (f"MoCo-v3 convention: its vits.py builds width-{dim} ViTs with "
                                         f"{_MOCO_V3_HEADS[dim]} heads (its ViT-Small has 12, not DeiT's 6)")
        raise RebuildError(f"a MoCo-v3 ViT of width {dim} is none of moco-v3's vit_small/base/large/huge; "
                           f"give its head count with --vit-heads")
    if dim % 64:
        raise RebuildError(f"ViT width {dim} is not a multiple of 64, so the {fmt} convention of 64-wide heads "
                           f"does not apply; give the head count with --vit-heads")
    return dim // 64, f"{fmt} convention: 64-wide heads (DINO's and timm's ViTs; ViT-S/16 has 6)"


def build(imported: Imported, image_size: Optional[int] = None) -> tuple[Encoder, list[str]]:
    """The encoder (eval mode) with the weights loaded, and the model keys the file lacks (the load
    is strict otherwise: a wrong shape or an extra tensor raises RebuildError).

    `image_size`: ViTs only; the position embedding is resized to it (learned: bicubic on the grid;
    MoCo-v3's sin-cos: computed anew), the class-token row kept.
    """
    g = imported.geometry
    if isinstance(g, ResNetGeometry):
        if image_size is not None and image_size < 32:
            raise RebuildError(f"--image-size {image_size} is too small for a ResNet (at least 32)")
        module, state = _resnet(g, imported.found.stem_padding), dict(imported.found.backbone)
    else:
        size = image_size or g.image_size
        if size % g.patch_size:
            raise RebuildError(f"--image-size {size} is not a multiple of the ViT's patch size {g.patch_size}")
        module = ViTBackbone(ViTShape(g.layers, imported.heads, g.dim, g.mlp_dim), size, g.patch_size, g.in_channels)
        backbone = dict(imported.found.backbone)
        backbone["pos_embed"] = resize_pos_embed(backbone["pos_embed"], size // g.patch_size, imported.sincos)
        state, unknown = timm_to_torchvision(backbone)
        if unknown:
            raise RebuildError(f"ViT tensors with no place in a class-token ViT: {unknown[:5]}")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(str(err).split())
        raise RebuildError(f"the weights do not fit the {type(module).__name__} read from their shapes: "
                           f"{detail[:400]}") from None
    if unexpected:
        raise RebuildError(f"tensors with no place in the rebuilt network: {list(unexpected)[:5]}")
    return Encoder(module).eval(), list(missing)


def _resnet(g: ResNetGeometry, stem_padding: int) -> nn.Module:
    if g.name in ("resnet18", "resnet34", "resnet50"):
        net = resnet(g.name, g.stem, g.width, g.in_channels)
    else:  # ResNet-101/152: torchvision's, at its own width and stem
        if g.width != 64 or g.stem != "imagenet" or g.in_channels != 3:
            raise RebuildError(f"a {g.name} with width {g.width}, a {g.stem} stem and {g.in_channels} channels "
                               f"cannot be rebuilt (only torchvision's own {g.name})")
        from torchvision.models import resnet as tv_resnet

        net = getattr(tv_resnet, g.name)()
        net.fc = nn.Identity()
        net.feature_dim = g.feature_dim
    if g.stem == "small":
        net.conv1.padding = (stem_padding, stem_padding)
    return net
