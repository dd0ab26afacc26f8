"""Images/s of a full training step (device augmentation + forward + backward + update),
BatchFormer off vs on, side by side in one run; prints medians and ratios.

    python benchmarks/step_throughput.py                       # MoCo-v2 + v3, ResNet-18, batch 256
    python benchmarks/step_throughput.py --quick               # fewer steps
    python benchmarks/step_throughput.py --device cuda --image-size 224 --backbone resnet50
    python benchmarks/step_throughput.py --device cuda --image-size 224 --backbone resnet50 --channels-last --pre-cut
    python benchmarks/step_throughput.py --methods mocov3 --backbones vit_mini --positions vit_blocks \
        --image-size 28 --channels 1              # BatchFormerV2 inside the ViT (after the middle block)

On CUDA each variant's peak memory is printed too (its own: the other variants' resident models
are subtracted). `make_model_step`, `time_interleaved` and `PeakMemory` are reused by
benchmarks/gpu_check.py.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch

from bench_common import training_step
from ssl_bf.data.augment import build_two_views
from ssl_bf.run_config import load_config
from ssl_bf.models.registry import build_model
from ssl_bf.train.optim import build_optimizer
from ssl_bf.models.vit_shapes import VIT_SHAPES

VARIANTS = {
    "off": ["batchformer.enabled=false"],
    "projection": ["batchformer.enabled=true", "batchformer.position=projection"],
    "backbone": ["batchformer.enabled=true", "batchformer.position=backbone"],
    "vit_blocks": ["batchformer.enabled=true", "batchformer.position=vit_blocks"],  # + insert_after
}


def variant_overrides(position: str, backbone: str, insert_after: Optional[list[int]] = None) -> list[str]:
    """The overrides of one BatchFormer position; vit_blocks inserts after `insert_after` (default:
    the block in the middle of the ViT, so the later half of the blocks runs twice)."""
    overrides = list(VARIANTS[position])
    if position == "vit_blocks":
        blocks = insert_after or [VIT_SHAPES[backbone].layers // 2 - 1]
        overrides.append(f"batchformer.insert_after=[{','.join(map(str, blocks))}]")
    return overrides


def _config(method: str, backbone: str, overrides: list[str], batch: int, preset: Optional[str] = None):
    """The benchmark's config; with `preset` (a YAML in configs/), that recipe at this backbone and batch."""
    if preset:
        return load_config(preset, [f"backbone.name={backbone}", f"train.batch_size={batch}", *overrides])
    common = [f"method={method}", f"backbone.name={backbone}", f"train.batch_size={batch}",
              "moco.queue_size=65536" if method == "mocov2" else "moco.temperature=1.0"]
    if backbone.startswith("vit"):
        common += ["backbone.patch_size=4", "train.optimizer=adamw"]
    else:
        common += ["backbone.stem=imagenet"]
    if method == "mocov3":
        common += ["moco.dim=256", "moco.hidden_dim=4096", "moco.pred_hidden_dim=4096", "moco.proj_layers=2"]
    return load_config(None, common + overrides)


def make_model_step(cfg, size: int, channels: int, device: torch.device, amp: bool = True,
                    channels_last: bool = False) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`step(x1, x2)`: one optimiser step (forward, backward, update) of the config's model on two
    normalised float view batches (N, C, S, S); no host sync. `amp`: bf16 autocast on CUDA (not on
    a CPU); `channels_last`: the model and the views in channels-last memory format."""
    return training_step(build_model(cfg, channels, size), lambda m: build_optimizer(m, cfg, 0.01),
                         lambda m, x1, x2: m(x1, x2)["loss"], device, amp, channels_last)


def _make_step(cfg, size: int, channels: int, device: torch.device, amp: bool = True,
               channels_last: bool = False, pre_cut: bool = False) -> Callable[[], None]:
    """A full step on a fixed uint8 batch already on `device`: the device views, then the model step.

    `pre_cut`: the batch is a pair of (N, C, S, S) crops, as the image-folder loader delivers them
    (views built with `crop=False`); else one (N, C, S, S) batch that is cropped on the device.
    """
    train = make_model_step(cfg, size, channels, device, amp, channels_last)
    views = build_two_views(cfg.augment.recipe if cfg.method == "mocov2" else "mocov3", size, channels,
                            (0.5,) * channels, (0.25,) * channels, crop=not pre_cut).to(device)
    shape = (cfg.train.batch_size, channels, size, size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    if pre_cut:
        images = (images, torch.randint(0, 256, shape, dtype=torch.uint8, device=device))

    def step() -> None:
        train(*views(images))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, per_round: int,
                     before: Optional[Callable[[str], None]] = None,
                     after: Optional[Callable[[str], None]] = None) -> dict[str, list[float]]:
    """Seconds per step of each variant, one figure per round: every round runs `per_round` steps of
    each variant in turn, so machine noise hits all alike (take the median). `before(name)` and
    `after(name)` bracket each variant's timed block (e.g. `PeakMemory.start` / `stop`)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if before:
                before(name)
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - t0) / per_round)
            if after:
                after(name)
    return times


