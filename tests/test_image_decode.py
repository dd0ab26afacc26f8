"""The decode boundary of image folders (ssl_bf/data/decode.py): every mode read is checked against
an independent numpy conversion, every mode refused says so, decompression bombs are refused from
the header (both PIL thresholds, no warning left), and the error is one line naming the file."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from image_files import EXTENSION, MODE_FORMATS, expected_rgb, random_image, save_image, truncate, write_png_bomb
from ssl_bf.data import UnreadableImageError, load_image
from ssl_bf.data.decode import decode_rgb, unreadable_reason


def _read(path: str) -> np.ndarray:
    img, _ = decode_rgb(path, lambda opened: None)
    return np.asarray(img)  # (H, W, 3) uint8


@pytest.mark.parametrize("mode", sorted(MODE_FORMATS))
def test_every_mode_read_equals_the_numpy_reference(tmp_path, mode):
    fmt = MODE_FORMATS[mode]
    path = str(tmp_path / f"img{EXTENSION[fmt]}")
    save_image(random_image(mode, (23, 17), np.random.default_rng(len(mode))), path, fmt)
    with Image.open(path) as img:
        assert img.mode == mode  # the file really holds that mode
    got = _read(path)
    assert got.shape == (17, 23, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected_rgb(path))


def test_16_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129, 32767, 32768, 65279, 65535]], dtype=np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(values).save(path)
    got = _read(path)[0, :, 0].tolist()
    assert got == [0, 0, 0, 1, 127, 128, 254, 255]  # round(v * 255 / 65535); PIL's own convert gives 255s
    assert load_image(path, 1).shape == (3, 1, 1)


def test_cmyk_jpeg_follows_the_cmyk_rule(tmp_path):
    path = str(tmp_path / "print.jpg")
    save_image(random_image("CMYK", (16, 16), np.random.default_rng(0)), path, "JPEG")
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        cmyk = np.asarray(img).astype(np.float64)  # (H, W, 4) as decoded
    want = np.floor((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255 + 0.5)
    np.testing.assert_array_equal(_read(path), want.astype(np.uint8))


def test_palette_with_transparency_reads_its_colours_without_a_warning(tmp_path):
    rgba = random_image("RGBA", (9, 9), np.random.default_rng(1))
    img = rgba.convert("P")
    img.info["transparency"] = bytes(range(256))  # per-entry alpha: PIL warns on a plain convert
    path = str(tmp_path / "pal.png")
    img.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _read(path)
    np.testing.assert_array_equal(got, expected_rgb(path))


@pytest.mark.parametrize("mode", ["I", "F", "LAB"])
def test_modes_without_a_defined_8_bit_rgb_are_refused(tmp_path, mode):
    path = str(tmp_path / "odd.tif")
    Image.new(mode, (4, 4)).save(path)
    with pytest.raises(UnreadableImageError, match=f"odd.tif: ValueError: mode {mode} has no defined 8-bit RGB"):
        _read(path)


@pytest.mark.parametrize("side, pil_would", [(10_000, "warn only"), (20_000, "raise")])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, side, pil_would):
    path = str(tmp_path / "bomb.png")
    write_png_bomb(path, side)
    assert Image.MAX_IMAGE_PIXELS < side * side and (side * side > 2 * Image.MAX_IMAGE_PIXELS) == (pil_would == "raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes
        with pytest.raises(UnreadableImageError) as info:
            load_image(path, 8)
    assert str(info.value).startswith(f"unreadable image {path}: {side * side} pixels, more than the "
                                      f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS}")


def test_the_limit_follows_pil_max_image_pixels(tmp_path, monkeypatch):
    path = str(tmp_path / "wide.png")
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1199)
    with pytest.raises(UnreadableImageError, match="1200 pixels, more than the decompression-bomb limit of 1199"):
        _read(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    assert _read(path).shape == (30, 40, 3)


@pytest.mark.parametrize("damage, says", [
    ("empty", "UnidentifiedImageError"), ("text", "UnidentifiedImageError"),
    ("truncated", "image file is truncated"), ("header only", "image file is truncated"),
    ("missing", "does not exist"), ("folder", "IsADirectoryError")])
def test_damaged_files_are_one_line_naming_the_file(tmp_path, damage, says):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not an image\n")
    elif damage == "truncated":
        truncate(str(path), 0.5)
    elif damage == "header only":
        truncate(str(path), 700)
    elif damage == "missing":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(UnreadableImageError) as info:
        load_image(str(path), 8)
    text = str(info.value)
    assert text.startswith(f"unreadable image {path}: ") and says in text and "\n" not in text
    assert "--skip-unreadable" in text
    assert says in unreadable_reason(str(path))


def test_a_worker_traceback_becomes_the_original_line():
    worker_text = ("Caught UnreadableImageError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                   "call last):\n  File \"x.py\", line 3, in f\n    raise err\nssl_bf.data.decode."
                   "UnreadableImageError: unreadable image /d/a.jpg: OSError: broken\n")
    assert str(UnreadableImageError(worker_text)) == "unreadable image /d/a.jpg: OSError: broken"
    assert str(UnreadableImageError("two\nlines")) == "two lines"
