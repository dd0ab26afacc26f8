"""`ssl-bf report` per-group figures: synthetic run folders (2 variants x 3 seeds) with known
per-group numbers; the table against numpy, the BatchFormer comparison, the PNGs, and a folder
without per-group figures that gets none of it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fuzz_contract import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIELDS = ("many", "medium", "few", "class_std")
SEEDS = (0, 1, 2)
EPOCHS = 3
# probe title in the report -> how results.json holds it
PROBES = ("k-NN k=20, T=0.07", "logreg", "100-shot (logreg)", "10-shot (logreg)")


def _groups(rng: np.random.Generator) -> dict:
    return {"many": float(rng.uniform(60, 90)), "medium": float(rng.uniform(40, 70)),
            "few": float(rng.uniform(10, 50)), "class_std": float(rng.uniform(5, 25))}


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:  # test fixture, not a product write
        f.write(text)


def make_run(folder: str, name: str, bf: bool, seed: int, rng: np.random.Generator, per_group: bool = True) -> dict:
    """A run folder with config.yaml, metrics.jsonl and results.json; returns its per-group numbers
    {probe: {field: value}} and {'curve': {group: [value per epoch]}}."""
    run = os.path.join(folder, name)
    _write(os.path.join(run, "config.yaml"),
           f"seed: {seed}\ntrain:\n  epochs: {EPOCHS}\nbatchformer:\n  enabled: {'true' if bf else 'false'}\n")
    truth: dict = {"curve": {g: [] for g in FIELDS[:3]}}
    records = []
    for epoch in range(EPOCHS):
        records.append({"epoch": epoch, "step": 10 * (epoch + 1), "loss": 5.0 - epoch, "train_seconds": 1.0})
        event = {"event": "knn", "epoch": epoch, "step": 10 * (epoch + 1), "knn_top1": 50.0 + epoch,
                 "knn_seconds": 0.1}
        if per_group:
            g = _groups(rng)
            event["per_group"] = g
            for k in FIELDS[:3]:
                truth["curve"][k].append(g[k])
        records.append(event)
    _write(os.path.join(run, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    probes = {p: _groups(rng) for p in PROBES}
    for p in PROBES:
        truth[p] = probes[p]

    def with_groups(entry: dict, probe: str) -> dict:
        return {**entry, "per_group": probes[probe]} if per_group else entry

    results = {
        "knn": [with_groups({"k": 20, "temperature": 0.07, "top1": 70.0, "top5": 90.0}, PROBES[0]),
                {"k": 200, "temperature": 0.1, "top1": 69.0, "top5": 91.0}],
        "logreg": with_groups({"protocol": "logreg", "top1": 72.0, "top5": 93.0}, PROBES[1]),
    }
    if per_group:
        results["few_shot"] = {"100": {"protocol": "logreg", "top1": 60.0, "top1_std": 1.0,
                                       "per_group": probes[PROBES[2]], "per_group_std": {"many": 1.0}},
                               "10": {"protocol": "logreg", "top1": 40.0, "top1_std": 2.0,
                                      "per_group": probes[PROBES[3]], "per_group_std": {"many": 2.0}}}
    _write(os.path.join(run, "results.json"), json.dumps(results))
    return truth


@pytest.fixture(scope="module")
def lt_folder(tmp_path_factory):
    """2 variants (batchformer.enabled false / true) x 3 seeds, reported once."""
    folder = str(tmp_path_factory.mktemp("lt"))
    rng = np.random.default_rng(22)
    truth = {bf: [make_run(folder, f"{'bf' if bf else 'base'}_s{s}", bf, s, rng) for s in SEEDS] for bf in (False, True)}
    code, out = run_cli(["report", folder, "--no-tsne"])
    assert code == 0, out
    with open(os.path.join(folder, "report", "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(folder, "report", "report.md")) as f:
        markdown = f.read()
    return folder, truth, report, markdown


LABELS = {False: "batchformer.enabled=false", True: "batchformer.enabled=true"}


def test_table_equals_numpy(lt_folder):
    _, truth, report, markdown = lt_folder
    table = report["per_group"]["table"]
    assert report["per_group"]["probes"] == list(PROBES)
    for bf, runs in truth.items():
        for probe in PROBES:
            for field in FIELDS:
                values = np.array([r[probe][field] for r in runs], dtype=np.float64)
                cell = table[LABELS[bf]][probe][field]
                assert cell["n"] == len(SEEDS)
                assert cell["mean"] == pytest.approx(values.mean(), abs=1e-9)
                assert cell["std"] == pytest.approx(values.std(ddof=1), abs=1e-9)
                assert f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=3)" in markdown


def test_comparison_says_beyond_exactly_when_diff_exceeds_larger_std(lt_folder):
    _, truth, report, markdown = lt_folder
    comparisons = report["per_group"]["comparisons"]
    assert len(comparisons) == len(PROBES) * len(FIELDS)
    for c in comparisons:
        assert (c["without"], c["with"]) == (LABELS[False], LABELS[True])
        a = np.array([r[c["probe"]][c["field"]] for r in truth[False]])
        b = np.array([r[c["probe"]][c["field"]] for r in truth[True]])
        diff, noise = b.mean() - a.mean(), max(a.std(ddof=1), b.std(ddof=1))
        assert c["diff"] == pytest.approx(diff, abs=1e-9) and c["noise"] == pytest.approx(noise, abs=1e-9)
        assert c["beyond"] is bool(abs(diff) > noise)
        word = "beyond seed noise" if abs(diff) > noise else "within seed noise"
        assert f"{c['field']} {diff:+.2f} ({word}, noise {noise:.2f})" in markdown
    assert {c["beyond"] for c in comparisons} == {True, False}  # the fixture exercises both verdicts


def test_group_pngs_are_valid(lt_folder):
    import matplotlib.image

    folder, _, report, markdown = lt_folder
    for name in ("knn_groups.png", "groups.png"):
        path = os.path.join(folder, "report", name)
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC, path
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert f"]({name})" in markdown
    assert report["images"]["knn_groups"] == "knn_groups.png" and report["images"]["groups"] == "groups.png"


def test_group_curves_are_mean_and_range_over_seeds(lt_folder):
    from ssl_bf.report.group_figures import group_curves
    from ssl_bf.report.records import find_runs, group_runs

    folder, truth, _, _ = lt_folder
    keys, runs, _ = find_runs(folder)
    _, variants = group_runs(keys, runs)
    panels = group_curves(variants, {v.label: "k" for v in variants})
    assert list(panels) == ["many", "medium", "few"]
    for group, series in panels.items():
        for s in series:
            bf = s["label"] == LABELS[True]
            ys = np.array([r["curve"][group] for r in truth[bf]])  # (seeds, epochs)
            assert s["x"] == [1.0, 2.0, 3.0]
            np.testing.assert_allclose(s["mean"], ys.mean(axis=0), atol=1e-9)
            np.testing.assert_allclose(s["low"], ys.min(axis=0), atol=1e-9)
            np.testing.assert_allclose(s["high"], ys.max(axis=0), atol=1e-9)


def test_no_per_group_data_gives_no_group_output(tmp_path):
    rng = np.random.default_rng(0)
    for bf in (False, True):
        for s in SEEDS:
            make_run(str(tmp_path), f"{'bf' if bf else 'base'}_s{s}", bf, s, rng, per_group=False)
    code, out = run_cli(["report", str(tmp_path), "--no-tsne"])
    assert code == 0, out
    written = sorted(os.listdir(tmp_path / "report"))
    assert written == ["ablation.png", "knn.png", "loss.png", "report.json", "report.md"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "per_group" not in report and "groups" not in report["images"]
    assert "Per-group" not in (tmp_path / "report" / "report.md").read_text()


def _variant(label: str, group: dict):
    from ssl_bf.report.records import Variant

    return Variant(label, group)


def test_bf_pairs_by_name_and_by_config():
    from ssl_bf.report.group_figures import bf_pairs

    named = [_variant(n, {"variant": n}) for n in ("lt", "balanced+bf", "lt+bf", "balanced", "lt+bfx")]
    assert [(a.label, b.label) for a, b in bf_pairs(named)] == [("lt", "lt+bf"), ("balanced", "balanced+bf")]
    by_config = [_variant("a", {"batchformer.enabled": "false", "lr": "0.1"}),
                 _variant("b", {"batchformer.enabled": "true", "lr": "0.1"}),
                 _variant("c", {"batchformer.enabled": "true", "lr": "0.2"})]
    assert [(a.label, b.label) for a, b in bf_pairs(by_config)] == [("a", "b")]


def test_one_seed_gives_no_noise_verdict():
    from ssl_bf.report.group_figures import compare, verdict

    table = {"a": {"p": {"many": {"mean": 50.0, "std": None, "n": 1, "values": [50.0]}}},
             "b": {"p": {"many": {"mean": 60.0, "std": 1.0, "n": 2, "values": [59.0, 61.0]}}}}
    (c,) = compare(table, "a", "b")
    assert c["diff"] == 10.0 and c["beyond"] is None and verdict(c["beyond"]) == "one seed, no noise estimate"


def test_sweep_tables_leave_out_the_class_lists_of_the_groups():
    from ssl_bf.report.sweep_table import numeric_leaves

    entry = {"top1": 70.0, "per_group": {"many": 80.0, "few": 60.0, "groups": {"many": [0, 1], "few": [7, 8]}}}
    assert dict(numeric_leaves(entry)) == {"top1": 70.0, "per_group.many": 80.0, "per_group.few": 60.0}
