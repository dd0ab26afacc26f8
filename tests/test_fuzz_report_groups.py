"""Fuzzing the per-group reader of `ssl-bf report` (report/group_figures.py, issue 22): generated
`per_group` objects in results.json and in metrics.jsonl's knn events.

- table: `group_table` and `compare` on generated per-seed figures (numbers, null, NaN, bools,
  text, missing fields) against an independent float64 numpy reference; "beyond" exactly when
  |diff| > the larger seed std.
- CLI: `ssl-bf report` on run folders with generated per_group values under the contract (exit 0,
  2 or 3, no traceback, the runs' files byte-identical), and group files exactly when a usable
  figure is there.

Budgets (max_examples, times SSL_BF_FUZZ_SCALE): table 150, CLI 8: about 15 s on 2 cores.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot

FIELDS = ("many", "medium", "few", "class_std")
VALUE = st.one_of(st.floats(0, 100), st.integers(0, 100), st.sampled_from([None, float("nan"), True, "50", [1]]))
GROUPS = st.dictionaries(st.sampled_from(FIELDS + ("per_class", "rule")), VALUE, max_size=6)


def _usable(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _variant(label: str, per_seed: list[dict]):
    from ssl_bf.report.records import Run, Variant

    v = Variant(label, {"batchformer.enabled": "true" if label == "b" else "false"})
    v.runs = [Run(f"{label}{i}", "/nonexistent", {}, results={"logreg": {"top1": 1.0, "per_group": g}})
              for i, g in enumerate(per_seed)]
    return v


@settings(max_examples=fuzz_examples(150))
@given(st.lists(GROUPS, min_size=1, max_size=4), st.lists(GROUPS, min_size=1, max_size=4))
def test_table_and_comparison_match_numpy(seeds_a, seeds_b):
    from ssl_bf.report.group_figures import bf_pairs, compare, group_table

    count("report_groups_table", 1)
    variants = [_variant("a", seeds_a), _variant("b", seeds_b)]
    table = group_table(variants)
    reference = {}
    for v, seeds in zip(variants, (seeds_a, seeds_b)):
        for f in FIELDS:
            values = np.array([float(g[f]) for g in seeds if _usable(g.get(f))], dtype=np.float64)
            cell = table.get(v.label, {}).get("logreg", {}).get(f)
            if values.size == 0:
                assert cell is None
                continue
            std = float(values.std(ddof=1)) if values.size > 1 else None
            reference[(v.label, f)] = (float(values.mean()), std)
            assert cell["n"] == values.size and math.isclose(cell["mean"], values.mean(), abs_tol=1e-9)
            assert (cell["std"] is None) == (std is None)
            assert std is None or math.isclose(cell["std"], std, abs_tol=1e-9)
    assert [(a.label, b.label) for a, b in bf_pairs(variants)] == [("a", "b")]
    rows = compare(table, "a", "b")
    assert {r["field"] for r in rows} == {f for f in FIELDS if ("a", f) in reference and ("b", f) in reference}
    for r in rows:
        (ma, sa), (mb, sb) = reference[("a", r["field"])], reference[("b", r["field"])]
        assert math.isclose(r["diff"], mb - ma, abs_tol=1e-9)
        if sa is None or sb is None:
            assert r["beyond"] is None
        else:
            assert r["beyond"] is (abs(mb - ma) > max(sa, sb))


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:  # test fixture, not a product write
        f.write(text)


@settings(max_examples=fuzz_examples(8), deadline=None)
@given(st.lists(GROUPS, min_size=2, max_size=2), st.lists(GROUPS, min_size=2, max_size=2))
def test_report_cli_on_generated_per_group(knn_groups, result_groups):
    count("report_groups_cli", 1)
    with tempfile.TemporaryDirectory() as folder:
        inputs = []
        for i, (event_groups, groups) in enumerate(zip(knn_groups, result_groups)):
            run = os.path.join(folder, f"run{i}")
            _write(os.path.join(run, "config.yaml"), f"seed: {i}\ntrain:\n  epochs: 1\n")
            records = [{"epoch": 0, "step": 5, "loss": 1.0, "train_seconds": 1.0},
                       {"event": "knn", "epoch": 0, "step": 5, "knn_top1": 50.0, "per_group": event_groups}]
            _write(os.path.join(run, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
            _write(os.path.join(run, "results.json"),
                   json.dumps({"knn": [{"k": 20, "temperature": 0.07, "top1": 60.0, "per_group": groups}]}))
            inputs += [os.path.join(run, "metrics.jsonl"), os.path.join(run, "results.json")]
        before = snapshot(inputs)
        code, out = run_cli(["report", folder, "--no-tsne"])
        check_contract(code, out, ("results.json", "metrics.jsonl"), before, allowed=(0, 2, 3))
        if code == 0:
            written = set(os.listdir(os.path.join(folder, "report")))
            has_results = any(_usable(g.get(f)) for g in result_groups for f in FIELDS)
            has_curve = any(_usable(g.get(f)) for g in knn_groups for f in FIELDS[:3])  # a run's points alone draw
            assert ("groups.png" in written) == has_results
            assert ("knn_groups.png" in written) == has_curve