class PeakMemory:
    """Peak CUDA memory of each variant while the other variants' models stay resident (off CUDA:
    nothing is measured and `gib()` gives None).

    `build(name, make)` builds a variant and runs its first (warm-up) step, recording the bytes it
    keeps (parameters, optimiser state, inputs). `start(name)` resets the allocator's peak before a
    timed block; `stop(name)` takes `max_memory_allocated()` less what the other variants hold then.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.resident: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.process_peak: dict[str, int] = {}  # raw max_memory_allocated(), the others included
        self._others = 0

    def build(self, name: str, make: Callable[[], Callable[[], None]]) -> Callable[[], None]:
        if not self.cuda:
            step = make()
            step()
            return step
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step = make()
        step()  # warm-up: optimiser state, cuDNN plans, workspaces
        torch.cuda.synchronize()
        self.resident[name] = torch.cuda.memory_allocated() - before
        self.peak[name] = torch.cuda.max_memory_allocated() - before
        self.process_peak[name] = torch.cuda.max_memory_allocated()
        return step

    def start(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._others = torch.cuda.memory_allocated() - self.resident[name]
            torch.cuda.reset_peak_memory_stats()

    def stop(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak[name] = max(self.peak[name], peak - self._others)
            self.process_peak[name] = max(self.process_peak[name], peak)

    def gib(self, name: str) -> Optional[float]:
        return self.peak[name] / 2**30 if name in self.peak else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["mocov2", "mocov3"])
    p.add_argument("--backbones", nargs="+", default=["resnet18"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median taken)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--positions", nargs="+", default=["projection", "backbone"], choices=sorted(set(VARIANTS) - {"off"}),
                   help="BatchFormer positions timed against off (vit_blocks: ViT backbones only)")
    p.add_argument("--insert-after", type=int, nargs="+", default=None,
                   help="vit_blocks: the ViT blocks BatchFormerV2 follows (default: the middle block)")
    p.add_argument("--scopes", action="store_true", help="also time batchformer.scope=global (1 process)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA (fp32)")
    p.add_argument("--channels-last", action="store_true", help="model and views in channels-last format")
    p.add_argument("--pre-cut", action="store_true", help="a uint8 pair of pre-cut crops (image-folder "
                   "loaders), views without the crop; default: one batch cropped on the device")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps = 3, 2
    device = torch.device(args.device)
    if "vit_blocks" in args.positions and not all(b.startswith("vit") for b in args.backbones):
        p.error("--positions vit_blocks needs ViT backbones only (e.g. --backbones vit_mini)")
    print(f"device {device}, batch {args.batch}, {args.image_size}px, {torch.get_num_threads()} threads; "
          f"{args.rounds} interleaved rounds x {args.steps} steps, median images/s"
          f"{'' if args.no_amp or device.type != 'cuda' else ', bf16 autocast'}"
          f"{', channels-last' if args.channels_last else ''}{', pre-cut crop pairs' if args.pre_cut else ''}")
    for method in args.methods:
        for backbone in args.backbones:
            variants = {"off": VARIANTS["off"]}
            variants.update({pos: variant_overrides(pos, backbone, args.insert_after) for pos in args.positions})
            if args.scopes:
                variants.update({f"{pos}-global": variants[pos] + ["batchformer.scope=global"] for pos in args.positions})
            memory = PeakMemory(device)
            steps = {name: memory.build(name, lambda ov=ov: _make_step(
                _config(method, backbone, ov, args.batch), args.image_size, args.channels, device,
                amp=not args.no_amp, channels_last=args.channels_last, pre_cut=args.pre_cut))
                for name, ov in variants.items()}  # each warmed up once
            times = time_interleaved(steps, args.rounds, args.steps, memory.start, memory.stop)
            base = statistics.median(times["off"])
            for name, ts in times.items():
                med = statistics.median(ts)
                peak = memory.gib(name)
                print(f"{method:7s} {backbone:9s} bf={name:18s} {args.batch / med:8.1f} img/s   "
                      f"step time x{med / base:.3f} vs off" + (f"   peak {peak:.2f} GiB" if peak is not None else ""))
            del steps


if __name__ == "__main__":
    main()
