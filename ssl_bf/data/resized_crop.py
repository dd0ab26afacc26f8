"""RandomResizedCrop for whole batches: torchvision's box sampler, vectorised on the CPU, and the
crop + resize of every image to its own box on the device.

`crop_boxes` draws what `torchvision.transforms.RandomResizedCrop.get_params` draws, for every
image of a batch at once, from the uniforms it is given (the caller draws them on the CPU
generator): up to 10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)), the first
that fits is kept and placed uniformly; if none fits, the largest centred box whose aspect is
clamped to the ratio range.

`resized_crop` cuts box b out of image b and resizes it to S x S as torchvision's
`resized_crop(img, top, left, h, w, [S, S])` does on a float tensor (crop, then bilinear resize
with antialiasing): each output pixel is a weighted sum of the input pixels of its own box, with
the weights of torch's antialiased bilinear kernel (the triangle filter of PIL's resampler,
widened by the scale when shrinking). Everything is computed on the images' device from the
boxes: no value is read back to the host. The products are float32 matmuls: exact float32 under
torch's default matmul precision ("highest"; "high" would allow TF32 on a GPU).
"""
from __future__ import annotations

import math

import torch

CROP_TRIES = 10  # torchvision's attempts before the centred fallback
DEFAULT_RATIO = (3 / 4, 4 / 3)


def crop_boxes(height: int, width: int, uniforms: torch.Tensor, scale: tuple[float, float],
               ratio: tuple[float, float] = DEFAULT_RATIO) -> torch.Tensor:
    """Boxes (N, 4) int64 `(top, left, h, w)` from `uniforms` (N, 2 * CROP_TRIES + 2) in [0, 1).

    Columns: the area draws of the 10 tries, their log-aspect draws, then the top and left draws.
    Computed in float64 on the uniforms' device (the CPU), without reading any value back.
    """
    u = uniforms.double()
    area_u, ratio_u, place_u = u[:, :CROP_TRIES], u[:, CROP_TRIES:2 * CROP_TRIES], u[:, 2 * CROP_TRIES:]
    target = (height * width) * (scale[0] + (scale[1] - scale[0]) * area_u)  # (N, 10)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * ratio_u)  # (N, 10)
    w = torch.sqrt(target * aspect).round()  # round half to even, as Python's round
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (N, 10)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 if none)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]  # (N,)
    found = fits.any(1)
    top = (place_u[:, 0] * (height - h + 1)).floor()
    left = (place_u[:, 1] * (width - w + 1)).floor()
    fw, fh = _fallback_size(height, width, ratio)
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack([top, left, h, w], 1).long()  # (N, 4)


def _fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(w, h) of torchvision's fallback: the whole image, its aspect clamped to the ratio range."""
    aspect = width / height
    if aspect < min(ratio):
        return width, int(round(width / min(ratio)))
    if aspect > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def resize_taps(in_size: int, out_size: int) -> int:
    """Input pixels one output pixel can read when any box of an `in_size` side shrinks to `out_size`."""
    return math.ceil(2 * max(in_size / out_size, 1.0)) + 2


def _axis_weights(start: torch.Tensor, length: torch.Tensor, out_size: int,
                  taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and weights (N, out_size, taps) of the antialiased bilinear resize of
    [start, start + length) to `out_size` pixels along one axis."""
    length = length.to(torch.float32)[:, None, None]  # (N, 1, 1)
    scale = length / out_size
    support = scale.clamp(min=1.0)  # the triangle filter's half width, widened when shrinking
    centre = (torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None] + 0.5) * scale
    first = (centre - support + 0.5).trunc().clamp(min=0)  # (N, S, 1), as torch/PIL compute xmin
    j = first + torch.arange(taps, device=start.device, dtype=torch.float32)  # (N, S, taps)
    weight = (1.0 - ((j - centre + 0.5) / support).abs()).clamp(min=0) * (j < length)
    weight = weight / weight.sum(-1, keepdim=True)
    index = start[:, None, None] + torch.minimum(j, length - 1).long()  # taps past the box weigh 0
    return index, weight


def _axis_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(N, out_size, in_size): row i holds output pixel i's weights over the input pixels."""
    index, weight = _axis_weights(start, length, out_size, resize_taps(in_size, out_size))  # (N, S, taps)
    matrix = torch.zeros((len(start), out_size, in_size), dtype=torch.float32, device=start.device)
    return matrix.scatter_add_(2, index, weight)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float, boxes (N, 4) `(top, left, h, w)` on the same device -> (N, C, S, S).

    Two batched matrix products, rows (N, S, H) @ image @ columns (N, W, S)^T: the zero weights
    outside each pixel's taps add nothing, so the sums are those of the taps.
    """
    top, left, h, w = boxes.unbind(1)
    rows = _axis_matrix(top, h, images.shape[2], size).to(images.dtype)  # (N, S, H)
    cols = _axis_matrix(left, w, images.shape[3], size).to(images.dtype)  # (N, S, W)
    return rows[:, None] @ images @ cols[:, None].transpose(-1, -2)  # (N, C, S, S)
