"""Per-group accuracy for `ssl-bf knn | linear | evaluate`: where the many / medium / few groups
come from, the `--group-counts` reader, and the printed group lines.

Groups are cut from the class counts of the pretraining set (`ssl_bf.data.long_tail.make_groups`):
- `--group-counts FILE`: a `.npy` of C integer counts (read with allow_pickle=False) or a JSON list
  of C integers >= 0, C the train embeddings' class count;
- `--group-thresholds HIGH LOW`: many > HIGH >= medium >= LOW > few, on the same counts;
- neither: the train embeddings' own label counts (thirds of the classes by count; with equal
  counts the thirds follow the class order).
`ssl-bf evaluate RUN` takes the counts from RUN/data_indices.npy (a long-tailed run) and the train
labels instead (`run_group_counts`).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import numpy as np

from ssl_bf.cli_args import ArgumentError, nonneg_float
from ssl_bf.data.long_tail import GROUPS, Groups, class_counts, make_groups

MAX_COUNTS_BYTES = 64 << 20  # a JSON counts list larger than this is not a list of class counts
DATA_INDICES = "data_indices.npy"


class GroupCountsError(ValueError):
    """A --group-counts file that cannot give the class counts (the message names the file)."""


def add_group_options(p: argparse.ArgumentParser) -> None:
    """`--group-counts FILE` and `--group-thresholds HIGH LOW`."""
    p.add_argument("--group-counts", metavar="FILE",
                   help="class counts of the pretraining set for the many/medium/few groups: a .npy of C "
                   "integers or a JSON list (default: the train embeddings' own label counts)")
    p.add_argument("--group-thresholds", type=nonneg_float, nargs=2, metavar=("HIGH", "LOW"),
                   help="cut the groups by count (many > HIGH >= medium >= LOW > few; ImageNet-LT: 100 20) "
                   "instead of by thirds of the classes")


def check_group_options(args: argparse.Namespace) -> None:
    """Before any compute: HIGH >= LOW, and a --group-counts file that exists and is a file."""
    if args.group_thresholds is not None:
        high, low = args.group_thresholds
        if low > high:
            raise ArgumentError(f"--group-thresholds {high:g} {low:g}: LOW is above HIGH; give HIGH LOW with "
                                f"HIGH >= LOW (e.g. 100 20)")
    path = args.group_counts
    if path is not None and not os.path.isfile(path):
        raise ArgumentError(f"--group-counts {path}: no such file" if not os.path.exists(path) else
                            f"--group-counts {path} is not a file; give a .npy or JSON list of class counts")


def read_group_counts(path: str, num_classes: int) -> np.ndarray:
    """The C class counts (int64) a --group-counts file holds, checked: a 1-D list of integers
    >= 0, one per class. GroupCountsError names the file and what is wrong."""
    where = f"--group-counts {path}"
    if os.path.getsize(path) > MAX_COUNTS_BYTES:
        raise GroupCountsError(f"{where} is larger than {MAX_COUNTS_BYTES >> 20} MiB; give C class counts")
    if path.lower().endswith(".npy"):
        try:
            raw = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise GroupCountsError(f"{where} is not a readable .npy array ({_short(err)})") from None
    else:
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise GroupCountsError(f"{where} is neither a .npy array nor a JSON list of counts "
                                   f"({_short(err)})") from None
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise GroupCountsError(f"{where} must hold a JSON list of numbers (one count per class)")
        try:
            raw = np.asarray(value, dtype=np.float64 if any(isinstance(v, float) for v in value) else np.int64)
        except OverflowError:
            raise GroupCountsError(f"{where}: a count does not fit int64") from None
    return check_counts(raw, num_classes, where)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a count")


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def check_counts(raw: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """`raw` as C int64 counts >= 0 (integral floats accepted), else GroupCountsError naming `where`."""
    if raw.dtype.kind not in "iuf" or raw.ndim != 1:
        raise GroupCountsError(f"{where} must hold a 1-D list of integer counts, found dtype {raw.dtype}, "
                               f"shape {raw.shape}")
    if raw.dtype.kind == "f" and not (np.all(np.isfinite(raw)) and np.all(raw == np.floor(raw))
                                      and np.all(np.abs(raw) < 2.0 ** 62)):
        raise GroupCountsError(f"{where}: counts must be whole numbers")
    if raw.dtype.kind == "u" and raw.size and raw.max() > np.iinfo(np.int64).max:
        raise GroupCountsError(f"{where}: a count does not fit int64")
    counts = raw.astype(np.int64)
    if len(counts) != num_classes:
        raise GroupCountsError(f"{where} holds {len(counts)} counts but the train embeddings have {num_classes} "
                               f"classes; give one count per class")
    negative = np.flatnonzero(counts < 0)
    if negative.size:
        raise GroupCountsError(f"{where}: count {int(counts[negative[0]])} of class {int(negative[0])} is negative")
    return counts


def groups_from_options(args: argparse.Namespace, own_counts: np.ndarray) -> Groups:
    """The groups `knn` and `linear` report: --group-counts, else `own_counts` (the train split's
    images per class, (C,)), cut by --group-thresholds or by thirds of the classes."""
    counts = read_group_counts(args.group_counts, len(own_counts)) if args.group_counts else own_counts
    thresholds = tuple(args.group_thresholds) if args.group_thresholds is not None else None
    return make_groups(counts, thresholds)


def label_counts(space, labels: np.ndarray) -> np.ndarray:
    """Images per class (C,) of dataset `labels` in a knn LabelSpace (labels unknown to it left out)."""
    classes = space.encode(np.asarray(labels))
    return class_counts(classes[classes >= 0], space.num_classes)


def run_group_counts(run_dir: str, train_classes: np.ndarray, num_classes: int,
                     subset: bool = False) -> tuple[np.ndarray, str]:
    """(class counts of the pretraining set, where they came from) for `ssl-bf evaluate RUN`: the
    train labels of the rows RUN/data_indices.npy lists (a long-tailed run), else of every train
    row (a balanced run, or an older run without the file). Indices beyond the embedded train rows
    (`--subset`) are left out."""
    from ssl_bf.data.long_tail import LongTailError, check_indices

    path = os.path.join(run_dir, DATA_INDICES)
    if not os.path.isfile(path):
        return class_counts(train_classes[train_classes >= 0], num_classes), "the train split's labels"
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise GroupCountsError(f"{path} is not a readable .npy array ({_short(err)}); it lists the "
                               f"pretraining images of a long-tailed run") from None
    if subset and raw.dtype.kind in "iu" and raw.ndim == 1:  # only the first rows were embedded
        raw = raw[raw < len(train_classes)]
    try:
        rows = check_indices(raw, len(train_classes), path)
    except LongTailError as err:
        raise GroupCountsError(str(err)) from None
    picked = train_classes[rows]
    return class_counts(picked[picked >= 0], num_classes), f"{DATA_INDICES} ({len(rows)} pretraining images)"


def group_accuracy(hits: np.ndarray, totals: np.ndarray, groups: Groups) -> dict:
    """`per_group` of the JSON from per-class top-1 hits and test images ((C,) each): many / medium /
    few top-1 (%), class_std, the groups and their rule (`ssl_bf.data.long_tail.per_group_accuracy`
    on the same counts). A test row of a class unknown to train is in no class and no group."""
    from ssl_bf.data.long_tail import per_group_accuracy

    totals = np.asarray(totals, dtype=np.int64)
    truth = np.repeat(np.arange(len(totals)), totals)  # (Q',) class of each test row
    first = np.concatenate([[0], np.cumsum(totals)[:-1]])  # (C,) first row of each class
    correct = np.arange(len(truth)) - np.repeat(first, totals) < np.repeat(np.asarray(hits, dtype=np.int64), totals)
    predicted = np.where(correct, truth, -1)  # (Q',) the class when hit, else no class
    return per_group_accuracy(predicted, truth, groups)


def hits_from_predictions(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class top-1 hits and test images ((C,) int64 each) from class indices (Q,); -1 in
    `truth` (a class unknown to train) is left out."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    known = truth >= 0
    totals = np.bincount(truth[known], minlength=num_classes).astype(np.int64)
    hits = np.bincount(truth[known & (predicted == truth)], minlength=num_classes).astype(np.int64)
    return hits, totals


def knn_per_group(out, space, test_labels: np.ndarray, pair: tuple[int, float], groups: Groups) -> dict:
    """`per_group` of one (k, T) of a k-NN run (a knn KnnOutput kept with its predictions) from
    the vote's top-1 (-1 where no class got a vote) against `test_labels` (dataset labels)."""
    top1 = space.encode(out.predictions[pair][:, 0])  # (Q,) class indices; -1: no vote
    truth = space.encode(np.asarray(test_labels))  # (Q,)
    return group_accuracy(*hits_from_predictions(top1, truth, space.num_classes), groups)


def group_lines(per_group: Optional[dict], label: str = "") -> str:
    """One printed line: `per group: many 71.20  medium 60.00  few 41.30  class std 12.10`."""
    if not per_group:
        return ""
    cells = "  ".join(f"{g} {_pct(per_group.get(g))}" for g in GROUPS)
    return f"{label}per group: {cells}  class std {_pct(per_group.get('class_std'))}"


def groups_description(per_group: dict) -> str:
    """How the groups were cut and their sizes, one line."""
    sizes = ", ".join(f"{g} {len(per_group['groups'][g])}" for g in GROUPS)
    return f"groups ({sizes} classes): {per_group['rule']}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"
