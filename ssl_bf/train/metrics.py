"""Run logging: RUN/metrics.jsonl (one JSON object a line) and TensorBoard events.

metrics.jsonl is append-only and crash-tolerant. `read_metrics_log` is its one reader (resume,
the `ssl-bf pretrain` summary, `ssl-bf report`): a last line cut short (a process killed mid-append:
no closing newline) is dropped with a note; any other line that is not a record, a record with an
impossible value (`record_problem`), a folder or other non-file in its place, or bytes that are
not text raise MetricsError naming the file and the line.
"""
from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..atomic_write import append_line, event_writer, write_text
from ..file_kinds import FileKind
from ..run_layout import Owner


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read; the message names the file (and the line)."""


def _show(v: Any) -> str:
    """A value for a message: scalars as JSON (cut at 40 characters), containers by kind."""
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    return json.dumps(v)[:40]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> Optional[str]:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "must be an integer >= 0"


def _number_or_null(v: Any) -> Optional[str]:
    return None if v is None or _is_number(v) else "must be a number or null"


def _seconds(v: Any) -> Optional[str]:
    ok = v is None or (_is_number(v) and math.isfinite(v) and v >= 0)
    return None if ok else "must be a finite number >= 0 or null"


def _percent(v: Any) -> Optional[str]:
    ok = v is None or (_is_number(v) and math.isfinite(v) and 0 <= v <= 100)
    return None if ok else "must be a percentage in [0, 100] or null"


# What each known field of a record may hold (other fields are free-form).
FIELD_RULES: dict[str, Callable[[Any], Optional[str]]] = {
    "step": _count, "epoch": _count, "world_size": _count, "loss": _number_or_null, "lr": _number_or_null,
    "knn_top1": _percent, "train_seconds": _seconds, "knn_seconds": _seconds, "images_per_s": _seconds,
}


def record_problem(record: Any) -> Optional[str]:
    """Why `record` is not a metrics record (not a JSON object, or a known field holding an
    impossible value), or None."""
    if not isinstance(record, dict):
        return "is JSON but not an object"
    for name, rule in FIELD_RULES.items():
        if name in record:
            problem = rule(record[name])
            if problem:
                return f"has '{name}' = {_show(record[name])}, which {problem}"
    return None


@dataclass
class MetricsLog:
    """The records of a metrics.jsonl, and notes on the lines that were dropped."""

    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read_bytes(path: str) -> Optional[bytes]:
    """The file's bytes; None when there is no file. MetricsError when something else is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            raise MetricsError(f"{path} is a broken symbolic link, not a metrics file") from None
        return None
    except OSError as err:
        raise MetricsError(f"{path} cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise MetricsError(f"{path} is a folder, not a metrics file")
    if not stat.S_ISREG(mode):
        raise MetricsError(f"{path} is not a regular file (a device, pipe or socket), not a metrics file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise MetricsError(f"{path} cannot be read ({err.strerror or err})") from None


def _parse_line(raw: bytes) -> tuple[Any, Optional[str], bool]:
    """(record, problem, parsed): `parsed` is False when the line is not JSON text at all."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "is not UTF-8 text", False
    except RecursionError:
        return None, "is nested too deeply", False
    except ValueError:  # not JSON, or an integer of more digits than Python converts
        return None, "is not JSON", False
    return record, record_problem(record), True


def read_metrics_log(path: str, skip_bad_lines: bool = False) -> MetricsLog:
    """The records of the metrics.jsonl at `path` (none when there is no file), blank lines ignored.

    A last line with no closing newline that is not JSON (a process killed mid-append) is dropped
    with a note. Any other bad line raises MetricsError naming the file and the line; with
    `skip_bad_lines` it is dropped with a note instead (reading a live run for a test).
    """
    data = _read_bytes(path)
    log = MetricsLog()
    if data is None:
        return log
    *lines, tail = data.split(b"\n")  # `tail`: what follows the last newline ('' if none)
    numbered = [(i + 1, line, True) for i, line in enumerate(lines)] + [(len(lines) + 1, tail, False)]
    for number, raw, closed in numbered:
        if not raw.strip():
            continue
        record, problem, parsed = _parse_line(raw)
        if problem is None:
            log.records.append(record)
        elif not closed and not parsed:
            log.notes.append(f"{path}: the last line is cut short (a run killed while writing it) and is dropped")
        elif skip_bad_lines:
            log.notes.append(f"{path}: line {number} {problem}; skipped")
        else:
            raise MetricsError(f"{path}: line {number} {problem} (only a last line cut short by a kill is "
                               f"tolerated)")
    return log


def read_metrics(path: str, skip_bad_lines: bool = False) -> list[dict]:
    """The records of a metrics.jsonl ([] when there is none); see `read_metrics_log`."""
    return read_metrics_log(path, skip_bad_lines).records


def truncate_metrics(path: str, step: int) -> list[str]:
    """Drop the records logged after `step` (work that a resume is about to redo) and a torn last
    line, atomically; returns the notes on what was dropped. Nothing to do without a file."""
    if not os.path.lexists(path):
        return []
    log = read_metrics_log(path)
    kept = [r for r in log.records if r.get("step", -1) <= step]
    write_text("".join(json.dumps(r) + "\n" for r in kept), path, kind=FileKind.JSON, option="the run's metrics file",
               owner=Owner.PRETRAIN)
    return log.notes


class MetricsLogger:
    """Append-only JSON lines plus optional TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = None
        if enabled and tensorboard:
            try:
                self.writer = event_writer(os.path.join(run_dir, "tensorboard"), owner=Owner.PRETRAIN)
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, record: dict[str, Any], prefix: Optional[str] = None) -> None:
        if not self.enabled:
            return
        append_line(json.dumps(record), self.path, option="the run's metrics file", owner=Owner.PRETRAIN)
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix or 'train'}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
