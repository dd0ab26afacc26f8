"""ssl-bf submit on a REAL SLURM cluster (two slurmd "nodes" on this machine, with accounting).

Start it first: tests/cluster/slurm-up.sh (stop: slurm-down.sh). Every job is a tiny pretraining
run (configs/tiny.yaml: 8 steps per epoch on a Fashion-MNIST subset); every wait is bounded.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slurm_helpers import PRESET, TINY, logs, metrics, starts, wait_for, wait_job
from ssl_bf.checkpoints import checkpoint
from ssl_bf.cli import main as ssl_bf_main
from ssl_bf.launch import make_options, submit

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("slurm")]

SSL_BF = str(Path(sys.executable).with_name("ssl-bf"))
EVAL_ARGS = "--subset 1000 --workers 0 --no-progress"  # a small, quick evaluation


def tiny(run_dir, *overrides: str) -> list[str]:
    return ["--config", TINY, f"run.dir={run_dir}", "train.log_every=1", *overrides]


def lock_holder(run_dir) -> dict:
    """The note in RUN/.lock of the trainer holding it (pid, host, started, slurm_job_id)."""
    return json.loads((Path(run_dir) / ".lock").read_text() or "{}")


def model_state(run_dir) -> dict:
    return checkpoint.load(checkpoint.last_path(str(run_dir)))["model"]


# (a) ---------------------------------------------------------------------------------------------
def test_tiny_pretrain_completes_and_writes_checkpoint(tmp_path, cancel_on_exit):
    run = tmp_path / "run"
    out = tmp_path / "submission.json"
    proc = subprocess.run(
        [SSL_BF, "submit", "pretrain", "--preset", PRESET, "--wait", "--json", str(out), "--", *tiny(run)],
        capture_output=True, text=True, timeout=180)
    record = json.loads(out.read_text()) if out.is_file() else {}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = record["job_ids"][0]
    # It prints the job id, the log paths and the run folder.
    assert f"job {job_id}" in proc.stdout
    assert f"run folder: {run}" in proc.stdout
    assert f"{run}/submitit/{job_id}_0_log.out" in proc.stdout
    assert f"{run}/submitit/{job_id}_0_log.err" in proc.stdout

    result = record["results"][0]["results"][0]
    assert result["world_size"] == 1 and result["summary"]["step"] == 16  # 2 epochs x 8 steps
    state = checkpoint.load(checkpoint.last_path(str(run)))
    assert state["step"] == 16 and state["epoch"] == 2
    assert (run / "config.yaml").is_file()
    assert starts(run)[0]["resumed_from_step"] is None
    # The result file appears just before the job ends; accounting follows within seconds.
    wait_for(lambda: sacct_state(job_id) not in ("", "PENDING", "RUNNING", "COMPLETING"), 30, "job end in sacct")
    assert sacct_state(job_id) == "COMPLETED"


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, timeout=20).stdout.split()
    return out[-1] if out else ""


# (b) ---------------------------------------------------------------------------------------------
def test_two_node_ddp_pretrain(tmp_path, cancel_on_exit):
    run = tmp_path / "ddp"
    sub = submit("pretrain", tiny(run), make_options(PRESET, nodes=2))
    cancel_on_exit.extend(sub.jobs)
    results = wait_job(sub.jobs[0], timeout=150)

    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert {r["node"] for r in results} == {"n1", "n2"}  # one task on each slurmd node
    assert len({r["weights_sha256"] for r in results}) == 1, "ranks ended with different weights"
    # The global batch is 2 x 64, so an epoch of 512 images has 4 steps; lr scales with it.
    assert {r["summary"]["step"] for r in results} == {8}
    start = starts(run)[0]
    assert start["world_size"] == 2
    assert start["peak_lr"] == pytest.approx(0.06 * 128 / 256)
    assert checkpoint.load(checkpoint.last_path(str(run)))["step"] == 8


# (c) ---------------------------------------------------------------------------------------------
def preempt_after_step_3(tmp_path, args, cancel_on_exit, timeout: float, while_running=lambda job: None):
    """Submit RUN=tmp_path/preempted and its uninterrupted twin tmp_path/reference; once the first
    passes step 3, call `while_running(job)` and preempt it (SIGTERM + USR2, as SLURM does:
    checkpoint() saves, the job requeues). Waits for both; returns (the preempted job, its result)."""
    opts = make_options(PRESET)
    pre = submit("pretrain", tiny(tmp_path / "preempted", *args), opts)
    ref = submit("pretrain", tiny(tmp_path / "reference", *args), opts)
    job = pre.jobs[0]
    cancel_on_exit.extend([job, ref.jobs[0]])
    wait_for(lambda: any(r.get("step", 0) >= 3 and "loss" in r for r in metrics(tmp_path / "preempted")),
             timeout=timeout, what="the run to pass step 3")
    while_running(job)
    job._interrupt()
    result = wait_job(job, timeout=timeout + 60)[0]
    wait_job(ref.jobs[0], timeout=timeout)
    return job, result


def test_preempted_run_requeues_and_matches_uninterrupted(tmp_path, cancel_on_exit):
    def holds_the_lock(job):  # the job holds RUN/.lock
        assert lock_holder(tmp_path / "preempted")["slurm_job_id"] == job.job_id

    job, result = preempt_after_step_3(tmp_path, ("train.epochs=10",), cancel_on_exit, 90, holds_the_lock)  # 80 steps

    first, second = wait_for(lambda: starts(tmp_path / "preempted")[:2]
                             if len(starts(tmp_path / "preempted")) >= 2 else None, 5, "two start lines")
    assert first["resumed_from_step"] is None
    assert 3 <= second["resumed_from_step"] < 80, second
    assert second["requeue_count"] == 1
    assert "preempted at step" in Path(str(job.paths.stdout)).read_text(), logs(job)
    assert result["summary"]["step"] == 80
    # The requeued attempt took the run folder's lock (it trained to the end) and released it.
    assert (tmp_path / "preempted" / ".lock").read_text() == ""

    a, b = model_state(tmp_path / "preempted"), model_state(tmp_path / "reference")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


# (d) ---------------------------------------------------------------------------------------------
def test_plain_scontrol_requeue_resumes_from_latest_checkpoint(tmp_path, cancel_on_exit):
    run = tmp_path / "requeued"
    # 160 steps: usually longer than the 5 s (KillWait) between SIGTERM and SIGKILL; should the first
    # attempt finish anyway, the second one resumes from its final checkpoint, which still passes.
    sub = submit("pretrain", tiny(run, "train.epochs=20", "train.checkpoint_every_steps=4"),
                 make_options(PRESET))
    job = sub.jobs[0]
    cancel_on_exit.append(job)
    wait_for(lambda: checkpoint.find_latest(str(run)) and checkpoint.load(
        checkpoint.last_path(str(run)))["step"] >= 8, timeout=90, what="a checkpoint at step >= 8")
    first_holder = lock_holder(run)
    assert first_holder["slurm_job_id"] == job.job_id  # the first attempt holds RUN/.lock

    # No signal to the job's handler: SLURM kills and reruns the ORIGINAL pickle.
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=20)
    wait_for(lambda: len(starts(run)) >= 2, timeout=120, what="the requeued job to start again")
    result = wait_job(job, timeout=120)[0]

    first, second = starts(run)[:2]
    assert first["resumed_from_step"] is None
    assert second["resumed_from_step"] >= 8, second  # not step 0
    assert second["resumed_from_step"] % 4 == 0  # a periodic checkpoint
    assert second["requeue_count"] == 1
    assert result["summary"]["step"] == 160
    # SLURM killed the first attempt without a clean-up; the kernel dropped its lock, so the requeued
    # attempt took it (it trained to the end) without waiting out the requeue grace period, and
    # released it when done.
    assert "waiting up to" not in logs(job, lines=200) and "is in use" not in logs(job, lines=200), logs(job)
    assert (run / ".lock").read_text() == ""


# (e) ---------------------------------------------------------------------------------------------
def test_sweep_array_with_chained_evaluation_and_report(tmp_path, capsys, cancel_on_exit):
    base = tmp_path / "sweep"
    rc = ssl_bf_main(["submit", "pretrain", "--preset", PRESET, "--sweep", "seed=0,1", "--then", "evaluate",
                      f"--then-args={EVAL_ARGS}", "--", *tiny(base, "train.epochs=1")])
    out = capsys.readouterr().out
    assert rc == 0, out
    sweep = json.loads((base / "sweep.json").read_text())
    assert [e["name"] for e in sweep["elements"]] == ["seed=0", "seed=1"]
    array_id = sweep["elements"][0]["job_id"].split("_")[0]
    assert [e["job_id"] for e in sweep["elements"]] == [f"{array_id}_0", f"{array_id}_1"]
    assert f"job array {array_id} (2 elements)" in out

    import submitit
    folder = str(base / "submitit")
    train_jobs = [submitit.SlurmJob(folder, e["job_id"]) for e in sweep["elements"]]
    eval_jobs = [submitit.SlurmJob(folder, e["eval_job_id"]) for e in sweep["elements"]]
    cancel_on_exit.extend(train_jobs + eval_jobs)
    deps = subprocess.run(["scontrol", "show", "job", eval_jobs[0].job_id], capture_output=True, text=True,
                          timeout=20).stdout
    assert f"aftercorr:{array_id}" in deps or "Dependency=(null)" in deps  # cleared once satisfied

    for job in train_jobs:
        wait_job(job, timeout=150)
    for element, job in zip(sweep["elements"], eval_jobs):
        wait_job(job, timeout=240)
        assert (Path(element["run_dir"]) / "results.json").is_file()
        assert Path(element["run_dir"]).name == element["name"]
        cfg = (Path(element["run_dir"]) / "config.yaml").read_text()
        assert f"seed: {element['overrides']['seed']}" in cfg

    rc = ssl_bf_main(["sweep-report", str(base)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(n=2)" in out and "±" in out
    assert (base / "sweep-report.md").is_file() and (base / "sweep-report.csv").is_file()


# (f) ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (["--mem-gb", "1000"], "--mem-gb 1000 per node, but the largest node in partition 'debug' has"),
    (["--partition", "nope"], "unknown partition 'nope': this cluster has ['debug']"),
    (["--nodes", "3"], "--nodes 3: partition 'debug' has only 2 node(s)"),
    (["--gpus-per-node", "1"], "partition 'debug' has no GPUs"),
    (["--slurm-extra", "gres=gpu:1"], "sbatch refused the job: sbatch: error: Invalid generic resource"),
], ids=["memory", "partition", "nodes", "gpus", "sbatch-refuses"])
def test_bad_request_fails_clearly_at_submit_time(tmp_path, options, message):
    run = tmp_path / "bad"
    before = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=20).stdout
    proc = subprocess.run([SSL_BF, "submit", "pretrain", "--preset", PRESET, *options, "--", *tiny(run)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ssl-bf submit: error:" in proc.stderr and message in proc.stderr, proc.stderr
    assert not run.exists(), "a refused request left files behind"
    after = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=20).stdout
    assert set(after.split()) <= set(before.split()), "a job was queued"


# (g) ---------------------------------------------------------------------------------------------
def test_two_task_linear_probe(tmp_path, cancel_on_exit):
    from ssl_bf.run_config import load_config
    from ssl_bf.train.trainer import pretrain

    pretrain(load_config(TINY, [f"run.dir={tmp_path / 'run'}", "train.epochs=0"]))  # fixed random features
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    args = ["--protocol", "mocov2", "--checkpoint", str(ckpt), "--subset", "505", "--epochs", "2",
            "--batch-size", "64", "--lr", "0.3", "--workers", "0", "--device", "cpu", "--no-progress",
            "--work-dir", str(tmp_path / "probe"), "--json", str(tmp_path / "linear.json"),
            "--save-head", str(tmp_path / "head.pt")]
    # two tasks on one node (each node has 2 CPUs): schedulable while another job holds the other node
    sub = submit("linear", args, make_options(PRESET, tasks_per_node=2, folder=str(tmp_path / "jobs")))
    cancel_on_exit.extend(sub.jobs)
    results = wait_job(sub.jobs[0], timeout=240)

    assert sorted(r["rank"] for r in results) == [0, 1] and {r["world_size"] for r in results} == {2}
    assert all(r["rc"] == 0 for r in results)
    out = json.loads((tmp_path / "linear.json").read_text())
    assert out["protocol"] == "mocov2" and 0.0 < out["top1"] <= 100.0
    assert round(out["top1"] * 505 / 100, 6) == round(out["top1"] * 505 / 100)  # each test image once
    state = torch.load(tmp_path / "probe" / "linear-probe.pt", weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == 2
    assert "2 process(es)" in Path(str(sub.jobs[0].paths.stdout).replace("%t", "0")).read_text()


# (h) ---------------------------------------------------------------------------------------------
def test_sharded_pretraining_requeues_and_matches_uninterrupted(tmp_path, cancel_on_exit):
    """Issue 24: `data.name: shards` under SLURM. Preempted mid-epoch, the requeued attempt resumes at
    the same sample position (the stream order is a function of seed and epoch; its workers skip what
    was read without decoding it) and ends with the uninterrupted run's weights."""
    from shard_data import make_folder, make_shards

    manifest = make_shards(make_folder(str(tmp_path / "jpegs"), train_per_class=64, val_per_class=16),
                           str(tmp_path / "shards"), shard_size_mb=0.1)
    args = ("data.name=shards", f"data.root={manifest}", "data.subset=null", "data.load_size=32",
            "augment.image_size=32", "augment.recipe=light", "train.batch_size=32", "moco.queue_size=128",
            "data.num_workers=2", "data.shard_streams=4", "train.epochs=6", "monitor.knn_every=0")  # 8 steps an epoch
    job, result = preempt_after_step_3(tmp_path, args, cancel_on_exit, 150)

    first, second = wait_for(lambda: starts(tmp_path / "preempted")[:2]
                             if len(starts(tmp_path / "preempted")) >= 2 else None, 5, "two start lines")
    assert first["resumed_from_step"] is None
    assert 3 <= second["resumed_from_step"] < 48 and second["requeue_count"] == 1, second
    assert result["summary"]["step"] == 48
    steps = [r["step"] for r in metrics(tmp_path / "preempted") if "loss" in r and "event" not in r
             and "images_per_s" not in r]
    assert sorted(set(steps)) == list(range(1, 49))  # no step lost
    a, b = model_state(tmp_path / "preempted"), model_state(tmp_path / "reference")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
