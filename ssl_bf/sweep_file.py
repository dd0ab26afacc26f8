"""The sweep.json format: what `ssl-bf submit --sweep/--sweep-file` records in a sweep's base
folder (the swept keys and one element per run folder), and what the reports read back.

Written by ssl_bf.launch (`launch/sweep.py`: expand, write_sweep); read by ssl_bf.report.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

SWEEP_FILE = "sweep.json"  # in the sweep's base folder
VARIANT_KEY = "variant"  # the axis of a sweep file's named variants


@dataclass
class Element:
    name: str  # the run folder's name under the base folder
    overrides: dict  # {config key: value string} given to this element's pretrain run
    run_dir: str
    job_id: Optional[str] = None
    eval_job_id: Optional[str] = None
    params: Optional[dict] = None  # {axis: value} that names the element (None: the overrides)

    def labels(self) -> dict:
        return dict(self.params) if self.params is not None else dict(self.overrides)


@dataclass
class Sweep:
    base_dir: str
    keys: list
    elements: list = field(default_factory=list)
    command: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"base_dir": self.base_dir, "keys": self.keys, "command": self.command,
                "elements": [asdict(e) for e in self.elements]}


def read_sweep(folder: str) -> Optional[Sweep]:
    """FOLDER/sweep.json, or None when the folder has none."""
    path = os.path.join(folder, SWEEP_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return Sweep(base_dir=data.get("base_dir", folder), keys=list(data.get("keys", [])),
                 command=list(data.get("command", [])),
                 elements=[Element(**e) for e in data.get("elements", [])])


def element_dirs(sweep: Sweep, folder: str) -> list[tuple[Element, str]]:
    """(element, its run folder): the recorded path, or FOLDER/NAME when the sweep was moved."""
    return [(el, el.run_dir if os.path.isdir(el.run_dir) else os.path.join(folder, el.name))
            for el in sweep.elements]
