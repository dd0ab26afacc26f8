"""Pretraining on shards with real processes: two processes under torchrun read every sample once
per epoch (less than one global batch left out, as the plan says), and a run killed with SIGKILL
mid-epoch resumes (with another worker count) to the uninterrupted run's losses and weights."""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from shard_data import PRETRAIN, make_folder, make_shards
from tiny_run import each_key_once
from ssl_bf.checkpoints import checkpoint as ckpt_io
from ssl_bf.data import build_dataset
from ssl_bf.data.shards.order import EpochPlan, rank_batches_order
from ssl_bf.train.metrics import read_metrics

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards_train")
    return make_shards(make_folder(str(root / "jpegs"), train_per_class=17), str(root / "out"))  # 68 images


def test_two_processes_under_torchrun_read_every_sample_once_per_epoch(shards, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    args = each_key_once(*PRETRAIN, f"data.root={shards}", f"run.dir={tmp_path / 'run'}", "train.epochs=2",
                         "train.batch_size=8", "moco.split_bn_groups=2", "data.num_workers=2", "data.shard_streams=4",
                         "data.shuffle_buffer=5")
    done = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                           os.path.join(HERE, "shard_probe.py"), str(records), *args],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = collections.defaultdict(list)  # (epoch, rank) -> samples decoded
    for name in os.listdir(records):
        for line in open(records / name):
            epoch, rank, g = map(int, line.split())
            seen[epoch, rank].append(g)
    images = build_dataset("shards", shards, "train")
    for epoch in (0, 1):
        plan = EpochPlan.make(images.offsets, 0, len(images), 0, epoch, 2, 8, 4)
        assert plan.steps == 68 // 16 == 4
        everything = seen[epoch, 0] + seen[epoch, 1]
        assert len(everything) == len(set(everything)) == 64  # each sample once; 4 left out (< one global batch)
        assert sorted(everything + plan.dropped(2).tolist()) == list(range(68))
        for rank in (0, 1):
            assert sorted(seen[epoch, rank]) == sorted(rank_batches_order(plan, rank, 5).reshape(-1).tolist())
    assert set(seen[0, 0]) != set(seen[1, 0])  # the epochs deal the shards differently
    steps = [r["step"] for r in read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
             if "loss" in r and "event" not in r and "images_per_s" not in r]
    assert steps == list(range(1, 9))


STEPS = 68 // 4  # an epoch of batch 4: a checkpoint at step 3 is far from the epoch's end


def _args(shards, run_dir, workers):
    return ["-m", "ssl_bf", "pretrain",
            *each_key_once(*PRETRAIN, f"data.root={shards}", f"run.dir={run_dir}", "train.epochs=2", "train.batch_size=4",
                           "moco.split_bn_groups=2", f"data.num_workers={workers}", "data.shard_streams=4",
                           "data.shuffle_buffer=5", "train.checkpoint_every_steps=3")]


def _step_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if "loss" in r and "event" not in r and "images_per_s" not in r}


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_losses_and_weights(shards, tmp_path):
    straight = str(tmp_path / "straight")
    done = subprocess.run([sys.executable, *_args(shards, straight, 2)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, *_args(shards, run_dir, 2)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    path, deadline = ckpt_io.last_path(run_dir), time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if ckpt_io.load(path)["step"] >= 3:
                    break
            except Exception:  # not there yet, or mid-rename
                pass
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its workers, no chance to save
        proc.wait()
    killed_at = int(ckpt_io.load(path)["step"])
    assert 0 < killed_at < 2 * STEPS and killed_at % STEPS, f"the checkpoint at step {killed_at} is not inside an epoch"
    resumed = subprocess.run([sys.executable, *_args(shards, run_dir, 1)], env=_env(), capture_output=True,
                             text=True, timeout=600)  # data.num_workers may change on resume: it divides 4
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    starts = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r.get("event") == "start"]
    assert starts[-1]["resumed_from_step"] == killed_at
    assert _step_losses(run_dir) == _step_losses(straight) and len(_step_losses(straight)) == 2 * STEPS
    a, b = (ckpt_io.load(ckpt_io.last_path(d))["model"] for d in (run_dir, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
