"""Unreadable images in every consumer of image folders: `embed` (and `linear`, `evaluate` through
it), the image linear probes, pretraining (crops cut in DataLoader workers) and its k-NN monitor.

Without the option an unreadable image stops the command with exit 2 and one line naming the file;
with `--skip-unreadable` / `data.skip_unreadable=true` it is left out (rows) or replaced (training),
listed, and every written row keeps its own path, label and features."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fuzz_contract import run_cli
from image_files import image_folder, rgb_checkpoint, write_jpeg
from ssl_bf.train.metrics import read_metrics
from tiny_run import TINY, each_key_once

TRACEBACK = "Traceback (most recent call last)"
BAD = {"val/ant/1_trunc": "truncated", "val/bee/0_empty": "empty", "val/bee/2_text": "text",
       "val/ant/2_bomb": "bomb", "train/bee/5_trunc": "truncated"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return rgb_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "rgb.pt"))


@pytest.fixture
def folder(tmp_path):
    root = str(tmp_path / "imgs")
    bad = image_folder(root, per_class=4, bad=BAD)
    return root, bad


def _embed(ckpt, data, out, *extra):
    return run_cli(["embed", "--checkpoint", ckpt, "--data", data, "--split", "test", "--out", out, "--no-progress",
                    *extra])


def _alone(ckpt, paths):
    """Features of each image embedded alone (a batch of one), through the same encoder and transform."""
    from ssl_bf.data import DATASET_STATS, load_image
    from ssl_bf.data.augment import EvalTransform
    from ssl_bf.eval.embed import embed_arrays, load_embedding_encoder

    model, cfg = load_embedding_encoder(ckpt)
    transform = EvalTransform(32, *DATASET_STATS["imagefolder"])
    return np.concatenate([embed_arrays(model, load_image(p, cfg.data.load_size)[None], transform, batch_size=1)
                           for p in paths])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_embed_refuses_the_first_unreadable_image_in_one_line(ckpt, folder, tmp_path, workers):
    root, bad = folder
    out = str(tmp_path / "e.safetensors")
    code, text = _embed(ckpt, root, out, "--workers", workers, "--batch-size", "3")
    assert code == 2 and TRACEBACK not in text and not os.path.exists(out)
    first = os.path.join(root, "val", "ant", "1_trunc.jpg")  # the first bad file in sample order
    assert text.strip() == (f"ssl-bf embed: error: unreadable image {first}: OSError: image file is truncated "
                            f"({text.split('truncated (')[1].split(')')[0]}). Fix: remove or replace the file, or "
                            f"skip unreadable images (--skip-unreadable; in pretraining data.skip_unreadable=true)")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_embed_skip_unreadable_keeps_paths_labels_and_features_aligned(ckpt, folder, tmp_path, workers):
    from ssl_bf.data import find_images
    from ssl_bf.eval.formats import load_embeddings

    root, bad = folder
    out, summary = str(tmp_path / "e.safetensors"), str(tmp_path / "s.json")
    code, text = _embed(ckpt, root, out, "--workers", workers, "--batch-size", "3", "--skip-unreadable",
                        "--json", summary)
    assert code == 0 and TRACEBACK not in text, text
    emb = load_embeddings(out)
    skipped = sorted(p for rel, p in bad.items() if rel.startswith("val/"))
    readable = [p for cls in ("ant", "bee") for p in find_images(os.path.join(root, "val", cls)) if p not in skipped]
    assert emb.image_paths == readable and len(emb) == len(readable) == 8
    assert emb.labels.tolist() == [("ant", "bee").index(p.split(os.sep)[-2]) for p in readable]
    np.testing.assert_allclose(emb.embeddings, _alone(ckpt, readable), rtol=1e-4, atol=1e-5)
    assert json.loads(emb.metadata["unreadable_skipped"]) == skipped
    assert json.loads(open(summary).read())["unreadable_skipped"] == skipped
    for path in skipped:
        assert f"left out unreadable image {path} (" in text
    assert "bomb.png (100000000 pixels, more than the decompression-bomb limit" in text


def test_embed_when_every_image_is_unreadable(ckpt, tmp_path):
    root = str(tmp_path / "imgs")
    image_folder(root, per_class=0, bad={"val/ant/0": "empty", "val/bee/0": "text", "train/ant/0": "empty"})
    out = str(tmp_path / "e.safetensors")
    for extra, says in (([], f"unreadable image {root}/val/ant/0.jpg: UnidentifiedImageError"),
                        (["--skip-unreadable"], f"no readable image in {root}/val: 2 of its 2 images are unreadable "
                                                f"(the first, {root}/val/ant/0.jpg: UnidentifiedImageError")):
        code, text = _embed(ckpt, root, out, "--workers", "2", *extra)
        assert code == 2 and TRACEBACK not in text and "DataLoader worker" not in text and not os.path.exists(out)
        assert text.count("error:") == 1 and says in text, text


def test_linear_image_probe_skips_or_refuses(ckpt, folder, tmp_path):
    root, bad = folder
    argv = ["linear", "--protocol", "mocov2", "--checkpoint", ckpt, "--data", root, "--epochs", "1",
            "--batch-size", "4", "--image-size", "32", "--workers", "2", "--no-progress", "--device", "cpu"]
    code, text = run_cli(argv)
    assert code == 2 and TRACEBACK not in text and "unreadable image" in text and text.count("error:") == 1
    out = str(tmp_path / "lin.json")
    code, text = run_cli([*argv, "--skip-unreadable", "--json", out])
    assert code == 0 and TRACEBACK not in text, text
    assert json.loads(open(out).read())["unreadable_skipped"] == sorted(bad.values())
    for path in bad.values():
        assert f"unreadable image {path}" in text


def test_linear_cached_lists_both_splits(ckpt, folder, tmp_path):
    root, bad = folder
    out = str(tmp_path / "lin.json")
    code, text = run_cli(["linear", "--protocol", "logreg", "--checkpoint", ckpt, "--data", root, "--max-iter", "3",
                          "--workers", "0", "--no-progress", "--skip-unreadable", "--json", out])
    assert code == 0 and TRACEBACK not in text, text
    listed = json.loads(open(out).read())["unreadable_skipped"]
    assert sorted(listed) == sorted(bad.values())


def test_evaluate_skip_unreadable_records_what_it_left_out(ckpt, tmp_path):
    root = str(tmp_path / "imgs")
    bad = image_folder(root, per_class=101, bad={"train/ant/x": "truncated", "val/bee/y": "text"})
    run = str(tmp_path / "run")
    argv = ["evaluate", run, "--checkpoint", ckpt, "--data", root, "--linear", "none", "--workers", "0",
            "--no-progress", "--device", "cpu"]
    code, text = run_cli(argv)
    assert code == 2 and TRACEBACK not in text and f"unreadable image {bad['train/ant/x.jpg']}" in text
    assert not os.path.exists(os.path.join(run, "results.json"))
    code, text = run_cli([*argv, "--skip-unreadable"])
    assert code == 0 and TRACEBACK not in text, text
    evaluated = json.loads(open(os.path.join(run, "results.json")).read())["evaluated"]
    assert evaluated["unreadable_skipped"] == {"train": [bad["train/ant/x.jpg"]], "test": [bad["val/bee/y.png"]]}
    assert (evaluated["train_rows"], evaluated["test_rows"]) == (202, 202)


# ----------------------------------------------------------------------------------------------
# pretraining: crops in DataLoader workers, and the online k-NN monitor
# ----------------------------------------------------------------------------------------------

PRETRAIN = ["data.name=imagefolder", "data.subset=null", "data.load_size=32", "augment.image_size=32",
            "augment.recipe=light", "train.batch_size=8", "train.log_every=1", "moco.queue_size=32",
            "monitor.knn_every=1", "monitor.knn_k=5", "train.epochs=2"]


def _pretrain(root, run_dir, *extra):
    return run_cli(["pretrain", *each_key_once("--config", TINY, f"run.dir={run_dir}", f"data.root={root}", *PRETRAIN,
                                               *extra)])


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if "loss" in r and "event" not in r and "images_per_s" not in r}


def _folder(tmp_path, bad, per_class=7):
    """16 train images with the 2 bad ones of the skip test (2 steps of 8 an epoch, each image once)."""
    root = str(tmp_path / "imgs")
    return root, image_folder(root, per_class=per_class, bad=bad)


def test_pretraining_stops_on_an_unreadable_training_image_in_one_line(tmp_path):
    root, bad = _folder(tmp_path, {"train/bee/0_trunc": "truncated", "train/ant/0_text": "text"})
    code, text = _pretrain(root, str(tmp_path / "run"), "data.num_workers=2")
    assert code == 2 and TRACEBACK not in text and "DataLoader worker" not in text, text
    named = [p for p in bad.values() if f"ssl-bf pretrain: data error: unreadable image {p}: " in text]
    assert len(named) == 1 and text.count("error") == 1, text


def test_pretraining_keeps_the_last_checkpoint_and_resumes_once_the_file_is_fixed(tmp_path):
    from ssl_bf.checkpoints.checkpoint import last_path

    root, bad = _folder(tmp_path, {"val/ant/0_empty": "empty"}, per_class=8)  # the monitor's queries
    run_dir, straight = str(tmp_path / "run"), str(tmp_path / "straight")
    code, text = _pretrain(root, run_dir, "data.num_workers=2", "train.checkpoint_every_steps=1")
    assert code == 2 and TRACEBACK not in text, text
    assert f"ssl-bf pretrain: data error: unreadable image {bad['val/ant/0_empty.jpg']}: " in text
    assert torch.load(last_path(run_dir), weights_only=True)["step"] == 2  # epoch 1's steps are kept
    os.remove(bad["val/ant/0_empty.jpg"])  # the fix: the file is replaced
    write_jpeg(bad["val/ant/0_empty.jpg"], np.random.default_rng(7))
    code, text = _pretrain(root, run_dir, "data.num_workers=2", "train.checkpoint_every_steps=1")
    assert code == 0 and TRACEBACK not in text, text
    start = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r.get("event") == "start"][-1]
    assert start["resumed_from_step"] == 2
    assert _pretrain(root, straight, "data.num_workers=0")[0] == 0
    assert _losses(run_dir) == _losses(straight) and len(_losses(straight)) == 4


def test_pretraining_skip_unreadable_replaces_lists_and_resumes_exactly(tmp_path):
    root, bad = _folder(tmp_path, {"train/ant/3_trunc": "truncated", "train/bee/9_text": "text",
                                   "val/ant/8_empty": "empty"})
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    code, text = _pretrain(root, straight, "data.skip_unreadable=true", "data.num_workers=2")
    assert code == 0 and TRACEBACK not in text, text
    records = read_metrics(os.path.join(straight, "metrics.jsonl"))
    listed = [p for r in records if r.get("event") == "unreadable" for p in r["paths"]]
    assert sorted(listed) == sorted(bad.values())  # the train crops' and the monitor's, each once
    assert all(r["knn_top1"] is not None for r in records if r.get("event") == "knn")
    for path in bad.values():
        assert f"unreadable image {path}" in text
    # stopped mid-epoch and resumed (with other worker counts): exactly the same steps
    assert _pretrain(root, resumed, "data.skip_unreadable=true", "data.num_workers=0", "train.max_steps=3")[0] == 0
    code, text = _pretrain(root, resumed, "data.skip_unreadable=true", "data.num_workers=1")
    assert code == 0, text
    assert _losses(resumed) == _losses(straight) and len(_losses(straight)) == 4


# ----------------------------------------------------------------------------------------------
# several processes: each rank leaves out (or replaces) its own shard's unreadable images
# ----------------------------------------------------------------------------------------------


def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "ssl_bf", *argv]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_torchrun_embed_skip_unreadable_equals_one_process(ckpt, folder, tmp_path):
    from ssl_bf.eval.formats import load_embeddings

    root, bad = folder
    one, two = str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")
    args = ["--checkpoint", ckpt, "--data", root, "--split", "test", "--no-progress", "--skip-unreadable",
            "--batch-size", "2"]
    assert _embed(ckpt, root, one, *args[7:], "--workers", "0")[0] == 0
    done = _torchrun("embed", *args, "--workers", "1", "--out", two)
    assert done.returncode == 0 and TRACEBACK not in done.stderr, done.stderr[-3000:]
    a, b = load_embeddings(one), load_embeddings(two)
    assert b.image_paths == a.image_paths and b.labels.tolist() == a.labels.tolist() and len(a) == 8
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-4, atol=1e-5)
    assert b.metadata["unreadable_skipped"] == a.metadata["unreadable_skipped"]  # both ranks' files


@pytest.mark.slow
def test_torchrun_pretraining_lists_every_ranks_unreadable_images(tmp_path):
    root, bad = _folder(tmp_path, {"train/ant/3_trunc": "truncated", "train/bee/9_text": "text",
                                   "val/ant/8_empty": "empty"})
    run_dir = str(tmp_path / "run")
    done = _torchrun("pretrain", *each_key_once("--config", TINY, f"run.dir={run_dir}", f"data.root={root}", *PRETRAIN,
                                                "train.batch_size=4", "data.num_workers=1", "data.skip_unreadable=true"))
    assert done.returncode == 0 and TRACEBACK not in done.stderr, done.stderr[-3000:]
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    listed = [p for r in records if r.get("event") == "unreadable" for p in r["paths"]]
    assert sorted(listed) == sorted(bad.values())
