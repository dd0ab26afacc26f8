"""Few-shot and low-label probes of `ssl-bf linear | knn | evaluate`: the options, the draws of
train rows, and the mean ± std over draws.

- `--shots N [--draws R]`: N train images of every class, R seeded draws (default 5; draw r uses
  `ssl_bf.data.few_shot.shot_indices(labels, N, seed, r)`), so one seed gives the same rows again.
- `--label-fraction F [--draws R]`: a class-balanced F of the train images (R default 1).
- The probe's lr / L2 is chosen on a held-out part of the drawn rows only (`--val-fraction` of each
  class's drawn images, at least one when a class has two), then refit on all drawn rows; the test
  set is only scored. With one image per class nothing can be held out: the probe then trains one
  value (`ONE_SHOT_DEFAULTS`, or the one value given with --lrs / --l2).
The groups (many / medium / few) stay those of the pretraining set: a draw is balanced, its counts
say nothing about the long tail.
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence

import numpy as np

from ssl_bf.cli_args import ArgumentError, open_fraction, positive_int, seed
from ssl_bf.data.few_shot import fraction_indices, mean_std, shot_indices
from ssl_bf.data.long_tail import GROUPS

DEFAULT_SHOT_DRAWS = 5
ONE_SHOT_DEFAULTS = {"cached": 0.1, "logreg": 1e-2}  # the lr / L2 a one-shot probe trains with
SUMMARY_FIELDS = ("top1", "top5")
GROUP_FIELDS = (*GROUPS, "class_std")


def add_few_shot_options(p: argparse.ArgumentParser, label_fraction: bool = True, seed_option: bool = False) -> None:
    """`--shots N`, `--draws R`, (linear) `--label-fraction F` and (`seed_option`: a command without
    one) `--seed`."""
    p.add_argument("--shots", type=positive_int, metavar="N",
                   help="train on N images of every class (few-shot), drawn --draws times; mean and std over draws")
    if label_fraction:
        p.add_argument("--label-fraction", type=open_fraction, metavar="F",
                       help="train on a class-balanced fraction F (0 < F < 1, e.g. 0.01, 0.1) of the train images")
    p.add_argument("--draws", type=positive_int, metavar="R",
                   help=f"seeded draws of the few-shot rows (default {DEFAULT_SHOT_DRAWS} with --shots, 1 with "
                   "--label-fraction); draw r uses --seed and r")
    if seed_option:
        p.add_argument("--seed", type=seed, default=0, help="seed of the few-shot draws (default 0)")


def check_few_shot_options(args: argparse.Namespace) -> None:
    """Before any compute: --shots and --label-fraction exclude each other; --draws needs one of them."""
    fraction = getattr(args, "label_fraction", None)
    if args.shots is not None and fraction is not None:
        raise ArgumentError(f"--shots {args.shots} and --label-fraction {fraction:g} are two ways to choose the "
                            f"labelled rows; give one of them")
    if args.draws is not None and args.shots is None and fraction is None:
        raise ArgumentError(f"--draws {args.draws} repeats a few-shot or low-label draw; give --shots N or "
                            f"--label-fraction F with it")


def is_few_shot(args: argparse.Namespace) -> bool:
    return args.shots is not None or getattr(args, "label_fraction", None) is not None


def draw_count(args: argparse.Namespace) -> int:
    return args.draws or (DEFAULT_SHOT_DRAWS if args.shots is not None else 1)


def draw_rows(labels: np.ndarray, shots: Optional[int], fraction: Optional[float], seed: int, draw: int) -> np.ndarray:
    """Sorted train rows of one draw: `shots` of every class, or a class-balanced `fraction`."""
    if shots is not None:
        return shot_indices(labels, shots, seed, draw)
    return fraction_indices(labels, fraction, seed, draw)


def one_shot_sweep(values: Optional[Sequence[float]], protocol: str, option: str) -> list[float]:
    """The one lr / L2 a probe with one image per class trains (nothing can be held out to choose)."""
    if values and len(values) > 1:
        raise ArgumentError(f"--shots 1 leaves no image per class to hold out for choosing among the {option} "
                            f"values; give one value")
    return list(values) if values else [ONE_SHOT_DEFAULTS[protocol]]


def run_draws(labels: np.ndarray, shots: Optional[int], fraction: Optional[float], draws: int, seed: int,
              probe: Callable[[np.ndarray], dict]) -> dict:
    """Run `probe(rows)` (-> {"top1", "top5", "per_group", ...}) on every draw; the summary with
    each draw's figures under `draws`."""
    results = []
    for r in range(draws):
        rows = draw_rows(labels, shots, fraction, seed, r)
        results.append({"draw": r, "train_rows": int(len(rows)), **probe(rows)})
    return summarize(results, shots, fraction, seed)


def summarize(results: list[dict], shots: Optional[int], fraction: Optional[float], seed: int) -> dict:
    """Mean and sample std (ddof 1) over draws of top-1, top-5 and each group's figure."""
    out: dict = {"shots": shots, "label_fraction": fraction, "seed": seed, "num_draws": len(results)}
    for field in SUMMARY_FIELDS:
        out[field], out[f"{field}_std"] = mean_std([r[field] for r in results])
    if all(r.get("per_group") for r in results):
        mean_group, std_group = {}, {}
        for g in GROUP_FIELDS:
            values = [r["per_group"][g] for r in results]
            if any(v is None for v in values):
                mean_group[g] = std_group[g] = None
            else:
                mean_group[g], std_group[g] = mean_std(values)
        first = results[0]["per_group"]
        out["per_group"] = {**mean_group, "groups": first["groups"], "rule": first["rule"]}
        out["per_group_std"] = std_group
    out["draws"] = results
    return out


def describe(summary: dict) -> str:
    """`10-shot, 5 draws` or `label fraction 0.1, 1 draw`."""
    shots, fraction = summary["shots"], summary["label_fraction"]
    what = f"{shots}-shot" if shots is not None else f"label fraction {fraction:g}"
    n = summary["num_draws"]
    return f"{what}, {n} draw{'s' if n != 1 else ''}"


def summary_line(summary: dict) -> str:
    """`top-1 71.20 ± 1.10  top-5 ...  per group: many 80.00 ± 2.00 ...`."""
    text = "  ".join(f"{name} {summary[f]:.2f} ± {summary[f + '_std']:.2f}"
                     for name, f in (("top-1", "top1"), ("top-5", "top5")))
    group, std = summary.get("per_group"), summary.get("per_group_std")
    if group:
        cells = "  ".join(f"{g} " + ("-" if group[g] is None else f"{group[g]:.2f} ± {std[g]:.2f}")
                          for g in GROUP_FIELDS)
        text += f"  per group: {cells}"
    return text
