"""Data-loading throughput for an image folder at the MoCo-v2 crop recipe, per DataLoader worker.

Side by side in one run, alternating, medians over repeats, images/s (one image = its two views):
- ours: `TwoCropFolder` -> two uint8 224 crops (JPEG draft decode, crop + resize in one PIL op);
  flip and the photometric ops run later, batched on the device;
- reference: MoCo-v2's per-sample pipeline (`moco_reference.ReferenceTwoCrops`): PIL decode to RGB,
  then two views of RandomResizedCrop(224, scale=(0.2, 1)) + ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 +
  RandomGrayscale(0.2) + MoCo's PIL GaussianBlur (radius in [0.1, 2.0]) p=0.5 + flip + ToTensor +
  Normalize.
Both with num_workers=1 (one worker core; persistent worker, warm-up epoch untimed) and 0
(in-process). The device-side cost of our photometric ops (`crop=False`) is measured
separately for a batch pair (--device; default this CPU): in training it runs batched on the
GPU; on a CPU it is not free, and the combined CPU-only figure is printed too.

Then the same images as WebDataset shards (`ssl-bf shard`, --shard-size MB) beside the folder,
both cutting the same two crops per image in the worker: images/s per worker core and files
opened per 1,000 images. Opens are counted by wrapping `builtins.open` in the process before its
workers fork (PIL opens each image file through it; the shard reader opens each shard through it);
a second round sleeps 2 ms (--open-latency-ms) in that wrapper before every open, as a metadata-
bound parallel file system would. The shards' warm-up epoch, which also checks every shard's
sha256 (once per dataset), is reported on its own.

The JPEG folder (about 500 x 375, some portrait, quality 90) is generated once into --folder from
scikit-image's sample photos (pip install "ssl-bf[bench]"); without scikit-image, from
Fashion-MNIST mosaics; without either, from synthetic colour fields. `make_imagefolder` writes the
same kind of images as an `imagefolder` (train/ and val/), for training runs (benchmarks/gpu_check.py).

    python benchmarks/data_throughput.py --threads 1     # 512 images, 5 repeats
    python benchmarks/data_throughput.py --smoke         # 16 images, 96 px, 1 repeat (tests)
"""
from __future__ import annotations

import argparse
import builtins
import json
import multiprocessing
import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np
import torch

from bench_common import parse_args_with_threads
from moco_reference import ReferenceTwoCrops

from ssl_bf.data.augment import build_two_views
from ssl_bf.data import IMAGENET_STATS, TwoCropFolder, build_dataset
from ssl_bf.data.shards import ShardCropStream

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "stereo_motorcycle")


