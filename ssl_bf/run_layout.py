"""What a run folder is, and which command owns which of its files.

A folder is an ssl-bf **run folder** when it holds at least one of the files only ssl-bf makes
there (`RUN_MARKERS`): `.lock` (pretrain takes it before writing anything), `checkpoints/last.pt`,
`metrics.jsonl` or `evaluations.jsonl`. The file being written never counts as its own marker, so
writing `X/metrics.jsonl` into a plain folder X does not make X a run folder.

Inside a run folder each entry has owners (`RUN_ENTRIES`): only they write it, and every other
write is refused by the output guard (`ssl_bf/outputs.py`), whatever option names the file:

| entry | written by |
|---|---|
| `config.yaml`, `metrics.jsonl`, `checkpoints/`, `tensorboard/`, `.lock`, `data_indices.npy` | `pretrain` (its `run.dir`) |
| `results.json`, `evaluations.jsonl`, `linear_head.pt`, `logreg_head.pt` | `evaluate` (its RUN) |
| `embeddings/` | `evaluate`, and `embed --out` (an embeddings file) |
| `report/` | `report` (its default output folder) |
| `submitit/` | `submit` (its default job folder) |
"""
from __future__ import annotations

import enum
import os
from typing import Optional, Sequence


class Owner(enum.Enum):
    """A command writing files it owns; a file named by a user option (`--json`, `--out`, ...) is
    written with no owner."""

    PRETRAIN = "ssl-bf pretrain"
    EVALUATE = "ssl-bf evaluate"
    EMBED = "ssl-bf embed"
    REPORT = "ssl-bf report"
    SUBMIT = "ssl-bf submit"


RUN_MARKERS = (".lock", os.path.join("checkpoints", "last.pt"), "metrics.jsonl", "evaluations.jsonl")

RUN_ENTRIES: dict[str, frozenset[Owner]] = {
    "config.yaml": frozenset({Owner.PRETRAIN}),
    "metrics.jsonl": frozenset({Owner.PRETRAIN}),
    ".lock": frozenset({Owner.PRETRAIN}),
    "checkpoints": frozenset({Owner.PRETRAIN}),
    "tensorboard": frozenset({Owner.PRETRAIN}),
    "data_indices.npy": frozenset({Owner.PRETRAIN}),
    "results.json": frozenset({Owner.EVALUATE}),
    "evaluations.jsonl": frozenset({Owner.EVALUATE}),
    "linear_head.pt": frozenset({Owner.EVALUATE}),
    "logreg_head.pt": frozenset({Owner.EVALUATE}),
    "embeddings": frozenset({Owner.EVALUATE, Owner.EMBED}),
    "report": frozenset({Owner.REPORT}),
    "submitit": frozenset({Owner.SUBMIT}),
}


def is_run_folder(folder: str, besides: Optional[str] = None, runs: Sequence[str] = ()) -> bool:
    """Whether `folder` is one of `runs` (folders a command is making run folders) or holds a run
    marker other than the file `besides` (the one being written)."""
    if folder in runs:
        return True
    skip = os.path.abspath(besides) if besides else None
    for marker in RUN_MARKERS:
        path = os.path.join(folder, marker)
        if os.path.abspath(path) != skip and os.path.lexists(path):
            return True
    return False


def run_entry(path: str, runs: Sequence[str] = ()) -> Optional[tuple[str, str]]:
    """(run folder, entry) when `path` (absolute, links resolved) is a file of a run folder: an
    entry of `RUN_ENTRIES` itself, or a file under one of its sub-folders; else None. `runs`:
    absolute folders to take as run folders whatever they hold."""
    folder, name = os.path.split(path)
    if name in RUN_ENTRIES and is_run_folder(folder, path, runs):
        return folder, name
    run, sub = os.path.split(folder)
    if sub in RUN_ENTRIES and is_run_folder(run, path, runs):
        return run, sub
    return None


def ownership_problem(path: str, owner: Optional[Owner], runs: Sequence[str] = ()) -> Optional[str]:
    """Why `owner` (None: a user-named output) may not write `path` (absolute, links resolved), or
    None; `runs` as for `run_entry`."""
    found = run_entry(path, runs)
    if found:
        run, entry = found
        owners = RUN_ENTRIES[entry]
        if owner not in owners:
            what = entry if os.path.dirname(path) == run else entry + "/"
            names = " and ".join(sorted(f"`{o.value}`" for o in owners))
            return f"is the run folder {run}'s {what}, which only {names} write{'s' if len(owners) == 1 else ''}"
    return None
