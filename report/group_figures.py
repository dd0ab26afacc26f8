"""Per-group figures of `ssl-bf report`: many / medium / few / class_std over the seeds of each variant.

Reads what the runs already hold (nothing here opens a file): the `per_group` of the online k-NN
events in metrics.jsonl, and the `per_group` of results.json's k-NN k=20 row, `logreg`, `linear`
and `few_shot` entries (eval/evaluate.py). From them it draws knn_groups.png (one panel per group,
one line per variant = mean over seeds, min..max band) and groups.png (bars with std error bars),
and gives the report its per-group table and one comparison line per BatchFormer pair of variants.
Runs without per-group figures give nothing here (no file, no table).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from .records import Run, Variant, knn_records, mean_curve, unfinished

CURVE_GROUPS = ("many", "medium", "few")
GROUP_FIELDS = (*CURVE_GROUPS, "class_std")
FILES = {"knn_groups": "knn_groups.png", "groups": "groups.png"}
BF_SUFFIX = "+bf"
BF_KEY = "batchformer.enabled"
HEADLINE_K = 20
HEADLINE_T = 0.07
FEW_SHOTS = ("100", "10")


def _number(v) -> Optional[float]:
    """A finite real number as float; None for anything else (null, bool, NaN, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def probe_groups(results: dict) -> dict[str, dict]:
    """{probe title: per_group} of one results.json: k-NN k=20 (T=0.07 first), logreg, linear,
    few-shot 100 and 10; a probe without a `per_group` object is left out."""
    out: dict[str, dict] = {}
    rows = [r for r in results.get("knn") or [] if isinstance(r, dict) and r.get("k") == HEADLINE_K
            and isinstance(r.get("per_group"), dict)] if isinstance(results.get("knn"), list) else []
    if rows:
        row = next((r for r in rows if r.get("temperature") == HEADLINE_T), rows[0])
        t = _number(row.get("temperature"))
        out[f"k-NN k={HEADLINE_K}" + (f", T={t:g}" if t is not None else "")] = row["per_group"]
    for key in ("logreg", "linear"):
        entry = results.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("per_group"), dict):
            out[key] = entry["per_group"]
    few = results.get("few_shot")
    for shots in FEW_SHOTS if isinstance(few, dict) else ():
        entry = few.get(shots)
        if isinstance(entry, dict) and isinstance(entry.get("per_group"), dict):
            out[f"{shots}-shot ({entry.get('protocol', 'logreg')})"] = entry["per_group"]
    return out


