"""The random parameters of one augmented view, drawn on the CPU and sent to the device in one copy.

Every draw comes from torch's default CPU generator (the one the trainer and the linear probe
save and restore), as one (N, DRAWS_PER_IMAGE) block of uniforms, whatever the device of the
images and whatever the recipe: a resume restores the draws exactly, and no random number is
drawn on, or read back from, an accelerator.

Colour jitter follows torchvision's `ColorJitter`: each image draws its own factors and its own
order of the four ops (a uniformly random permutation, as `torch.randperm(4)` per image). The
order is turned into four slots; slot k of image n applies that image's k-th op, as per-image
coefficients of `photometric.blend` (brightness, contrast, saturation) or a hue shift.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

from .resized_crop import CROP_TRIES, crop_boxes

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
SLOTS = len(JITTER_OPS)
# uniforms per image: crop (10 areas, 10 aspects, top, left), jitter (apply, order, factors),
# grayscale, blur (apply, sigma), solarize, flip
_COLUMNS = {"crop": 2 * CROP_TRIES + 2, "jitter_apply": 1, "order": SLOTS, "factor": SLOTS, "gray": 1,
            "blur_apply": 1, "sigma": 1, "solarize": 1, "flip": 1}
DRAWS_PER_IMAGE = sum(_COLUMNS.values())
SIGMA_RANGE = (0.1, 2.0)  # MoCo's GaussianBlur([.1, 2.])


@dataclass(frozen=True)
class ViewRecipe:
    """One view's ops, in the reference's order: RandomResizedCrop (None: pre-cut crops),
    RandomApply(ColorJitter(brightness, contrast, saturation, hue), p_jitter), RandomGrayscale,
    RandomApply(GaussianBlur(sigma 0.1-2), p_blur), RandomApply(Solarize, p_solarize), flip."""

    crop_scale: Optional[tuple[float, float]]
    jitter: tuple[float, float, float, float]
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.0
    p_solarize: float = 0.0
    p_flip: float = 0.5


@dataclass
class ViewParams:
    """Per-image parameters of one view (N rows; masks are bool, the rest float32 unless noted)."""

    boxes: torch.Tensor  # (N, 4) int64 crop boxes (top, left, h, w)
    blend_a: torch.Tensor  # (N, SLOTS) per slot: a x + b mean(gray) + c gray
    blend_b: torch.Tensor  # (N, SLOTS)
    blend_c: torch.Tensor  # (N, SLOTS)
    hue_shift: torch.Tensor  # (N, SLOTS): the hue shift of the slot that holds the hue op
    hue_apply: torch.Tensor  # (N, SLOTS) bool
    gray: torch.Tensor  # (N,) bool
    sigma: torch.Tensor  # (N,)
    blur: torch.Tensor  # (N,) bool
    solarize: torch.Tensor  # (N,) bool
    flip: torch.Tensor  # (N,) bool
    hue_rows: tuple[torch.Tensor, ...] = ()  # per slot: the rows whose hue shifts there, int64 (found on the CPU)

    def __post_init__(self) -> None:
        if not self.hue_rows:  # planned on the host from the CPU draws: the device needs no nonzero()
            self.hue_rows = tuple(self.hue_apply[:, k].nonzero()[:, 0] for k in range(SLOTS))

    def to(self, device: torch.device) -> "ViewParams":
        """The same parameters on `device`, in one non-blocking host-to-device copy."""
        parts = [getattr(self, f.name) for f in fields(self) if f.name != "hue_rows"]
        pieces = [*parts, *self.hue_rows]
        packed = torch.cat([p.reshape(-1).to(torch.float32) for p in pieces])  # exact: ints < 2**24
        packed = packed.to(device, non_blocking=True)
        moved = [piece.reshape(p.shape) for piece, p in zip(packed.split([p.numel() for p in pieces]), pieces)]
        moved = [m > 0.5 if p.dtype == torch.bool else m.to(p.dtype) for m, p in zip(moved, pieces)]
        names = [f.name for f in fields(self) if f.name != "hue_rows"]
        return ViewParams(**dict(zip(names, moved)), hue_rows=tuple(moved[len(parts):]))


def jitter_slots(apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-slot coefficients from the jitter's draws.

    apply (N,) bool; order (N, 4) the op index (0 brightness, 1 contrast, 2 saturation, 3 hue)
    applied in each slot; factors (N, 4) the brightness, contrast and saturation factors and the hue
    shift. An image without jitter gets the identity (1, 0, 0) and no hue shift in every slot.
    """
    n = len(order)
    one, zero = torch.ones(n), torch.zeros(n)
    fb, fc, fs, hue = factors.unbind(1)
    # per op (brightness, contrast, saturation, hue): a, b, c, hue shift, hue applied
    a = torch.stack([fb, fc, fs, one], 1)
    b = torch.stack([zero, 1 - fc, zero, zero], 1)
    c = torch.stack([zero, zero, 1 - fs, zero], 1)
    shift = torch.stack([zero, zero, zero, hue], 1)
    is_hue = torch.stack([zero, zero, zero, one], 1)
    on = apply[:, None]
    return {"blend_a": torch.where(on, a.gather(1, order), 1.0), "blend_b": torch.where(on, b.gather(1, order), 0.0),
            "blend_c": torch.where(on, c.gather(1, order), 0.0),
            "hue_shift": torch.where(on, shift.gather(1, order), 0.0),
            "hue_apply": on & (is_hue.gather(1, order) > 0.5)}


def factor_ranges(jitter: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """ColorJitter's ranges: [max(0, 1 - m), 1 + m] for brightness, contrast and saturation, [-m, m] for hue."""
    *blends, hue = jitter
    return [(max(0.0, 1.0 - m), 1.0 + m) for m in blends] + [(-hue, hue)]


def draw_view_params(recipe: ViewRecipe, n: int, height: int, width: int) -> ViewParams:
    """The parameters of `n` images of `height` x `width` (CPU tensors), from torch's default CPU
    generator: always n x DRAWS_PER_IMAGE uniforms, whatever the recipe."""
    u = torch.rand((n, DRAWS_PER_IMAGE), device="cpu", dtype=torch.float32)
    col = dict(zip(_COLUMNS, u.split(list(_COLUMNS.values()), 1)))
    boxes = (crop_boxes(height, width, col["crop"], recipe.crop_scale) if recipe.crop_scale is not None
             else torch.tensor([[0, 0, height, width]]).expand(n, 4))
    lo, hi = torch.tensor(factor_ranges(recipe.jitter)).unbind(1)  # (4,), (4,)
    slots = jitter_slots(col["jitter_apply"][:, 0] < recipe.p_jitter, col["order"].argsort(1),
                         lo + (hi - lo) * col["factor"])
    sigma = SIGMA_RANGE[0] + (SIGMA_RANGE[1] - SIGMA_RANGE[0]) * col["sigma"][:, 0]
    return ViewParams(boxes=boxes, gray=col["gray"][:, 0] < recipe.p_gray, sigma=sigma,
                      blur=col["blur_apply"][:, 0] < recipe.p_blur, solarize=col["solarize"][:, 0] < recipe.p_solarize,
                      flip=col["flip"][:, 0] < recipe.p_flip, **slots)
