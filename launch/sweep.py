"""Sweeps: `--sweep key=v1,v2` options -> the cartesian product, one run folder per element."""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from .options import LaunchError

SWEEP_FILE = "sweep.json"  # written into the sweep's base folder; read by `ssl-bf sweep-report`


@dataclass
class Element:
    name: str  # the run folder's name under the base folder
    overrides: dict  # {key: value string} of the swept keys
    run_dir: str
    job_id: Optional[str] = None
    eval_job_id: Optional[str] = None


@dataclass
class Sweep:
    base_dir: str
    keys: list
    elements: list = field(default_factory=list)
    command: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"base_dir": self.base_dir, "keys": self.keys, "command": self.command,
                "elements": [asdict(e) for e in self.elements]}


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """['seed=0,1', 'batchformer.enabled=false,true'] -> {'seed': ['0', '1'], ...} (order kept)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values:
            raise LaunchError(f"--sweep expects key=v1,v2,..., got '{item}'")
        if key == "run.dir":
            raise LaunchError("--sweep run.dir=... is not allowed: each element gets its own run folder")
        if key in axes:
            raise LaunchError(f"--sweep key '{key}' given twice")
        vals = [v.strip() for v in values.split(",")]
        if any(v == "" for v in vals) or len(set(vals)) != len(vals):
            raise LaunchError(f"--sweep {key}: values must be non-empty and distinct, got '{values}'")
        axes[key] = vals
    return axes


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand(axes: dict[str, list[str]], base_dir: str) -> Sweep:
    """The cartesian product, first key slowest; element folders are BASE/key=value__key=value."""
    keys = list(axes)
    sweep = Sweep(base_dir=base_dir, keys=keys)
    for combo in itertools.product(*(axes[k] for k in keys)):
        overrides = dict(zip(keys, combo))
        name = "__".join(f"{_safe(k)}={_safe(v)}" for k, v in overrides.items())
        sweep.elements.append(Element(name=name, overrides=overrides, run_dir=os.path.join(base_dir, name)))
    return sweep


def write_sweep(sweep: Sweep) -> str:
    os.makedirs(sweep.base_dir, exist_ok=True)
    path = os.path.join(sweep.base_dir, SWEEP_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(sweep.to_json(), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_sweep(folder: str) -> Optional[Sweep]:
    path = os.path.join(folder, SWEEP_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return Sweep(base_dir=data.get("base_dir", folder), keys=list(data.get("keys", [])),
                 command=list(data.get("command", [])),
                 elements=[Element(**e) for e in data.get("elements", [])])
