"""Photometric ops on float image batches in [0, 1], each image with its own parameters.

The formulas are torchvision's tensor ones (`torchvision.transforms.v2.functional`), so that one
image through these ops equals torchvision's functional call with the same parameters:
- brightness f: f x; contrast f: f x + (1 - f) mean(gray(x)); saturation f: f x + (1 - f) gray(x);
  each clamped to [0, 1]. All three are one `blend(x, a, b, c) = clamp(a x + b mean + c gray)`
  with per-image coefficients, and (1, 0, 0) leaves an image exactly as it is;
- hue d: the hue channel of HSV shifted by d (mod 1);
- grayscale: ITU-R 601-2 luma, 0.299 R + 0.587 G + 0.114 B, on every channel: PIL's weights, which
  MoCo's PIL pipeline uses for grayscale, contrast and saturation (torchvision's tensor ops use
  0.2989 for R, so white stays white here but not there: at most 1e-4 apart);
- Gaussian blur of standard deviation sigma, reflect padding;
- solarize: x >= 0.5 -> 1 - x (PIL's threshold 128 on uint8 values, see docs/protocols.md);
- horizontal flip.
Per-image parameters are tensors (N,) on the images' device; no value is read back to the host.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")
SOLARIZE_THRESHOLD = 0.5


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]  # (N,) -> (N, 1, 1, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) gray; a one-channel batch is its own gray."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def blend(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """clamp(a x + b mean(gray(x)) + c gray(x), 0, 1) with per-image a, b, c (N,): brightness,
    contrast or saturation, image by image."""
    gray = luma(x)  # (N, 1, H, W)
    mean = gray.mean((1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    offset = gray * _per_image(c) + mean * _per_image(b)  # (N, 1, H, W)
    return torch.addcmul(offset, x, _per_image(a)).clamp_(0.0, 1.0)


def _hue(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) -> hue in [0, 1), max and chroma (max - min), each (N, H, W)."""
    r, g, b = x.unbind(1)
    low, high = torch.aminmax(x, dim=1)
    chroma = high - low
    grey = chroma == 0
    divisor = torch.where(grey, torch.ones_like(chroma), chroma)
    rc, gc, bc = (high[:, None] - x).div_(divisor[:, None]).unbind(1)
    red_max = high == r
    green_max = (high == g) & ~red_max
    blue_max = ~(red_max | green_max)
    h = (bc - gc) * red_max + (2.0 + rc - bc) * green_max + (4.0 + gc - rc) * blue_max
    return h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0), high, chroma


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W): the hue of every pixel of image n moved by shift[n] (a fraction of the turn).

    HSV back to RGB as channel = v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h) mod 6
    with n_c = 5, 3, 1 for R, G, B: the same hexcone torchvision's `_hsv_to_rgb` walks.
    """
    h, high, chroma = _hue(x)
    h = (h + _per_image(shift)[:, 0]).remainder_(1.0)  # (N, H, W)
    sector = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype)[None, :, None, None]
    k = (sector + 6.0 * h[:, None]).remainder_(6.0)  # (N, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (high[:, None] - chroma[:, None] * ramp).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Images with apply[n] turned to gray on every channel (N, C, H, W)."""
    return torch.where(_per_image(apply), luma(x).expand_as(x), x)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) normalised 1-D Gaussians of std sigma[n], as torchvision builds them."""
    half = (size - 1) * 0.5
    grid = torch.linspace(-half, half, size, device=sigma.device, dtype=torch.float32)  # (size,)
    pdf = torch.exp(-0.5 * (grid[None, :] / sigma[:, None]).pow(2))  # (N, size)
    return pdf / pdf.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, kernels: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with image n blurred by its separable kernel kernels[n] (N, k), reflect-padded,
    where apply[n]; the other images come back exactly as they were.

    Two depthwise convolutions (one group per image and channel). On CUDA they run in TF32 when
    cuDNN allows it (torch's default), as torchvision's own GaussianBlur does there.
    """
    n, c, height, width = x.shape
    k = kernels.shape[1]
    weight = kernels.to(x.dtype).repeat_interleave(c, 0)  # (N C, k): each channel its image's kernel
    flat = F.pad(x.reshape(1, n * c, height, width), (k // 2,) * 4, mode="reflect")  # (1, N C, H + 2p, W + 2p)
    flat = F.conv2d(flat, weight[:, None, None, :], groups=n * c)  # along W: (1, N C, H + 2p, W)
    flat = F.conv2d(flat, weight[:, None, :, None], groups=n * c)  # along H: (1, N C, H, W)
    return torch.where(_per_image(apply), flat.reshape(n, c, height, width), x)


def solarize(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Pixels >= 0.5 of the images with apply[n] inverted (1 - x)."""
    return torch.where(_per_image(apply) & (x >= SOLARIZE_THRESHOLD), 1.0 - x, x)


def hflip(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Images with apply[n] mirrored left to right."""
    return torch.where(_per_image(apply), x.flip(-1), x)
