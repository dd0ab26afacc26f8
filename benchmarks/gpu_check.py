"""The Python side of scripts/gpu_check.sh: one subcommand per stage, each writing a JSON record.

    prepare      environment report (torch, CUDA, NCCL, card), import checks, the JPEG image folder
    check-run    checks a finished `torchrun ... ssl_bf pretrain` run folder (stage a)
    throughput   model step images/s and peak memory on synthetic uint8 crops on the device (stage b)
    end-to-end   ours vs the reference MoCo-v2 pipeline: data-only, model-only and end-to-end ratios
                 (stage c, benchmarks/fair_comparison.py)
    summary      gathers the records into OUT/gpu_check.json + .md and prints the table

Stage (d), several processes against one (SyncBN in bf16 + channels-last, shuffle-BN, the global
BatchFormer gather, gather_shards_to_main), is benchmarks/multi_gpu_check.py under torchrun; with
fewer than 2 GPUs it records what stayed untested, and the summary says so.

Run it through scripts/gpu_check.sh (which sets the stage sizes, timeouts and the fail-fast order);
the subcommands are plain functions, so each stage can also be run by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Optional

from gpu_check_report import cmd_summary, fmt, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"mocov2": os.path.join(ROOT, "configs", "mocov2_r50_imagenet.yaml"),
           "mocov3": os.path.join(ROOT, "configs", "mocov3_r50_imagenet.yaml")}

# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------

REQUIRED_MODULES = ("numpy", "PIL", "yaml", "tqdm", "torchvision", "kornia", "ssl_bf.train.trainer")
INSTALL_HINT = ("install ssl-bf for this python ($PYTHON -m pip install -e .; on a machine without "
                "network: --no-deps --no-build-isolation, with missing packages carried as wheels)")


def environment() -> dict:
    """What this python sees: versions, the card, and which modules import."""
    import importlib

    import torch

    info = {"python": platform.python_version(), "python_exe": sys.executable, "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "device_name": None, "device_memory_gib": None, "nccl": None, "cpu_count": os.cpu_count(),
            "missing": [], "knn_ok": False, "knn_note": ""}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["device_name"], info["device_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
        try:
            info["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception as err:  # a build without NCCL: stage (a) will say so too
            info["nccl"] = f"unavailable ({type(err).__name__})"
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:
            info["missing"].append(f"{name} ({type(err).__name__}: {err})")
    try:  # the online k-NN monitor: ssl_bf.eval (an installed ssl-bf maps it to eval/) and FAISS
        importlib.import_module("ssl_bf.knn.vote")
        importlib.import_module("faiss")
        info["knn_ok"] = True
    except Exception as err:
        info["knn_note"] = f"k-NN monitor off: {type(err).__name__}: {err}"
    return info


def cmd_prepare(args: argparse.Namespace) -> int:
    info = environment()
    cuda = (f"CUDA {info['cuda_build']}, device {info['device_name']} ({info['device_memory_gib']} GiB), "
            f"NCCL {info['nccl']}" if info["cuda_available"] else
            f"CUDA build {info['cuda_build']}, no CUDA device visible")
    print(f"python {info['python']} ({info['python_exe']}), torch {info['torch']}, {cuda}, "
          f"{info['cpu_count']} CPUs", flush=True)
    write_json(info, os.path.join(args.work, "env.json"))  # the summary shows the versions even on failure
    if args.require_cuda and not info["cuda_available"]:
        print("gpu_check: ERROR: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
              "this mode needs a GPU. Run `bash scripts/gpu_check.sh --cpu-smoke` for the CPU rehearsal.",
              file=sys.stderr)
        return 2
    if info["missing"]:
        print("gpu_check: ERROR: these modules do not import: " + "; ".join(info["missing"]) +
              f"\n  fix: {INSTALL_HINT}", file=sys.stderr)
        return 1
    knn = {"on": True, "off": False, "auto": info["knn_ok"]}[args.knn]
    if args.knn == "on" and not info["knn_ok"]:
        print(f"gpu_check: ERROR: GPU_CHECK_KNN=on but {info['knn_note']}", file=sys.stderr)
        return 1
    if not knn:
        info["knn_note"] = info["knn_note"] or "k-NN monitor off (GPU_CHECK_KNN=off)"
        print(f"gpu_check: NOTE: {info['knn_note']}; stage (a) runs without it", flush=True)

    from data_throughput import make_imagefolder

    t0 = time.perf_counter()
    source = make_imagefolder(args.folder, args.classes, args.train_per_class, args.val_per_class)
    print(f"image folder {args.folder}: {args.classes} classes x ({args.train_per_class} train + "
          f"{args.val_per_class} val) JPEGs from {source} ({time.perf_counter() - t0:.1f} s)", flush=True)
    info.update(folder=args.folder, folder_source=source, knn_monitor=knn,
                folder_images={"classes": args.classes, "train_per_class": args.train_per_class,
                               "val_per_class": args.val_per_class})
    write_json(info, os.path.join(args.work, "env.json"))
    with open(os.path.join(args.work, "prepare.env"), "w") as f:  # read by the shell script
        f.write(f"KNN_MONITOR={int(knn)}\n")
    return 0


# ----------------------------------------------------------------------------------------------
# check-run: stage (a)
# ----------------------------------------------------------------------------------------------


def check_run(run_dir: str, log_path: Optional[str], expect_device: str, steps: int, batch: int,
              expect_knn: bool) -> dict:
    """Checks of a finished pretraining run; returns its record with `problems` (empty: passed)."""
    problems: list[str] = []
    path = os.path.join(run_dir, "metrics.jsonl")
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        problems.append(f"no {path}")
    start = next((r for r in records if r.get("event") == "start"), None)
    step_lines = [r for r in records if "step" in r and "event" not in r and "images_per_s" not in r]
    epochs = [r for r in records if "images_per_s" in r]
    knn = [r for r in records if r.get("event") == "knn"]
    if start is None:
        problems.append("no start event in metrics.jsonl")
    else:
        if start.get("world_size") != 1:
            problems.append(f"start event world_size {start.get('world_size')}, expected 1")
        if start.get("device") != expect_device:
            problems.append(f"start event device {start.get('device')}, expected {expect_device}")
        if "whole image" not in str(start.get("crops")):
            problems.append(f"crops not cut in the workers: {start.get('crops')}")
    losses = [r["loss"] for r in step_lines + epochs]
    if not step_lines:
        problems.append("no step lines logged")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        problems.append(f"non-finite losses: {losses}")
    last_step = max((r["step"] for r in step_lines), default=0)
    if last_step != steps:
        problems.append(f"last logged step {last_step}, expected {steps}")
    if expect_knn and not any(r.get("knn_top1") is not None for r in knn):
        problems.append("no k-NN monitor result")
    log = ""
    if log_path and os.path.isfile(log_path):
        with open(log_path, errors="replace") as f:
            log = f.read()
    nccl_lines = [line for line in log.splitlines() if "NCCL INFO" in line]
    version = re.search(r"NCCL version ([0-9][\w.+-]*)", log)
    rates = [r["images_per_s"] for r in epochs]
    return {"steps": last_step, "batch": batch, "world_size": start.get("world_size") if start else None,
            "device": start.get("device") if start else None,
            "normalisation": start.get("normalisation") if start else None,
            "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "first_loss": losses[0] if losses else None, "last_loss": step_lines[-1]["loss"] if step_lines else None,
            "epoch_images_per_s": rates, "images_per_s": statistics.median(rates) if rates else None,
            "knn_top1": next((r["knn_top1"] for r in reversed(knn) if r.get("knn_top1") is not None), None),
            "nccl_log_lines": len(nccl_lines), "nccl_version_logged": version.group(1) if version else None,
            "problems": problems}


def cmd_check_run(args: argparse.Namespace) -> int:
    record = check_run(args.run_dir, args.log, args.expect_device, args.steps, args.batch, args.expect_knn)
    record.update(name=args.name, rc=args.rc, wall_s=args.wall, run_dir=args.run_dir,
                  wall_images_per_s=args.steps * args.batch / args.wall if args.wall else None)
    if record["images_per_s"] is None:  # no whole epoch (the smoke run): the wall time, start-up included
        record["images_per_s"], record["images_per_s_from"] = record["wall_images_per_s"], "wall time"
    else:
        record["images_per_s_from"] = "median epoch record"
    if args.rc != 0:
        record["problems"].insert(0, f"torchrun exit status {args.rc}")
    if args.expect_device.startswith("cuda") and not record["nccl_log_lines"]:
        record["notes"] = "no 'NCCL INFO' lines in the log (NCCL_DEBUG=INFO was set): check the backend"
        print(f"gpu_check: WARNING: {args.name}: {record['notes']}", flush=True)
    write_json(record, args.json)
    rate = record["images_per_s"]
    print(f"{args.name}: rc {args.rc}, {record['steps']} steps, world_size {record['world_size']} on "
          f"{record['device']}, loss {fmt(record['first_loss'], '.4f')} -> {fmt(record['last_loss'], '.4f')} "
          f"({'finite' if record['losses_finite'] else 'NOT finite'}), "
          f"{'-' if rate is None else f'{rate:.1f}'} img/s ({record['images_per_s_from']}), wall {args.wall:.1f} s"
          + (f", k-NN top-1 {record['knn_top1']:.1f}" if record["knn_top1"] is not None else "")
          + (f", {record['nccl_log_lines']} NCCL INFO lines" if args.expect_device.startswith("cuda") else ""),
          flush=True)
    for problem in record["problems"]:
        print(f"gpu_check: FAILED {args.name}: {problem}", file=sys.stderr)
    return 1 if record["problems"] else 0


# ----------------------------------------------------------------------------------------------
# throughput: stage (b)
# ----------------------------------------------------------------------------------------------


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_throughput(device_name: str, backbone: str, size: int, batches: dict[str, int], rounds: int,
                     steps: int, amp: bool, channels_last: bool, overrides: list[str]) -> list[dict]:
    """Images/s and peak memory of a full step (device photometric ops on a uint8 crop pair + model
    step) for each method's preset, BatchFormer off and on (projection), variants interleaved."""
    import torch

    from step_throughput import VARIANTS, PeakMemory, _config, _make_step, time_interleaved

    device = torch.device(device_name)
    rows = []
    for method, batch in batches.items():
        memory = PeakMemory(device)
        fns = {}
        for variant in ("off", "projection"):
            cfg = _config(method, backbone, VARIANTS[variant] + overrides, batch, preset=PRESETS[method])
            fns[variant] = memory.build(variant, lambda cfg=cfg: _make_step(
                cfg, size, 3, device, amp=amp, channels_last=channels_last, pre_cut=True))
        times = time_interleaved(fns, rounds, steps, memory.start, memory.stop)
        base = statistics.median(times["off"])
        for variant, ts in times.items():
            med = statistics.median(ts)
            row = {"method": method, "batchformer": variant, "batch": batch, "images_per_s": batch / med,
                   "step_ms": med * 1e3, "step_time_vs_off": med / base, "peak_gib": memory.gib(variant),
                   "process_peak_gib": memory.process_peak[variant] / 2**30 if variant in memory.process_peak
                   else None, "rounds": [batch / t for t in ts]}
            rows.append(row)
            peak = "" if row["peak_gib"] is None else f", peak {row['peak_gib']:.2f} GiB"
            print(f"{method} BF {variant:10s} batch {batch}: {row['images_per_s']:.1f} img/s "
                  f"({row['step_ms']:.1f} ms/step, x{row['step_time_vs_off']:.3f} vs off{peak})", flush=True)
        del fns, memory
        _free_device_memory()
    return rows


