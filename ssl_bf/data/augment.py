"""Two-view augmentation pipelines in kornia, run batched on the training device.

The DataLoader only delivers uint8 batches; these modules turn a (N, C, H, W) uint8 batch
into normalised float views on whatever device it lives on (CPU or CUDA). With `crop=False`
the random resized crops are already cut per sample (`ssl_bf.data.crops.TwoCropFolder`) and
`TwoViews` takes the pair `(crops1, crops2)`; flip and the photometric ops stay here.
"""
from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn


def _blur_kernel(size: int) -> int:
    """Odd kernel of about 10% of the image side (23 px at 224), at least 3."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def _colour_ops(channels: int, brightness: float, contrast: float, saturation: float, hue: float,
                p_jitter: float, p_gray: float) -> list[nn.Module]:
    """Colour jitter (+ grayscale). Grayscale images only get brightness and contrast."""
    if channels == 1:
        return [K.ColorJiggle(brightness, contrast, 0.0, 0.0, p=p_jitter)]
    return [K.ColorJiggle(brightness, contrast, saturation, hue, p=p_jitter), K.RandomGrayscale(p=p_gray)]


def _view(size: int, channels: int, mean: Sequence[float], std: Sequence[float], scale_min: float,
          jitter: tuple[float, float, float, float], p_blur: float, p_solarize: float,
          crop: bool = True) -> nn.Sequential:
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=(scale_min, 1.0))] if crop else []
    ops += _colour_ops(channels, *jitter, p_jitter=0.8, p_gray=0.2)
    if p_blur > 0:
        ops.append(K.RandomGaussianBlur((_blur_kernel(size),) * 2, sigma=(0.1, 2.0), p=p_blur))
    if p_solarize > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=p_solarize))
    ops += [K.RandomHorizontalFlip(), K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))]
    return nn.Sequential(*ops)


class TwoViews(nn.Module):
    """uint8 (N, C, H, W) -> two normalised float views (N, C, S, S), each randomly augmented.

    Also takes a pair of uint8 batches `(crops1, crops2)`, each (N, C, S, S): view1 augments the
    first, view2 the second (pre-cut crops, for views built with `crop=False`).
    """

    def __init__(self, view1: nn.Module, view2: nn.Module):
        super().__init__()
        self.view1, self.view2 = view1, view2

    @torch.no_grad()
    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(images, torch.Tensor):
            x = images.float().div_(255)  # (N, C, H, W) in [0, 1]
            return self.view1(x), self.view2(x)
        if len(images) != 2:
            raise ValueError(f"TwoViews takes one uint8 batch or a pair (crops1, crops2), got {len(images)} tensors")
        crops1, crops2 = images
        return self.view1(crops1.float().div_(255)), self.view2(crops2.float().div_(255))  # 2 x (N, C, S, S)


RECIPE_CROP_SCALE = {"mocov2": 0.2, "mocov3": 0.08, "light": 0.3}  # RandomResizedCrop's lower area bound


def recipe_crop_scale(recipe: str, scale_min: float = 0.0) -> float:
    """The crop's lower area bound: `scale_min` when positive, else the recipe's own."""
    if recipe not in RECIPE_CROP_SCALE:
        raise ValueError(f"unknown augmentation recipe '{recipe}'; choose {', '.join(RECIPE_CROP_SCALE)}")
    return scale_min if scale_min > 0 else RECIPE_CROP_SCALE[recipe]


def build_two_views(recipe: str, size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                    scale_min: float | None = None, jitter_strength: float = 1.0, blur: bool = True,
                    crop: bool = True) -> TwoViews:
    """The MoCo-v2 (symmetric), MoCo-v3/BYOL (asymmetric) or a light recipe as kornia modules.

    `crop=False` leaves out the RandomResizedCrop: the inputs are already S x S crops.
    """
    s = jitter_strength
    lo = recipe_crop_scale(recipe, scale_min or 0.0)
    if recipe == "mocov2":
        v2 = (0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s)
        view = lambda: _view(size, channels, mean, std, lo, v2, 0.5 if blur else 0.0, 0.0, crop)
        return TwoViews(view(), view())
    if recipe == "mocov3":
        v3 = (0.4 * s, 0.4 * s, 0.2 * s, 0.1 * s)
        return TwoViews(_view(size, channels, mean, std, lo, v3, 1.0 if blur else 0.0, 0.0, crop),
                        _view(size, channels, mean, std, lo, v3, 0.1 if blur else 0.0, 0.2, crop))
    if recipe == "light":  # crop + flip + mild jitter, no blur: for tiny images and short budgets
        light = (0.4 * s, 0.4 * s, 0.2 * s, 0.05 * s)
        view = lambda: _view(size, channels, mean, std, lo, light, 0.0, 0.0, crop)
        return TwoViews(view(), view())
    raise ValueError(f"unknown augmentation recipe '{recipe}'; choose mocov2, mocov3 or light")


class EvalTransform(nn.Module):
    """uint8 (N, C, H, W) -> normalised float (N, C, S, S) for feature extraction.

    Images larger than S are resized (shorter side to S / 0.875) and centre-cropped; images
    of size S are only normalised; smaller ones are resized up to S.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)  # (N, C, H, W)
        h, w = x.shape[-2:]
        s = self.size
        if min(h, w) > s:
            short = int(round(s / 0.875))
            scale = short / min(h, w)
            x = F.interpolate(x, size=(max(short, round(h * scale)), max(short, round(w * scale))),
                              mode="bilinear", antialias=True, align_corners=False)
            h, w = x.shape[-2:]
            top, left = (h - s) // 2, (w - s) // 2
            x = x[..., top:top + s, left:left + s]  # (N, C, S, S)
        elif (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
