"""Fuzzing the run files every reader takes: RUN/metrics.jsonl (through a resume and `ssl-bf
report`) and results.json (through `ssl-bf report` and `ssl-bf sweep-report`), in-process.

metrics.jsonl is generated line by line from labelled parts: valid records, garbage (text that is
not JSON, JSON that is not an object, a record with an impossible value), and a last line cut
short (a prefix of a record with no newline). The oracle: a file with a garbage line anywhere is
refused naming the file (resume: exit 2, the run folder byte-identical; report: the run listed as
unreadable, exit 3); otherwise it is accepted, the cut-short line dropped with a note, and a
resume keeps exactly the valid records up to its step.

results.json holds evaluate's sections with random values (accuracies out of [0, 100], strings,
bools, NaN, infinities, huge integers, nested junk). The oracle, an independent check of each run:
a run with an impossible value is listed as not read, naming its results.json, and every table
(JSON, CSV) holds only the valid runs, whose means equal a float64 numpy mean.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bad_cases_pretrain import put_metrics
from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from tiny_run import TINY

RESUME = ["--config", TINY, "train.epochs=1", "data.subset=256", "moco.queue_size=128"]
RESUME_STEP = 4  # the finished tiny run stands at step 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("fuzz_run_files") / "run")
    code, out = run_cli(["pretrain", *RESUME, f"run.dir={run}"])
    assert code == 0, out
    return run


# --- metrics.jsonl ---------------------------------------------------------------------------------
small = st.integers(0, 9)
valid_records = st.one_of(
    st.fixed_dictionaries({"step": small, "epoch": small, "loss": st.floats(-1e6, 1e6), "lr": st.floats(0, 1)}),
    st.fixed_dictionaries({"epoch": small, "step": small, "loss": st.floats(0, 10), "images_per_s": st.floats(0, 1e5),
                           "train_seconds": st.floats(0, 1e5)}),
    st.fixed_dictionaries({"event": st.just("knn"), "epoch": small, "step": small,
                           "knn_top1": st.one_of(st.none(), st.floats(0, 100)), "knn_seconds": st.floats(0, 99)}),
    st.fixed_dictionaries({"event": st.sampled_from(["start", "knn_init"]), "step": small},
                          optional={"note": st.text(max_size=8)}))
impossible = st.one_of(
    st.fixed_dictionaries({"step": st.one_of(st.integers(max_value=-1), st.text(max_size=3), st.booleans(),
                                             st.floats(allow_nan=True))}),
    st.fixed_dictionaries({"event": st.just("knn"), "epoch": small,
                           "knn_top1": st.one_of(st.floats(100.001, 1e300), st.floats(max_value=-0.001),
                                                 st.just(float("nan")), st.text(max_size=3))}),
    st.fixed_dictionaries({"epoch": small, "train_seconds": st.one_of(st.floats(max_value=-0.01), st.text(max_size=3))}))
garbage = st.one_of(
    st.text(alphabet="{}[]\",:ab 1", min_size=1, max_size=12).filter(lambda t: t.strip() and not _is_json(t)),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.text(max_size=4)).map(json.dumps),
    impossible.map(json.dumps),
    st.binary(min_size=1, max_size=8).filter(lambda b: _not_utf8(b)))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b"\n" not in data
    return False


@st.composite
def metrics_files(draw):
    """(file bytes, the valid records in order, has a garbage line, has a cut-short last line)."""
    parts = draw(st.lists(st.one_of(valid_records.map(lambda r: ("ok", r)), garbage.map(lambda g: ("bad", g)),
                                    st.just(("blank", ""))), max_size=8))
    lines, records = [], []
    for kind, value in parts:
        if kind == "ok":
            records.append(value)
            lines.append(json.dumps(value).encode())
        else:
            lines.append(value if isinstance(value, bytes) else value.encode())
    data = b"".join(line + b"\n" for line in lines)
    torn = draw(st.booleans())
    if torn:  # a kill during the append of one more record: a prefix with no newline
        text = json.dumps(draw(valid_records)).encode()
        data += text[:draw(st.integers(1, len(text) - 1))]
    return data, records, any(kind == "bad" for kind, _ in parts), torn


@contextlib.contextmanager
def _run_with_metrics(base: str, case):
    """A scratch copy of the run whose metrics.jsonl is the generated file (a folder when `case` is
    None); yields (run, the valid records, has a garbage line, has a cut-short last line)."""
    data, records, bad, torn = case if case is not None else (None, [], True, False)
    run = os.path.join(tempfile.mkdtemp(prefix="fuzz-metrics-"), "run")
    try:
        shutil.copytree(base, run)
        put_metrics(run, data)
        yield run, records, bad, torn
    finally:
        shutil.rmtree(os.path.dirname(run), ignore_errors=True)


@settings(max_examples=fuzz_examples(30))
@given(case=st.one_of(metrics_files(), st.just(None)))
def test_a_resume_reads_metrics_jsonl_or_refuses_it_naming_the_file(finished_run, case):
    count("run files: metrics.jsonl via resume", 1)
    with _run_with_metrics(finished_run, case) as (run, records, bad, torn):
        before = snapshot(watched_files(run))
        code, out = run_cli(["pretrain", *RESUME, f"run.dir={run}"])
        check_contract(code, out, names=(os.path.join(run, "metrics.jsonl"),), before=before if code else None)
        assert code == (2 if bad else 0), out[-1500:]
        if code == 0:
            with open(os.path.join(run, "metrics.jsonl")) as f:
                kept = [json.loads(line) for line in f]
            assert kept[:-1] == [r for r in records if r.get("step", -1) <= RESUME_STEP]  # then the new start
            assert kept[-1]["event"] == "start" and kept[-1]["resumed_from_step"] == RESUME_STEP
            assert ("cut short" in out) == torn


@settings(max_examples=fuzz_examples(12))
@given(case=st.one_of(metrics_files(), st.just(None)))
def test_report_lists_a_run_whose_metrics_jsonl_cannot_be_read(finished_run, case):
    count("run files: metrics.jsonl via report", 1)
    with _run_with_metrics(finished_run, case) as (run, _, bad, torn):
        out_dir = os.path.join(os.path.dirname(run), "out")
        before = snapshot(watched_files(run))
        code, out = run_cli(["report", run, "--no-tsne", "--out", out_dir])
        check_contract(code, out, names=(os.path.join(run, "metrics.jsonl"),), before=before, allowed=(0, 3))
        assert code == (3 if bad else 0), out[-1500:]
        with open(os.path.join(out_dir, "report.json")) as f:
            report = json.load(f)
        unread = [n["problem"] for n in report["not_read"] if n["kind"] == "unreadable"]  # not "missing" results
        assert bool(unread) == bad and all(os.path.join(run, "metrics.jsonl") in p for p in unread)
        (entry,) = report["runs"]
        dropped = "cut short (a run killed while writing it) and is dropped"
        assert any(dropped in m for m in entry["missing"]) == (torn and not bad)


# --- results.json -----------------------------------------------------------------------------------
accuracy = st.one_of(st.floats(0, 100), st.integers(0, 100), st.none(),  # possible
                     st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                     st.text(max_size=4), st.booleans(), st.lists(st.integers(0, 100), max_size=2))
junk_keys = st.text(alphabet="xyzw", min_size=1, max_size=3)  # never the name of an accuracy
junk = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                              st.integers(-10**320, 10**320), st.text(max_size=4)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(junk_keys, inner, max_size=3)),
                    max_leaves=6)
results_files = st.fixed_dictionaries(
    {"knn": st.lists(st.fixed_dictionaries({"k": st.sampled_from([20, 200]), "temperature": st.just(0.07),
                                            "top1": accuracy, "top5": accuracy}), max_size=1),
     "linear": st.fixed_dictionaries({"protocol": st.just("cached"), "top1": accuracy, "top5": accuracy}),
     "evaluated": st.fixed_dictionaries({"seconds": st.one_of(st.floats(0, 1e4), st.floats(allow_nan=True))})},
    optional={"extra": junk})


def _valid_number(v) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return not isinstance(v, int) or isinstance(v, bool) or abs(v) <= 1e300


def _valid_accuracy(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                         and 0 <= v <= 100)


def _valid_results(res: dict) -> bool:
    """An independent statement of what a table may average: accuracies in [0, 100] (or null), and
    every other number finite and not huge."""
    def walk(node) -> bool:
        if isinstance(node, dict):
            return all(walk(v) for v in node.values())
        if isinstance(node, list):
            return all(walk(v) for v in node)
        return _valid_number(node)
    accuracies = [e[k] for e in res["knn"] for k in ("top1", "top5")] + [res["linear"][k] for k in ("top1", "top5")]
    return all(map(_valid_accuracy, accuracies)) and walk(res["evaluated"]) and walk(res.get("extra"))


@contextlib.contextmanager
def _sweep_folder(results: list[dict]):
    """A scratch folder of runs seed=0.. with these results.json (and a config.yaml each)."""
    base = tempfile.mkdtemp(prefix="fuzz-results-")
    try:
        for i, res in enumerate(results):
            run = os.path.join(base, f"seed={i}")
            os.makedirs(run)
            with open(os.path.join(run, "config.yaml"), "w") as f:
                f.write(f"seed: {i}\n")
            with open(os.path.join(run, "results.json"), "w") as f:
                f.write(json.dumps(res))  # NaN and Infinity as JSON's extensions write them
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def valid_runs(results: list[dict]) -> list[bool]:
    return [_valid_results(r) for r in results]


def _report_of(results: list[dict], base: str, argv: list[str], written: str, expected_code: int):
    """Run the report command; check the contract, the exit code, and that exactly the runs with an
    impossible value are listed as not read, naming their results.json. Returns (JSON written, valid)."""
    before = snapshot(watched_files(base))
    code, out = run_cli(argv)
    valid = valid_runs(results)
    check_contract(code, out, names=("results.json",), before=before, allowed=(expected_code,))
    with open(written) as f:
        data = json.load(f)
    assert {n["name"] for n in data["not_read"]} == {f"seed={i}" for i, ok in enumerate(valid) if not ok}
    assert all(f"seed={i}/results.json" in out for i, ok in enumerate(valid) if not ok)
    return data, valid


def _check_linear_mean(cell: dict | None, results: list[dict], metric: str) -> None:
    """The table's cell of linear.METRIC: absent exactly when no valid run has a value, else the
    float64 numpy mean of the valid runs' values."""
    values = [r["linear"][metric] for r in results if _valid_results(r) and r["linear"][metric] is not None]
    assert (cell is None) == (not values), (cell, values)
    if values:
        assert math.isclose(cell["mean"], float(np.mean(np.asarray(values, dtype=np.float64))), rel_tol=1e-12,
                            abs_tol=1e-12)


