"""What `ssl-bf evaluate RUN` reports per group and, for a long-tailed run, few-shot.

- Groups: from the pretraining set's class counts, `groups.run_group_counts` (RUN/data_indices.npy
  with the train labels for a long-tailed run; the train labels' own counts otherwise), cut into
  thirds of the classes by count.
- Few-shot: `--shots 100 10` by default when the run was long-tailed (RUN/data_indices.npy, or
  RUN/config.yaml with data.long_tail.ratio > 1 or data.indices_file); `--shots none` turns it off.
  Each is `--draws` (default 5) seeded draws of N images per class from the embedded train split,
  probed with logreg (cached when only it runs) and summarised as mean ± std with per_group.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from ssl_bf.data.long_tail import Groups, make_groups
from ssl_bf.knn.labels import LabelSpace

from .few_shot_probe import DEFAULT_SHOT_DRAWS, run_draws
from .groups import DATA_INDICES, run_group_counts

DEFAULT_EVAL_SHOTS = (100, 10)
NO_SHOTS = "none"


def shots_value(text: str):
    """`--shots` of evaluate: a positive integer, or 'none'."""
    if text.strip().lower() == NO_SHOTS:
        return NO_SHOTS
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images per class or 'none', got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'none'), got {value}")
    return value


def parse_shots(values: Optional[Sequence]) -> Optional[tuple[int, ...]]:
    """None: the default (by the run); (): off; else the distinct shot counts, in order."""
    if values is None:
        return None
    if NO_SHOTS in values:
        if len(values) > 1:
            raise argparse.ArgumentTypeError(f"--shots {' '.join(map(str, values))}: 'none' turns the few-shot "
                                             f"probes off; give it alone")
        return ()
    return tuple(dict.fromkeys(int(v) for v in values))


def run_is_long_tailed(run_dir: str) -> bool:
    """Whether RUN pretrained on a long-tailed subset: RUN/data_indices.npy, or RUN/config.yaml's
    data.long_tail.ratio > 1 or data.indices_file (an older run has neither: balanced)."""
    if os.path.isfile(os.path.join(run_dir, DATA_INDICES)):
        return True
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return False
    from ssl_bf.yaml_io import YamlFileError, load_yaml_mapping

    try:
        data = load_yaml_mapping(path, "config file").get("data") or {}
    except YamlFileError:
        return False  # the config is read (and refused) where evaluate loads it
    if not isinstance(data, dict):
        return False
    long_tail = data.get("long_tail") or {}
    ratio = long_tail.get("ratio") if isinstance(long_tail, dict) else None
    return bool(data.get("indices_file")) or (isinstance(ratio, (int, float)) and ratio > 1)


def evaluation_groups(run_dir: str, train, subset: Optional[int]) -> tuple[LabelSpace, Groups, str]:
    """(label space, groups, where the counts came from) for RUN's train embeddings."""
    space = LabelSpace.from_train(train.labels, train.num_classes)
    counts, source = run_group_counts(run_dir, space.encode(train.labels), space.num_classes, subset is not None)
    return space, make_groups(counts), source


def few_shot_results(train, test, shots: Sequence[int], explicit: bool, draws: Optional[int], probes: Sequence[str],
                     groups: Groups, seed: int, device: str, note) -> dict:
    """`{"100": summary, "10": summary}`: each shot count's draws probed with logreg (or cached).
    A shot count above the smallest class is refused when given (`explicit`), else left out with a
    `note(text)`."""
    from ssl_bf.data.few_shot import FewShotError

    from .linear_cached_run import default_probe_options, draw_entry, run_probe

    if not probes or not shots:
        return {}
    protocol = "logreg" if "logreg" in probes else "cached"
    options = default_probe_options(device, seed)
    smallest = int(np.unique(train.labels, return_counts=True)[1].min())
    out = {}
    for n in shots:
        if n > smallest and not explicit:
            note(f"{n}-shot left out: the smallest class has {smallest} train images")
            continue

        def one_draw(rows: np.ndarray, n: int = n) -> dict:
            result = run_probe(protocol, options, train.embeddings[rows], train.labels[rows], test, train.num_classes,
                               one_shot=n == 1)
            return draw_entry(result, groups)

        try:
            out[str(n)] = {"protocol": protocol, **run_draws(train.labels, n, None, draws or DEFAULT_SHOT_DRAWS,
                                                             seed, one_draw)}
        except FewShotError as err:
            raise FewShotError(f"{err}; nothing was written") from None
    return out
