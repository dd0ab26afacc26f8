"""`ssl-bf sweep-report`: mean ± std of every numeric result over the seeds of a sweep.

The runs are the elements of FOLDER/sweep.json (ssl_bf/sweep_file.py, checked field by field in
`inputs`), else the sub-folders with a results.json; `collect` and `aggregate` also give
`ssl-bf report` its results table. A run whose results.json is missing or unreadable is listed with
the reason (stdout, sweep-report.md, --json) and never silently left out; exit codes in `inputs`.
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

from ssl_bf.atomic_write import strict_json, write_json, write_text
from ssl_bf.cli_args import ArgumentError, Parser, fail
from ssl_bf.config import PRESENTATION_ONLY, format_override_value
from ssl_bf.outputs import OutputError
from ssl_bf.yaml_io import load_yaml_mapping

from . import ReportError
from .inputs import (EXIT_INPUT, EXIT_NO_RUNS, EXIT_NOT_READ, NotRead, check_folder_argument,
                     check_output_file, check_report_folder, element_dirs, exit_codes_help, is_accuracy,
                     read_results, read_sweep_checked, run_inputs, summary_line)

REPORT_FILES = ("sweep-report.md", "sweep-report.csv")
SEED_KEYS = ("seed",)
# Fields of a list entry that name it rather than measure it, e.g. {"k": 20, "temperature": 0.07}.
_ID_FIELDS = {"k", "temperature", "t", "name", "protocol", "split", "features", "method", "mode", "layer"}
# Fields that hold labels, not measurements (per_group's class lists), left out of the tables.
_LABEL_FIELDS = {"groups"}


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
            if k not in _LABEL_FIELDS:
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
    return is_accuracy(metric.rsplit(".", 1)[-1])


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


def collect(folder: str) -> tuple[list[str], list[dict], list[NotRead]]:
    """(swept keys, runs [{'name', 'params', 'results'}], runs not read) of a sweep folder.

    Uses FOLDER/sweep.json when `ssl-bf submit --sweep` wrote it (checked: ReportError when it
    is malformed); otherwise every sub-folder with a results.json, or that is a run
    (config.yaml/metrics.jsonl), is a run and the swept keys are the config keys that differ.
    A run whose results.json is missing or unreadable is in the third list with the reason,
    never silently dropped.
    """
    sweep = read_sweep_checked(folder)
    runs: list[dict] = []
    not_read: list[NotRead] = []
    if sweep is not None:
        keys = list(sweep.keys)
        for el, run_dir in element_dirs(sweep, folder):
            if not os.path.isdir(run_dir):
                not_read.append(NotRead(el.name, f"no run folder ({run_dir}): not started", "not started", True))
                continue
            res, problem, kind = read_results(run_dir)
            if res is None:
                not_read.append(NotRead(el.name, problem, kind, True))
            else:
                runs.append({"name": el.name, "params": el.labels(), "results": res})
        return keys, runs, not_read
    for name in sorted(os.listdir(folder)):
        run_dir = os.path.join(folder, name)
        if not os.path.isdir(run_dir):
            continue
        res, problem, kind = read_results(run_dir)
        if res is not None:
            runs.append({"name": name, "config": flat_config(run_dir), "results": res})
        elif kind == "unreadable" or is_run(run_dir):
            not_read.append(NotRead(name, problem, kind, False))
    keys = differing_keys([r["config"] for r in runs])
    for r in runs:
        r["params"] = {k: format_override_value(r["config"].get(k)) for k in keys}
    return keys, runs, not_read


def is_run(path: str) -> bool:
    """A run folder: it has a config.yaml or a metrics.jsonl (whatever is there: a folder in their
    place is then reported as unreadable, not skipped)."""
    return os.path.lexists(os.path.join(path, "config.yaml")) or os.path.lexists(os.path.join(path, "metrics.jsonl"))


def differing_keys(configs: list[dict]) -> list[str]:
    """The flat config keys whose values differ between the runs, sorted; keys that only say where a
    run writes or how it shows progress (run.dir, run.progress, run.tensorboard) never split variants."""
    if not configs:
        return []
    return [k for k in sorted(set().union(*configs)) if k not in PRESENTATION_ONLY
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


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
            mean, std = mean_and_std(values)
            rows.append({"group": dict(zip(group_keys, gid)), "metric": metric, "mean": mean, "std": std,
                         "n": len(values), "values": values})
    return group_keys, rows


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for one value) of finite values, on the values divided by a power
    of two near the largest magnitude: exact (the same figures as without it), and no sum or square
    overflows or underflows however large or small they are."""
    n = len(values)
    peak = max(abs(v) for v in values)
    scale = math.ldexp(1.0, math.frexp(peak)[1] - 1) if peak else 1.0  # peak / scale in [1, 2)
    scaled = [v / scale for v in values]
    mean = sum(scaled) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in scaled) / (n - 1)) * scale if n > 1 else float("nan")
    return mean * scale, std


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


