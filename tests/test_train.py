"""The training loop: exact resume, atomic checkpoints, NaN stop, CLI errors, export."""
import json
import os

import pytest
import torch

from ssl_bf.checkpoints import checkpoint as ckpt_io
from ssl_bf.cli import main
from ssl_bf.atomic_write import write_json, write_torch
from ssl_bf.outputs import OutputError
from ssl_bf.train.metrics import read_metrics
from ssl_bf.train.trainer import NonFiniteLossError, Trainer

from tiny_run import TINY, tiny_config

SMALL = ("data.subset=320", "train.epochs=2", "train.log_every=1")  # 5 steps an epoch


def _step_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if "step" in r and "event" not in r and "images_per_s" not in r]


V3 = ("method=mocov3", "moco.dim=32", "moco.hidden_dim=64", "moco.pred_hidden_dim=64", "train.optimizer=lars",
      "moco.momentum=0.99", "augment.recipe=mocov3")


# MoCo-v3 with BatchFormerV2 between the blocks of a real ViT-tiny (7 px patches), two insertions
V3_VIT = (*V3[:4], "train.optimizer=adamw", "train.base_lr=1e-3", "moco.momentum=0.99", "backbone.name=vit_mini",
          "backbone.patch_size=7", "batchformer.position=vit_blocks", "batchformer.insert_after=[1,3]",
          "batchformer.share_across_inserts=false", "train.batch_size=32", "data.subset=160")  # 5 steps an epoch


