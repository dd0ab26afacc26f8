"""Run folders for `ssl-bf report`: finding the runs of a folder, grouping them into variants,
and reading their metrics.jsonl into curves, wall times and what is missing.

metrics.jsonl holds step records (every train.log_every steps), epoch-end records
(`train_seconds`, `images_per_s`) and event records (`start`, `knn_init`, `knn`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from ssl_bf.config import format_override_value
from ssl_bf.train.metrics import MetricsError, read_metrics_log
from ssl_bf.sweep_file import VARIANT_KEY

from . import ReportError
from .inputs import RESULTS, NotRead, element_dirs, read_results, read_sweep_checked
from .sweep_table import SEED_KEYS, differing_keys, flat_config, is_run

# Train-set sizes, only to place the loss of a run that has not finished an epoch yet.
TRAIN_SIZES = {"fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000}
TEST_EMBEDDINGS = os.path.join("embeddings", "test.safetensors")


@dataclass
class Run:
    name: str
    run_dir: str
    params: dict  # {swept key: value string}
    config: dict = field(default_factory=dict)  # flat config.yaml
    records: list = field(default_factory=list)  # metrics.jsonl
    results: Optional[dict] = None
    results_problem: Optional[str] = None  # why results is None (inputs.NOT_EVALUATED, or the file's fault)
    unreadable: list = field(default_factory=list)  # "PATH: what is wrong" of the files that could not be read
    expected: bool = False  # an element of sweep.json: a missing results.json is not normal
    partial: list = field(default_factory=list)  # notes on records that were skipped


@dataclass
class Variant:
    label: str
    group: dict  # {group key: value string}
    runs: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def _read_records(run: Run) -> None:
    """RUN/metrics.jsonl into run.records (every record checked: ssl_bf.train.metrics); a file
    that cannot be read goes into run.unreadable, a dropped torn last line into run.partial."""
    path = os.path.join(run.run_dir, "metrics.jsonl")
    try:
        log = read_metrics_log(path)
    except MetricsError as err:
        run.unreadable.append(str(err))
    else:
        run.records = log.records
        run.partial.extend(log.notes)


def _read_run_results(run: Run) -> None:
    run.results, run.results_problem, kind = read_results(run.run_dir)
    if kind == "unreadable":
        run.unreadable.append(run.results_problem)


def not_read(runs: list[Run], not_started: list[str]) -> list[NotRead]:
    """Every run (or sweep element) whose results or records could not be used, with the reason."""
    out = [NotRead(name, "no run folder: not started", "not started", True) for name in not_started]
    for r in runs:
        if r.unreadable:
            out.append(NotRead(r.name, "; ".join(r.unreadable), "unreadable", r.expected))
        elif r.results is None:
            out.append(NotRead(r.name, r.results_problem or "no results.json (not evaluated)", "missing",
                               r.expected))
    return out


def find_runs(folder: str) -> tuple[list[str], list[Run], list[str]]:
    """(swept keys, runs, sweep elements with no folder yet) of a run folder or a folder of runs.

    Each run has its config, records and results read; what could not be read is on the run
    (`results_problem`, `unreadable`). A malformed sweep.json or config.yaml raises ReportError."""
    if not os.path.isdir(folder):
        raise ReportError(f"no such folder: {folder}")
    if is_run(folder):
        name = os.path.basename(os.path.abspath(folder))
        runs, keys, not_started = [Run(name, folder, {})], [], []
    else:
        sweep = read_sweep_checked(folder)
        runs, not_started = [], []
        if sweep is not None:
            keys = list(sweep.keys)
            for el, run_dir in element_dirs(sweep, folder):
                if os.path.isdir(run_dir):
                    runs.append(Run(el.name, run_dir, {k: str(v) for k, v in el.labels().items()}, expected=True))
                else:
                    not_started.append(el.name)
        else:
            for name in sorted(os.listdir(folder)):  # the sub-folders `ssl-bf sweep-report` reads too
                if is_run(os.path.join(folder, name)) or os.path.lexists(os.path.join(folder, name, RESULTS)):
                    runs.append(Run(name, os.path.join(folder, name), {}))
            configs = [flat_config(r.run_dir) for r in runs]
            keys = differing_keys(configs)
            for r, c in zip(runs, configs):
                r.params = {k: format_override_value(c.get(k)) for k in keys}
    if not runs:
        raise ReportError(f"no runs under {folder} (no sub-folder with config.yaml or metrics.jsonl"
                          + (f"; sweep elements not started: {', '.join(not_started)}" if not_started else "") + ")")
    for r in runs:
        r.config = flat_config(r.run_dir)
        _read_records(r)
        _read_run_results(r)  # the same files and checks as `ssl-bf sweep-report`
    return keys, runs, not_started


def group_runs(keys: list[str], runs: list[Run]) -> tuple[list[str], list[Variant]]:
    """Variants in order of first appearance: runs that share every swept key except the seed."""
    group_keys = [k for k in keys if k not in SEED_KEYS]
    variants: dict[tuple, Variant] = {}
    for r in runs:
        gid = tuple(str(r.params.get(k)) for k in group_keys)
        if gid not in variants:
            if group_keys == [VARIANT_KEY]:
                label = gid[0]
            elif group_keys:
                label = ", ".join(f"{k}={v}" for k, v in zip(group_keys, gid))
            else:
                label = r.name if len(runs) == 1 else "all runs"
            variants[gid] = Variant(label, dict(zip(group_keys, gid)))
        variants[gid].runs.append(r)
    return group_keys, list(variants.values())


# ----------------------------------------------------------------------------------------------
# Metrics records -> curves and times
# ----------------------------------------------------------------------------------------------


def epoch_records(records: list[dict]) -> list[dict]:
    """Epoch-end records (`epoch` = the 0-based epoch that just ended)."""
    return [r for r in records if "event" not in r and ("train_seconds" in r or "images_per_s" in r)]


def knn_records(records: list[dict]) -> list[dict]:
    """Online k-NN checks at an epoch's end: {'event': 'knn', 'epoch', 'knn_top1', 'knn_seconds'}
    (older runs put knn_top1/knn_seconds into the epoch record instead)."""
    return [r for r in records if r.get("event") == "knn"]


def step_records(records: list[dict]) -> list[dict]:
    """Per-step records (every train.log_every steps): {'step', 'epoch', 'loss', ...}."""
    return [r for r in records if "event" not in r and r.get("loss") is not None and r.get("step") is not None
            and "train_seconds" not in r and "images_per_s" not in r]


def steps_per_epoch(run: Run) -> tuple[Optional[float], bool]:
    """(steps per epoch, estimated?): from an epoch-end record, else from the config's data size."""
    for r in epoch_records(run.records):
        if r.get("step") and r.get("epoch") is not None:
            return r["step"] / (r["epoch"] + 1), False
    size = TRAIN_SIZES.get(run.config.get("data.name"))
    subset = run.config.get("data.subset")
    size = min(size, subset) if size and subset else (size or subset)
    starts = [r for r in run.records if r.get("event") == "start"]
    world = int(starts[-1].get("world_size") or 1) if starts else 1
    batch = run.config.get("train.batch_size")
    if not size or not batch or size // (batch * world) == 0:
        return None, False
    return float(size // (batch * world)), True


def loss_curve(run: Run) -> tuple[list[float], list[float]]:
    """(epochs, loss) of the logged steps; x = step / steps per epoch. Epoch means if no steps logged."""
    spe, _ = steps_per_epoch(run)
    points = {}
    steps = step_records(run.records)
    if steps and spe:
        for r in steps:
            points[r["step"] / spe] = float(r["loss"])
    else:
        for r in epoch_records(run.records):
            if r.get("loss") is not None and r.get("epoch") is not None:
                points[float(r["epoch"] + 1)] = float(r["loss"])
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def knn_curve(run: Run) -> tuple[list[float], list[float]]:
    """(epoch, online k-NN top-1): the random-init figure at epoch 0, then each monitored epoch end."""
    points = {}
    for r in run.records:
        if r.get("event") == "knn_init" and r.get("knn_top1") is not None:
            points[0.0] = float(r["knn_top1"])
    for r in epoch_records(run.records) + knn_records(run.records):
        if r.get("knn_top1") is not None and r.get("epoch") is not None:
            points[float(r["epoch"] + 1)] = float(r["knn_top1"])
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def mean_curve(curves: list[tuple[list[float], list[float]]]) -> Optional[dict]:
    """Mean and min..max over the runs with points, at each x all of them have (x rounded to
    1e-9): a mean labelled n=3 is never one seed's tail."""
    curves = [c for c in curves if c[0]]
    at: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys):
            at.setdefault(round(x, 9), []).append(y)
    n = len(curves)
    at = {x: v for x, v in at.items() if len(v) == n}
    if not at:
        return None
    xs = sorted(at)
    return {"x": xs, "mean": [sum(at[x]) / len(at[x]) for x in xs], "low": [min(at[x]) for x in xs],
            "high": [max(at[x]) for x in xs], "n": n}