def _summary(values: list[float]) -> dict:
    """Mean and sample std (ddof 1; None for one value) of the seeds' figures."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": values}


def group_table(variants: Sequence[Variant]) -> dict[str, dict]:
    """{variant: {probe: {field: {'mean','std','n','values'}}}} over the runs with results.json;
    a variant or probe without any figure is left out."""
    table: dict[str, dict] = {}
    for v in variants:
        per_probe: dict[str, dict[str, list[float]]] = {}
        for r in v.runs:
            for probe, groups in probe_groups(r.results or {}).items():
                for field in GROUP_FIELDS:
                    value = _number(groups.get(field))
                    if value is not None:
                        per_probe.setdefault(probe, {}).setdefault(field, []).append(value)
        cells = {p: {f: _summary(vals) for f, vals in fields.items()} for p, fields in per_probe.items()}
        if cells:
            table[v.label] = cells
    return table


def probes_of(table: dict) -> list[str]:
    """The probes in the table, in first-seen order."""
    return list(dict.fromkeys(p for cells in table.values() for p in cells))


def group_curve(run: Run, group: str) -> tuple[list[float], list[float]]:
    """(epoch, online k-NN top-1 of `group`) of the knn events with a per_group figure."""
    points = {}
    for r in knn_records(run.records):
        per_group = r.get("per_group")
        value = _number(per_group.get(group)) if isinstance(per_group, dict) else None
        if value is not None and r.get("epoch") is not None:
            points[float(r["epoch"] + 1)] = value
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def group_curves(variants: Sequence[Variant], colors: dict) -> dict[str, list[dict]]:
    """{group: [series per variant]} (mean and min..max over its runs, like knn.png); {} without
    any per-group k-NN event."""
    panels: dict[str, list[dict]] = {}
    for group in CURVE_GROUPS:
        series = []
        for v in variants:
            finished = [r for r in v.runs if not unfinished(r)]
            s = mean_curve([group_curve(r, group) for r in (finished or v.runs)])
            if s is not None:
                series.append({"label": v.label, "color": colors[v.label], **s})
        if series:
            panels[group] = series
    return panels


def bf_pairs(variants: Sequence[Variant]) -> list[tuple[Variant, Variant]]:
    """(without, with) BatchFormer: labels equal once `+bf` is removed, or groups that differ only in
    batchformer.enabled (false vs true)."""
    pairs = []
    for a in variants:
        for b in variants:
            if a is b:
                continue
            by_name = b.label == a.label + BF_SUFFIX
            differ = {k for k in set(a.group) | set(b.group) if a.group.get(k) != b.group.get(k)}
            by_config = (differ == {BF_KEY} and str(a.group.get(BF_KEY)).lower() == "false"
                         and str(b.group.get(BF_KEY)).lower() == "true")
            if by_name or by_config:
                pairs.append((a, b))
    return pairs


def compare(table: dict, without: str, with_bf: str) -> list[dict]:
    """Per probe and field both variants have: diff of means (with - without), noise = the larger
    of the two seed stds, and whether |diff| exceeds it (None: a variant has one seed)."""
    out = []
    a, b = table.get(without, {}), table.get(with_bf, {})
    for probe in [p for p in probes_of(table) if p in a and p in b]:
        for field in [f for f in GROUP_FIELDS if f in a[probe] and f in b[probe]]:
            ca, cb = a[probe][field], b[probe][field]
            diff = cb["mean"] - ca["mean"]
            noise = None if ca["std"] is None or cb["std"] is None else max(ca["std"], cb["std"])
            out.append({"without": without, "with": with_bf, "probe": probe, "field": field, "diff": diff,
                        "noise": noise, "beyond": None if noise is None else abs(diff) > noise})
    return out


def verdict(beyond: Optional[bool]) -> str:
    return {True: "beyond seed noise", False: "within seed noise", None: "one seed, no noise estimate"}[beyond]


def draw_group_curves(panels: dict[str, list[dict]], path: str, band: bool = True) -> None:
    """knn_groups.png: one panel per group, one line per variant, min..max band."""
    import matplotlib.ticker
    import numpy as np

    from .plots import plt, save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (group, series) in zip(axes.flat, panels.items()):
        for s in series:
            x, y = np.asarray(s["x"], float), np.asarray(s["mean"], float)  # (P,), (P,)
            label = s["label"] + (f" (n={s['n']})" if s.get("n", 1) > 1 else "")
            ax.plot(x, y, color=s["color"], label=label, marker="o", markersize=4, linewidth=1.4)
            if band:
                ax.fill_between(x, s["low"], s["high"], color=s["color"], alpha=0.15, linewidth=0)
        ax.set(title=group, xlabel="epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("k-NN top-1 (%)")
    axes.flat[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("online k-NN by class group (mean over seeds, min-max band)")
    fig.tight_layout()
    save_figure(fig, path)


def draw_group_bars(table: dict, labels: Sequence[str], colors: dict, path: str) -> None:
    """groups.png: one panel per probe; per field one bar per variant, error bar = std over seeds."""
    import numpy as np

    from .plots import plt, save_figure

    probes = probes_of(table)
    fig, axes = plt.subplots(1, len(probes), figsize=(max(4.5, 1.2 * len(labels) + 3.0) * len(probes), 4.4),
                             squeeze=False, sharey=True)
    width = 0.8 / max(len(labels), 1)
    for ax, probe in zip(axes.flat, probes):
        for j, label in enumerate(labels):
            cells = [table.get(label, {}).get(probe, {}).get(f) for f in GROUP_FIELDS]
            mean = np.array([np.nan if c is None else c["mean"] for c in cells])  # (F,)
            std = np.array([np.nan if c is None or c["std"] is None else c["std"] for c in cells])  # (F,)
            x = np.arange(len(GROUP_FIELDS)) - 0.4 + width * (j + 0.5)  # (F,)
            ax.bar(x, np.nan_to_num(mean), width, color=colors[label], label=label)
            shown = np.isfinite(mean) & np.isfinite(std)
            if shown.any():
                ax.errorbar(x[shown], mean[shown], yerr=std[shown], fmt="none", ecolor="black", capsize=3,
                            linewidth=1)
        ax.set_xticks(np.arange(len(GROUP_FIELDS)), GROUP_FIELDS, fontsize=8)
        ax.set_title(probe, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].set_ylabel("top-1 (%) / class std (points)")
    axes.flat[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("per-group accuracy (mean ± std over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


def group_section(variants: Sequence[Variant], colors: dict, out_dir: str,
                  band: bool = True) -> tuple[dict[str, str], Optional[dict]]:
    """Draw the per-group figures the runs have data for: ({figure: file name}, the report JSON's
    `per_group`, None when no run has a per-group figure)."""
    images: dict[str, str] = {}
    panels = group_curves(variants, colors)
    if panels:
        draw_group_curves(panels, os.path.join(out_dir, FILES["knn_groups"]), band)
        images["knn_groups"] = FILES["knn_groups"]
    table = group_table(variants)
    if table:
        draw_group_bars(table, [v.label for v in variants if v.label in table], colors,
                        os.path.join(out_dir, FILES["groups"]))
        images["groups"] = FILES["groups"]
    if not images:
        return {}, None
    comparisons = [c for a, b in bf_pairs(variants) for c in compare(table, a.label, b.label)]
    return images, {"fields": list(GROUP_FIELDS), "probes": probes_of(table), "table": table,
                    "comparisons": comparisons}


def _cell(cell: Optional[dict]) -> str:
    if not cell:
        return ""
    spread = f" ± {cell['std']:.2f}" if cell["std"] is not None else ""
    return f"{cell['mean']:.2f}{spread} (n={cell['n']})"


def group_markdown(section: Optional[dict], images: dict) -> list[str]:
    """report.md's per-group section: a table per probe, the BatchFormer comparison lines, figures."""
    if not section:
        return []
    lines = ["## Per-group accuracy", "",
             "Mean ± sample std over seeds of each group's top-1 (%) and of class_std (std of per-class top-1); "
             "a few-shot figure is first each seed's mean over its draws.", ""]
    for probe in section["probes"]:
        lines += [f"**{probe}**", "", "| variant | " + " | ".join(section["fields"]) + " |",
                  "|---|" + "---|" * len(section["fields"])]
        for label, cells in section["table"].items():
            if probe in cells:
                lines.append(f"| {label} | " + " | ".join(_cell(cells[probe].get(f)) for f in section["fields"]) + " |")
        lines.append("")
    pairs = list(dict.fromkeys((c["without"], c["with"], c["probe"]) for c in section["comparisons"]))
    if pairs:
        lines += ["BatchFormer pairs (difference of the means, with minus without; noise = the larger seed std):", ""]
    for without, with_bf, probe in pairs:
        parts = [f"{c['field']} {c['diff']:+.2f} ({verdict(c['beyond'])}"
                 + (f", noise {c['noise']:.2f})" if c["noise"] is not None else ")")
                 for c in section["comparisons"] if (c["without"], c["with"], c["probe"]) == (without, with_bf, probe)]
        lines.append(f"- `{with_bf}` vs `{without}`, {probe}: " + "; ".join(parts) + ".")
    if pairs:
        lines.append("")
    for key, text in (("groups", "per-group bars"), ("knn_groups", "online k-NN by group")):
        if key in images:
            lines += [f"![{text}]({images[key]})", ""]
    return lines
