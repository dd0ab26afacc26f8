"""Image folders at the full MoCo crop recipe: crop geometry, drafted JPEG decode, workers, views."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, JpegImagePlugin
from torch import nn

from ssl_bf.data.augment import TwoViews, build_two_views
from ssl_bf.data import TwoCropFolder, UnreadableImageError, build_dataset, load_image
from ssl_bf.data.crops import crop_box, decode_two_crops, draft_scale
from ssl_bf.data.folders import replacement_candidates
from ssl_bf.data.fashion_mnist import FASHION_MNIST_SYSTEM_DIR

ROOT = Path(__file__).resolve().parents[1]
needs_fmnist = pytest.mark.skipif(
    not (Path(FASHION_MNIST_SYSTEM_DIR) / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package: apt-get install -y dataset-fashion-mnist")
RATIO = (3 / 4, 4 / 3)


# ----------------------------------------------------------------------------------------------
# crop_box: torchvision's RandomResizedCrop distribution
# ----------------------------------------------------------------------------------------------


def _ours(width, height, n, scale=(0.2, 1.0), ratio=RATIO, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([crop_box(rng, width, height, scale, ratio) for _ in range(n)], dtype=float)  # (n, 4)


def _torchvision(width, height, n, scale=(0.2, 1.0), ratio=RATIO, seed=0):
    torch.manual_seed(seed)
    img = torch.empty(3, height, width)
    boxes = [T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]  # (top, left, h, w)
    return np.array([(left, top, w, h) for top, left, h, w in boxes], dtype=float)  # (n, 4)


def _stats(boxes, width, height):
    left, top, w, h = boxes.T
    return {"area": (w * h / (width * height)).mean(), "aspect": (w / h).mean(),
            "cx": ((left + w / 2) / width).mean(), "cy": ((top + h / 2) / height).mean()}


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (400, 100)])
def test_crop_box_matches_torchvision_distribution(size):
    width, height = size  # (400, 100): most tries fail, the centre fallback is frequent
    ours, ref = _stats(_ours(width, height, 3000), width, height), _stats(_torchvision(width, height, 3000), width, height)
    assert ours["area"] == pytest.approx(ref["area"], abs=0.015)
    assert ours["aspect"] == pytest.approx(ref["aspect"], abs=0.012)  # uniform (not log-uniform) ratio: +0.028
    assert ours["cx"] == pytest.approx(ref["cx"], abs=0.012) and ours["cy"] == pytest.approx(ref["cy"], abs=0.012)


def test_crop_box_fallback_rate_matches_torchvision():
    width, height = 400, 100
    fallback = ((width - 133) // 2, 0, 133, 100)  # full height, widest allowed aspect, centred
    ours = (_ours(width, height, 3000) == fallback).all(axis=1).mean()
    ref = (_torchvision(width, height, 3000) == fallback).all(axis=1).mean()
    assert 0.05 < ref and ours == pytest.approx(ref, abs=0.03)


def test_crop_boxes_lie_inside_the_image_with_area_in_scale():
    for width, height in [(500, 375), (320, 480), (224, 224), (1000, 10)]:
        boxes = _ours(width, height, 500, seed=width)
        left, top, w, h = boxes.T
        assert (w > 0).all() and (h > 0).all() and (left >= 0).all() and (top >= 0).all()
        assert (left + w <= width).all() and (top + h <= height).all()
    left, top, w, h = _ours(500, 375, 2000).T
    area = w * h / (500 * 375)
    assert area.min() >= 0.2 * 0.97 and area.max() <= 1.0  # rounding only
    assert area.min() < 0.25 and area.max() > 0.95  # the whole range is used


@pytest.mark.parametrize("width,height,ratio,scale,expected", [
    (1000, 10, RATIO, (0.2, 1.0), (493, 0, 13, 10)),  # too wide: full height, aspect 4/3
    (10, 1000, RATIO, (0.2, 1.0), (0, 493, 10, 13)),  # too tall: full width, aspect 3/4
    (300, 200, (1.0, 1.0), (1.5, 2.0), (50, 0, 200, 200)),  # area > image: square, centred
    (300, 240, RATIO, (1.5, 2.0), (0, 0, 300, 240)),  # aspect in range: the whole image
])
def test_crop_box_fallback_is_the_centre_crop_clamped_to_the_ratio(width, height, ratio, scale, expected):
    rng = np.random.default_rng(0)
    assert crop_box(rng, width, height, scale, ratio) == expected
    assert tuple(_torchvision(width, height, 1, scale, ratio)[0]) == expected


# ----------------------------------------------------------------------------------------------
# draft_scale
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("boxes,out_size,expected", [
    ([(0, 0, 500, 375)], 224, 1),
    ([(0, 0, 448, 448)], 224, 2),  # exactly 2 x 224
    ([(5, 5, 447, 1000)], 224, 1),  # one side 1 px short of 2x
    ([(0, 0, 2000, 1500), (10, 20, 1000, 900)], 224, 4),  # the smaller box decides: 900 >= 4 * 224
    ([(0, 0, 4000, 3000), (0, 0, 1792, 2000)], 224, 8),
    ([(0, 0, 4000, 3000)], 100, 8),  # never beyond 8
    ([(0, 0, 50, 40)], 224, 1),  # smaller than the output: full resolution
])
def test_draft_scale_hand_computed(boxes, out_size, expected):
    assert draft_scale(boxes, out_size) == expected


# ----------------------------------------------------------------------------------------------
# decode_two_crops
# ----------------------------------------------------------------------------------------------


def _save_jpeg(array: np.ndarray, path: Path, quality: int = 95) -> str:
    Image.fromarray(array).save(path, quality=quality)
    return str(path)


def test_crops_reach_the_borders_of_a_non_square_image(tmp_path):
    """Left border red, right border blue: both appear in crops; the old centre square has neither."""
    img = np.full((300, 400, 3), 128, np.uint8)  # 4:3
    img[:, :40] = (255, 0, 0)
    img[:, -40:] = (0, 0, 255)
    path = _save_jpeg(img, tmp_path / "wide.jpg")
    rng = np.random.default_rng(0)
    crops = torch.stack([c for _ in range(40) for c in decode_two_crops(path, 32, (0.2, 1.0), RATIO, rng)])
    r, g, b = crops.int().unbind(1)  # (80, 32, 32) each
    red = ((r > 200) & (g < 60) & (b < 60)).flatten(1).any(1)
    blue = ((b > 200) & (r < 60) & (g < 60)).flatten(1).any(1)
    assert red.sum() >= 5 and blue.sum() >= 5
    old = load_image(path, 64).int()  # (3, 64, 64): shorter side 64, centre square
    assert not ((old[0] > 200) & (old[2] < 60)).any() and not ((old[2] > 200) & (old[0] < 60)).any()


def _boxes(seed, width, height, scale=(0.2, 1.0)):
    rng = np.random.default_rng(seed)
    return [crop_box(rng, width, height, scale, RATIO) for _ in range(2)]


def test_drafted_crops_sit_at_the_box_position(tmp_path, monkeypatch):
    """A gradient image (red = x, green = y) at 8x draft: each crop's colours give back its box."""
    reductions = []
    jpeg_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(img, mode, size):
        result = jpeg_draft(img, mode, size)
        reductions.append(round(img.decoderconfig[0]))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    width, height = 2049, 1537  # odd sizes: the draft request must still reach 8x
    xs, ys = np.meshgrid(np.arange(width) / width, np.arange(height) / height)
    img = np.stack([255 * xs, 255 * ys, np.full_like(xs, 128)], axis=2).round().astype(np.uint8)
    path = _save_jpeg(img, tmp_path / "gradient.jpg")
    size, checked = 64, 0
    for seed in range(6):
        boxes = _boxes(seed, width, height, scale=(0.5, 1.0))
        crops = decode_two_crops(path, size, (0.5, 1.0), RATIO, np.random.default_rng(seed))
        checked += draft_scale(boxes, size) == 8
        for (left, top, w, h), crop in zip(boxes, crops):
            assert crop.shape == (3, size, size) and crop.dtype == torch.uint8
            red_left = 255 * (left + 0.5 * w / size) / width  # centre of the first output column
            green_top = 255 * (top + 0.5 * h / size) / height
            assert crop[0, :, 0].float().mean().item() == pytest.approx(red_left, abs=2.0)
            assert crop[1, 0, :].float().mean().item() == pytest.approx(green_top, abs=2.0)
            assert crop[0, :, -1].float().mean().item() == pytest.approx(red_left + 255 * (w - w / size) / width, abs=2.0)
    assert checked >= 6 and reductions.count(8) == checked  # PIL really decoded at 1/8


