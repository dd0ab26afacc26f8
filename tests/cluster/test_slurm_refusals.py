"""`ssl-bf submit` on the REAL SLURM test cluster when a job's command refuses its input (issue 21):
`--wait` prints that command's one error line and exits 2, never submitit's traceback, and a
chained evaluation of the refused run is cancelled. The test cluster's nodes have no GPUs, so a
run asking for CUDA passes every submit-time check (the device is the job's) and is refused in
the job. Start the cluster first: tests/cluster/slurm-up.sh.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slurm_helpers import PRESET, TINY

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("slurm")]

SSL_BF = str(Path(sys.executable).with_name("ssl-bf"))


def _queued() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=20).stdout.split())


def test_wait_prints_the_jobs_refusal_line_and_exits_2(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([SSL_BF, "submit", "pretrain", "--preset", PRESET, "--wait", "--",
                           "--config", TINY, f"run.dir={run}", "train.device=cuda:7"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "refused its input: ssl-bf pretrain: config error: train.device" in proc.stderr
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()


def test_a_chained_evaluation_of_a_refused_run_is_cancelled_not_a_second_failure(tmp_path):
    run = tmp_path / "run"
    before = _queued()
    proc = subprocess.run([SSL_BF, "submit", "pretrain", "--preset", PRESET, "--wait", "--then", "evaluate", "--",
                           "--config", TINY, f"run.dir={run}", "train.device=cuda:7"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert "refused its input: ssl-bf pretrain: config error: train.device" in proc.stderr
    assert "not run (job" in proc.stderr
    assert _queued() <= before, "the chained evaluation is still queued"


def test_a_submission_with_a_missing_input_queues_nothing(tmp_path):
    before = _queued()
    proc = subprocess.run([SSL_BF, "submit", "knn", "--preset", PRESET, "--", "--train", str(tmp_path / "nope.npz"),
                           "--test", str(tmp_path / "nope2.npz")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--train {tmp_path / 'nope.npz'}: no such file" in proc.stderr and proc.stderr.count("\n") == 1
    assert _queued() <= before, "a job was queued"
