"""`ssl-bf linear --protocol cached|logreg` on loaded embeddings: one probe on every train row, or
few-shot / low-label draws (`few_shot_probe`), each result with its per-group accuracy; and how
`ssl-bf linear` prints them."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence, Union

import numpy as np

from ssl_bf.data.long_tail import Groups
from ssl_bf.knn.labels import LabelSpace

from .cli_common import fmt, table
from .few_shot_probe import describe, draw_count, is_few_shot, one_shot_sweep, run_draws, summary_line
from .groups import group_accuracy, group_lines, groups_description, groups_from_options, label_counts
from .linear_common import ProbeResult


def probe_embeddings(args: argparse.Namespace, train, test) -> Union[ProbeResult, dict]:
    """The cached probe of `args.protocol` on `train`/`test` (formats.Embeddings): a ProbeResult
    carrying its `per_group` (as `train_counts` + hits), or, with --shots / --label-fraction, the
    summary over draws (dict, `few_shot_probe.summarize`)."""
    space = LabelSpace.from_train(train.labels, train.num_classes)
    counts = label_counts(space, train.labels)  # (C,) the pretraining set's own counts by default
    groups = groups_from_options(args, counts)
    if not is_few_shot(args):
        result = run_probe(args.protocol, args, train.embeddings, train.labels, test, train.num_classes)
        result.train_counts = counts
        return result
    one_shot = args.shots == 1

    def one_draw(rows: np.ndarray) -> dict:
        result = run_probe(args.protocol, args, train.embeddings[rows], train.labels[rows], test, train.num_classes,
                           one_shot=one_shot)
        return draw_entry(result, groups)

    return run_draws(train.labels, args.shots, args.label_fraction, draw_count(args), args.seed, one_draw)


def draw_entry(result: ProbeResult, groups: Groups) -> dict:
    """One draw's figures for the JSON: top-1, top-5, the chosen lr / L2, per_group."""
    chosen = {k: result.hyperparameters[k] for k in ("lr", "l2") if k in result.hyperparameters}
    return {"top1": result.top1, "top5": result.top5, **chosen,
            "per_group": group_accuracy(result.class_hits, result.class_totals, groups)}


def default_probe_options(device: str, seed: int) -> argparse.Namespace:
    """The options `run_probe` reads, at `ssl-bf linear`'s defaults (`ssl-bf evaluate`'s few-shot probes)."""
    return argparse.Namespace(device=device, seed=seed, val_fraction=0.1, no_refit=False, lrs=None, l2=None,
                              epochs=None, batch_size=None, weight_decay=None, bn_head=False, max_iter=100)


def run_probe(protocol: str, args: argparse.Namespace, train_x, train_y, test, num_classes: Optional[int],
              one_shot: bool = False) -> ProbeResult:
    """`probe_cached` or `probe_logreg` with the command's options (`one_shot`: one lr / L2 value)."""
    from .linear_cached import DEFAULT_CACHED_LRS, DEFAULT_L2, probe_cached, probe_logreg
    from .linear_common import recipe_for

    device = "cpu" if args.device == "auto" else args.device
    common = dict(num_classes=num_classes, val_fraction=args.val_fraction, refit=not args.no_refit,
                  seed=args.seed, device=device)
    if protocol == "cached":
        lrs = one_shot_sweep(args.lrs, "cached", "--lrs") if one_shot else (args.lrs or DEFAULT_CACHED_LRS)
        recipe = recipe_for("cached", args.epochs, args.batch_size, None, args.weight_decay)
        return probe_cached(train_x, train_y, test.embeddings, test.labels, lrs=lrs, recipe=recipe,
                            bn_head=args.bn_head, **common)
    l2s = one_shot_sweep(args.l2, "logreg", "--l2") if one_shot else (args.l2 or DEFAULT_L2)
    return probe_logreg(train_x, train_y, test.embeddings, test.labels, l2s=l2s, max_iter=args.max_iter, **common)


def print_probe(result: ProbeResult, per_group: Optional[dict]) -> None:
    """The probe's lines: its sweep, the result row, and the per-group line."""
    print(f"linear probe, protocol {result.protocol}" + (f" ({result.note})" if result.note else ""))
    if result.sweep:
        key = "lr" if "lr" in result.sweep[0] else "l2"
        print(table([key, "held-out top-1 %"], [[s[key], s["val_top1"]] for s in result.sweep]))
    chosen = {k: v for k, v in result.hyperparameters.items() if k in ("lr", "l2", "used_lr", "epochs", "batch_size")}
    print(table(["protocol", "top-1 %", "top-5 %", "chosen", "seconds"],
                [[result.protocol, result.top1, result.top5,
                  " ".join(f"{k}={fmt(v)}" for k, v in chosen.items()), round(result.seconds, 2)]]))
    if per_group:
        print(group_lines(per_group))
        print(groups_description(per_group))


def print_few_shot(protocol: str, summary: dict, draw_keys: Sequence[str] = ("top1", "top5")) -> None:
    """A few-shot / low-label summary: one row per draw, then mean ± std and the groups."""
    how = "one image per class: nothing held out, one lr / L2" if summary["shots"] == 1 else \
        "lr / L2 chosen on held-out drawn rows"
    print(f"linear probe, protocol {protocol}, {describe(summary)} ({how})")
    chosen = "lr" if "lr" in summary["draws"][0] else "l2"
    print(table(["draw", "train rows", "top-1 %", "top-5 %", chosen, "many", "medium", "few"],
                [[d["draw"], d["train_rows"], *(d[k] for k in draw_keys), d.get(chosen),
                  *(d["per_group"][g] for g in ("many", "medium", "few"))] for d in summary["draws"]]))
    print(f"mean ± std over draws: {summary_line(summary)}")
    if summary.get("per_group"):
        print(groups_description(summary["per_group"]))