def _full_decode_crops(path, boxes, size):
    with Image.open(path) as img:
        img = img.convert("RGB")
        return [np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=(l, t, l + w, t + h)))
                for l, t, w, h in boxes]


@needs_fmnist
def test_drafted_decode_is_close_to_the_full_decode(tmp_path):
    """Fashion-MNIST mosaic upscaled to 1568 x 1176: 4x / 8x drafted crops vs the full decode."""
    fm = build_dataset("fashion-mnist", split="test").images[:48, 0].numpy()  # (48, 28, 28)
    mosaic = fm.reshape(6, 8, 28, 28).transpose(0, 2, 1, 3).reshape(168, 224)
    tint = np.stack([mosaic, mosaic[::-1], mosaic[:, ::-1]], axis=2)  # (168, 224, 3)
    big = np.asarray(Image.fromarray(tint).resize((1568, 1176), Image.Resampling.BICUBIC))
    path = _save_jpeg(big, tmp_path / "mosaic.jpg", quality=90)
    size, scales = 96, set()
    for seed in range(4):
        boxes = _boxes(seed, 1568, 1176)
        scales.add(draft_scale(boxes, size))
        ours = decode_two_crops(path, size, (0.2, 1.0), RATIO, np.random.default_rng(seed))
        for crop, full in zip(ours, _full_decode_crops(path, boxes, size)):
            diff = np.abs(crop.permute(1, 2, 0).numpy().astype(float) - full)
            assert diff.mean() < 3.0  # of 255 (measured 0.4-1.7); a box shifted by 1/8 of its width: > 70
    assert scales & {4, 8}


