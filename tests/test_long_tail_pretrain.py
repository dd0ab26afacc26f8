"""Long-tailed pretraining sets in a real (tiny) run: the counts follow the formula, the chosen
images are saved and read back to the identical run, a resume may not change them, and the
monitor reports the many / medium / few groups."""
import math
import os

import numpy as np
import pytest

from ssl_bf.config import ConfigError
from ssl_bf.data.long_tail import class_counts
from ssl_bf.train.data_setup import train_set
from ssl_bf.train.metrics import read_metrics
from ssl_bf.train.trainer import Trainer

from tiny_run import tiny_config

# 1000 train images remain after the holdout (about 100 a class); batch 32, one epoch
LT = ("data.subset=null", "data.val_holdout=59000", "data.long_tail.ratio=10", "train.batch_size=32",
      "train.epochs=1", "train.log_every=1")


def exp_counts(n_max: int, ratio: float, c: int) -> list[int]:
    """The exp profile, in float64 from the formula n_c = floor(n_max * ratio^(-c / (C - 1)))."""
    return [int(math.floor(n_max * ratio ** (-k / (c - 1)) + 1e-9)) for k in range(c)]


def _metrics(run_dir):
    return read_metrics(os.path.join(run_dir, "metrics.jsonl"))


def _first_loss(run_dir):
    return next(r["loss"] for r in _metrics(run_dir) if "loss" in r and "event" not in r)


def test_train_set_counts_follow_the_formula_after_the_holdout(tmp_path):
    cfg = tiny_config(tmp_path, *LT)
    images, chosen = train_set(cfg)
    full, _ = train_set(tiny_config(tmp_path, "data.subset=null", "data.val_holdout=59000"))
    n_max = int(class_counts(full.label_array(), 10).min())
    assert list(chosen.class_counts) == exp_counts(n_max, 10.0, 10)
    assert len(images) == chosen.indices.size == sum(chosen.class_counts)
    assert chosen.indices.dtype == np.int64 and chosen.indices.max() < 1000  # never a held-out image
    # the kept images are the full split's images at those indices, in that order
    assert np.array_equal(images.label_array(), full.label_array()[chosen.indices])
    assert np.array_equal(images.images.numpy(), full.images.numpy()[chosen.indices])


def test_step_kind_and_subset_after_the_long_tail(tmp_path):
    cfg = tiny_config(tmp_path, LT[1], "data.long_tail.ratio=4", "data.long_tail.kind=step", "data.subset=64")
    images, chosen = train_set(cfg)
    drawn, all_chosen = train_set(tiny_config(tmp_path, *LT[:2], "data.long_tail.ratio=4",
                                              "data.long_tail.kind=step"))
    counts = all_chosen.class_counts
    assert len(set(counts[:5])) == 1 and len(set(counts[5:])) == 1 and counts[5] == counts[0] // 4
    assert np.array_equal(chosen.indices, all_chosen.indices[:64]) and len(images) == 64


def test_run_saves_indices_that_reproduce_the_run(tmp_path):
    a = tiny_config(tmp_path / "a", *LT)
    summary = Trainer(a).fit()
    saved = np.load(os.path.join(a.run.dir, "data_indices.npy"), allow_pickle=False)
    assert saved.dtype == np.int64
    start = next(r for r in _metrics(a.run.dir) if r.get("event") == "start")
    assert start["class_counts"] == summary["class_counts"] and sum(start["class_counts"]) == saved.size
    b = tiny_config(tmp_path / "b", *LT[:2], *LT[3:], f"data.indices_file={a.run.dir}/data_indices.npy")
    _, chosen = train_set(b)
    assert np.array_equal(chosen.indices, saved)
    Trainer(b).fit()
    assert _first_loss(a.run.dir) == _first_loss(b.run.dir)
    assert np.array_equal(np.load(os.path.join(b.run.dir, "data_indices.npy")), saved)


