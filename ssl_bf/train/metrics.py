"""Run logging: RUN/metrics.jsonl (one JSON object a line) and TensorBoard events."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from ..io import atomic_write_bytes


def read_metrics(path: str, skip_bad_lines: bool = False) -> list[dict]:
    """The records (JSON objects, one a line) of a metrics.jsonl; [] when there is none.

    A line that is not a JSON object is dropped when it is the last line (a process killed
    mid-append) and otherwise raises ValueError; with skip_bad_lines every such line is dropped
    (a report reading runs that are being written). Blank lines are ignored.
    """
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            problem = "" if isinstance(record, dict) else "is a JSON value but not an object"
        except json.JSONDecodeError:
            problem = "is not JSON"
        if not problem:
            records.append(record)
        elif not skip_bad_lines and i < len(lines) - 1:
            raise ValueError(f"{path}: line {i + 1} {problem} (only a torn last line is tolerated)")
    return records


def truncate_metrics(path: str, step: int) -> None:
    """Drop lines logged after `step` (work that a resume is about to redo), atomically."""
    kept = [r for r in read_metrics(path) if r.get("step", -1) <= step]
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))


class MetricsLogger:
    """Append-only JSON lines plus optional TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, record: dict[str, Any], prefix: Optional[str] = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix or 'train'}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
