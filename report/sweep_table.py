"""`ssl-bf sweep-report`: mean ± std of every numeric result over the seeds of a sweep.

The runs are the elements of FOLDER/sweep.json (ssl_bf/sweep_file.py), else the sub-folders with
a results.json; `collect` and `aggregate` also give `ssl-bf report` its results table.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from typing import Any, Iterator, Optional

from ssl_bf.config import format_override_value
from ssl_bf.sweep_file import element_dirs, read_sweep
from ssl_bf.yaml_io import load_yaml_mapping

from . import ReportError

RESULTS = "results.json"
SEED_KEYS = ("seed",)
# Fields of a list entry that name it rather than measure it, e.g. {"k": 20, "temperature": 0.07}.
_ID_FIELDS = {"k", "temperature", "t", "name", "protocol", "split", "features", "method", "mode", "layer"}


def numeric_leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Flatten a results tree to (path, number); list entries are named by their id fields."""
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(float(obj)):
            yield prefix, float(obj)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            label = str(i)
            if isinstance(item, dict):
                ids = [f"{k}={v}" for k, v in item.items()
                       if k in _ID_FIELDS or isinstance(v, str)]
                if ids:
                    label = ",".join(ids)
                    item = {k: v for k, v in item.items() if not (k in _ID_FIELDS or isinstance(v, str))}
            yield from numeric_leaves(item, f"{prefix}[{label}]")


def _is_headline(metric: str) -> bool:
    leaf = metric.rsplit(".", 1)[-1].lower()
    return leaf.startswith(("top1", "top5", "acc"))


