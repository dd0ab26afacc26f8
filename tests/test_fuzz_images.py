"""Fuzzing the image-folder reader through `ssl-bf embed --data FOLDER`: generated class folders
mixing valid images of many modes, formats and sizes with damaged files (truncated at a random
offset, random bytes, empty, text, a wrong extension, more pixels than the limit).

The contract, for every folder, with and without --skip-unreadable:
- exit 0 or 2, never a traceback; the input files stay byte-identical;
- a refusal (exit 2) names a file that an independent check (PIL's own load) cannot read, and
  writes nothing; without the option a folder whose files all read is embedded whole;
- with --skip-unreadable the written rows are exactly the readable files, in order, each with
  its folder's class as label and the features of that image embedded alone; the files left out
  are exactly the unreadable ones, listed in the file's metadata.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from image_files import random_image, rgb_checkpoint


FORMATS = {"L": ["PNG", "JPEG", "BMP", "TIFF"], "RGB": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"],
           "RGBA": ["PNG", "TIFF", "WEBP"], "P": ["PNG", "BMP", "TIFF"], "CMYK": ["JPEG", "TIFF"],
           "I;16": ["PNG", "TIFF"], "LA": ["PNG", "TIFF"], "1": ["PNG", "BMP", "TIFF"]}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
ALL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
READ_MODES = {"1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B", "I;16N"}
PIXEL_LIMIT = 2500  # the decompression-bomb limit during the fuzz: larger generated images are "bombs"


@st.composite
def image_file(draw):
    """(class 0/1, file name suffix, bytes) of one generated file, valid or damaged."""
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    buf = io.BytesIO()
    random_image(mode, size, np.random.default_rng(draw(st.integers(0, 2**16)))).save(buf, format=fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "random", "empty", "text", "wrong-extension"]))
    ext = EXTENSIONS[fmt]
    if damage == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "random":
        data = draw(st.binary(min_size=1, max_size=300))
    elif damage == "empty":
        data = b""
    elif damage == "text":
        data, ext = b"a text file named like an image\n", draw(st.sampled_from(ALL_EXTENSIONS))
    elif damage == "wrong-extension":
        ext = draw(st.sampled_from([e for e in ALL_EXTENSIONS if e != ext]))
    return draw(st.integers(0, 1)), f"{damage}{ext}", data


def pil_reads(path: str) -> bool:
    """The independent reference: PIL loads the whole file, in a mode ssl-bf documents as read,
    with no more pixels than the limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.width * img.height > PIXEL_LIMIT:
                    return False
                img.load()
                return img.mode in READ_MODES
    except Exception:  # noqa: BLE001 - any failure: not readable
        return False


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from ssl_bf.data import DATASET_STATS
    from ssl_bf.data.augment import EvalTransform
    from ssl_bf.eval.embed import load_embedding_encoder

    ckpt = rgb_checkpoint(str(tmp_path_factory.mktemp("fuzz_images") / "rgb.pt"))
    model, cfg = load_embedding_encoder(ckpt)
    return ckpt, model, cfg.data.load_size, EvalTransform(32, *DATASET_STATS["imagefolder"])


def _alone(encoder, path: str) -> np.ndarray:
    from ssl_bf.data import load_image
    from ssl_bf.eval.embed import embed_arrays

    _, model, load_size, transform = encoder
    return embed_arrays(model, load_image(path, load_size)[None], transform, batch_size=1)[0]


def _write(root: str, files) -> list[tuple[str, int]]:
    """root/val/c0, root/val/c1 (both always exist); returns (path, class) in sample order."""
    for cls in ("c0", "c1"):
        os.makedirs(os.path.join(root, "val", cls))
    written = []
    for i, (cls, suffix, data) in enumerate(files):
        path = os.path.join(root, "val", f"c{cls}", f"{i:02d}_{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        written.append((path, cls))
    return sorted(written, key=lambda pc: (pc[1], pc[0]))


def _check_folder(encoder, files, workers: str, monkeypatch) -> None:
    from ssl_bf.eval.formats import load_embeddings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)
    count("images", 1)
    ckpt = encoder[0]
    with tempfile.TemporaryDirectory() as root:
        samples = _write(root, files)
        readable = [(p, c) for p, c in samples if pil_reads(p)]
        unreadable = [p for p, c in samples if not pil_reads(p)]
        before = snapshot(watched_files(root))
        for skip in (False, True):
            out = os.path.join(root, f"out-{skip}.safetensors")
            argv = ["embed", "--checkpoint", ckpt, "--data", root, "--split", "test", "--out", out, "--no-progress",
                    "--workers", workers, "--batch-size", "3", *(["--skip-unreadable"] if skip else [])]
            code, output = run_cli(argv)
            check_contract(code, output, names=tuple(unreadable) or (root,), before=before)
            if code == 2:
                assert not os.path.exists(out), output
                named = [p for p in unreadable if p in output]
                assert named and (skip or named[0] == unreadable[0]), (unreadable, output)
                assert not readable or not skip, output  # skipping refuses only a folder with no readable image
                continue
            emb = load_embeddings(out)
            if not skip:
                assert not unreadable, output
            assert emb.image_paths == [p for p, _ in readable]
            assert emb.labels.tolist() == [c for _, c in readable]
            np.testing.assert_allclose(emb.embeddings, np.stack([_alone(encoder, p) for p, _ in readable]),
                                       rtol=1e-4, atol=1e-5)
            assert json.loads(emb.metadata.get("unreadable_skipped", "[]")) == sorted(unreadable)
            os.remove(out)


@settings(max_examples=fuzz_examples(15))
@given(files=st.lists(image_file(), min_size=1, max_size=5))
def test_embed_image_folders_fuzz(encoder, files, monkeypatch):
    _check_folder(encoder, files, "0", monkeypatch)


@settings(max_examples=fuzz_examples(3))
@given(files=st.lists(image_file(), min_size=1, max_size=5))
def test_embed_image_folders_fuzz_in_workers(encoder, files, monkeypatch):
    """The same contract when DataLoader workers decode: their errors reach the user as one line."""
    _check_folder(encoder, files, "2", monkeypatch)