def test_crop_geometry_is_a_function_of_seed_epoch_and_index(tmp_path):
    folder = _jpeg_folder(tmp_path, n=4)
    ds = TwoCropFolder(folder, out_size=24, seed=3)
    a = ds[1]
    assert torch.equal(ds[1][0], a[0]) and torch.equal(ds[1][1], a[1])
    assert not torch.equal(a[0], a[1])  # two independent boxes
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a[0])
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], a[0])
    assert not torch.equal(TwoCropFolder(folder, out_size=24, seed=4)[1][0], a[0])


# ----------------------------------------------------------------------------------------------
# TwoCropFolder
# ----------------------------------------------------------------------------------------------


def _jpeg_folder(tmp_path, n=10, bad=()):
    """imagefolder root with n JPEGs (4:3 and 3:4, gradients + noise) in two classes, plus bad files."""
    rng = np.random.default_rng(0)
    for k in range(n):
        w, h = (80, 60) if k % 3 else (60, 80)
        base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1.0, 3)
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        cls = tmp_path / "train" / f"c{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        _save_jpeg(img, cls / f"img{k:02d}.jpg")
    for name in bad:  # a truncated JPEG: the header (size) reads, the decode fails
        (tmp_path / "train" / "c0" / name).write_bytes((tmp_path / "train" / "c0" / "img00.jpg").read_bytes()[:-600])
    return build_dataset("imagefolder", str(tmp_path), "train")


def test_twocropfolder_attributes(tmp_path):
    folder = _jpeg_folder(tmp_path, n=4)
    ds = TwoCropFolder(folder, out_size=32)
    c1, c2, label = ds[0]
    assert c1.shape == c2.shape == (3, 32, 32) and c1.dtype == torch.uint8 and isinstance(label, int)
    assert (ds.num_channels, ds.image_size, len(ds)) == (3, 32, 4)
    assert ds.classes == ["c0", "c1"] and (ds.mean, ds.std) == (folder.mean, folder.std)


def test_dataloader_batches_do_not_depend_on_worker_count(tmp_path):
    ds = TwoCropFolder(_jpeg_folder(tmp_path, n=12), out_size=32, seed=7)
    ds.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for (a1, a2, ay), (b1, b2, by) in zip(serial, parallel):
        assert a1.shape == (4, 3, 32, 32) and a1.dtype == torch.uint8
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(ay, by)


def test_an_unreadable_file_stops_with_one_line_naming_it_also_from_a_worker(tmp_path):
    folder = _jpeg_folder(tmp_path, n=4, bad=("img00_bad.jpg",))
    ds = TwoCropFolder(folder, out_size=16, seed=1)
    bad = next(i for i, (p, _) in enumerate(folder.samples) if p.endswith("_bad.jpg"))
    with pytest.raises(UnreadableImageError, match="img00_bad.jpg"):
        ds[bad]
    for workers in (0, 2):  # a worker's error reaches the main process as the same one line
        kind, text = raised(lambda: list(torch.utils.data.DataLoader(ds, batch_sampler=[[bad]], num_workers=workers)))
        assert kind is UnreadableImageError
        assert "\n" not in text and "Traceback" not in text and "DataLoader worker" not in text, text
        assert text.startswith(f"unreadable image {folder.samples[bad][0]}: OSError: image file is truncated")


def raised(call) -> tuple[type, str]:
    """The type and message of the error `call()` raises. Only those are kept: a traceback through
    a DataLoader holds its iterator, whose workers a later DataLoader's fork would inherit."""
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return type(err), str(err)
    raise AssertionError("no error was raised")