def not_read_markdown(not_read: list[NotRead], total: int) -> str:
    """The list of runs a report could not read, for a markdown file ('' when none)."""
    if not not_read:
        return ""
    lines = [f"## Not read: {len(not_read)} of {total} run(s), left out of every number", ""]
    lines += [f"- `{n.name}`: {n.problem}" for n in not_read]
    return "\n".join(lines) + "\n"


def sweep_report(folder: str, out_dir: Optional[str] = None) -> dict:
    """Write FOLDER/sweep-report.md and .csv; return what was written and the table.

    'not_read' lists every run whose results could not be used, with the reason; they are also
    in sweep-report.md. Nothing is written when no run has results."""
    keys, runs, not_read = collect(folder)
    group_keys, rows = aggregate(keys, runs)
    md = to_markdown(group_keys, rows) if rows else ""
    out_dir = out_dir or folder
    paths = {"markdown": os.path.join(out_dir, REPORT_FILES[0]), "csv": os.path.join(out_dir, REPORT_FILES[1])}
    total = len(runs) + len(not_read)
    if rows:
        grouping = f"grouped by {', '.join(group_keys)}" if group_keys else "all in one group"
        over = ", ".join(k for k in keys if k not in group_keys) or "nothing else varies"
        header = f"# Sweep report: {os.path.abspath(folder)}\n\n{len(runs)} of {total} run(s) with results, " \
                 f"{grouping}; mean ± sample std over: {over}.\n\n"
        body = header + md + ("\n" + not_read_markdown(not_read, total) if not_read else "")
        write_text(body, paths["markdown"], option="the sweep report file")
        write_text(to_csv(group_keys, rows), paths["csv"], option="the sweep report file")
    return {"keys": keys, "group_keys": group_keys, "runs": len(runs), "total": total,
            "missing": [n.name for n in not_read], "not_read": not_read, "rows": rows,
            "markdown": md, "paths": paths if rows else {}}


def sweep_report_parser() -> Parser:
    p = Parser(
        prog="ssl-bf sweep-report", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=exit_codes_help(True),
        description="Aggregate RUN/results.json over a sweep into a mean ± std table (markdown + CSV), "
                    "grouped by the swept keys except the seed. Every run that could not be read is listed "
                    "with the file and the reason.")
    p.add_argument("folder", help="the sweep's base folder (with sweep.json), or any folder of runs")
    p.add_argument("--out", metavar="FOLDER",
                   help="the folder to write sweep-report.md/.csv into (default: FOLDER)")
    p.add_argument("--json", metavar="OUT", help="also write the table as JSON ('-' for stdout)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when a run of sweep.json has no readable results.json (still listed)")
    return p


def sweep_report_main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "ssl-bf sweep-report"
    try:
        args = sweep_report_parser().parse_args(argv)
    except ArgumentError as err:
        return fail(prog, err)
    try:
        check_folder_argument(args.folder)
        inputs = run_inputs(args.folder)
        check_report_folder(args.out or args.folder, REPORT_FILES, protected=inputs,
                            what="--out" if args.out else "the output folder (FOLDER; see --out)")
        check_output_file(args.json, [*inputs, *(os.path.join(args.out or args.folder, n) for n in REPORT_FILES)],
                          "--json")
        rep = sweep_report(args.folder, args.out)
    except (ReportError, OutputError) as err:  # OutputError: a write refused at write time
        return fail(prog, err, EXIT_INPUT)
    not_read = rep["not_read"]
    if rep["rows"]:
        print(rep["markdown"], end="")
    if not_read:
        print(f"not read ({len(not_read)} of {rep['total']} runs, left out of the table):")
        for n in not_read:
            print(f"  {n}")
    if rep["rows"]:
        print(f"wrote {rep['paths']['markdown']} and {rep['paths']['csv']}")
    if args.json:
        data = {k: rep[k] for k in ("keys", "group_keys", "runs", "total", "missing", "rows")}
        data["not_read"] = [n.to_json() for n in not_read]
        if args.json == "-":
            print(json.dumps(strict_json(data), indent=2, allow_nan=False))
        else:
            try:
                write_json(data, args.json, option="--json")
            except OutputError as err:
                return fail(prog, err, EXIT_INPUT)
    blocking = [n for n in not_read if n.blocking]
    if blocking and not args.allow_missing:
        print(f"{prog}: error: {summary_line(not_read, rep['total'], 'the table')}", file=sys.stderr)
        return EXIT_NOT_READ
    if not rep["rows"]:
        print(f"{prog}: error: no run with results.json under {args.folder}"
              + (f" ({len(not_read)} listed above)" if not_read else ""), file=sys.stderr)
        return EXIT_NO_RUNS
    return 0


if __name__ == "__main__":
    sys.exit(sweep_report_main())
