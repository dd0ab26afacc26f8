"""The summary of scripts/gpu_check.sh: the stage records gathered into OUT/gpu_check.json and .md,
the table printed, and, in plain words, what the run did not exercise (benchmarks/gpu_check.py
`summary` calls `cmd_summary`)."""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Optional

STAGES = ("nccl", "multi_gpu", "throughput", "end_to_end")  # (a), (d), (b), (c): the summary needs all four
STAGE_TITLES = {"smoke": "fail-fast smoke (torchrun)", "nccl": "(a) torchrun + process group",
                "multi_gpu": "(d) N processes vs one", "throughput": "(b) model step, synthetic crops",
                "end_to_end": "(c) ours vs reference, JPEG folder"}


def write_json(record: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def summary_rows(stages: dict) -> list[tuple[str, str, str, str, str]]:
    """(stage, variant, img/s, peak GiB, notes) for the table."""
    rows = []
    for key in ("smoke", "nccl"):
        for run in stages.get(key, {}).get("runs", []):
            notes = (f"{run['steps']} steps x {run['batch']}, world_size {run['world_size']} on {run['device']}, "
                     f"loss {fmt(run['first_loss'], '.3f')} -> {fmt(run['last_loss'], '.3f')} "
                     f"{'finite' if run['losses_finite'] else 'NOT FINITE'}, wall {run['wall_s']:.0f} s")
            if run.get("knn_top1") is not None:
                notes += f", k-NN {run['knn_top1']:.1f}%"
            if str(run.get("device")).startswith("cuda"):
                notes += f", NCCL log {'seen' if run['nccl_log_lines'] else 'NOT seen'}"
            if run["problems"]:
                notes += " | FAILED: " + "; ".join(run["problems"])
            rows.append((STAGE_TITLES[key], run["name"], fmt(run["images_per_s"]), "-", notes))
    b = stages.get("throughput")
    if b:
        for r in b["rows"]:
            rows.append((STAGE_TITLES["throughput"], f"{r['method']} BF {r['batchformer']}, batch {r['batch']}",
                         fmt(r["images_per_s"]), fmt(r["peak_gib"], ".2f"),
                         f"{r['step_ms']:.1f} ms/step, step time x{r['step_time_vs_off']:.3f} vs BF off"))
    c = stages.get("end_to_end")
    if c:
        workers = f"{c['workers']} worker" + ("s" if c["workers"] != 1 else "")
        for part, label in (("data_only", "data only"), ("model_only", "model only"), ("end_to_end", "end to end")):
            for name in ("ours", "reference"):
                r = c[part][name]
                rows.append((STAGE_TITLES["end_to_end"], f"{label}: {name}", fmt(r["images_per_s"]), "-",
                             f"{r['pipeline']}; median of {r['steps']} steps, {r['median_step_ms']:.1f} ms/step"))
            rows.append((STAGE_TITLES["end_to_end"], f"{label}: ratio ours/reference", f"{c[part]['ratio']:.2f}x", "-",
                         f"batch {c['batch']}, {workers}, {c['steps']} timed steps after {c['warmup']} warm-up, "
                         f"{c['precision']} on both sides"))
    d = stages.get("multi_gpu")
    if d:
        for r in d["checks"]:
            control = "" if r["control_error"] is None else f"; without the collective {r['control_error']:.2g}"
            rows.append((STAGE_TITLES["multi_gpu"], r["name"], "-", "-",
                         f"{'passed' if r['passed'] else 'FAILED'}: error {r['max_error']:.2g} (tolerance "
                         f"{r['tolerance']:.0g}{control}) over {d['world_size']} processes, {d['backend']}"
                         + (f"; {r['error']}" if r.get("error") else "")))
        if not d["ran"]:
            rows.append((STAGE_TITLES["multi_gpu"], "NOT RUN", "-", "-", d["reason"]))
    return rows


def untested(stages: dict) -> list[str]:
    """What this check did not exercise, in plain words (stage d's record)."""
    d = stages.get("multi_gpu") or {}
    if not d:
        return ["the multi-process stage (d) left no record"]
    if not d["ran"]:
        return [f"UNTESTED ({d['reason']}): {item}" for item in d["untested"]]
    return [f"UNTESTED on this machine: {item}" for item in d["untested"]]


def cmd_summary(args: argparse.Namespace) -> int:
    env = read_json(os.path.join(args.work, "env.json")) or {}
    stages: dict = {}
    for key in ("smoke", "nccl"):
        runs = [read_json(p) for p in sorted(glob.glob(os.path.join(args.work, "stages", f"{key}_*.json")))]
        if runs:
            stages[key] = {"runs": [r for r in runs if r],
                           "passed": all(r and not r["problems"] for r in runs)}
    for key in ("multi_gpu", "throughput", "end_to_end"):
        record = read_json(os.path.join(args.work, "stages", f"{key}.json"))
        if record:
            stages[key] = record
    missing = [k for k in STAGES if k not in stages]
    ok = args.rc == 0 and not missing and all(stages[k].get("passed", True) for k in ("smoke", "nccl", "multi_gpu")
                                                if k in stages)
    result = {"ok": ok, "rc": args.rc, "mode": args.mode, "failed_stage": args.failed_stage or None,
              "missing_stages": missing, "elapsed_s": args.elapsed,
              "card": args.card or env.get("device_name"), "torch": env.get("torch"),
              "cuda": env.get("cuda_build"), "nccl": env.get("nccl"), "python": env.get("python"),
              "folder_source": env.get("folder_source"), "knn_monitor": env.get("knn_monitor"),
              "notes": [n for n in (env.get("knn_note"),) if n], "untested": untested(stages), "stages": stages}
    rows = summary_rows(stages)
    status = "PASSED" if ok else (f"FAILED at stage {args.failed_stage}" if args.failed_stage else "FAILED") + \
        (f" (missing: {', '.join(missing)})" if missing else "") + f", rc {args.rc}"
    head = (f"gpu_check {args.mode}: {status} in {args.elapsed:.0f} s | {result['card'] or 'no GPU'} | "
            f"torch {result['torch']}, CUDA {result['cuda']}, NCCL {result['nccl']}")
    widths = [max(len(r[i]) for r in rows + [("stage", "variant", "img/s", "peak GiB", "")]) for i in range(4)]
    print("\n== " + head)
    print(f"{'stage':{widths[0]}}  {'variant':{widths[1]}}  {'img/s':>{widths[2]}}  {'peak GiB':>{widths[3]}}  notes")
    for r in rows:
        print(f"{r[0]:{widths[0]}}  {r[1]:{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}")
    for note in result["notes"]:
        print(f"note: {note}")
    for line in result["untested"]:
        print(line)
    md = [f"# {head}", "", "| stage | variant | img/s | peak GiB | notes |", "| --- | --- | ---: | ---: | --- |"]
    md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    md += [""] + [f"Note: {n}" for n in result["notes"]] + [f"- {line}" for line in result["untested"]]
    os.makedirs(args.out, exist_ok=True)
    write_json(result, os.path.join(args.out, "gpu_check.json"))
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {os.path.join(args.out, 'gpu_check.json')} and gpu_check.md")
    return 0 if ok else 1
