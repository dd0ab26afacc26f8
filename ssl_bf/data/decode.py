"""One image file -> RGB pixels: the decode boundary every image folder reads through.

The rules (docs/protocols.md, "Unreadable images"):
- 8-bit modes that PIL converts exactly are read: 1, L, P, PA, LA, RGB, RGBA, RGBX, CMYK, YCbCr.
  Alpha is dropped and the stored colour kept, as torchvision's loader does; CMYK -> RGB is
  (255 - C)(255 - K) / 255, rounded.
- 16-bit grayscale (I;16, I;16L, I;16B, I;16N) is scaled to 8 bits, round(v x 255 / 65535); PIL's
  own conversion would clip everything above 255 to white.
- Other modes (32-bit integer I, float F, LAB, HSV, premultiplied La / RGBa) have no defined
  8-bit RGB and are refused.
- An image of more than PIL's `Image.MAX_IMAGE_PIXELS` pixels (89,478,485 by default, e.g.
  9459 x 9459) is refused from its header, before any pixel is decoded: PIL only warns up to twice
  that, and a decompression bomb would exhaust memory.
Any failure (missing, empty, truncated, not an image, a refused mode, too many pixels) raises
`UnreadableImageError` naming the file. Its message stays one line when the error is raised in a
DataLoader worker and re-raised in the main process.
"""
from __future__ import annotations

import re
import warnings
from typing import Callable, Optional, TypeVar

import numpy as np

from .base import DataError

T = TypeVar("T")

EIGHT_BIT_MODES = frozenset({"1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SKIP_HINT = ("remove or replace the file, or skip unreadable images (--skip-unreadable; in pretraining "
             "data.skip_unreadable=true)")


class UnreadableImageError(DataError):
    """An image that cannot be read correctly (or a folder with no readable image); names the file.

    A DataLoader worker's error reaches the main process re-built from its formatted traceback
    (`torch._utils.ExceptionWrapper.reraise` calls `cls(text)`): the constructor keeps only the
    original one-line message, so the user sees that line and never the worker's traceback.
    """

    def __init__(self, message: str, path: Optional[str] = None, reason: Optional[str] = None):
        super().__init__(_original_message(str(message), type(self).__name__))
        self.path, self.reason = path, reason  # set where the file was read (not after a worker)


def _original_message(text: str, class_name: str) -> str:
    """The one-line message of `text`, which may be a worker's re-raised traceback text."""
    if "Traceback (most recent call last)" not in text:
        return " ".join(text.split("\n"))
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    head, sep, rest = last.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == class_name:  # "ssl_bf.data.decode.UnreadableImageError: ..."
        return rest
    return last


def unreadable(path: str, reason: str) -> UnreadableImageError:
    """The error for one file: `unreadable image PATH: REASON. Fix: ...`."""
    return UnreadableImageError(f"unreadable image {path}: {reason}. Fix: {SKIP_HINT}", path, reason)


def decode_rgb(path: str, before_decode: Callable[["PIL.Image.Image"], T]) -> tuple["PIL.Image.Image", T]:
    """Open `path`, call `before_decode` on the image whose header alone has been read (it may draw
    crop boxes from the full size and ask for a JPEG draft), decode, and convert to RGB.

    Returns (the RGB image, what `before_decode` returned). Raises UnreadableImageError naming the file.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # above the limit: refused
            with Image.open(path) as img:
                prepared = before_decode(img)
                return to_rgb(img), prepared
    except Exception as err:  # the decode boundary: any failure of this file makes it unreadable
        raise unreadable(path, _reason(err)) from None


def _reason(err: Exception) -> str:
    from PIL import Image

    if isinstance(err, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        size = re.search(r"\((\d+) pixels\)", str(err))  # PIL: "Image size (N pixels) exceeds limit ..."
        return (f"{size.group(1) + ' pixels' if size else 'too many pixels'}, more than the "
                f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS); downscale it")
    if isinstance(err, FileNotFoundError):
        return "the file does not exist (a broken link?)"
    text = " ".join(str(err).split()) or "no detail"
    return f"{type(err).__name__}: {text}"


def to_rgb(img: "PIL.Image.Image") -> "PIL.Image.Image":
    """Decode `img` and convert it to 8-bit RGB by the rules of this module's docstring."""
    from PIL import Image

    mode = img.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.uint32)  # (H, W) in [0, 65535]
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # (H, W) round(v x 255 / 65535)
        return Image.fromarray(gray).convert("RGB")  # from L
    if mode not in EIGHT_BIT_MODES:
        raise ValueError(f"mode {mode} has no defined 8-bit RGB conversion (read: "
                         f"{', '.join(sorted(EIGHT_BIT_MODES | SIXTEEN_BIT_MODES))})")
    img.load()
    if mode in ("P", "PA"):  # the palette's colours; via RGBA so transparency needs no special case
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def unreadable_reason(path: str) -> str:
    """Why `path` cannot be read ('' when it can): for listing files a worker left out."""
    try:
        decode_rgb(path, lambda img: None)
    except UnreadableImageError as err:
        return err.reason or str(err)
    return ""
