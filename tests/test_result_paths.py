"""Paths recorded by `ssl-bf evaluate` are relative to the run folder, so a run folder can be moved
or committed: results.json and evaluations.jsonl hold no absolute path, the embeddings are still
reused after a move, and files written with absolute paths (older versions) are still read."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

from ssl_bf.run_layout import Owner
from test_embed import _fashion_mnist_or_skip, make_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = ["--subset", "300", "--no-progress", "--device", "cpu", "--workers", "0"]


def _strings(obj):
    """Every string value in a JSON tree."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _records(run: str) -> list:
    """results.json and every line of evaluations.jsonl."""
    with open(os.path.join(run, "results.json")) as f:
        out = [json.load(f)]
    with open(os.path.join(run, "evaluations.jsonl")) as f:
        out += [json.loads(line) for line in f]
    return out


def _no_embedding(*args, **kwargs):
    pytest.fail("embedded although the embeddings files should have been reused")


def test_recorded_path_is_relative_inside_the_run_folder_only(tmp_path):
    from ssl_bf.eval.evaluate import recorded_path, resolve_recorded

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").touch()
    assert recorded_path(str(run / "checkpoints" / "last.pt"), str(run)) == "checkpoints/last.pt"
    assert recorded_path(str(run / "linear_head.pt"), str(run)) == "linear_head.pt"
    outside = tmp_path / "other" / "moco_v2_800ep.pth.tar"
    assert recorded_path(str(outside), str(run)) == str(outside)  # absolute, as before
    assert recorded_path(str(tmp_path / "run_b" / "x.pt"), str(run)) == str(tmp_path / "run_b" / "x.pt")
    (tmp_path / "link").symlink_to(run)  # RUN given through a link, the file by its real path
    assert recorded_path(str(run / "checkpoints" / "last.pt"), str(tmp_path / "link")) == "checkpoints/last.pt"
    assert resolve_recorded("checkpoints/last.pt", "/elsewhere/run") == "/elsewhere/run/checkpoints/last.pt"
    assert resolve_recorded("/old/machine/run/checkpoints/last.pt", "/elsewhere/run") == \
        "/old/machine/run/checkpoints/last.pt"


def test_evaluate_writes_no_absolute_path_and_reuses_embeddings_after_a_move(tmp_path, monkeypatch):
    import ssl_bf.eval.embed as embed_mod
    from ssl_bf.eval.evaluate_cli import evaluate_main
    from ssl_bf.eval.formats import load_embeddings

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)  # RUN given relative, as users type it
    assert evaluate_main([os.path.relpath(run, tmp_path), *EVAL]) == 0
    records = _records(run)
    for record in records:
        assert not [s for s in _strings(record) if os.path.isabs(s)], record
    results, entry = records
    assert results["evaluated"]["checkpoint"] == entry["evaluated"]["checkpoint"] == "checkpoints/last.pt"
    assert entry["linear"]["head"] == "linear_head.pt" and entry["logreg"]["head"] == "logreg_head.pt"
    for name in ("results.json", "evaluations.jsonl"):
        with open(os.path.join(run, name)) as f:
            assert str(tmp_path) not in f.read()
    for split in ("train", "test"):
        assert load_embeddings(os.path.join(run, "embeddings", f"{split}.safetensors")).metadata["checkpoint"] \
            == "checkpoints/last.pt"

    moved = str(tmp_path / "elsewhere" / "run")
    os.makedirs(os.path.dirname(moved))
    shutil.move(run, moved)
    monkeypatch.setattr(embed_mod, "embed", _no_embedding)
    assert evaluate_main([moved, *EVAL, "--reuse-embeddings", "--linear", "none"]) == 0
    records = _records(moved)
    assert len(records) == 3 and records[-1]["evaluated"]["checkpoint"] == "checkpoints/last.pt"
    assert records[0]["knn"] == records[1]["knn"]  # the same embeddings, scored again