def _synthetic_photos(count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`count` RGB uint8 (384, 512, 3) images of smooth colour fields, edges and grain (numpy only)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:384, 0:512].astype(np.float32) / 512
    photos = []
    for _ in range(count):
        img = np.zeros((384, 512, 3), np.float32)
        for c in range(3):  # a few low-frequency waves per channel
            for _ in range(4):
                fx, fy, phase = rng.uniform(1, 12), rng.uniform(1, 12), rng.uniform(0, 2 * np.pi)
                img[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        for _ in range(12):  # flat shapes: sharp edges, as objects give
            x0, y0 = int(rng.integers(0, 448)), int(rng.integers(0, 320))
            img[y0:y0 + int(rng.integers(16, 160)), x0:x0 + int(rng.integers(16, 160))] = rng.uniform(-3, 3, 3)
        img = (img - img.min()) / (np.ptp(img) + 1e-6) * 235 + rng.normal(0, 6, img.shape)  # + sensor grain
        photos.append(np.clip(img, 0, 255).astype(np.uint8))
    return photos


def _source_photos() -> tuple[str, list[np.ndarray]]:
    """(description, RGB uint8 arrays (H, W, 3)) to cut the benchmark images from."""
    try:
        import skimage.data
    except ImportError:
        from ssl_bf.data import DataError

        try:
            fm = build_dataset("fashion-mnist", split="test").images[:, 0].numpy()  # (N, 28, 28)
        except DataError:
            return ("synthetic colour fields (neither scikit-image nor Fashion-MNIST found: least realistic "
                    "JPEG content)", _synthetic_photos())
        mosaics = []
        for k in range(8):  # 14 x 19 tiles of 28 px: 532 x 392 grey mosaics
            tiles = fm[k * 266:(k + 1) * 266].reshape(14, 19, 28, 28).transpose(0, 2, 1, 3).reshape(392, 532)
            mosaics.append(np.repeat(tiles[..., None], 3, axis=2))
        return "Fashion-MNIST mosaics (scikit-image not installed: less realistic JPEG content)", mosaics
    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo pair: the left image
        photos.append(np.ascontiguousarray(img[..., :3]))
    return "scikit-image sample photos (" + ", ".join(PHOTOS) + ")", photos


def _render(photo: np.ndarray, rng: np.random.Generator):
    """One benchmark image cut from `photo`: a PIL RGB image of about 500 x 375, 1 in 4 portrait."""
    from PIL import Image

    w = int(rng.integers(440, 541))
    h = int(round(w * rng.uniform(0.7, 0.8)))  # about 500 x 375
    if rng.random() < 0.25:
        w, h = h, w  # portrait
    ph, pw = photo.shape[:2]
    fit = min(pw / w, ph / h) * rng.uniform(0.5, 1.0)  # a random crop at the target aspect
    cw, ch = max(1, int(w * fit)), max(1, int(h * fit))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    return Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BICUBIC)


def _cached_spec(folder: str, spec: dict) -> str | None:
    """The source description if `folder` was already generated with `spec`, else None."""
    spec_path = os.path.join(folder, "spec.json")
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            saved = json.load(f)
        if all(saved.get(k) == v for k, v in spec.items()):
            return saved["source"] + " [cached]"
    return None


def make_folder(folder: str, n: int, seed: int = 0) -> str:
    """A JPEG image folder `folder/train/<class>/*.jpg` (reused when already there); returns its source."""
    cached = _cached_spec(folder, {"n": n, "seed": seed})
    if cached:
        return cached
    source, photos = _source_photos()
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = _render(photos[k % len(photos)], rng)
        cls = os.path.join(folder, "train", f"class_{k % len(photos)}")
        os.makedirs(cls, exist_ok=True)
        img.save(os.path.join(cls, f"img_{k:05d}.jpg"), quality=90)
    with open(os.path.join(folder, "spec.json"), "w") as f:
        json.dump({"n": n, "seed": seed, "source": source}, f)
    return source


def make_imagefolder(folder: str, classes: int, train_per_class: int, val_per_class: int, seed: int = 0) -> str:
    """The same JPEGs in the `imagefolder` layout: `folder/{train,val}/class_<c>/*.jpg` (reused when
    already there); returns the source. With `classes` <= 8, class c is cut from the photos
    c, c + classes, ..., so the classes differ in content (a k-NN monitor has something to find)."""
    cached = _cached_spec(folder, {"layout": "train/val", "classes": classes, "train_per_class": train_per_class,
                                   "val_per_class": val_per_class, "seed": seed})
    if cached:
        return cached
    source, photos = _source_photos()
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            own = [p for i, p in enumerate(photos) if i % classes == c] or [photos[c % len(photos)]]
            cls = os.path.join(folder, split, f"class_{c}")
            os.makedirs(cls, exist_ok=True)
            for k in range(per_class):
                _render(own[k % len(own)], rng).save(os.path.join(cls, f"{split}_{k:05d}.jpg"), quality=90)
    with open(os.path.join(folder, "spec.json"), "w") as f:
        json.dump({"layout": "train/val", "classes": classes, "train_per_class": train_per_class,
                   "val_per_class": val_per_class, "seed": seed, "source": source}, f)
    return source


def _loader(dataset, batch: int, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                       persistent_workers=workers > 0)


def _epoch_seconds(loader) -> float:
    tic = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - tic


