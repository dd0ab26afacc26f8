"""`embed`, `evaluate` and `linear --protocol mocov2` read shards as they read the image folder the
shards were written from: the same rows (in the manifest's order), named `shard:key`."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from fuzz_contract import run_cli
from shard_data import PRETRAIN, make_folder, make_shards
from ssl_bf.data.shards import decode_key
from ssl_bf.eval.formats import load_embeddings

pytestmark = pytest.mark.slow  # a pretraining run and a dozen embeddings: about two minutes on 2 cores


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards_eval")
    folder = make_folder(str(root / "jpegs"), train_per_class=52)  # 208: evaluate's k-NN takes k up to 200
    return {"folder": folder, "sorted": make_shards(folder, str(root / "sorted"), "--order", "sorted"),
            "shuffled": make_shards(folder, str(root / "shuffled"))}


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A one-epoch run pretrained on the sorted shards (3-channel 32 px crops)."""
    run_dir = str(tmp_path_factory.mktemp("run") / "run")
    code, out = run_cli(["pretrain", *PRETRAIN, f"data.root={data['sorted']}", f"run.dir={run_dir}", "train.epochs=1"])
    assert code == 0, out[-3000:]
    return run_dir


def _embed(run, split, data, out):
    code, text = run_cli(["embed", "--checkpoint", os.path.join(run, "checkpoints", "last.pt"), "--data", data,
                          "--split", split, "--out", out, "--workers", "2", "--no-progress"])
    assert code == 0, text[-3000:]
    return load_embeddings(out)


@pytest.fixture(scope="module")
def folder_rows(data, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder_embeddings")
    return {split: _embed(run, split, data["folder"], str(out / f"{split}.safetensors")) for split in ("train", "test")}


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_folder_to_shards_to_embed_equals_folder_to_embed(data, run, folder_rows, tmp_path, order):
    for split, sub in (("train", "train"), ("test", "val")):
        folder = folder_rows[split]
        shards = _embed(run, split, data[order], str(tmp_path / f"{split}-shards.safetensors"))
        assert shards.metadata["dataset"] == "shards" and len(shards) == len(folder)
        row_of = {p: i for i, p in enumerate(folder.image_paths)}
        rows = []
        for name in shards.image_paths:  # shard:key, the key encoding the image's relative path
            shard, key = name.split(":", 1)
            assert shard.startswith(f"{split}-") and shard.endswith(".tar")
            rows.append(row_of[os.path.join(data["folder"], sub, decode_key(key))])
        if order == "sorted":
            assert rows == list(range(len(folder)))
        np.testing.assert_allclose(shards.embeddings, folder.embeddings[rows], rtol=0, atol=1e-6)
        assert np.array_equal(shards.labels, folder.labels[rows])


def test_evaluate_on_shards_scores_as_on_the_folder(data, run, tmp_path):
    results = {}
    for name, extra in (("shards", []), ("folder", ["--data", data["folder"]])):
        copy = str(tmp_path / name)
        shutil.copytree(run, copy)
        code, text = run_cli(["evaluate", copy, "--linear", "cached", "--workers", "0", "--no-progress", *extra])
        assert code == 0, text[-3000:]
        results[name] = json.load(open(os.path.join(copy, "results.json")))
    assert results["shards"]["knn"] == results["folder"]["knn"]
    assert results["shards"]["linear"]["top1"] == pytest.approx(results["folder"]["linear"]["top1"], abs=1e-9)


def test_the_mocov2_linear_probe_on_sorted_shards_is_the_probe_on_the_folder(data, run):
    got = {}
    for name in ("sorted", "folder"):
        code, text = run_cli(["linear", "--protocol", "mocov2", "--checkpoint", os.path.join(run, "checkpoints", "last.pt"),
                              "--data", data[name], "--epochs", "1", "--batch-size", "16", "--workers", "0",
                              "--device", "cpu", "--no-progress", "--image-size", "32"])
        assert code == 0, text[-3000:]
        got[name] = [line for line in text.splitlines() if "top-1" in line or "top1" in line]
    assert got["sorted"] == got["folder"] and got["sorted"], got
