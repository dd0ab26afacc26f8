"""Helpers for the SLURM cluster tests: cluster probe, bounded waits, run-folder readers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
STATE = Path(os.environ.get("SSL_BF_SLURM_STATE", "/tmp/ssl-bf-slurm"))
CLUSTER = os.environ.get("SSL_BF_SLURM_CLUSTER", "sslbf")
NODES = ("n1", "n2")
PRESET = "testcluster"
SKIP_PREFIX = "SLURM test cluster not running"


def _out(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout


def cluster_problem() -> str | None:
    """Why the test cluster cannot take jobs, or None when it can."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed"
    conf = STATE / "slurm.conf"
    if not conf.is_file():
        return f"no {conf}"
    os.environ["SLURM_CONF"] = str(conf)  # jobs inherit it
    try:
        states = dict(line.split() for line in _out(["sinfo", "-h", "-N", "-o", "%N %T"]).splitlines())
        clusters = _out(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"]).split()
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        return f"sinfo/sacctmgr failed: {e}"
    bad = {n: states.get(n, "missing") for n in NODES
           if states.get(n, "missing").rstrip("*") not in ("idle", "mixed", "allocated", "completing")}
    if bad:
        return f"nodes not usable: {bad}"
    if CLUSTER not in clusters:
        return f"cluster '{CLUSTER}' not in slurmdbd accounting (job states would be UNKNOWN)"
    return None


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll `predicate` until it returns a true value; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def logs(job, lines: int = 30) -> str:
    """The tail of a job's (task 0) stdout and stderr, for failure messages."""
    out = []
    for path in (job.paths.stdout, job.paths.stderr):
        p = Path(str(path).replace("%t", "0"))
        if p.is_file():
            out.append(f"--- {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(out) or "(no logs)"


def wait_job(job, timeout: float):
    """Wait (bounded) for a SLURM job to end; return its per-task results or fail with its logs."""
    try:
        wait_for(lambda: job.done(force_check=True), timeout, f"job {job.job_id} ({job.state})", poll=1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs(job)}") from None
    try:
        return job.results()
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"job {job.job_id} ended {job.state}: {str(e)[-1500:]}\n{logs(job)}") from None


def metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return recs


def starts(run_dir) -> list[dict]:
    return [r for r in metrics(run_dir) if r.get("event") == "start"]


def last_step(run_dir) -> int:
    return max((r.get("step", 0) for r in metrics(run_dir) if "loss" in r), default=0)
