"""`ssl-bf report FOLDER`: plots and a markdown summary of one run folder or a folder of runs.

Reads, per run: `config.yaml`, `metrics.jsonl` (step, epoch-end and event records),
`results.json` (from `ssl-bf evaluate`) and `embeddings/test.safetensors`. A sweep folder's runs
come from its `sweep.json`; any other folder's runs are its sub-folders with a `config.yaml`.
Runs are grouped into variants by the swept keys except the seed, and the results table is the
one `ssl-bf sweep-report` computes (`sweep_table.collect` / `aggregate`). Written into
FOLDER/report/ (or --out), each file atomically: loss.png, knn.png, ablation.png, tsne.png,
report.md, report.json; with per-group figures also knn_groups.png and groups.png (group_figures.py).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from typing import Optional

from ssl_bf.atomic_write import write_json, write_text
from ssl_bf.cli_args import ArgumentError, Parser, fail
from ssl_bf.outputs import OutputError
from ssl_bf.run_layout import Owner

from . import ReportError
from .inputs import (EXIT_INPUT, EXIT_NOT_READ, NotRead, check_folder_argument, check_report_folder,
                     exit_codes_help, run_inputs, summary_line)
from .records import (TEST_EMBEDDINGS, Run, Variant, find_runs, group_runs, knn_curve, loss_curve, mean_curve,
                      missing_parts, not_read, step_records, steps_per_epoch, unfinished, wall_times)
from .group_figures import FILES as GROUP_FILES
from .group_figures import group_markdown, group_section
from .sweep_table import aggregate

# (metric path as sweep_table.numeric_leaves names it, column title, bar-chart label)
HEADLINE = (
    ("knn[k=20,temperature=0.07].top1", "k-NN top-1 (k=20, T=0.07)", "k-NN\nk=20, T=0.07"),
    ("knn[k=200,temperature=0.1].top1", "k-NN top-1 (k=200, T=0.1)", "k-NN\nk=200, T=0.1"),
    ("linear.top1", "linear top-1 (cached)", "linear\n(cached)"),
    ("logreg.top1", "logreg top-1", "logreg"),
)
# Raw-pixel k-NN anchors (784-d, cosine, 60k train / 10k test; docs/protocols.md, tests/test_knn.py).
RAW_PIXEL_ANCHORS = {
    "fashion-mnist": {"knn[k=20,temperature=0.07].top1": 84.59, "knn[k=200,temperature=0.1].top1": 78.85},
}
FILES = {"loss": "loss.png", "knn": "knn.png", "ablation": "ablation.png", "tsne": "tsne.png",
         "markdown": "report.md", "json": "report.json"}


def _finite(v: float) -> Optional[float]:
    return v if v is not None and math.isfinite(v) else None


def results_table(keys: list[str], group_keys: list[str], variants: list[Variant]) -> dict[str, dict]:
    """{variant label: {metric path: {'mean','std','n','values'}}} of the headline metrics."""
    runs = [{"params": r.params, "results": r.results} for v in variants for r in v.runs if r.results is not None]
    _, rows = aggregate(keys, runs)
    wanted = {m for m, _, _ in HEADLINE}
    table: dict[str, dict] = {v.label: {} for v in variants}
    for row in rows:
        if row["metric"] not in wanted:
            continue
        for v in variants:
            if all(str(row["group"].get(k)) == v.group[k] for k in group_keys):
                table[v.label][row["metric"]] = {"mean": row["mean"], "std": _finite(row["std"]),
                                                 "n": row["n"], "values": row["values"]}
    return table


def _dataset(runs: list[Run]) -> Optional[str]:
    names = {r.config.get("data.name") for r in runs}
    return names.pop() if len(names) == 1 else None


def _embedding_maps(variants: list[Variant], sample: int, perplexity: Optional[float],
                    verbose: bool = False) -> tuple[list[dict], Optional[list[str]], list[str]]:
    """t-SNE of the first run with test embeddings in each variant: (maps, class names, notes)."""
    from ssl_bf.eval.formats import EmbeddingsError, load_embeddings

    from .tsne import MIN_MAP_POINTS, TSNE_SEED, MapError, sample_indices, tsne_2d

    maps, classes, notes = [], None, []
    for v in variants:
        run = next((r for r in v.runs if os.path.isfile(os.path.join(r.run_dir, TEST_EMBEDDINGS))), None)
        if run is None:
            notes.append(f"{v.label}: no run with {TEST_EMBEDDINGS}")
            continue
        path = os.path.join(run.run_dir, TEST_EMBEDDINGS)
        try:
            emb = load_embeddings(path)
        except EmbeddingsError as err:
            notes.append(f"{v.label}: no map: {err}")
            continue
        except (ValueError, OSError, RuntimeError, KeyError) as err:  # a file no reader recognises
            notes.append(f"{v.label}: no map: {path} cannot be read ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else 'corrupt'})")
            continue
        idx = sample_indices(len(emb), sample, TSNE_SEED)
        if len(idx) < MIN_MAP_POINTS:
            notes.append(f"{v.label}: only {len(idx)} test embeddings, too few for a map")
            continue
        if perplexity is not None and perplexity >= len(idx):
            notes.append(f"{v.label}: no map: --perplexity {perplexity:g} needs more than {len(idx)} test points "
                         f"({path} has {len(emb)})")
            continue
        if verbose:
            print(f"t-SNE of {len(idx)} test points: {run.name}", file=sys.stderr, flush=True)
        try:
            xy = tsne_2d(emb.embeddings[idx], TSNE_SEED, perplexity)  # (n, 2)
        except MapError as err:
            notes.append(f"{v.label}: no map of {path}: {err}")
            continue
        maps.append({"label": v.label, "title": v.label if v.label == run.name else f"{v.label}\n{run.name}",
                     "xy": xy, "labels": emb.labels[idx], "run": run.name, "points": len(idx)})
        classes = classes or emb.classes
    return maps, classes, notes


def _curve_figures(variants: list[Variant], colors: dict, out_dir: str, band: bool) -> dict[str, str]:
    """loss.png and knn.png (mean over each variant's runs); returns {figure: file name} drawn."""
    from . import plots

    images = {}
    for kind, fn in (("loss", loss_curve), ("knn", knn_curve)):
        series = []
        for v in variants:
            finished = [r for r in v.runs if not unfinished(r)]
            s = mean_curve([fn(r) for r in (finished or v.runs)])  # runs still training join when done
            if s is not None:
                series.append({"label": v.label, "color": colors[v.label], **s})
        if not series:
            continue
        if kind == "loss":
            plots.plot_curves(series, os.path.join(out_dir, FILES[kind]), title="training loss", xlabel="epoch",
                              ylabel="loss", band=band)
        else:
            full = [r.config.get("monitor.full_sets", True) for v in variants for r in v.runs]
            sets = "subsets" if not any(full) else ("subsets; full sets at start and end" if all(full) else
                                                     "subsets; some runs use the full sets at start and end")
            plots.plot_curves(series, os.path.join(out_dir, FILES[kind]), markers=True, band=band, integer_x=True,
                              title=f"online k-NN ({sets}; epoch 0 = random init)", xlabel="epoch",
                              ylabel="k-NN top-1 (%)")
        images[kind] = FILES[kind]
    return images


def _results_figure(table: dict, variants: list[Variant], colors: dict, dataset: Optional[str],
                    out_dir: str) -> dict[str, str]:
    """ablation.png: the headline metrics, grouped bars, raw-pixel anchors; {} if no results."""
    import numpy as np

    from . import plots

    metrics = [m for m in HEADLINE if any(m[0] in table[v.label] for v in variants)]
    shown = [v for v in variants if table[v.label]]
    if not metrics or not shown:
        return {}

    def grid(field: str) -> np.ndarray:  # (metrics, variants), NaN where absent
        cells = [[table[v.label].get(m, {}).get(field) for v in shown] for m, _, _ in metrics]
        return np.array([[np.nan if c is None else c for c in row] for row in cells], dtype=float)

    seeds = max(cell["n"] for v in shown for cell in table[v.label].values())
    title = "evaluation (mean ± std over seeds)" if seeds > 1 else "evaluation (one seed)"
    anchors = RAW_PIXEL_ANCHORS.get(dataset or "", {})
    bar_anchors = {i: (anchors[m], f"raw pixels ({dataset})") for i, (m, _, _) in enumerate(metrics) if m in anchors}
    plots.plot_ablation_bars([label for _, _, label in metrics], [v.label for v in shown], grid("mean"), grid("std"),
                             os.path.join(out_dir, FILES["ablation"]), anchors=bar_anchors,
                             colors=[colors[v.label] for v in shown], title=title)
    return {"ablation": FILES["ablation"]}


def build_report(folder: str, out_dir: Optional[str] = None, *, tsne_sample: int = 2000, tsne: bool = True,
                 perplexity: Optional[float] = None, band: bool = True, command: str = "",
                 verbose: bool = False) -> dict:
    """Collect, plot and write everything; returns the report.json content (plus 'paths')."""
    from . import plots

    tic = time.perf_counter()
    keys, runs, not_started = find_runs(folder)
    group_keys, variants = group_runs(keys, runs)
    unread = not_read(runs, not_started)
    out_dir = out_dir or os.path.join(folder, "report")
    colors = dict(zip((v.label for v in variants), plots.variant_colors(len(variants))))
    notes: list[str] = []
    estimated = [r.name for r in runs if step_records(r.records) and steps_per_epoch(r)[1]]
    if estimated:
        notes.append("steps per epoch estimated from the config (no finished epoch yet): " + ", ".join(estimated))

    images = _curve_figures(variants, colors, out_dir, band)
    table = results_table(keys, group_keys, variants)
    dataset = _dataset(runs)
    images.update(_results_figure(table, variants, colors, dataset, out_dir))
    group_images, per_group = group_section(variants, colors, out_dir, band)
    images.update(group_images)
    tsne_info = None
    if tsne:
        maps, classes, map_notes = _embedding_maps(variants, tsne_sample, perplexity, verbose)
        notes.extend(map_notes)
        if maps:
            plots.plot_embedding_maps(maps, os.path.join(out_dir, FILES["tsne"]), class_names=classes,
                                      title=f"test embeddings, t-SNE of {maps[0]['points']} points")
            images["tsne"] = FILES["tsne"]
            tsne_info = {"sample": maps[0]["points"], "runs": {m["label"]: m["run"] for m in maps},
                         "classes": classes}

    report = {
        "folder": os.path.normpath(folder), "command": command, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "keys": keys, "group_keys": group_keys, "dataset": dataset,
        "metrics": {m: title for m, title, _ in HEADLINE}, "anchors": RAW_PIXEL_ANCHORS.get(dataset or "", {}),
        "variants": [{"label": v.label, "group": v.group, "runs": [r.name for r in v.runs],
                      "results": table[v.label]} for v in variants],
        "runs": [{"name": r.name, "variant": v.label, "params": r.params, **wall_times(r),
                  "missing": missing_parts(r)} for v in variants for r in v.runs],
        "not_started": not_started, "not_read": [n.to_json() for n in unread],
        "images": images, "tsne": tsne_info, "notes": notes, **({"per_group": per_group} if per_group else {}),
        "seconds": round(time.perf_counter() - tic, 2),
    }
    write_text(to_markdown(report), os.path.join(out_dir, FILES["markdown"]), option="the report file",
               owner=Owner.REPORT)
    write_json(report, os.path.join(out_dir, FILES["json"]), option="the report file", owner=Owner.REPORT)
    report["paths"] = {k: os.path.join(out_dir, name) for k, name in {**FILES, **GROUP_FILES}.items()
                       if k in images or k in ("markdown", "json")}
    return report


def format_cell(cell: Optional[dict]) -> str:
    """'mean ± std (n=N)', or 'mean (n=1)', or '' with 2 decimals."""
    if not cell:
        return ""
    if cell["n"] > 1 and cell["std"] is not None:
        return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n']})"
    return f"{cell['mean']:.2f} (n={cell['n']})"


def _seconds(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.1f}"


def to_markdown(report: dict) -> str:
    """report.md: the results table, the figures (relative links), wall times, what is missing."""
    images = report["images"]
    over = ", ".join(k for k in report["keys"] if k not in report["group_keys"])
    if len(report["runs"]) == 1:
        scope = "One run."
    else:
        scope = (f"{len(report['runs'])} runs in {len(report['variants'])} variant(s)"
                 + (f", grouped by {', '.join(report['group_keys'])}" if report["group_keys"] else "")
                 + (f"; mean ± sample std over {over}." if over else "; one run each, so no spread."))
    lines = [f"# Report: {os.path.basename(report['folder'].rstrip(os.sep))}", "",
             f"Made by `{report['command']}` on {report['time']}. {scope}", ""]
    unread = report.get("not_read") or []
    if unread:
        total = len(report["runs"]) + len(report["not_started"])
        lines += [f"**Not read, so left out of what follows ({len(unread)} of {total} run(s)):** "
                  + "; ".join(f"`{n['name']}`: {n['problem']}" for n in unread) + ".", ""]
    metrics = [m for m in report["metrics"] if any(m in v["results"] for v in report["variants"])]
    lines += ["## Evaluation (results.json)", ""]
    if metrics:
        lines += ["| variant | " + " | ".join(report["metrics"][m] for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for v in report["variants"]:
            lines.append(f"| {v['label']} | " + " | ".join(format_cell(v["results"].get(m)) for m in metrics) + " |")
        anchors = report["anchors"]
        if anchors:
            lines += ["", f"Raw-pixel anchors ({report['dataset']}): "
                      + ", ".join(f"{report['metrics'][m]} {a:.2f}" for m, a in anchors.items()) + "."]
    else:
        lines.append("No run has a results.json yet (`ssl-bf evaluate RUN`).")
    if "ablation" in images:
        lines += ["", f"![evaluation bars]({images['ablation']})"]
    lines += ["", *group_markdown(report.get("per_group"), images), "## Training curves", ""]  # the section ends blank
    for key, text in (("loss", "training loss"), ("knn", "online k-NN")):
        lines.append(f"![{text}]({images[key]})" if key in images else f"No {text} records.")
        lines.append("")
    lines += ["## Test embeddings", ""]
    if "tsne" in images:
        info = report["tsne"]
        lines += [f"t-SNE (PCA init, random_state 0, rows L2-normalised) of {info['sample']} test points; "
                  + ", ".join(f"`{run}`" if label == run else f"{label}: `{run}`"
                              for label, run in info["runs"].items()) + ".", "",
                  f"![t-SNE]({images['tsne']})", ""]
    else:
        lines += ["No map (skipped, or no run has embeddings/test.safetensors).", ""]
    lines += ["## Wall time", "", "| run | variant | epochs | training s | evaluation s |", "|---|---|---|---|---|"]
    for r in report["runs"]:
        epochs = f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] is not None else str(r["epochs_done"])
        lines.append(f"| {r['name']} | {r['variant']} | {epochs} | {_seconds(r['train_seconds'])} | "
                     f"{_seconds(r['eval_seconds'])} |")
    lines += ["", "Training s = sum of `train_seconds` and `knn_seconds` over the epoch and k-NN records of "
              "metrics.jsonl "
              "(the time of an epoch cut short by a preemption or a budget is not in it); "
              "evaluation s = results.json `evaluated.seconds`.", ""]
    missing = [(r["name"], r["missing"]) for r in report["runs"] if r["missing"]]
    if missing or report["not_started"] or report["notes"]:
        lines += ["## Missing or partial", ""]
        lines += [f"- `{name}`: {'; '.join(parts)}" for name, parts in missing]
        if report["not_started"]:
            lines.append(f"- not started (no run folder yet), {len(report['not_started'])} run(s): "
                         + ", ".join(f"`{name}`" for name in report["not_started"]))
        lines += [f"- {note}" for note in report["notes"]]
        lines.append("")
    return "\n".join(lines)


def report_parser() -> Parser:
    p = Parser(
        prog="ssl-bf report", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=exit_codes_help(False),
        description="Plots (loss and online k-NN curves, evaluation bars, t-SNE of the test embeddings) and "
        "report.md/report.json for a run folder or a folder of runs (a sweep). Every run that could not be "
        "read is listed with the file and the reason.")
    p.add_argument("folder", help="a run folder, a sweep folder (with sweep.json), or any folder of runs")
    p.add_argument("--out", metavar="FOLDER", help="output folder (default: FOLDER/report)")
    p.add_argument("--tsne-sample", type=int, default=2000, metavar="N",
                   help="test points in the t-SNE map (default 2000)")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE map")
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity (default: 30, less for small samples)")
    p.add_argument("--no-band", action="store_true", help="no min..max band around the mean curves")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when a run of sweep.json has no readable results.json, or a run's "
                        "results.json or metrics.jsonl cannot be read (they are still listed)")
    return p


def _check_options(args: argparse.Namespace) -> None:
    if args.tsne_sample < 1:
        raise ReportError("--tsne-sample must be at least 1 (use --no-tsne to skip the map)")
    if args.perplexity is not None:
        if not math.isfinite(args.perplexity) or args.perplexity <= 0:
            raise ReportError(f"--perplexity must be a positive number, got {args.perplexity:g}")
        if not args.no_tsne and args.perplexity >= args.tsne_sample:
            raise ReportError(f"--perplexity {args.perplexity:g} must be below --tsne-sample {args.tsne_sample} "
                              f"(t-SNE needs more points than the perplexity)")
    check_folder_argument(args.folder)
    check_report_folder(args.out or os.path.join(args.folder, "report"), tuple(FILES.values()),
                        protected=run_inputs(args.folder), owner=Owner.REPORT,
                        what="--out" if args.out else "the output folder (FOLDER/report; see --out)")


def report_main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "ssl-bf report"
    try:
        args = report_parser().parse_args(argv)
    except ArgumentError as err:
        return fail(prog, err)
    try:
        _check_options(args)
        rep = build_report(args.folder, args.out, tsne_sample=args.tsne_sample, tsne=not args.no_tsne,
                           perplexity=args.perplexity, band=not args.no_band,
                           command=shlex.join(["ssl-bf", "report", *argv]), verbose=True)
    except (ReportError, OutputError) as err:  # OutputError: a write refused at write time
        return fail(prog, err, EXIT_INPUT)
    for path in rep["paths"].values():
        print(f"wrote {path}")
    partial = [r["name"] for r in rep["runs"] if r["missing"]]
    if partial:
        print(f"missing or partial: {', '.join(partial)} (see report.md)")
    for note in rep["notes"]:
        print(f"note: {note}")
    unread = [NotRead(**n) for n in rep["not_read"]]
    if unread:
        print(f"not read ({len(unread)} run(s); what could not be read is left out of the report):")
        for n in unread:
            print(f"  {n}")
    if any(n.blocking for n in unread) and not args.allow_missing:
        total = len(rep["runs"]) + len(rep["not_started"])
        print(f"{prog}: error: {summary_line(unread, total, 'the report')}", file=sys.stderr)
        return EXIT_NOT_READ
    return 0


if __name__ == "__main__":
    sys.exit(report_main())