@contextmanager
def counted_opens():
    """Count every `builtins.open` in this process and in workers forked while it is on (a shared
    counter); `latency` (seconds, shared too) is slept before each open."""
    opens, latency = multiprocessing.Value("q", 0), multiprocessing.Value("d", 0.0)
    real = builtins.open

    def open_counted(*args, **kwargs):
        with opens.get_lock():
            opens.value += 1
        if latency.value:
            time.sleep(latency.value)
        return real(*args, **kwargs)

    builtins.open = open_counted
    try:
        yield opens, latency
    finally:
        builtins.open = real


def _images_in_epoch(loader: Iterable) -> tuple[float, int]:
    """(seconds, images) of one pass; a batch is (crops1, crops2[, labels])."""
    tic, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[0])
    return time.perf_counter() - tic, n


def folder_vs_shards(folder, manifest: str, args, workers_list=(1, 0)) -> None:
    """images/s and opens per 1,000 images of the folder and its shards, same crops, side by side."""
    shards = ShardCropStream(build_dataset("shards", manifest, "train"), args.size, seed=0, streams=args.streams,
                             buffer=args.buffer)
    factories: dict[str, Callable[[int], Iterable]] = {
        "folder (TwoCropFolder)": lambda w: _loader(TwoCropFolder(folder, args.size, seed=0), args.batch, w),
        "shards (ShardCropStream)": lambda w: torch.utils.data.DataLoader(
            shards.rank_stream(0, 1, args.batch), batch_size=None, num_workers=w, persistent_workers=w > 0)}
    rows = []
    with counted_opens() as (opens, latency):
        for latency_ms, workers_set in ((0.0, workers_list), (args.open_latency_ms, (1,))):
            latency.value = latency_ms / 1e3
            for workers in workers_set:
                loaders = {name: make(workers) for name, make in factories.items()}
                first = {name: _images_in_epoch(loader) for name, loader in loaders.items()}  # warm-up
                times: dict[str, list[float]] = {name: [] for name in loaders}
                counts: dict[str, list[float]] = {name: [] for name in loaders}
                for _ in range(args.repeats):
                    for name, loader in loaders.items():  # alternating, in one run
                        before = opens.value
                        seconds, n = _images_in_epoch(loader)
                        times[name].append(n / seconds)
                        counts[name].append(1000 * (opens.value - before) / n)
                for name in loaders:
                    rows.append((name, workers, latency_ms, statistics.median(times[name]),
                                 statistics.median(counts[name]), first[name][1] / first[name][0]))
                del loaders
    print()
    print(f"folder vs shards ({shards.images.stop} images in {len(shards.images.shards)} shards of about "
          f"{args.shard_size} MB; {args.streams} streams, buffer {args.buffer}):")
    print(f"{'loader':28s}{'workers':>11s}{'open latency':>14s}{'images/s':>10s}{'opens/1000 img':>16s}"
          f"{'warm-up img/s':>15s}")
    for name, workers, latency_ms, rate, per_1000, warm in rows:
        print(f"{name:28s}{workers or 'in-process':>11}{latency_ms:>11.0f} ms{rate:10.1f}{per_1000:16.1f}{warm:15.1f}")
    rate = {(n, w, lat): r for n, w, lat, r, _, _ in rows}
    f, sh = factories
    print(f"ratio shards/folder per worker core: {rate[(sh, 1, 0.0)] / rate[(f, 1, 0.0)]:.2f}x on this disk "
          f"(target >= 1), {rate[(sh, 1, args.open_latency_ms)] / rate[(f, 1, args.open_latency_ms)]:.2f}x with "
          f"{args.open_latency_ms:g} ms per open")