def test_no_indices_file_without_a_long_tail(tmp_path):
    cfg = tiny_config(tmp_path, "train.epochs=1", "data.subset=128")
    summary = Trainer(cfg).fit()
    assert not os.path.exists(os.path.join(cfg.run.dir, "data_indices.npy")) and "class_counts" not in summary


def test_resume_with_another_split_or_other_images_is_refused(tmp_path):
    Trainer(tiny_config(tmp_path, *LT, "train.max_steps=2")).fit()
    with pytest.raises(Exception, match="data.long_tail.split"):
        Trainer(tiny_config(tmp_path, *LT, "data.long_tail.split=1")).fit()
    path = os.path.join(tmp_path, "run", "data_indices.npy")
    saved = np.load(path)
    assert Trainer(tiny_config(tmp_path, *LT)).fit()["step"] > 2  # the same images: the resume runs on
    assert np.array_equal(np.load(path), saved)
    np.save(path, saved[1:])  # the images the run started with are no longer those chosen
    with pytest.raises(ConfigError, match="data_indices.npy"):
        Trainer(tiny_config(tmp_path, *LT)).fit()
    assert np.array_equal(np.load(path), saved[1:])  # the refused resume wrote nothing


def test_monitor_reports_groups(tmp_path, capsys):
    cfg = tiny_config(tmp_path, *LT, "monitor.knn_every=1", "monitor.bank_subset=300", "monitor.query_subset=300",
                      "run.progress=true")
    Trainer(cfg).fit()
    knn = [r for r in _metrics(cfg.run.dir) if r.get("event") == "knn"]
    groups = knn[-1]["per_group"]
    assert set(groups) == {"many", "medium", "few", "class_std"}
    assert all(0 <= groups[g] <= 100 for g in ("many", "medium", "few")) and groups["class_std"] >= 0
    assert "many/medium/few" in capsys.readouterr().out


def test_image_folders_take_a_long_tail_and_a_path_list(tmp_path):
    from image_folder import make_jpeg_folder

    root = make_jpeg_folder(str(tmp_path / "imgs"), train_per_class=20, val_per_class=2)
    folder = ("data.name=imagefolder", f"data.root={root}", "data.subset=null", "train.batch_size=4")
    images, chosen = train_set(tiny_config(tmp_path, *folder, "data.long_tail.ratio=4"))
    assert list(chosen.class_counts) == exp_counts(20, 4.0, 4) == [20, 12, 7, 5]
    assert list(np.bincount(images.label_array(), minlength=4)) == [20, 12, 7, 5]
    full, _ = train_set(tiny_config(tmp_path, *folder))
    assert images.samples == [full.samples[i] for i in chosen.indices]
    listing = tmp_path / "split.txt"  # SDCLR's path lists: RELATIVE/PATH label, relative to the split folder
    listing.write_text("".join(f"{os.path.relpath(full.samples[i][0], full.root)} {full.samples[i][1]}\n"
                               for i in chosen.indices))
    listed, again = train_set(tiny_config(tmp_path, *folder, f"data.indices_file={listing}"))
    assert np.array_equal(again.indices, chosen.indices) and listed.samples == images.samples


def test_the_preset_draws_an_exp_long_tail_of_100_beside_a_balanced_holdout(tmp_path):
    from ssl_bf.run_config import load_config
    from tiny_run import ROOT

    cfg = load_config(os.path.join(ROOT, "configs", "fashion_mnist_lt.yaml"), [f"run.dir={tmp_path}/run"])
    images, chosen = train_set(cfg)
    full, _ = train_set(load_config(os.path.join(ROOT, "configs", "fashion_mnist_lt.yaml"),
                                    [f"run.dir={tmp_path}/run", "data.long_tail.ratio=1"]))
    assert len(full) == 60000 - cfg.data.val_holdout
    n_max = int(class_counts(full.label_array(), 10).min())
    assert list(chosen.class_counts) == exp_counts(n_max, 100.0, 10)
    assert chosen.class_counts[0] // chosen.class_counts[-1] in (100, 101)