@pytest.mark.parametrize("bf,extra", [("false", ()), ("true", ()), ("true", ("batchformer.key_branch=context_matched",)),
                                      ("true", V3), pytest.param("true", V3_VIT, marks=pytest.mark.slow)],
                         ids=["v2", "v2-bf", "v2-bf-context-matched", "v3-bf-lars", "v3-vit-blocks"])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path, bf, extra):
    given = {e.split("=")[0] for e in extra}
    small = [s for s in SMALL if s.split("=")[0] not in given]  # a key is given once
    straight = tiny_config(tmp_path / "a", *small, f"batchformer.enabled={bf}", *extra)
    Trainer(straight).fit()
    interrupted = tiny_config(tmp_path / "b", *small, f"batchformer.enabled={bf}", "train.max_steps=7", *extra)
    summary = Trainer(interrupted).fit()
    assert summary["stopped_early"] and summary["step"] == 7
    resumed = tiny_config(tmp_path / "b", *small, f"batchformer.enabled={bf}", *extra)
    Trainer(resumed).fit()
    a, b = _step_losses(straight.run.dir), _step_losses(resumed.run.dir)
    assert len(a) == 10 and a == b  # identical losses, bit for bit, and no duplicated lines
    state_a = ckpt_io.load(ckpt_io.last_path(straight.run.dir))["model"]
    state_b = ckpt_io.load(ckpt_io.last_path(resumed.run.dir))["model"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    if "batchformer.key_branch=context_matched" in extra:  # the second queue resumes too
        assert "feature_queue" in state_b and not torch.equal(state_b["feature_queue"], state_b["queue"])
    starts = [r for r in read_metrics(os.path.join(resumed.run.dir, "metrics.jsonl")) if r.get("event") == "start"]
    assert [s["resumed_from_step"] for s in starts] == [None, 7]


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    write_torch({"step": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="disk full"):  # one line naming the file, not a traceback
        write_torch({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert ckpt_io.load(path)["step"].item() == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, *SMALL, "train.checkpoint_every_steps=2")
    trainer = Trainer(cfg)
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        if trainer.step >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        trainer.fit()
    state = ckpt_io.load(ckpt_io.last_path(cfg.run.dir))
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_cli_writes_run_folder_and_export_strips_batchformer(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--config", TINY, f"run.dir={run}", "batchformer.enabled=true", "train.epochs=1",
                 "--json", str(tmp_path / "summary.json")]) == 0
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    lines = read_metrics(str(run / "metrics.jsonl"))
    assert any("step" in r and "event" not in r for r in lines)
    epoch_lines = [r for r in lines if "images_per_s" in r]
    assert epoch_lines and all("epoch" in r and "loss" in r for r in epoch_lines)
    assert json.loads((tmp_path / "summary.json").read_text())["epoch"] == 1

    out = tmp_path / "backbone.pt"
    assert main(["export", str(run / "checkpoints" / "last.pt"), str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert exported and not any(k.startswith(("batchformer", "projector", "momentum")) for k in exported)
    encoder, _ = ckpt_io.load_encoder(str(out))
    full, _ = ckpt_io.load_encoder(str(run / "checkpoints" / "last.pt"))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(encoder(x), full(x))


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["pretrain", "--config", TINY, "train.epoch=3"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["pretrain", "--config", TINY, f"data.root={missing}", f"run.dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "dataset-fashion-mnist" in err


def test_rerunning_a_finished_run_reports_its_k_nn(tmp_path, capsys):
    args = ["pretrain", "--config", TINY, f"run.dir={tmp_path}/run", "data.subset=320", "train.epochs=1",
            "monitor.knn_every=1"]
    assert main(args) == 0
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("online k-NN")]
    assert main(args) == 0  # resumes at the end: no training, same figure
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith("online k-NN")]
    assert first and again == first


def test_zero_epochs_saves_the_untrained_network(tmp_path):
    cfg = tiny_config(tmp_path, "data.subset=320", "train.epochs=0")
    summary = Trainer(cfg).fit()
    assert summary["step"] == 0 and summary["epoch"] == 0
    saved = ckpt_io.load(ckpt_io.last_path(cfg.run.dir))["model"]
    fresh = Trainer(tiny_config(tmp_path / "fresh", "data.subset=320", "train.epochs=0")).model.state_dict()
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k].cpu()) for k in saved)


def test_atomic_writes_keep_the_usual_file_mode(tmp_path):
    import stat

    old = os.umask(0o027)
    try:
        cfg = tiny_config(tmp_path, "data.subset=320", "train.epochs=0")
        Trainer(cfg).fit()
        write_json({"a": 1}, str(tmp_path / "r.json"))
        assert os.umask(0o027) == 0o027  # the umask is left as it was
    finally:
        os.umask(old)
    for path in (os.path.join(cfg.run.dir, "config.yaml"), ckpt_io.last_path(cfg.run.dir), tmp_path / "r.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path  # as open() would make it, not mkstemp's 0600


def test_a_torn_last_metrics_line_does_not_block_a_resume(tmp_path):
    from ssl_bf.train.metrics import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(str(path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    truncate_metrics(str(path), 1)
    assert read_metrics(str(path)) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(str(path))
    # The report reads runs while they are written: it skips every line that is not a JSON object.
    path.write_text('{"step": 1}\nnot json\n[2]\n{"step": 2}\n{"ste')
    assert read_metrics(str(path), skip_bad_lines=True) == [{"step": 1}, {"step": 2}]


def test_zero_epochs_refuses_a_trained_run_folder(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "data.subset=320", "train.epochs=1", "monitor.knn_every=0")
    Trainer(cfg).fit()
    before = open(os.path.join(cfg.run.dir, "config.yaml")).read()
    rc = main(["pretrain", "--config", TINY, f"run.dir={cfg.run.dir}", "data.subset=320", "train.epochs=0"])
    assert rc == 2 and "holds a trained checkpoint (step 5)" in capsys.readouterr().err
    assert open(os.path.join(cfg.run.dir, "config.yaml")).read() == before  # left as it was


def test_a_preemption_during_the_k_nn_check_keeps_the_epoch_record(tmp_path, monkeypatch):
    """The epoch record is logged with the epoch increment, before the (long) online k-NN."""
    cfg = tiny_config(tmp_path, "data.subset=320", "train.epochs=2", "monitor.knn_every=1")
    trainer = Trainer(cfg)

    def preempted(full):  # what SubcommandJob.checkpoint does on SIGUSR2, then the job exits
        trainer.save_checkpoint()
        raise SystemExit(0)
    monkeypatch.setattr(trainer, "knn_monitor", preempted)
    with pytest.raises(SystemExit):
        trainer.fit()
    Trainer(tiny_config(tmp_path, "data.subset=320", "train.epochs=2", "monitor.knn_every=1")).fit()  # requeued
    records = read_metrics(os.path.join(cfg.run.dir, "metrics.jsonl"))
    epochs = [r["epoch"] for r in records if "train_seconds" in r]
    knn = [r["epoch"] for r in records if r.get("event") == "knn"]
    assert epochs == [0, 1] and knn == [1]  # epoch 0's record survived; only its k-NN figure is lost


def test_val_holdout_trains_without_the_held_out_images_and_never_reads_the_test_split(tmp_path, monkeypatch):
    """data.val_holdout (tuning): the last N train images are the monitor's queries, the rest its
    bank and the training set; the test split is not opened at all."""
    import ssl_bf.train.data_setup as data_setup
    import ssl_bf.train.monitor as monitor
    from ssl_bf.data import build_dataset

    opened = []

    def spy(name, root=None, split="train", *args, **kwargs):
        opened.append(split)
        return build_dataset(name, root, split, *args, **kwargs)

    monkeypatch.setattr(data_setup, "build_dataset", spy)
    monkeypatch.setattr(monitor, "build_dataset", spy)
    cfg = tiny_config(tmp_path, "data.val_holdout=1000", "data.subset=320", "train.epochs=1",
                      "monitor.knn_every=1", "monitor.full_sets=false", "monitor.bank_subset=600",
                      "monitor.query_subset=300")
    trainer = Trainer(cfg)
    full = build_dataset("fashion-mnist", None, "train")
    assert len(trainer.train_set) == 320
    assert torch.equal(trainer.train_set.images, full.images[:320])
    summary = trainer.fit()
    assert "test" not in opened and summary["knn_top1"] is not None
    assert torch.equal(trainer.monitor.query_set.images, full.images[-1000:])  # the monitor's queries
    assert torch.equal(trainer.monitor.bank_set.images, full.images[:-1000])
    assert "val_holdout: 1000" in open(os.path.join(cfg.run.dir, "config.yaml")).read()


def test_val_holdout_refuses_a_subset_larger_than_what_remains(tmp_path):
    from ssl_bf.config import ConfigError

    with pytest.raises(ConfigError, match="val_holdout"):
        Trainer(tiny_config(tmp_path, "data.val_holdout=59900", "data.subset=320"))
