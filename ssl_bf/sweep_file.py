"""The sweep.json format: what `ssl-bf submit --sweep/--sweep-file` records in a sweep's base
folder (the swept keys and one element per run folder), and what the reports read back.

Written by ssl_bf.launch (`launch/sweep.py`: expand, write_sweep); read and checked by
ssl_bf.report (`report/inputs.py`: read_sweep_checked, element_dirs).
"""
from __future__ import annotations

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
