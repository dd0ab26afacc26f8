"""`ssl-bf export --format`: a run's backbone in the layout the next tool loads.

- `torchvision`: ssl-bf's own state dict (torchvision's ResNet names; `vit.`-prefixed torchvision
  VisionTransformer names), read back by every ssl-bf command with its JSON.
- `timm`: ViT tensors renamed to timm's VisionTransformer (`vit_small_patch16_224` and friends:
  `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.i.*`, `norm`), no classifier, so
  `timm.create_model(name, num_classes=0).load_state_dict(sd)` is strict. ResNets keep their names,
  which timm's ResNets share. The JSON beside it gives the timm arguments and the head count.
- `detectron2`: MoCo's detection converter renaming (`stem.*`, `res2..5`, `convK.norm`,
  `shortcut`), pickled as numpy arrays with `matching_heuristics`; the JSON beside it gives the
  pixel mean/std (0-255 units) and the RGB input format detectron2's config needs.
"""
from __future__ import annotations

import torch

from .resnet_layout import resnet_geometry, to_detectron2
from .vit_layout import timm_geometry, torchvision_to_timm

EXPORT_FORMATS = ("torchvision", "timm", "detectron2")
_TIMM_NAMES = {(384, 12, 6): "vit_small", (192, 12, 3): "vit_tiny", (768, 12, 12): "vit_base"}


class ExportFormatError(ValueError):
    """A backbone the requested export format cannot hold; the message says why."""


def _stats(config: dict) -> tuple[list[float], list[float]]:
    from ..data import DATASET_STATS

    mean, std = DATASET_STATS.get(config.get("data", {}).get("name"), DATASET_STATS["imagenet"])
    return list(mean), list(std)


def timm_export(state: dict, config: dict) -> tuple[dict, dict]:
    """(state dict in timm's names, the JSON written beside it)."""
    mean, std = _stats(config)
    if not any(k.startswith("vit.") for k in state):  # a ResNet: timm uses torchvision's names
        geo = resnet_geometry(state)
        return dict(state), {"format": "timm", "family": "resnet", "timm_model": geo.name if geo.width == 64
                             and geo.stem == "imagenet" else None, "in_chans": geo.in_channels, "mean": mean,
                             "std": std}
    timm_state = torchvision_to_timm(state)
    geo = timm_geometry(timm_state)
    name = config.get("backbone", {}).get("name")
    from ..models.backbones import VIT_SHAPES

    heads = VIT_SHAPES[name].heads if name in VIT_SHAPES else None
    base = _TIMM_NAMES.get((geo.dim, geo.layers, heads))
    model = f"{base}_patch{geo.patch_size}_{geo.image_size}" if base else None
    kwargs = {"img_size": geo.image_size, "patch_size": geo.patch_size, "in_chans": geo.in_channels,
              "embed_dim": geo.dim, "depth": geo.layers, "num_heads": heads, "mlp_ratio": geo.mlp_dim / geo.dim,
              "qkv_bias": True, "num_classes": 0, "global_pool": "token", "class_token": True}
    return timm_state, {"format": "timm", "family": "vit", "timm_model": model, "timm_kwargs": kwargs,
                        "num_heads": heads, "mean": mean, "std": std,
                        "usage": "timm.create_model(timm_model or 'vit_small_patch16_224', **timm_kwargs)"
                                 ".load_state_dict(state_dict)"}


def detectron2_export(state: dict, config: dict) -> tuple[dict, dict]:
    """(the pickle's contents: numpy arrays under detectron2's names, the JSON written beside it)."""
    if any(k.startswith("vit.") for k in state):
        raise ExportFormatError("--format detectron2 takes a ResNet backbone; this run's is a ViT (use --format timm)")
    geo = resnet_geometry(state)
    if geo.stem != "imagenet" or geo.in_channels != 3:
        raise ExportFormatError(f"--format detectron2 needs the ImageNet stem (7x7 conv + max-pool) over 3 "
                                f"channels, as detectron2's ResNet has; this run's backbone has the {geo.stem} "
                                f"stem over {geo.in_channels} channel(s)")
    mean, std = _stats(config)
    model = {k: v.detach().cpu().numpy() for k, v in to_detectron2(state).items()}
    expansion = 4 if geo.block == "bottleneck" else 1
    side = {"format": "detectron2", "source_layout": "torchvision ResNet, renamed as MoCo's "
            "detection/convert-pretrain-to-detectron2.py does",
            "MODEL": {"PIXEL_MEAN": [round(255 * m, 3) for m in mean], "PIXEL_STD": [round(255 * s, 3) for s in std],
                      "RESNETS": {"DEPTH": int(geo.name.removeprefix("resnet")), "STRIDE_IN_1X1": False,
                                  "STEM_OUT_CHANNELS": geo.width, "RES2_OUT_CHANNELS": geo.width * expansion,
                                  "WIDTH_PER_GROUP": geo.width}},
            "INPUT": {"FORMAT": "RGB"},
            "notes": "PIXEL_MEAN/STD are the run's normalisation in 0-255 units; the weights expect RGB input "
                     "(detectron2's default is BGR); STRIDE_IN_1X1 False as torchvision's bottleneck strides "
                     "in the 3x3 conv"}
    return {"model": model, "__author__": "ssl-bf", "matching_heuristics": True}, side