def flat_config(run_dir: str) -> dict:
    """RUN/config.yaml as {'a.b': value} ({} when absent; ReportError when malformed)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    data = load_yaml_mapping(path, "run config", error=ReportError)
    out = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(data, "")
    return out


def collect(folder: str) -> tuple[list[str], list[dict], list[str]]:
    """(swept keys, runs [{'name', 'params', 'results'}], missing run names) of a sweep folder.

    Uses FOLDER/sweep.json when `ssl-bf submit --sweep` wrote it; otherwise every sub-folder
    with a results.json is a run and the swept keys are the config keys that differ.
    """
    sweep = read_sweep(folder)
    runs, missing = [], []
    if sweep is not None:
        keys = list(sweep.keys)
        for el, run_dir in element_dirs(sweep, folder):
            res = _load_results(run_dir)
            if res is None:
                missing.append(el.name)
            else:
                runs.append({"name": el.name, "params": el.labels(), "results": res})
        return keys, runs, missing
    for name in sorted(os.listdir(folder)):
        run_dir = os.path.join(folder, name)
        if not os.path.isdir(run_dir):
            continue
        res = _load_results(run_dir)
        if res is not None:
            runs.append({"name": name, "config": flat_config(run_dir), "results": res})
    keys = differing_keys([r["config"] for r in runs])
    for r in runs:
        r["params"] = {k: format_override_value(r["config"].get(k)) for k in keys}
    return keys, runs, missing


def differing_keys(configs: list[dict]) -> list[str]:
    """The flat config keys (except run.dir) whose values differ between the runs, sorted."""
    if not configs:
        return []
    return [k for k in sorted(set().union(*configs)) if k != "run.dir"
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def _load_results(run_dir: str) -> Optional[dict]:
    path = os.path.join(run_dir, RESULTS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def aggregate(keys: list[str], runs: list[dict]) -> tuple[list[str], list[dict]]:
    """Group runs by the swept keys except the seed; mean and sample std of every numeric leaf.

    Returns (group key names, rows [{'group': {k: v}, 'metric', 'mean', 'std', 'n', 'values'}]).
    """
    group_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in runs:
        gid = tuple(str(r["params"].get(k)) for k in group_keys)
        metrics = groups.setdefault(gid, {})
        for path, value in numeric_leaves(r["results"]):
            metrics.setdefault(path, []).append(value)
    rows = []
    for gid, metrics in groups.items():
        for metric, values in metrics.items():
            n = len(values)
            mean = sum(values) / n
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
            rows.append({"group": dict(zip(group_keys, gid)), "metric": metric, "mean": mean, "std": std,
                         "n": n, "values": values})
    return group_keys, rows


def to_markdown(group_keys: list[str], rows: list[dict]) -> str:
    """One row per metric, one column per group: 'mean ± std (n)'."""
    groups = []
    for r in rows:
        g = tuple(r["group"].get(k) for k in group_keys)
        if g not in groups:
            groups.append(g)
    metrics = []
    for r in rows:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    metrics.sort(key=lambda m: not _is_headline(m))  # accuracies first, the rest in file order
    cell = {(tuple(r["group"].get(k) for k in group_keys), r["metric"]): r for r in rows}
    heads = [", ".join(f"{k}={v}" for k, v in zip(group_keys, g)) or "all runs" for g in groups]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in metrics:
        cells = []
        for g in groups:
            r = cell.get((g, m))
            if r is None:
                cells.append("")
            elif r["n"] > 1:
                cells.append(f"{r['mean']:.2f} ± {r['std']:.2f} (n={r['n']})")
            else:
                cells.append(f"{r['mean']:.2f} (n=1)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(group_keys: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*group_keys, "metric", "mean", "std", "n", "values"])
    for r in rows:
        w.writerow([*(r["group"].get(k) for k in group_keys), r["metric"], f"{r['mean']:.6g}",
                    "" if math.isnan(r["std"]) else f"{r['std']:.6g}", r["n"],
                    " ".join(f"{v:.6g}" for v in r["values"])])
    return buf.getvalue()


def sweep_report(folder: str, out_dir: Optional[str] = None) -> dict:
    """Write FOLDER/sweep-report.md and .csv; return what was written and the table."""
    keys, runs, missing = collect(folder)
    group_keys, rows = aggregate(keys, runs)
    md = to_markdown(group_keys, rows) if rows else ""
    out_dir = out_dir or folder
    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "sweep-report.md"), "csv": os.path.join(out_dir, "sweep-report.csv")}
    if rows:
        grouping = f"grouped by {', '.join(group_keys)}" if group_keys else "all in one group"
        over = ", ".join(k for k in keys if k not in group_keys) or "nothing else varies"
        header = f"# Sweep report: {os.path.abspath(folder)}\n\n{len(runs)} run(s) with results, " \
                 f"{grouping}; mean ± sample std over: {over}.\n\n"
        if missing:
            header += f"Missing results.json: {', '.join(missing)}\n\n"
        with open(paths["markdown"], "w") as f:
            f.write(header + md)
        with open(paths["csv"], "w") as f:
            f.write(to_csv(group_keys, rows))
    return {"keys": keys, "group_keys": group_keys, "runs": len(runs), "missing": missing, "rows": rows,
            "markdown": md, "paths": paths if rows else {}}


def sweep_report_main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="ssl-bf sweep-report",
        description="Aggregate RUN/results.json over a sweep into a mean ± std table (markdown + CSV), "
                    "grouped by the swept keys except the seed.")
    p.add_argument("folder", help="the sweep's base folder (with sweep.json), or any folder of runs")
    p.add_argument("--out", help="where to write sweep-report.md/.csv (default: FOLDER)")
    p.add_argument("--json", metavar="OUT", help="also write the table as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        print(f"ssl-bf sweep-report: error: no such folder: {args.folder}", file=sys.stderr)
        return 2
    try:
        rep = sweep_report(args.folder, args.out)
    except ReportError as err:
        print(f"ssl-bf sweep-report: error: {err}", file=sys.stderr)
        return 2
    if not rep["rows"]:
        missing = f" (no results.json yet in: {', '.join(rep['missing'])})" if rep["missing"] else ""
        print(f"ssl-bf sweep-report: error: no run with results.json under {args.folder}{missing}", file=sys.stderr)
        return 1
    print(rep["markdown"], end="")
    if rep["missing"]:
        print(f"missing results: {', '.join(rep['missing'])}")
    print(f"wrote {rep['paths']['markdown']} and {rep['paths']['csv']}")
    if args.json:
        data = {k: rep[k] for k in ("keys", "group_keys", "runs", "missing", "rows")}
        text = json.dumps(data, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(sweep_report_main())
