"""Image files for the unreadable-image tests: valid images in every PIL mode ssl-bf reads or
refuses, the ways a file goes bad (truncated, empty, text, random bytes), decompression bombs, and
a 3-channel tiny checkpoint that embeds image folders."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

# mode -> the format it is saved in (lossless where the format allows, so pixels are known exactly)
MODE_FORMATS = {"1": "PNG", "L": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "LA": "PNG",
                "I;16": "PNG", "CMYK": "TIFF", "I;16B": "TIFF"}
EXTENSION = {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}


def random_image(mode: str, size: tuple[int, int], rng: np.random.Generator) -> "PIL.Image.Image":
    """A noisy image of `mode` and size (W, H) with every channel's full range used."""
    from PIL import Image

    w, h = size
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255, "L").convert("1")
    if mode in ("I;16", "I;16B"):
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))  # I;16
        return img if mode == "I;16" else img.convert("I;16B")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").quantize(16)
    bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)


def save_image(img, path: str, fmt: str) -> None:
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def expected_rgb(path: str) -> np.ndarray:
    """An independent float64 reference for the RGB uint8 (H, W, 3) ssl-bf should read from `path`:
    the stored values by numpy, converted by the documented rule for their mode."""
    from PIL import Image

    with Image.open(path) as img:
        mode = img.mode
        if mode == "P":
            index = np.asarray(img)  # (H, W) palette indices
            palette = np.asarray(img.getpalette("RGB"), dtype=np.float64).reshape(-1, 3)
            return palette[index].astype(np.uint8)
        raw = np.asarray(img).astype(np.float64)
    if mode in ("I;16", "I;16B", "I;16L"):
        gray = np.floor(raw * 255 / 65535 + 0.5)  # round half up, as integer maths does
        return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    if mode == "1":
        gray = np.where(raw > 0, 255.0, 0.0)
        return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    if mode == "L":
        return np.repeat(raw[..., None], 3, axis=2).astype(np.uint8)
    if mode == "LA":
        return np.repeat(raw[..., :1], 3, axis=2).astype(np.uint8)  # alpha dropped
    if mode in ("RGB", "RGBA"):
        return raw[..., :3].astype(np.uint8)  # alpha dropped
    if mode == "CMYK":
        c, k = raw[..., :3], raw[..., 3:]
        return np.floor((255 - c) * (255 - k) / 255 + 0.5).astype(np.uint8)
    raise ValueError(f"no reference for mode {mode}")


# --- ways a file goes bad ------------------------------------------------------------------------


def truncate(path: str, keep: float | int) -> None:
    """Keep the first `keep` bytes (an int) or that fraction of the file (a float)."""
    data = open(path, "rb").read()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    with open(path, "wb") as f:
        f.write(data[:n])


def write_text(path: str, text: str = "this is a text file, not an image\n") -> None:
    with open(path, "w") as f:
        f.write(text)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: str, side: int) -> None:
    """A real decompression bomb: a 1-bit side x side PNG of zeros, a few kB on disk that would
    decode to side^2 pixels (side = 10_000: above PIL's MAX_IMAGE_PIXELS, where PIL only warns;
    side = 20_000: above twice it, where PIL raises)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
                + _png_chunk(b"IEND", b""))


# --- a checkpoint that embeds RGB folders ---------------------------------------------------------


def rgb_checkpoint(path: str) -> str:
    """The tiny preset's network with a 3-channel stem, saved as a training checkpoint whose config
    evaluates at 32 px (data.load_size=32, augment.image_size=32), so folders embed in moments."""
    import torch

    from ssl_bf.config import to_dict
    from ssl_bf.models.registry import build_model
    from tiny_run import tiny_config

    cfg = tiny_config(None, f"run.dir={os.path.dirname(path)}/run", "data.load_size=32", "augment.image_size=32")
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg, 3, 32).state_dict(), "config": to_dict(cfg), "in_channels": 3,
                "image_size": 32, "epoch": 1, "step": 1}, path)
    return path


# damage name -> what it does to a freshly written JPEG
DAMAGE = {
    "truncated": lambda p: truncate(p, 0.5),
    "empty": lambda p: truncate(p, 0),
    "text": write_text,
    "bomb": lambda p: write_png_bomb(p, 10_000),  # above PIL's limit, where PIL itself only warns
    "bomb-over-twice": lambda p: write_png_bomb(p, 20_000),  # above twice it, where PIL raises
}
DAMAGE_SUFFIX = {"truncated": ".jpg", "empty": ".jpg", "text": ".png", "bomb": ".png", "bomb-over-twice": ".png"}


def write_jpeg(path: str, rng: np.random.Generator, size: tuple[int, int] = (40, 32)) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    w, h = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path, quality=90)


def image_folder(root: str, per_class: int = 3, classes: tuple[str, ...] = ("ant", "bee"),
                 bad: dict[str, str] | None = None, seed: int = 0) -> dict[str, str]:
    """root/train/<class>/<k>.jpg and root/val/<class>/<k>.jpg, plus `bad` files: {relative path
    (under root, no suffix) -> damage name}. Returns {relative path with suffix -> its full path} of the bad ones."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in classes:
            for k in range(per_class):
                write_jpeg(os.path.join(root, split, cls, f"{k}.jpg"), rng)
    made = {}
    for rel, damage in (bad or {}).items():
        path = os.path.join(root, rel + DAMAGE_SUFFIX[damage])
        write_jpeg(path, rng)
        DAMAGE[damage](path)
        made[rel + DAMAGE_SUFFIX[damage]] = path
    return made
