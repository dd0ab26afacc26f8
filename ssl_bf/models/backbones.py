"""Backbones: torchvision ResNets with a small-image stem and a width option, and ViTs whose
blocks run one by one (so BatchFormerV2 can be inserted between them)."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.vision_transformer import VisionTransformer

from .vit_shapes import VIT_SHAPES, ViTShape  # noqa: F401 (ViTShape: re-exported)

_RESNETS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}


class _WidthResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage width scaled by `width / 64` (same key names)."""

    def __init__(self, block, layers, width: int, norm_layer: Optional[Callable] = None,
                 zero_init_residual: bool = False):
        self._scale = width / 64
        super().__init__(block, layers, norm_layer=norm_layer, zero_init_residual=zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: its input is the stem's output width
            self.inplanes = int(64 * self._scale)
        return super()._make_layer(block, int(planes * self._scale), blocks, stride, dilate)


def resnet(name: str = "resnet18", stem: str = "imagenet", width: int = 64, in_channels: int = 3,
           stem_stride: int = 1, norm_layer: Optional[Callable[..., nn.Module]] = None,
           zero_init_residual: bool = False) -> nn.Module:
    """A torchvision ResNet without its classifier (`fc` is Identity): (N, C, H, W) -> (N, D).

    stem="imagenet": 7x7/2 conv + max-pool (torchvision's). stem="small": one 3x3 conv with
    `stem_stride` and no max-pool, for 28-32 px images. With width=64, stem="imagenet" and
    3 input channels the state dict loads into `torchvision.models.<name>()` with strict=True.
    `zero_init_residual` starts each residual branch's last BatchNorm at zero (torchvision's option).
    """
    if name not in _RESNETS:
        raise ValueError(f"unknown ResNet '{name}'; choose from {sorted(_RESNETS)}")
    block, layers = _RESNETS[name]
    norm_layer = norm_layer or nn.BatchNorm2d
    if width == 64:
        net = tv_resnet.ResNet(block, layers, norm_layer=norm_layer, zero_init_residual=zero_init_residual)
    else:
        net = _WidthResNet(block, layers, width, norm_layer=norm_layer, zero_init_residual=zero_init_residual)
    if stem == "small":
        net.conv1 = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif stem == "imagenet":
        if in_channels != 3 or width != 64:
            net.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
    else:
        raise ValueError(f"unknown stem '{stem}'; choose 'imagenet' or 'small'")
    net.bn1 = norm_layer(width)
    net.feature_dim = int(512 * width / 64) * block.expansion
    net.fc = nn.Identity()
    for m in net.modules():  # torchvision's init for the replaced stem
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


class ViTBackbone(nn.Module):
    """torchvision's VisionTransformer returning the class token: (N, C, H, W) -> (N, D).

    `shape` is a preset name (`VIT_SHAPES`) or an explicit `ViTShape` (checkpoints read from
    other projects give their own depth, width and head count)."""

    def __init__(self, shape: "str | ViTShape", image_size: int, patch_size: int, in_channels: int = 3,
                 freeze_patch_embed: bool = False):
        super().__init__()
        if isinstance(shape, str):
            if shape not in VIT_SHAPES:
                raise ValueError(f"unknown ViT '{shape}'; choose from {sorted(VIT_SHAPES)}")
            shape = VIT_SHAPES[shape]
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        if shape.dim % shape.heads:
            raise ValueError(f"ViT width {shape.dim} is not a multiple of its {shape.heads} heads")
        self.shape = shape
        self.vit = VisionTransformer(image_size, patch_size, shape.layers, shape.heads, shape.dim, shape.mlp_dim)
        if in_channels != 3:
            self.vit.conv_proj = nn.Conv2d(in_channels, shape.dim, patch_size, stride=patch_size)
        self.vit.heads = nn.Identity()
        self.feature_dim = shape.dim
        if freeze_patch_embed:  # MoCo-v3: a random, fixed patch projection stabilises training
            for p in self.vit.conv_proj.parameters():
                p.requires_grad_(False)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token prepended and the position embedding added:
        (N, C, H, W) -> (N, T, D), T = 1 + (H / patch)^2. Public attributes of torchvision's
        VisionTransformer only (tests/test_private_apis.py: equal to its own forward)."""
        vit = self.vit
        _, _, h, w = x.shape
        if (h, w) != (vit.image_size, vit.image_size):  # torchvision's own check, as a clear error
            raise ValueError(f"this ViT takes {vit.image_size}x{vit.image_size} images, got {h}x{w}")
        patches = vit.conv_proj(x).flatten(2).transpose(1, 2)  # (N, D, H/p, W/p) -> (N, T-1, D)
        cls = vit.class_token.expand(patches.shape[0], -1, -1)  # (N, 1, D)
        return vit.encoder.dropout(torch.cat([cls, patches], dim=1) + vit.encoder.pos_embedding)  # (N, T, D)

    def forward(self, x: torch.Tensor,
                after_block: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """(N, C, H, W) -> (N', D): the class token after the final LayerNorm.

        The blocks run one by one; `after_block(i, tokens)` (optional) may replace the (N, T, D)
        tokens after block i, with more rows (BatchFormerV2's second stream): N' is what it leaves.
        Without it this is exactly torchvision's `VisionTransformer.forward`.
        """
        tokens = self.tokens(x)  # (N, T, D)
        for i, block in enumerate(self.vit.encoder.layers):
            tokens = block(tokens)  # (N', T, D)
            if after_block is not None:
                tokens = after_block(i, tokens)
        return self.vit.encoder.ln(tokens)[:, 0]  # (N', D)


def build_backbone(name: str, stem: str, width: int, in_channels: int, stem_stride: int = 1,
                   split_bn_groups: int = 1, image_size: int = 224, patch_size: int = 16,
                   freeze_patch_embed: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """Backbone from config values; split_bn_groups > 1 uses SplitBatchNorm2d (ResNets)."""
    if name.startswith("vit"):
        return ViTBackbone(name, image_size, patch_size, in_channels, freeze_patch_embed)
    norm_layer = None
    if split_bn_groups > 1:
        from .norm import SplitBatchNorm2d
        norm_layer = partial(SplitBatchNorm2d, groups=split_bn_groups)
    return resnet(name, stem, width, in_channels, stem_stride, norm_layer, zero_init_residual)