def _stand_in(ds, index):
    """The documented stand-in: the first readable candidate of (seed, epoch, index), with index's geometry."""
    for candidate in replacement_candidates(len(ds), [ds.seed, ds.epoch, index]):
        path, label = ds.folder.samples[candidate]
        if candidate != index and not path.endswith("_bad.jpg"):
            rng = np.random.default_rng([ds.seed, ds.epoch, index])
            return decode_two_crops(path, ds.out_size, ds.scale, ds.ratio, rng), label, candidate


def test_skip_unreadable_replaces_by_a_function_of_seed_epoch_and_index(tmp_path):
    folder = _jpeg_folder(tmp_path, n=12, bad=("img00_bad.jpg", "img01_bad.jpg", "img02_bad.jpg"))
    folder.skip_unreadable = True
    ds = TwoCropFolder(folder, out_size=16, seed=3)
    bad = [i for i, (p, _) in enumerate(folder.samples) if p.endswith("_bad.jpg")]
    stand_ins = set()
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for workers in (0, 2):
            for c1, c2, label in torch.utils.data.DataLoader(ds, batch_sampler=[[i] for i in bad], num_workers=workers):
                pass
            served = {i: ds[i] for i in bad}
            for i in bad:
                (w1, w2), want_label, candidate = _stand_in(ds, i)
                c1, c2, label = served[i]
                assert torch.equal(c1, w1) and torch.equal(c2, w2) and label == want_label  # its own label
                stand_ins.add(candidate)
    assert len(stand_ins) > 1  # drawn at random, not always the neighbour
    assert sorted(folder.unreadable.indices()) == bad  # marked, also by the workers (shared memory)
    assert sorted(folder.unreadable_paths()) == sorted(folder.samples[i][0] for i in bad)


def test_skip_unreadable_with_no_readable_image_is_one_line(tmp_path):
    folder = _jpeg_folder(tmp_path, n=2, bad=("img00_bad.jpg",))
    for path, _ in folder.samples:
        open(path, "wb").close()  # every file empty
    folder.skip_unreadable = True
    kind, text = raised(lambda: list(torch.utils.data.DataLoader(TwoCropFolder(folder, out_size=16), batch_size=3,
                                                                 num_workers=1)))
    assert kind is UnreadableImageError and "\n" not in text
    assert text.startswith(f"no readable image in {folder.root}: 3 of its 3 images are unreadable (the "
                           f"first, {folder.samples[0][0]}: ")


# ----------------------------------------------------------------------------------------------
# augment: crop=False views and the (crops1, crops2) input
# ----------------------------------------------------------------------------------------------


def test_views_without_crop_keep_the_size_and_still_flip_and_jitter():
    views = build_two_views("mocov2", 32, 3, (0.0,) * 3, (1.0,) * 3, crop=False)
    assert views.view1.recipe.crop_scale is None and views.view2.recipe.crop_scale is None  # no crop
    images = torch.zeros(64, 3, 40, 48, dtype=torch.uint8)
    images[..., 24:] = 255  # dark left half, bright right half
    x1, x2 = views((images, images))
    assert x1.shape == x2.shape == (64, 3, 40, 48)  # no resize: the input is already the crop
    left, right = x1[..., 0].mean((1, 2)), x1[..., -1].mean((1, 2))  # (64,) each
    assert 16 <= (left > right).sum().item() <= 48  # about half the samples are mirrored
    assert torch.maximum(left, right).std() > 0.02  # jitter varies the bright side per sample


def test_pair_input_sends_each_half_to_its_own_view():
    class Negate(nn.Module):
        def forward(self, x):
            return -x

    crops1 = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    crops2 = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    for pair in ((crops1, crops2), [crops1, crops2]):
        y1, y2 = TwoViews(nn.Identity(), Negate())(pair)
        assert torch.equal(y1, crops1.float() / 255) and torch.equal(y2, -crops2.float() / 255)
    black, white = torch.zeros(8, 3, 24, 24, dtype=torch.uint8), torch.full((8, 3, 24, 24), 255, dtype=torch.uint8)
    v1, v2 = build_two_views("light", 24, 3, (0.0,) * 3, (1.0,) * 3, crop=False)((black, white))
    assert v1.shape == v2.shape == (8, 3, 24, 24) and v1.mean() < 0.3 < 0.7 < v2.mean()
    with pytest.raises(ValueError, match="pair"):
        TwoViews(nn.Identity(), nn.Identity())((crops1, crops2, crops1))


# ----------------------------------------------------------------------------------------------
# benchmark smoke run
# ----------------------------------------------------------------------------------------------


def test_throughput_benchmark_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_throughput.py"), "--smoke",
                          "--folder", str(tmp_path), "--threads", "1"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    ratio = [line for line in out.stdout.splitlines() if line.startswith("ratio ours/reference:")]
    assert len(ratio) == 1 and float(ratio[0].split()[2].rstrip("x")) > 0
    assert "device-side photometric ops" in out.stdout