def device_ops_seconds(batch: int, size: int, repeats: int, device: torch.device) -> float:
    """Median seconds of the mocov2 `crop=False` views on a uint8 (B, 3, S, S) pair on `device`."""
    views = build_two_views("mocov2", size, 3, *IMAGENET_STATS, crop=False).to(device)
    pair = tuple(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    views(pair)  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        tic = time.perf_counter()
        views(pair)
        sync()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=os.path.join("/tmp", "ssl-bf-bench-jpegs"), help="JPEG cache folder")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="DataLoader batch size")
    p.add_argument("--device-batch", type=int, default=64, help="batch of the device-ops timing")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs of each (median reported)")
    p.add_argument("--device", default="cpu", help="where to time the photometric ops (cpu, cuda)")
    p.add_argument("--shard-size", type=float, default=64.0, help="MB per shard for the shards loader")
    p.add_argument("--streams", type=int, default=40, help="data.shard_streams of the shards loader")
    p.add_argument("--buffer", type=int, default=1000, help="data.shuffle_buffer of the shards loader")
    p.add_argument("--open-latency-ms", type=float, default=2.0, help="sleep before every open in the latency run")
    p.add_argument("--smoke", action="store_true", help="16 images, 96 px, 1 repeat: a few seconds")
    args = parse_args_with_threads(p)
    if args.smoke:
        args.images, args.size, args.repeats, args.batch, args.device_batch = 16, 96, 1, 8, 8
        args.folder = os.path.join(args.folder, "smoke")

    source = make_folder(args.folder, args.images)
    folder = build_dataset("imagefolder", args.folder, "train")
    print(f"data throughput: {len(folder)} JPEGs in {args.folder} from {source}; {args.size} px crops, "
          f"batch {args.batch}, {args.repeats} repeats, {torch.get_num_threads()} torch threads in-process")
    datasets = {"ours (TwoCropFolder)": TwoCropFolder(folder, args.size, seed=0),
                "torchvision reference": ReferenceTwoCrops(folder.samples, args.size)}
    rates: dict[tuple[str, int], float] = {}
    for workers in (1, 0):
        loaders = {name: _loader(ds, args.batch, workers) for name, ds in datasets.items()}
        for loader in loaders.values():
            _epoch_seconds(loader)  # warm-up: worker start, page cache
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for r in range(args.repeats):
            for name, loader in loaders.items():  # alternating, in one run
                times[name].append(_epoch_seconds(loader))
            shown = ", ".join(f"{name} {len(folder) / t[-1]:.0f} img/s" for name, t in times.items())
            print(f"  workers={workers} run {r + 1}: {shown}", flush=True)
        for name, t in times.items():
            rates[(name, workers)] = len(folder) / statistics.median(t)
        del loaders  # ends the persistent workers

    print()
    print(f"{'images/s (median; 1 image = 2 views)':40s}{'1 worker':>10s}{'in-process':>12s}")
    for name in datasets:
        print(f"{name:40s}{rates[(name, 1)]:10.1f}{rates[(name, 0)]:12.1f}")
    ours, ref = "ours (TwoCropFolder)", "torchvision reference"
    print(f"ratio ours/reference: {rates[(ours, 1)] / rates[(ref, 1)]:.2f}x per worker core (target >= 2x), "
          f"{rates[(ours, 0)] / rates[(ref, 0)]:.2f}x in-process")

    device = torch.device(args.device)
    sec = device_ops_seconds(args.device_batch, args.size, args.repeats, device)
    per_image = sec / args.device_batch
    where = f"on this CPU with {torch.get_num_threads()} threads" if device.type == "cpu" else f"on {device}"
    print(f"device-side photometric ops NOT included above (mocov2 crop=False, ({args.device_batch}, 3, "
          f"{args.size}, {args.size}) pair, {where}): {sec * 1e3:.0f} ms/batch = {1 / per_image:.0f} img/s")
    if device.type == "cpu":
        combined = 1 / (1 / rates[(ours, 1)] + per_image)
        print(f"if those ops also ran on this CPU (no GPU to batch them on): ours {combined:.1f} img/s vs "
              f"reference {rates[(ref, 1)]:.1f} img/s ({combined / rates[(ref, 1)]:.2f}x)")

    from ssl_bf.data.shards.writer import write_shards

    shards = write_shards(args.folder, os.path.join(args.folder, "shards"), args.shard_size, order="sorted",
                          progress=False)  # reused when already written
    folder_vs_shards(folder, shards.manifest.path, args)


if __name__ == "__main__":
    main()