def wall_times(run: Run) -> dict:
    """Training seconds (train + online k-NN of the epoch records), evaluation seconds, epochs done."""
    epochs = epoch_records(run.records)
    train = sum(float(r.get("train_seconds") or 0) + float(r.get("knn_seconds") or 0)
                for r in epochs + knn_records(run.records))
    evaluated = (run.results or {}).get("evaluated")
    seconds = evaluated.get("seconds") if isinstance(evaluated, dict) else None
    return {"train_seconds": round(train, 2) if epochs else None,
            "eval_seconds": seconds if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
            "epochs_done": len({r.get("epoch") for r in epochs}),
            "epochs": run.config.get("train.epochs")}


def unfinished(run: Run) -> bool:
    """Fewer epoch records than train.epochs."""
    epochs = run.config.get("train.epochs")
    return isinstance(epochs, int) and len({r.get("epoch") for r in epoch_records(run.records)}) < epochs


def missing_parts(run: Run) -> list[str]:
    """What the report could not show for this run, in words."""
    out = list(run.unreadable) + list(run.partial)
    if not run.records and not any("metrics.jsonl" in u for u in run.unreadable):
        out.append("no metrics.jsonl")
    if unfinished(run):
        done = len({r.get("epoch") for r in epoch_records(run.records)})
        out.append(f"training unfinished ({done}/{run.config.get('train.epochs')} epochs)")
    if run.results is None and run.results_problem not in run.unreadable:
        out.append(run.results_problem or "no results.json (not evaluated)")
    if not os.path.isfile(os.path.join(run.run_dir, TEST_EMBEDDINGS)):
        out.append(f"no {TEST_EMBEDDINGS}")
    return out