def test_embeddings_of_another_checkpoint_or_features_are_not_reused(tmp_path):
    from ssl_bf.eval.evaluate import _reusable
    from ssl_bf.eval.formats import save_embeddings

    run = make_run(tmp_path)
    ckpt = os.path.join(run, "checkpoints", "last.pt")
    other = str(tmp_path / "other.pt")
    shutil.copy(ckpt, other)
    path = os.path.join(run, "embeddings", "train.safetensors")
    x, y = np.ones((4, 2)), [0, 1, 0, 1]
    save_embeddings(path, x, y, checkpoint="checkpoints/last.pt", features="backbone", owner=Owner.EVALUATE)
    assert _reusable(path, ckpt, "backbone", run)
    assert not _reusable(path, ckpt, "projection", run)
    assert not _reusable(path, other, "backbone", run)  # --checkpoint another file
    save_embeddings(path, x, y, checkpoint=other, features="backbone", owner=Owner.EVALUATE)  # outside RUN: absolute
    assert _reusable(path, other, "backbone", run) and not _reusable(path, ckpt, "backbone", run)


def test_files_with_absolute_paths_from_older_versions_are_still_read(tmp_path, monkeypatch):
    """An older evaluate recorded absolute paths, in results.json, evaluations.jsonl and the
    embeddings files; evaluate, reuse and the reports still read them."""
    import ssl_bf.eval.embed as embed_mod
    from ssl_bf.eval.evaluate_cli import evaluate_main
    from ssl_bf.eval.formats import load_embeddings, save_embeddings
    from ssl_bf.report.sweep_table import sweep_report_main

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    assert evaluate_main([run, *EVAL, "--linear", "cached"]) == 0
    ckpt = os.path.abspath(os.path.join(run, "checkpoints", "last.pt"))
    old_machine = "/work/main/runs/ablation/seed=0__variant=mocov2"
    results, entry = _records(run)
    results["evaluated"]["checkpoint"] = entry["evaluated"]["checkpoint"] = f"{old_machine}/checkpoints/last.pt"
    entry["linear"]["head"] = f"{old_machine}/linear_head.pt"
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(run, "evaluations.jsonl"), "w") as f:
        f.write(json.dumps(entry) + "\n")
    for split in ("train", "test"):  # the old embeddings metadata: the checkpoint's absolute path
        path = os.path.join(run, "embeddings", f"{split}.safetensors")
        emb = load_embeddings(path)
        save_embeddings(path, emb.embeddings, emb.labels, checkpoint=ckpt, features="backbone",
                        classes=emb.classes, owner=Owner.EVALUATE)  # as an older evaluate wrote it

    assert sweep_report_main([str(tmp_path), "--allow-missing"]) == 0  # reads the old results.json
    with open(tmp_path / "sweep-report.md") as f:
        assert "knn" in f.read()

    monkeypatch.setattr(embed_mod, "embed", _no_embedding)  # absolute and still right: reused
    assert evaluate_main([run, *EVAL, "--reuse-embeddings", "--linear", "none"]) == 0
    records = _records(run)
    assert records[1]["evaluated"]["checkpoint"] == f"{old_machine}/checkpoints/last.pt"  # history kept
    assert records[-1]["evaluated"]["checkpoint"] == "checkpoints/last.pt"
    assert records[-1]["knn"] == entry["knn"]

    moved = str(tmp_path / "moved")  # the absolute path now names nothing: embedded anew
    shutil.move(run, moved)
    monkeypatch.undo()
    assert evaluate_main([moved, *EVAL, "--reuse-embeddings", "--linear", "none"]) == 0
    assert load_embeddings(os.path.join(moved, "embeddings", "train.safetensors")).metadata["checkpoint"] \
        == "checkpoints/last.pt"


def test_committed_results_hold_no_absolute_paths():
    """results/ is published: its results.json and evaluations.jsonl name files relative to their run."""
    files = glob.glob(os.path.join(ROOT, "results", "**", "results.json"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "results", "**", "evaluations.jsonl"), recursive=True)
    assert files
    bad = []
    for path in files:
        with open(path) as f:
            text = f.read()
        records = [json.loads(line) for line in text.splitlines() if line.strip()] \
            if path.endswith(".jsonl") else [json.loads(text)]
        bad += [f"{os.path.relpath(path, ROOT)}: {s}" for r in records for s in _strings(r) if os.path.isabs(s)]
    assert not bad, "\n".join(bad[:10])