def cmd_throughput(args: argparse.Namespace) -> int:
    import torch

    t0 = time.perf_counter()
    batches = {"mocov2": args.batch_v2, "mocov3": args.batch_v3}
    print(f"model step on {args.device}: {args.backbone} {args.size}px, bf16 autocast "
          f"{'on' if args.amp and args.device.startswith('cuda') else 'off'}, channels-last "
          f"{'on' if args.channels_last else 'off'}, {args.rounds} interleaved rounds x {args.steps} steps "
          f"(median), {torch.get_num_threads()} threads", flush=True)
    rows = model_throughput(args.device, args.backbone, args.size, batches, args.rounds, args.steps,
                            args.amp, args.channels_last, args.override)
    write_json({"device": args.device, "backbone": args.backbone, "size": args.size, "amp": args.amp,
                 "channels_last": args.channels_last, "rounds": args.rounds, "steps": args.steps,
                 "overrides": args.override, "rows": rows, "seconds": time.perf_counter() - t0}, args.json)
    return 0


# ----------------------------------------------------------------------------------------------
# end-to-end: stage (c)
# ----------------------------------------------------------------------------------------------


def cmd_end_to_end(args: argparse.Namespace) -> int:
    from fair_comparison import compare

    print(f"ours vs reference on {args.device}: MoCo-v2 {args.backbone} {args.size}px, batch {args.batch}, "
          f"{args.workers} workers, {args.warmup} warm-up + {args.steps} timed steps (median), queue {args.queue}",
          flush=True)
    record = compare(args.folder, args.device, args.backbone, args.size, args.batch, args.workers, args.warmup,
                     args.steps, args.queue)
    write_json(record, args.json)
    return 0


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="environment report, import checks, the JPEG folder")
    s.add_argument("--work", required=True)
    s.add_argument("--folder", required=True)
    s.add_argument("--classes", type=int, default=2)
    s.add_argument("--train-per-class", type=int, default=256)
    s.add_argument("--val-per-class", type=int, default=32)
    s.add_argument("--knn", choices=("auto", "on", "off"), default="auto")
    s.add_argument("--require-cuda", action="store_true", help="exit 2 when no CUDA device is visible")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("check-run", help="check a finished pretraining run folder")
    s.add_argument("run_dir")
    s.add_argument("--name", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--log")
    s.add_argument("--rc", type=int, default=0)
    s.add_argument("--wall", type=float, default=0.0)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--expect-device", required=True)
    s.add_argument("--expect-knn", action="store_true")
    s.set_defaults(fn=cmd_check_run)

    for name, fn in (("throughput", cmd_throughput), ("end-to-end", cmd_end_to_end)):
        s = sub.add_parser(name)
        s.add_argument("--json", required=True)
        s.add_argument("--device", default="cuda")
        s.add_argument("--backbone", default="resnet50")
        s.add_argument("--size", type=int, default=224)
        s.set_defaults(fn=fn)
        if name == "throughput":
            s.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                           help="extra config override for every model (repeatable)")
            s.add_argument("--batch-v2", type=int, default=128)
            s.add_argument("--batch-v3", type=int, default=256)
            s.add_argument("--rounds", type=int, default=5)
            s.add_argument("--steps", type=int, default=5)
            s.add_argument("--no-amp", dest="amp", action="store_false")
            s.add_argument("--no-channels-last", dest="channels_last", action="store_false")
        else:
            s.add_argument("--folder", required=True)
            s.add_argument("--batch", type=int, default=128)
            s.add_argument("--workers", type=int, default=8)
            s.add_argument("--warmup", type=int, default=10)
            s.add_argument("--steps", type=int, default=40)
            s.add_argument("--queue", type=int, default=65536, help="MoCo queue size (both sides)")

    s = sub.add_parser("summary", help="gather the stage records, write OUT/gpu_check.{json,md}")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--mode", required=True)
    s.add_argument("--rc", type=int, default=0)
    s.add_argument("--failed-stage", default="")
    s.add_argument("--elapsed", type=float, default=0.0)
    s.add_argument("--card", default="")
    s.set_defaults(fn=cmd_summary)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