@settings(max_examples=fuzz_examples(25))
@given(results=st.lists(results_files, min_size=1, max_size=3))
def test_sweep_report_never_averages_an_impossible_value(results):
    count("run files: results.json via sweep-report", 1)
    with _sweep_folder(results) as base:
        out_json = os.path.join(base, "table.json")
        table, valid = _report_of(results, base, ["sweep-report", base, "--json", out_json, "--allow-missing"],
                                  out_json, 0 if any(valid_runs(results)) else 1)
        rows = {row["metric"]: row for row in table["rows"]}
        for metric in ("top1", "top5"):
            _check_linear_mean(rows.get(f"linear.{metric}"), results, metric)
        for row in table["rows"]:
            if row["metric"].rsplit(".", 1)[-1] in ("top1", "top5"):
                assert all(0 <= v <= 100 for v in row["values"]) and 0 <= row["mean"] <= 100
        if any(valid):
            with open(os.path.join(base, "sweep-report.csv")) as f:
                for line in csv.DictReader(io.StringIO(f.read())):
                    assert math.isfinite(float(line["mean"]))


@settings(max_examples=fuzz_examples(10))
@given(results=st.lists(results_files, min_size=1, max_size=2))
def test_report_lists_every_run_with_an_impossible_result(results):
    count("run files: results.json via report", 1)
    with _sweep_folder(results) as base:
        out_dir = os.path.join(base, "out")
        report, _ = _report_of(results, base, ["report", base, "--no-tsne", "--out", out_dir],
                                   os.path.join(out_dir, "report.json"), 0 if all(valid_runs(results)) else 3)
        cells = [c for v in report["variants"] for c in v["results"].values()]
        assert all(0 <= x <= 100 for c in cells for x in c["values"])
        (variant,) = report["variants"]
        _check_linear_mean(variant["results"].get("linear.top1"), results, "top1")
