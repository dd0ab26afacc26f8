"""Checkpoints written by an earlier ssl-bf still resume and evaluate bit for bit.

tests/golden/legacy/ holds two small run folders written on 2026-12-04 by the code of that day
(before the core was regrouped into models/ train/ knn/ checkpoints/), stopped after 4 of 16 steps,
with the per-step losses that code reached when resumed to the end and the test features it
embedded (make.sh records the commands). Today's code must give the same numbers exactly.

One deliberate change: issue 25 made the augmentation torchvision's, which changes every view drawn
after the resume. The resumed losses (steps 5-16) were therefore rewritten once with
resume_losses.sh (each expected_losses.json says so in its "note" and keeps the old code's values
under "superseded_resumed_losses"); steps 1-4, the checkpoints and the embeddings are the old
code's, and the embeddings must still match bit for bit.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from ssl_bf.cli import main

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "legacy")
RUNS = ("mocov2_bf", "mocov3_bf")


def _logged_losses(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "event" not in r and "images_per_s" not in r and "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_a_legacy_checkpoint_resumes_to_the_losses_its_own_code_reached(tmp_path, name):
    run = tmp_path / name
    shutil.copytree(os.path.join(LEGACY, name), run)
    code = main(["pretrain", "--config", str(run / "config.yaml"), f"run.dir={run}", "train.max_steps=0",
                 "train.log_every=1", "run.progress=false"])
    assert code == 0
    with open(os.path.join(LEGACY, name, "expected_losses.json")) as f:
        expected = json.load(f)
    logged = _logged_losses(str(run))
    assert sorted(logged) == expected["steps"]
    assert [logged[s] for s in expected["steps"]] == expected["losses"]  # bit for bit


@pytest.mark.parametrize("name", RUNS)
def test_a_legacy_checkpoint_embeds_to_the_features_its_own_code_gave(tmp_path, name):
    out = tmp_path / "test.safetensors"
    code = main(["embed", "--checkpoint", os.path.join(LEGACY, name, "checkpoints", "last.pt"), "--split", "test",
                 "--subset", "256", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0
    got, expected = load_file(str(out)), load_file(os.path.join(LEGACY, name, "expected_test.safetensors"))
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape
        assert got[key].eq(expected[key]).all(), key
