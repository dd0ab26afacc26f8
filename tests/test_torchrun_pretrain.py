"""Real multi-process pretraining: `torchrun --nproc_per_node=2 -m ssl_bf pretrain` (gloo, CPU) on a
JPEG image folder, with the online k-NN monitor on, and a resume after SIGKILL of the whole job."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ssl_bf.checkpoints import checkpoint as ckpt_io
from ssl_bf.train.metrics import read_metrics

from image_folder import make_jpeg_folder
from tiny_run import TINY

pytestmark = pytest.mark.slow
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
EPOCHS, STEPS = 3, 8  # 256 images / global batch 32 = 8 steps an epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(folder: str, run_dir: str, *extra: str) -> list[str]:
    return [TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
            "-m", "ssl_bf", "pretrain", "--config", TINY, f"run.dir={run_dir}",
            "data.name=imagefolder", f"data.root={folder}", "data.subset=null", "data.num_workers=1",
            "augment.image_size=32", "augment.recipe=light", "train.batch_size=16", f"train.epochs={EPOCHS}",
            "train.log_every=1", "train.checkpoint_every_steps=2", "moco.queue_size=128",
            "monitor.knn_every=2", "monitor.full_sets=true", *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _step_losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
            if "step" in r and "event" not in r and "images_per_s" not in r}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_jpeg_folder(str(tmp_path_factory.mktemp("jpegs")), train_per_class=64, val_per_class=16)


@pytest.fixture(scope="module")
def straight_run(folder, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("straight") / "run")
    t0 = time.time()
    done = subprocess.run(_command(folder, run_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"torchrun 2-process pretrain ({EPOCHS} epochs, monitor on): {time.time() - t0:.1f} s")
    return run_dir, done


def test_two_process_pretrain_on_a_jpeg_folder_with_the_monitor(straight_run):
    run_dir, done = straight_run
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    start = next(r for r in records if r.get("event") == "start")
    assert start["world_size"] == 2 and "shuffle-BN" in start["normalisation"]
    assert "whole image" in start["crops"]
    assert sorted(_step_losses(run_dir)) == list(range(1, STEPS * EPOCHS + 1))  # one line per step, rank 0 only
    knn = [r for r in records if r.get("event") == "knn"]
    assert [r["epoch"] for r in knn] == [1, 2]
    # 4 classes: chance is 25%; the full val split (64 images) is scored against the 256-image bank
    assert all(r["knn_top1"] is not None and 25.0 < r["knn_top1"] <= 100.0 for r in knn)
    assert ckpt_io.load(ckpt_io.last_path(run_dir))["step"] == STEPS * EPOCHS
    assert "online k-NN top-1" in done.stdout


def _wait_for_checkpoint(run_dir: str, min_step: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    path, deadline = ckpt_io.last_path(run_dir), time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the job ended before it could be killed"
        if os.path.isfile(path):
            try:
                step = int(ckpt_io.load(path)["step"])
            except Exception:  # mid-rename: try again
                step = -1
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


def test_two_process_pretrain_resumes_after_sigkill(folder, straight_run, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(_command(folder, run_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        killed_at = _wait_for_checkpoint(run_dir, 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, no chance to save
        proc.wait()
    assert killed_at < STEPS * EPOCHS
    t0 = time.time()
    done = subprocess.run(_command(folder, run_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"resumed from step {killed_at}; the rest took {time.time() - t0:.1f} s")
    starts = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r.get("event") == "start"]
    resumed_from = starts[-1]["resumed_from_step"]
    assert len(starts) == 2 and resumed_from is not None and resumed_from >= killed_at
    losses, reference = _step_losses(run_dir), _step_losses(straight_run[0])
    assert sorted(losses) == list(range(1, STEPS * EPOCHS + 1))  # no step lost or logged twice
    # up to the checkpoint the run is the straight run, bit for bit (2 gloo ranks are deterministic)
    assert all(losses[s] == reference[s] for s in range(1, resumed_from + 1))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert ckpt_io.load(ckpt_io.last_path(run_dir))["step"] == STEPS * EPOCHS


def test_two_process_evaluate_equals_one_process(straight_run, tmp_path):
    import json
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(straight_run[0], run_dir)
    common = ["evaluate", run_dir, "--linear", "cached", "--workers", "1", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "ssl_bf", *common], env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "run" / "results.json").read_text())
    two = subprocess.run([TORCHRUN, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                          "-m", "ssl_bf", *common], env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("k-NN:") == 1  # rank 0 alone scores and prints
    double = json.loads((tmp_path / "run" / "results.json").read_text())
    assert double["evaluated"]["train_rows"] == 256 and double["evaluated"]["test_rows"] == 64
    assert [(r["k"], r["top1"], r["top5"]) for r in double["knn"]] == \
        [(r["k"], r["top1"], r["top5"]) for r in single["knn"]]
    assert double["linear"]["top1"] == pytest.approx(single["linear"]["top1"], abs=1e-6)
