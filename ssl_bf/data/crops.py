"""Image folders at the full MoCo crop recipe: two random resized crops cut in the DataLoader.

`ImageFolderDataset` centre-crops a square before augmentation, so crops never reach the borders
of non-square images. `TwoCropFolder` instead draws both RandomResizedCrop boxes on the whole
image, decodes the JPEG at the largest DCT reduction that still leaves every box at least the
output size, and cuts + resizes each box in one PIL op. It yields two uint8 (3, S, S) crops;
flip and the photometric ops stay batched on the device (`TwoViews` with `crop=False`).

The crop geometry is a pure function of (seed, epoch, index): independent of the number of
workers, the sample order and resumption. So is the stand-in for an unreadable image when the
folder skips them (`data.skip_unreadable`); otherwise the image stops the run naming the file.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import UnreadableImageError, decode_rgb
from .folders import ImageFolderDataset

Box = tuple[int, int, int, int]  # (left, top, width, height) in full-size pixels
DRAFT_SCALES = (8, 4, 2, 1)  # JPEG DCT reductions, largest first


def crop_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float] = (0.2, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A RandomResizedCrop box, distributed as torchvision's `RandomResizedCrop.get_params`.

    Up to 10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); if none fits,
    the largest centred box whose aspect is clamped to the ratio range.
    """
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    aspect = width / height
    if aspect < min(ratio):  # too tall: full width, height from the narrowest allowed aspect
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):  # too wide: full height
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def draft_scale(boxes: list[Box], out_size: int) -> int:
    """Largest d in {1, 2, 4, 8} with every box, shrunk by d, still >= out_size on both sides."""
    smallest = min(min(w, h) for _, _, w, h in boxes)
    return next((d for d in DRAFT_SCALES if smallest >= d * out_size), 1)


def _to_chw(img) -> torch.Tensor:
    array = np.asarray(img, dtype=np.uint8)  # (S, S, 3), read-only view of PIL's bytes
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, S, S) uint8


def decode_two_crops(path: str, out_size: int, scale: tuple[float, float], ratio: tuple[float, float],
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random resized crops of one image file: 2 x uint8 (3, S, S), S = out_size.
    UnreadableImageError (naming the file) when it cannot be read correctly."""
    from PIL import Image

    def plan(img) -> tuple[list[Box], int, int, object]:
        width, height = img.size  # full size, from the header
        boxes = [crop_box(rng, width, height, scale, ratio) for _ in range(2)]
        d = draft_scale(boxes, out_size)
        # Ask for floor(W / d): PIL picks the reduction min(W // w, H // h), and a ceil request can
        # fall one power of two short on odd sizes. JPEG only; other formats ignore it (None).
        drafted = img.draft("RGB", (width // d, height // d)) if d > 1 else None
        return boxes, width, height, drafted

    img, (boxes, width, height, drafted) = decode_rgb(path, plan)
    if drafted is not None:  # exact DCT scale: full-size (W, H) maps onto (W / s, H / s)
        fx, fy = drafted[1][2] / width, drafted[1][3] / height
    else:
        fx, fy = img.width / width, img.height / height
    crops = []
    for left, top, w, h in boxes:
        box = (left * fx, top * fy, min((left + w) * fx, img.width), min((top + h) * fy, img.height))
        crops.append(_to_chw(img.resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)))
    return crops[0], crops[1]


class TwoCropFolder(Dataset):
    """`folder[i] -> (crop1 uint8 (3, S, S), crop2 uint8 (3, S, S), label)` at the MoCo crop recipe.

    Wraps an `ImageFolderDataset` (its samples, classes, stats and unreadable-image policy). The
    epoch lives in shared memory: `set_epoch(e)` before an epoch's first index is sent reaches
    DataLoader workers that are already running (`persistent_workers`) as well as new ones.
    """

    num_channels = 3

    def __init__(self, folder: ImageFolderDataset, out_size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), seed: int = 0) -> None:
        if out_size <= 0:
            raise ValueError(f"out_size must be positive, got {out_size}")
        self.folder = folder
        self.out_size = out_size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # () int64, seen by the workers

    image_size = property(lambda self: self.out_size)
    classes = property(lambda self: self.folder.classes)
    mean = property(lambda self: self.folder.mean)
    std = property(lambda self: self.folder.std)
    name = property(lambda self: self.folder.name)
    root = property(lambda self: self.folder.root)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Both crops of sample `index`, geometry drawn from (seed, epoch, index). An unreadable
        image raises UnreadableImageError; with the folder's `skip_unreadable` it is replaced by the
        first readable of `replacement_candidates(n, (seed, epoch, index))`, cut with the same
        geometry draws, and stays marked in `folder.unreadable` for the run's log."""
        try:
            return self._crops(index, index)
        except UnreadableImageError:
            if not self.folder.skip_unreadable:
                raise
        return self.folder.stand_in([self.seed, self.epoch, index], index,
                                    lambda candidate: self._crops(candidate, index))

    def _crops(self, sample: int, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The crops of `sample`'s image with the geometry draws of `index`: a fresh generator per
        try, so a stand-in gets the same draws whichever files this process has met before."""
        path, label = self.folder.samples[sample]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            crop1, crop2 = decode_two_crops(path, self.out_size, self.scale, self.ratio, rng)
        except UnreadableImageError:
            self.folder.unreadable.mark(sample)
            raise
        return crop1, crop2, label  # 2 x (3, S, S) uint8, int

    def __repr__(self) -> str:
        return (f"TwoCropFolder(root={self.root!r}, n={len(self)}, size={self.out_size}, "
                f"scale={self.scale}, ratio={self.ratio}, seed={self.seed}, epoch={self.epoch})")
