"""Stage (c) of scripts/gpu_check.sh: ssl-bf against the reference MoCo-v2 pipeline, one factor at a time.

Three ratios (ours / reference, images per second; one image = its two views), each from the
median step time of steps timed one by one after a warm-up, on one DataLoader iterator that lives
for the whole run (samples drawn with replacement: no epoch ends, no worker respawns):

- data only: JPEG folder -> two normalised float views on the device. ours: `TwoCropFolder` workers
  (drafted decode, both crops cut from the whole image) + the photometric ops on the device (torchvision's formulas);
  reference: MoCo-v2's per-sample PIL pipeline in the workers, its own PIL blur included
  (`moco_reference.ReferenceTwoCrops`), copied to the device.
- model only: the same pre-made views, the same precision and memory format on both sides (bf16
  autocast + channels-last on CUDA, fp32 on a CPU), steps interleaved round by round. ours: ssl-bf's
  MoCo-v2 at the preset's recipe with one BN group and no key shuffle; reference: `moco/builder.py`
  as `moco_reference.ReferenceMoCo` (one process, no shuffle), same backbone, head, queue, T, m.
- end to end: each pipeline's data into its own model, same precision and memory format.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterator

import torch

PRESET_OVERRIDES = ("moco.shuffle_keys=false", "moco.split_bn_groups=1", "batchformer.enabled=false")


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _batches(dataset, batch: int, workers: int, count: int, pin: bool) -> Iterator:
    """One iterator over `count` batches drawn with replacement (seeded): no epoch restarts."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * count,
                                             generator=torch.Generator().manual_seed(0))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                            pin_memory=pin, drop_last=True))


def timed_steps(batches: Iterator, step: Callable, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each step after `warmup` untimed ones: next batch + `step(batch)` + a device sync."""
    sync, times = _sync(device), []
    for i in range(warmup + steps):
        tic = time.perf_counter()
        step(next(batches))
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return times


def _rate(times: list[float], batch: int, what: str) -> dict:
    med = statistics.median(times)
    return {"images_per_s": batch / med, "median_step_ms": med * 1e3, "steps": len(times), "pipeline": what}


def _ratio(rows: dict) -> float:
    return rows["ours"]["images_per_s"] / rows["reference"]["images_per_s"]


def _pipelines(root: str, size: int, device: torch.device):
    """(ours, reference): each a dataset and the function from one of its batches to the device views."""
    from moco_reference import ReferenceTwoCrops
    from ssl_bf.data import TwoCropFolder, build_dataset
    from ssl_bf.data.augment import build_two_views, recipe_crop_scale

    folder = build_dataset("imagefolder", root, "train")
    views = build_two_views("mocov2", size, 3, folder.mean, folder.std, crop=False).to(device)
    ours = (TwoCropFolder(folder, size, scale=(recipe_crop_scale("mocov2"), 1.0), seed=0),
            lambda b: views((b[0].to(device, non_blocking=True), b[1].to(device, non_blocking=True))))
    reference = (ReferenceTwoCrops(folder.samples, size),
                 lambda b: (b[0].to(device, non_blocking=True), b[1].to(device, non_blocking=True)))
    return folder, ours, reference


def _models(arch: str, size: int, batch: int, queue: int, device: torch.device, amp: bool, channels_last: bool):
    """(ours, reference) model steps `step(x1, x2)`: the same recipe, precision and memory format."""
    import torchvision

    from moco_reference import reference_model_step
    from step_throughput import _config, make_model_step

    hidden = getattr(torchvision.models, arch)().fc.in_features  # the reference head's width
    cfg = _config("mocov2", arch, [*PRESET_OVERRIDES, f"moco.hidden_dim={hidden}", f"moco.queue_size={queue}"],
                  batch, preset=_preset())
    ours = make_model_step(cfg, size, 3, device, amp=amp, channels_last=channels_last)
    reference = reference_model_step(arch, device, queue, amp=amp, channels_last=channels_last, dim=cfg.moco.dim,
                                     momentum=cfg.moco.momentum, temperature=cfg.moco.temperature)
    return ours, reference


def _preset() -> str:
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "mocov2_r50_imagenet.yaml")


def compare(root: str, device_name: str, arch: str, size: int, batch: int, workers: int, warmup: int,
            steps: int, queue: int) -> dict:
    """The three comparisons (see the module doc); returns their rows and ratios."""
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    amp = channels_last = cuda  # the same on both sides; on a CPU neither helps, so both run fp32
    fmt = "bf16 autocast + channels-last" if cuda else "fp32, default format (CPU)"
    warmup = max(1, warmup)  # the first step (worker start, kernel choice) is never timed
    folder, ours_data, ref_data = _pipelines(root, size, device)
    record = {"device": device_name, "backbone": arch, "size": size, "batch": batch, "workers": workers,
              "warmup": warmup, "steps": steps, "images": len(folder), "queue": queue, "precision": fmt}

    data = {}
    for name, (dataset, to_views), what in (("ours", ours_data, "TwoCropFolder workers + photometric ops on the device"),
                                            ("reference", ref_data, "MoCo-v2 PIL pipeline (PIL blur) in workers")):
        batches = _batches(dataset, batch, workers, warmup + steps, cuda)
        data[name] = _rate(timed_steps(batches, lambda b: to_views(b), warmup, steps, device), batch, what)
        del batches
    record["data_only"] = {**data, "ratio": _ratio(data)}

    from step_throughput import time_interleaved

    ours_step, ref_step = _models(arch, size, batch, queue, device, amp, channels_last)
    fixed = next(_batches(ours_data[0], batch, 0, 1, False))
    x1, x2 = ours_data[1](fixed)  # the same normalised views for both models
    sync = _sync(device)
    fns = {"ours": lambda: (ours_step(x1, x2), sync()), "reference": lambda: (ref_step(x1, x2), sync())}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = time_interleaved(fns, rounds=steps, per_round=1)
    model = {name: _rate(ts, batch, what) for (name, ts), what in zip(
        times.items(), (f"ssl-bf MoCo-v2 step, {fmt}", f"moco/builder.py step, {fmt}"))}
    record["model_only"] = {**model, "ratio": _ratio(model)}

    e2e = {}
    for name, (dataset, to_views), model_step in (("ours", ours_data, ours_step), ("reference", ref_data, ref_step)):
        batches = _batches(dataset, batch, workers, warmup + steps, cuda)
        times = timed_steps(batches, lambda b, f=to_views, m=model_step: m(*f(b)), warmup, steps, device)
        e2e[name] = _rate(times, batch, f"{record['data_only'][name]['pipeline']} -> {name} model, {fmt}")
        del batches
    record["end_to_end"] = {**e2e, "ratio": _ratio(e2e)}
    for key in ("data_only", "model_only", "end_to_end"):
        r = record[key]
        print(f"{key:10s} ours {r['ours']['images_per_s']:8.1f} img/s ({r['ours']['median_step_ms']:.1f} ms/step), "
              f"reference {r['reference']['images_per_s']:8.1f} img/s ({r['reference']['median_step_ms']:.1f} "
              f"ms/step): ratio {r['ratio']:.2f}x", flush=True)
    return record
