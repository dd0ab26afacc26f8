"""A small, deterministic JPEG image folder with real content (Fashion-MNIST), for folder tests."""
from __future__ import annotations

import os

import numpy as np


def _canvas(item: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> "PIL.Image.Image":
    """A 28x28 grayscale item tinted and pasted on a non-square RGB canvas around `size` (W, H)."""
    from PIL import Image

    w, h = size
    w, h = w + int(rng.integers(-3, 4)), h + int(rng.integers(-3, 4))  # slight size variation
    if rng.random() < 0.3:  # some portrait canvases
        w, h = h, w
    background = rng.integers(0, 60, 3)  # dark, per image
    tint = rng.uniform(0.6, 1.0, 3)  # the item's colour
    side = max(8, int(min(w, h) * rng.uniform(0.75, 1.0)))
    gray = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = background
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = canvas[top:top + side, left:left + side]
    patch[:] = patch * (1 - gray[..., None]) + 255 * tint * gray[..., None]  # (side, side, 3)
    return Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8), "RGB")


def make_jpeg_folder(root: str, train_per_class: int = 20, val_per_class: int = 10, classes: int = 4,
                     size: tuple[int, int] = (48, 36), seed: int = 0) -> str:
    """Write root/train/<class>/*.jpg and root/val/<class>/*.jpg from the first `classes`
    Fashion-MNIST classes (train images from its train split, val from its test split).

    Class folders are named "<label>_<name>" so their sorted order is the Fashion-MNIST label
    order. Canvases are RGB of about `size` (W, H), some portrait; JPEG quality 90. Returns root.
    """
    from ssl_bf.data import FASHION_MNIST_CLASSES, build_dataset

    rng = np.random.default_rng(seed)
    for split, per_class, source in (("train", train_per_class, "train"), ("val", val_per_class, "test")):
        data = build_dataset("fashion-mnist", split=source)
        images, labels = data.images[:, 0].numpy(), data.labels.numpy()  # (N, 28, 28), (N,)
        for label in range(classes):
            name = f"{label}_{FASHION_MNIST_CLASSES[label].replace('/', '-')}"
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(labels == label)[:per_class]):
                _canvas(images[i], size, rng).save(os.path.join(folder, f"{split}_{k:04d}.jpg"), quality=90)
    return root
