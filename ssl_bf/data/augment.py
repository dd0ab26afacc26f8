"""Two-view augmentation recipes, run batched on the training device, with torchvision's semantics.

The DataLoader only delivers uint8 batches; `TwoViews` turns a (N, C, H, W) uint8 batch into two
normalised float views on whatever device it lives on (CPU or CUDA). With `crop=False` the random
resized crops are already cut per sample (`ssl_bf.data.crops.TwoCropFolder`) and `TwoViews` takes
the pair `(crops1, crops2)`; flip and the photometric ops stay here.

Each op equals torchvision's functional op on one image with the same parameters
(`photometric.py`, `resized_crop.py`); the parameters are drawn per image on the CPU generator,
colour-jitter order included (`view_params.py`). docs/protocols.md ("Augmentation fidelity")
states each op's reference and tolerance.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import photometric as P
from .resized_crop import resized_crop
from .view_params import SLOTS, SIGMA_RANGE, ViewParams, ViewRecipe, draw_view_params

BLUR_REACH = 3.0  # the blur kernel reaches 3 sigma each side, as PIL's three box passes do
HUE_LIMIT = 0.5  # torchvision's ColorJitter: a hue jitter of at most half a turn


class RecipeRangeError(ValueError):
    """A recipe scaled beyond what torchvision's ops accept; the message starts with the value."""


def blur_kernel_size(size: int) -> int:
    """Odd kernel of 2 * ceil(3 * 2.0) + 1 = 13 taps (3 sigma at the largest sigma), at most
    2 * size - 1 so that reflect padding fits in a `size`-pixel image."""
    reach = math.ceil(BLUR_REACH * SIGMA_RANGE[1])
    return min(2 * reach + 1, 2 * size - 1)


def apply_view(x: torch.Tensor, params: ViewParams, recipe: ViewRecipe, size: int) -> torch.Tensor:
    """Float (N, C, H, W) in [0, 1] and its parameters (on x's device) -> the view in [0, 1], before
    normalisation: crop (to S x S; without a crop the size is kept), colour jitter (4 slots),
    grayscale, blur, solarize, flip."""
    if recipe.crop_scale is not None:
        x = resized_crop(x, params.boxes, size)  # (N, C, S, S)
    colour = x.shape[1] == 3
    with_hue = colour and recipe.jitter[3] > 0
    for k in range(SLOTS):
        x = P.blend(x, params.blend_a[:, k], params.blend_b[:, k], params.blend_c[:, k])
        rows = params.hue_rows[k]  # the images whose hue shifts in slot k
        if with_hue and len(rows):
            x = x.index_copy(0, rows, P.shift_hue(x.index_select(0, rows), params.hue_shift[rows, k]))
    if colour and recipe.p_gray > 0:
        x = P.grayscale(x, params.gray)
    if recipe.p_blur > 0:
        kernels = P.gaussian_kernels(params.sigma, blur_kernel_size(min(x.shape[-2:])))  # (N, k)
        x = P.gaussian_blur(x, kernels, params.blur)
    if recipe.p_solarize > 0:
        x = P.solarize(x, params.solarize)
    return P.hflip(x, params.flip)


class AugmentView(nn.Module):
    """float (N, C, H, W) in [0, 1] -> one normalised view (N, C, S, S), parameters drawn per image
    on the CPU generator and sent to x's device in one copy."""

    def __init__(self, recipe: ViewRecipe, size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.recipe, self.size = recipe, size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = draw_view_params(self.recipe, len(x), x.shape[-2], x.shape[-1]).to(x.device)
        view = apply_view(x, params, self.recipe, self.size)
        return (view - self.mean.to(view.device)) / self.std.to(view.device)


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


def _recipe_views(recipe: str, crop: tuple[float, float] | None, s: float, blur: bool) -> tuple[ViewRecipe, ViewRecipe]:
    """The two views of a recipe (jitter magnitudes times `s`; `blur=False` drops the blur)."""
    if recipe == "mocov2":  # MoCo-v2 main_moco.py --aug-plus: both views alike
        view = ViewRecipe(crop, (0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s), p_blur=0.5 if blur else 0.0)
        return view, view
    if recipe == "mocov3":  # MoCo-v3 main_moco.py (BYOL's asymmetric pair)
        jitter = (0.4 * s, 0.4 * s, 0.2 * s, 0.1 * s)
        return (ViewRecipe(crop, jitter, p_blur=1.0 if blur else 0.0),
                ViewRecipe(crop, jitter, p_blur=0.1 if blur else 0.0, p_solarize=0.2))
    if recipe == "light":  # crop + flip + mild jitter, no blur: for tiny images and short budgets
        view = ViewRecipe(crop, (0.4 * s, 0.4 * s, 0.2 * s, 0.05 * s))
        return view, view
    raise ValueError(f"unknown augmentation recipe '{recipe}'; choose {', '.join(RECIPE_CROP_SCALE)}")


def build_two_views(recipe: str, size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                    scale_min: float | None = None, jitter_strength: float = 1.0, blur: bool = True,
                    crop: bool = True) -> TwoViews:
    """The MoCo-v2 (symmetric), MoCo-v3/BYOL (asymmetric) or the light recipe.

    `crop=False` leaves out the RandomResizedCrop: the inputs are already S x S crops. One-channel
    images get brightness and contrast only (saturation, hue and grayscale leave them unchanged in
    torchvision too). RecipeRangeError: a `jitter_strength` that takes the hue jitter past 0.5.
    """
    lo = recipe_crop_scale(recipe, scale_min or 0.0)
    views = _recipe_views(recipe, (lo, 1.0) if crop else None, jitter_strength, blur)
    hue = max(v.jitter[3] for v in views)
    if hue > HUE_LIMIT:
        limit = jitter_strength * HUE_LIMIT / hue
        raise RecipeRangeError(f"{jitter_strength:g} makes the {recipe} recipe's hue jitter {hue:g}; torchvision's "
                               f"ColorJitter takes at most {HUE_LIMIT} (half a turn of the hue circle): at most "
                               f"{limit:g} here")
    if channels == 1:
        views = tuple(replace(v, jitter=(*v.jitter[:2], 0.0, 0.0), p_gray=0.0) for v in views)
    return TwoViews(*(AugmentView(v, size, mean, std) for v in views))


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


def min_image_size(recipe: str, blur: bool = True) -> int:
    """The smallest crop side (px) the recipe's two views can process. The crop and the colour ops
    take any size; a Gaussian blur pads by half its kernel with reflection, which needs more
    pixels than that padding (`blur_kernel_size` shrinks the kernel to fit small images)."""
    if not any(v.p_blur > 0 for v in _recipe_views(recipe, None, 1.0, blur)):
        return 1
    return next(s for s in range(1, 4097) if blur_kernel_size(s) // 2 < s)


def check_image_size(recipe: str, size: int, blur: bool, native: bool) -> None:
    """ConfigError naming augment.image_size when `size` is below `min_image_size` (`native`: the
    size is the data's own, augment.image_size=0)."""
    from ..config import ConfigError

    least = min_image_size(recipe, blur)
    if size < least:
        given = f"the data's native {size} px (augment.image_size=0)" if native else str(size)
        raise ConfigError(f"augment.image_size: the {recipe} recipe's Gaussian blur needs crops of at least "
                          f"{least} px, got {given}; set augment.image_size={least} or more, or augment.blur=false")
