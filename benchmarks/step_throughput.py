"""Images/s of a full training step (device augmentation + forward + backward + update),
BatchFormer off vs on, side by side in one run; prints medians and ratios.

    python benchmarks/step_throughput.py                       # MoCo-v2 + v3, ResNet-18, batch 256
    python benchmarks/step_throughput.py --quick               # fewer steps
    python benchmarks/step_throughput.py --device cuda --image-size 224 --backbone resnet50
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssl_bf.augment import build_two_views
from ssl_bf.config import load_config
from ssl_bf.moco import build_model
from ssl_bf.optim import build_optimizer

VARIANTS = {
    "off": ["batchformer.enabled=false"],
    "projection": ["batchformer.enabled=true", "batchformer.position=projection"],
    "backbone": ["batchformer.enabled=true", "batchformer.position=backbone"],
}


def _config(method: str, backbone: str, overrides: list[str], batch: int):
    common = [f"method={method}", f"backbone.name={backbone}", f"train.batch_size={batch}",
              "moco.queue_size=65536" if method == "mocov2" else "moco.temperature=1.0"]
    if backbone.startswith("vit"):
        common += ["backbone.patch_size=4", "train.optimizer=adamw"]
    else:
        common += ["backbone.stem=imagenet"]
    if method == "mocov3":
        common += ["moco.dim=256", "moco.hidden_dim=4096", "moco.pred_hidden_dim=4096", "moco.proj_layers=2"]
    return load_config(None, common + overrides)


def _make_step(cfg, size: int, channels: int, device: torch.device):
    model = build_model(cfg, channels, size).to(device).train()
    opt = build_optimizer(model, cfg, 0.01)
    views = build_two_views(cfg.augment.recipe if cfg.method == "mocov2" else "mocov3", size, channels,
                            (0.5,) * channels, (0.25,) * channels).to(device)
    images = torch.randint(0, 256, (cfg.train.batch_size, channels, size, size), dtype=torch.uint8, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        x1, x2 = views(images)
        with amp:
            loss = model(x1, x2)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


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
    p.add_argument("--scopes", action="store_true", help="also time batchformer.scope=global (1 process)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps = 3, 2
    device = torch.device(args.device)
    variants = dict(VARIANTS)
    if args.scopes:
        variants["projection-global"] = VARIANTS["projection"] + ["batchformer.scope=global"]
    print(f"device {device}, batch {args.batch}, {args.image_size}px, {torch.get_num_threads()} threads; "
          f"{args.rounds} interleaved rounds x {args.steps} steps, median images/s")
    for method in args.methods:
        for backbone in args.backbones:
            steps = {name: _make_step(_config(method, backbone, ov, args.batch), args.image_size, args.channels, device)
                     for name, ov in variants.items()}
            for step in steps.values():  # warm-up
                step()
            times: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(args.rounds):  # interleave variants so machine noise hits all alike
                for name, step in steps.items():
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    times[name].append((time.perf_counter() - t0) / args.steps)
            base = statistics.median(times["off"])
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"{method:7s} {backbone:9s} bf={name:18s} {args.batch / med:8.1f} img/s   "
                      f"step time x{med / base:.3f} vs off")
            if device.type == "cuda":
                print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
