"""What `ssl-bf report` and `ssl-bf sweep-report` read and write, checked: a sweep's sweep.json
(every field), each run's results.json (a JSON object, or the reason it is not), and the output
folder (refused before any work).

A report never hides a run: a run whose results could not be read becomes a `NotRead` with the
file and the reason, which both commands list (stdout, report.md / sweep-report.md, JSON) and
which makes them exit `EXIT_NOT_READ` unless --allow-missing is given.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ssl_bf.file_kinds import FileKind
from ssl_bf.outputs import OutputError, check_output, check_output_folder
from ssl_bf.run_layout import Owner
from ssl_bf.sweep_file import SWEEP_FILE, Element, Sweep

from . import ReportError

RESULTS = "results.json"
NOT_EVALUATED = "no results.json (not evaluated)"
EXIT_NO_RUNS = 1  # nothing to report: no run with results at all
EXIT_INPUT = 2  # a bad option, sweep.json or config.yaml: nothing was written
EXIT_NOT_READ = 3  # the report was written, but a run could not be read (see --allow-missing)


def exit_codes_help(sweep_report: bool) -> str:
    """The exit codes, for the --help epilog of `ssl-bf sweep-report` or `ssl-bf report`."""
    files = "results.json" if sweep_report else "results.json or metrics.jsonl"
    return "\n".join([
        "exit codes:",
        "  0  done: every run was read (or --allow-missing)",
        *([f"  {EXIT_NO_RUNS}  no run has a results.json: nothing written"] if sweep_report else []),
        f"  {EXIT_INPUT}  a bad option, sweep.json or config.yaml, or an output that cannot be written:",
        "     nothing written (one line on stderr names the file or option)",
        f"  {EXIT_NOT_READ}  a run could not be read: a run of sweep.json with no run folder or no results.json,",
        f"     or an unreadable {files} anywhere; the other runs are still reported, and every",
        "     such run is listed with the file and the reason (--allow-missing makes this 0)"])


@dataclass
class NotRead:
    """A run whose results (or records) a report could not use, and why."""

    name: str
    problem: str  # e.g. "/x/results.json: not valid JSON (...)" or NOT_EVALUATED
    kind: str  # "missing" (not evaluated), "not started" (no run folder), "unreadable"
    expected: bool  # listed in sweep.json: its absence is not normal

    @property
    def blocking(self) -> bool:
        """Makes the command exit EXIT_NOT_READ (unless --allow-missing)."""
        return self.kind == "unreadable" or self.expected

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"

    def to_json(self) -> dict:
        return {"name": self.name, "problem": self.problem, "kind": self.kind, "expected": self.expected}


def summary_line(not_read: Sequence[NotRead], total: int, what: str) -> str:
    """The one stderr line of a report that could not read every run."""
    blocking = [n for n in not_read if n.blocking]
    first = blocking[0]
    more = f" (and {len(blocking) - 1} more: {', '.join(n.name for n in blocking[1:])})" if len(blocking) > 1 else ""
    kinds = {n.kind for n in blocking}
    fixes = []
    if "unreadable" in kinds:
        fixes.append("fix or restore the file named (`ssl-bf evaluate RUN` rewrites results.json)")
    if "missing" in kinds:
        fixes.append("evaluate the run (`ssl-bf evaluate RUN`)")
    if "not started" in kinds:
        fixes.append("wait for the run to start and finish")
    return (f"{len(blocking)} of {total} run(s) could not be read (left out of {what}): {first}{more}. "
            f"To go on: {'; '.join(fixes)}; or pass --allow-missing to accept a report without them")


# ----------------------------------------------------------------------------------------------
# results.json
# ----------------------------------------------------------------------------------------------


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {list: "list", dict: "object", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def read_json_object(path: str) -> dict:
    """The JSON object in `path`; ValueError naming the file and the problem otherwise
    (a folder, empty, not UTF-8, not JSON, or JSON that is not an object). The file must exist."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not raw.strip():
        raise ValueError(f"{path}: is empty")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
                         f"truncated or hand-edited?)") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{path}: not valid JSON ({str(err)[:120]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {_json_kind(data)}, not a JSON object")
    return data


_ACCURACY = re.compile(r"(^|_)(top\d+|acc(uracy)?\d*)$", re.IGNORECASE)
_GROUP_SECTIONS = ("per_group", "per_group_std")  # objects whose many/medium/few/class_std are percentages
_GROUP_FIGURES = ("many", "medium", "few", "class_std")
MAX_DEPTH = 32  # results.json nests a few levels; anything deeper is not a results file
# Sections `ssl-bf evaluate` writes, and what each must be (null: that probe was not run).
_SECTIONS = {"knn": (list,), "linear": (dict, type(None)), "logreg": (dict, type(None)),
             "evaluated": (dict, type(None)), "few_shot": (dict,)}


def is_accuracy(name: object) -> bool:
    """A results field that holds a percentage: top1, top5, acc, accuracy, knn_top1, ..."""
    return isinstance(name, str) and bool(_ACCURACY.search(name))


def _group_accuracy(parent: object, key: object, node: object) -> bool:
    """A percentage of the per-group figures (`ssl-bf knn | linear | evaluate`): many / medium / few
    and class_std of a `per_group` or `per_group_std` object, and every value of its `per_class`."""
    if not isinstance(node, dict):
        return False
    if parent in _GROUP_SECTIONS:
        return key in _GROUP_FIGURES
    return parent == "per_class"


def _number_problem(value: Any) -> Optional[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value}, not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e300:
        return "is a number too large for a table"
    return None


def _accuracy_problem(value: Any) -> Optional[str]:
    if value is None:
        return None  # not measured
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is a JSON {_json_kind(value)}, not a number"
    if not (math.isfinite(value) and 0 <= value <= 100):
        return f"is {value}, outside [0, 100] (an accuracy in percent)"
    return None


def _knn_entry_problem(entry: Any) -> Optional[str]:
    if not isinstance(entry, dict):
        return f"is a JSON {_json_kind(entry)}, not an object"
    k, t = entry.get("k"), entry.get("temperature")
    if "k" in entry and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        return f"has k = {json.dumps(k)[:40] if not isinstance(k, (dict, list)) else _json_kind(k)}, not a count"
    if "temperature" in entry and not (isinstance(t, (int, float)) and not isinstance(t, bool)
                                       and math.isfinite(t) and t > 0):
        shown = json.dumps(t)[:40] if not isinstance(t, (dict, list)) else _json_kind(t)
        return f"has temperature = {shown}, not a positive number"
    return None


def results_problem(data: dict) -> Optional[str]:
    """Why a results.json object cannot go into a table, naming the field; None when it can.

    Refused: an accuracy (`is_accuracy`) that is not a number in [0, 100] (a string, a bool,
    NaN, 250), any number that is not finite or too large to average, a section of
    `ssl-bf evaluate` of the wrong kind (k-NN entries: k a count, temperature positive), and
    nesting deeper than MAX_DEPTH."""
    for name, kinds in _SECTIONS.items():
        if name in data and not isinstance(data[name], kinds):
            return f"'{name}' is a JSON {_json_kind(data[name])}, not {'a list' if kinds == (list,) else 'an object'}"
    for i, entry in enumerate(data.get("knn") or []):
        problem = _knn_entry_problem(entry)
        if problem:
            return f"knn[{i}] {problem}"
    stack: list[tuple[Any, str, int, object]] = [(data, "", 0, None)]
    while stack:  # iterative: a deep file cannot exhaust the recursion limit
        node, where, depth, parent = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            path = f"{where}[{key}]" if isinstance(node, list) else (f"{where}.{key}" if where else str(key))
            accuracy = is_accuracy(key) or _group_accuracy(parent, key, node)
            problem = _accuracy_problem(value) if accuracy else None
            if problem is None and isinstance(value, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    return f"'{path}' is nested more than {MAX_DEPTH} levels deep"
                stack.append((value, path, depth + 1, key))
            elif problem is None:
                problem = _number_problem(value)
            if problem:
                return f"'{path}' {problem}"
    return None


def read_results(run_dir: str) -> tuple[Optional[dict], Optional[str], str]:
    """(results, problem, kind) of RUN/results.json: (dict, None, "ok"), (None, NOT_EVALUATED,
    "missing") or (None, "PATH: what is wrong", "unreadable"): a file that is not JSON, not an
    object, or holds a value no table may show (`results_problem`)."""
    path = os.path.join(run_dir, RESULTS)
    if not os.path.lexists(path):
        return None, NOT_EVALUATED, "missing"
    if not os.path.exists(path):
        return None, f"{path}: a broken symbolic link", "unreadable"
    try:
        data = read_json_object(path)
    except ValueError as err:
        return None, str(err), "unreadable"
    problem = results_problem(data)
    if problem:
        return None, f"{path}: {problem}; it is left out of every table", "unreadable"
    return data, None, "ok"


# ----------------------------------------------------------------------------------------------
# sweep.json
# ----------------------------------------------------------------------------------------------

_TOP = {"base_dir": str, "keys": list, "command": list, "elements": list}
_ELEMENT_REQUIRED = ("name", "overrides", "run_dir")
_ELEMENT_FIELDS = {"name", "overrides", "run_dir", "job_id", "eval_job_id", "params"}
_SCALAR = (str, int, float, bool, type(None))


def _bad(path: str, text: str) -> ReportError:
    return ReportError(f"{path}: {text}; it is written by `ssl-bf submit --sweep` (ssl_bf/sweep_file.py): "
                       f"restore it, or remove it to report the run sub-folders instead")


def _element(path: str, i: int, e: object) -> Element:
    where = f"element {i}"
    if not isinstance(e, dict):
        raise _bad(path, f"{where} is a JSON {_json_kind(e)}, not an object")
    unknown = sorted(set(e) - _ELEMENT_FIELDS)
    if unknown:
        raise _bad(path, f"{where} has the unknown field '{unknown[0]}' (known: {', '.join(sorted(_ELEMENT_FIELDS))})")
    for name in _ELEMENT_REQUIRED:
        if name not in e:
            raise _bad(path, f"{where} has no '{name}'")
    name = e["name"]
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name:
        raise _bad(path, f"{where}: 'name' must be a run folder name, got {name!r}")
    if not isinstance(e["run_dir"], str) or not e["run_dir"]:
        raise _bad(path, f"{where} ('{name}'): 'run_dir' must be a path, got {e['run_dir']!r}")
    for field_name in ("overrides", "params"):
        value = e.get(field_name)
        if field_name == "params" and value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, _SCALAR) for v in value.values()):
            raise _bad(path, f"{where} ('{name}'): '{field_name}' must be an object of config values, got {value!r}")
    for field_name in ("job_id", "eval_job_id"):
        if not isinstance(e.get(field_name), (str, int, type(None))):
            raise _bad(path, f"{where} ('{name}'): '{field_name}' must be a job id, got {e[field_name]!r}")
    return Element(**e)


def read_sweep_checked(folder: str) -> Optional[Sweep]:
    """FOLDER/sweep.json, every field checked; None when there is none. ReportError names the
    file and the field at fault (not JSON, not an object, unknown/missing/mistyped fields, no
    elements, a run listed twice)."""
    path = os.path.join(folder, SWEEP_FILE)
    if not os.path.lexists(path):
        return None
    try:
        data = read_json_object(path)
    except ValueError as err:
        raise _bad(path, str(err).removeprefix(f"{path}: ")) from None
    unknown = sorted(set(data) - set(_TOP))
    if unknown:
        raise _bad(path, f"unknown field '{unknown[0]}' (known: {', '.join(_TOP)})")
    for key, kind in _TOP.items():
        if key in data and not isinstance(data[key], kind):
            raise _bad(path, f"'{key}' must be a JSON {_json_kind(kind())}, got {_json_kind(data[key])}")
    if "elements" not in data:
        raise _bad(path, "no 'elements' (the runs of the sweep)")
    keys = data.get("keys", [])
    if not all(isinstance(k, str) and k for k in keys):
        raise _bad(path, f"'keys' must be a list of config keys, got {keys!r}")
    elements = [_element(path, i, e) for i, e in enumerate(data["elements"])]
    if not elements:
        raise _bad(path, "lists no runs ('elements' is empty)")
    seen: dict[str, int] = {}
    for i, el in enumerate(elements):
        if el.name in seen:
            raise _bad(path, f"the run '{el.name}' is listed twice (elements {seen[el.name]} and {i}): "
                             f"it would count twice in every mean")
        seen[el.name] = i
    return Sweep(base_dir=data.get("base_dir", folder), keys=list(keys), command=list(data.get("command", [])),
                 elements=elements)


def element_dirs(sweep: Sweep, folder: str) -> list[tuple[Element, str]]:
    """(element, its run folder): FOLDER/NAME (beside this sweep.json) when it exists, else the
    recorded run_dir when that exists, else FOLDER/NAME (not started). Two elements never share
    a folder (ReportError)."""
    out, used = [], {}
    for el in sweep.elements:
        here = os.path.join(folder, el.name)
        run_dir = here if os.path.isdir(here) or not os.path.isdir(el.run_dir) else el.run_dir
        key = os.path.realpath(run_dir)
        if key in used:
            raise _bad(os.path.join(folder, SWEEP_FILE), f"the runs '{used[key]}' and '{el.name}' are the same "
                                                         f"folder {run_dir}: it would count twice in every mean")
        used[key] = el.name
        out.append((el, run_dir))
    return out


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def check_folder_argument(folder: str) -> None:
    """The FOLDER argument: an existing folder (ReportError otherwise)."""
    if not os.path.exists(folder):
        raise ReportError(f"no such folder: {folder}")
    if not os.path.isdir(folder):
        raise ReportError(f"{folder} is a file, not a folder: give a run folder or a sweep folder")


REPORT_FILE_KINDS = {".png": FileKind.PNG, ".json": FileKind.JSON, ".md": FileKind.TEXT, ".csv": FileKind.TEXT}


def report_file_kind(name: str) -> FileKind:
    """What a report file holds, by the name the report gives it (report.md, loss.png, ...)."""
    return REPORT_FILE_KINDS[os.path.splitext(name)[1]]


def check_report_folder(path: str, files: Sequence[str], protected: Sequence[str] = (), what: str = "--out",
                        owner: Optional[Owner] = None) -> str:
    """Refuse an output folder before any work (the output guard on the folder and on each of
    `files` in it: never a special file, another command's run file, another kind of file or one
    of the `protected` inputs). Raises ReportError naming `what`; returns `path`."""
    try:
        check_output_folder(path, option=what, owner=owner)
        for name in files:
            check_output(os.path.join(path, name), report_file_kind(name), option=what, inputs=protected, owner=owner)
    except OutputError as err:
        raise ReportError(str(err)) from None
    return path


def check_output_file(path: Optional[str], protected: Sequence[str], what: str) -> None:
    """The output guard on a JSON file option ('-' is stdout), as a ReportError."""
    if path and path != "-":
        try:
            check_output(path, FileKind.JSON, option=what, inputs=protected)
        except OutputError as err:
            raise ReportError(str(err)) from None


def run_inputs(folder: str, depth: int = 2) -> list[str]:
    """The files a report reads under FOLDER (sweep.json, results.json, config.yaml, metrics.jsonl,
    evaluations.jsonl, at most `depth` levels down): an output may never replace one of them."""
    names = {SWEEP_FILE, RESULTS, "config.yaml", "metrics.jsonl", "evaluations.jsonl"}
    found = []
    base = folder.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(folder):
        if dirpath.rstrip(os.sep).count(os.sep) - base >= depth:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d not in ("checkpoints", "embeddings", "submitit", "report")]
        found += [os.path.join(dirpath, n) for n in filenames if n in names]
    return found
