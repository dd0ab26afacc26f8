"""ResNet weights in torchvision's key layout: the network they describe, and detectron2's names.

Depth comes from the block type (`layer1.0.conv3` only in bottlenecks) and the block count of each
stage; width and input channels from `conv1.weight` (out, in, k, k); the stem from its kernel (7:
torchvision's 7x7/2 + max-pool, 3: the small-image 3x3 stem without max-pool).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
           ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
           ("bottleneck", (3, 8, 36, 3)): "resnet152"}
_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.")


class ResNetLayoutError(ValueError):
    """ResNet weights whose layout ssl-bf cannot name or rebuild; the message says what."""


@dataclass(frozen=True)
class ResNetGeometry:
    name: str  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152
    block: str  # basic | bottleneck
    stages: tuple[int, int, int, int]
    width: int  # stem output channels (64 = torchvision's)
    in_channels: int
    stem: str  # imagenet | small

    @property
    def feature_dim(self) -> int:
        return int(512 * self.width / 64) * (4 if self.block == "bottleneck" else 1)


def is_torchvision_resnet(state: dict) -> bool:
    return "conv1.weight" in state and "bn1.weight" in state and any(k.startswith("layer4.") for k in state)


def resnet_geometry(state: dict) -> ResNetGeometry:
    """The ResNet a torchvision-layout state dict describes; ResNetLayoutError if it is none of
    ResNet-18/34/50/101/152."""
    if not is_torchvision_resnet(state):
        raise ResNetLayoutError("not a torchvision ResNet layout (conv1, bn1, layer1..layer4)")
    counts = [0, 0, 0, 0]
    for key in state:
        if m := _BLOCK_KEY.match(key):
            stage = int(m.group(1)) - 1
            counts[stage] = max(counts[stage], int(m.group(2)) + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    name = _DEPTHS.get((block, tuple(counts)))
    if name is None:
        raise ResNetLayoutError(f"{block} blocks per stage {counts} match no ResNet-18/34/50/101/152")
    conv1 = state["conv1.weight"]  # (width, C, k, k)
    stem = {7: "imagenet", 3: "small"}.get(int(conv1.shape[-1]))
    if stem is None:
        raise ResNetLayoutError(f"conv1 has a {conv1.shape[-1]}x{conv1.shape[-1]} kernel; ssl-bf rebuilds 7x7 "
                                f"(ImageNet) and 3x3 (small-image) stems")
    return ResNetGeometry(name, block, tuple(counts), int(conv1.shape[0]), int(conv1.shape[1]), stem)


def to_detectron2(state: dict) -> dict:
    """torchvision ResNet names -> detectron2's, the renaming of MoCo's
    `detection/convert-pretrain-to-detectron2.py`: stem tensors under `stem.`, `layerN` -> `res{N+1}`,
    `bnK` -> `convK.norm`, `downsample.0/1` -> `shortcut` / `shortcut.norm`. BatchNorm's
    `num_batches_tracked` counters are left out (detectron2's frozen BN has none)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = key if key.startswith("layer") else "stem." + key
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[name] = value
    return out
