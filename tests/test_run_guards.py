"""What a run folder guarantees, with real processes where it takes them: one pretrain per folder
(RUN/.lock, released by the kernel however the holder ends), Ctrl-C / SIGTERM save a checkpoint at
a step boundary and the resume continues from it bit for bit, and a resume checks the settings
that define the run (a longer train.epochs is the one change of schedule allowed)."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ssl_bf.checkpoints import checkpoint as ckpt_io
from ssl_bf.cli import main
from ssl_bf.train.metrics import read_metrics
from ssl_bf.train.schedule import warmup_cosine
from ssl_bf.train.trainer import RunFolderError, Trainer

from tiny_run import TINY, tiny_config

SMALL = ("data.subset=320", "train.log_every=1", "monitor.knn_every=0")  # 5 steps an epoch
LONG = ("train.epochs=60",)  # 300 steps: far longer than any wait below


def _args(run_dir, *extra: str) -> list[str]:
    return ["pretrain", "--config", TINY, f"run.dir={run_dir}", *SMALL, *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(run_dir, *extra: str) -> subprocess.Popen:
    # SIGINT as a terminal delivers it: the child must not inherit an ignored SIGINT (as a
    # background job of a non-interactive shell would).
    return subprocess.Popen([sys.executable, "-m", "ssl_bf", *_args(run_dir, *extra)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))


def _run(run_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_bf", *_args(run_dir, *extra)], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _records(run_dir) -> list[dict]:
    return read_metrics(os.path.join(run_dir, "metrics.jsonl"), skip_bad_lines=True)


def _step_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(run_dir)
            if "step" in r and "event" not in r and "images_per_s" not in r}


def _wait_for_step(run_dir, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if any(s >= step for s in _step_losses(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step} within {timeout} s")


def _saved_step(run_dir) -> int:
    return int(ckpt_io.load(ckpt_io.last_path(str(run_dir)))["step"])


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["sigint", "sigterm"])
def test_a_signal_saves_at_a_step_boundary_and_the_resume_continues_exactly(tmp_path, sig, code, name):
    run = tmp_path / "run"
    proc = _start(run, *LONG)
    try:
        _wait_for_step(run, proc, 3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line: where the checkpoint is and how to resume
    stopped = _saved_step(run)
    ckpt = ckpt_io.last_path(str(run))
    assert lines[0].startswith(f"ssl-bf pretrain: stopped by {name} at step {stopped} ")
    assert f"checkpoint saved to {ckpt}" in lines[0] and "Resume with the same command: ssl-bf pretrain" in lines[0]
    assert 3 <= stopped < 300
    assert max(_step_losses(run)) == stopped  # every step up to the checkpoint is logged, none after

    # The resume (a few steps more) continues from the saved step, identical to an uninterrupted run.
    end = stopped + 3
    resumed = _run(run, *LONG, f"train.max_steps={end}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    starts = [r for r in _records(run) if r.get("event") == "start"]
    assert [s["resumed_from_step"] for s in starts] == [None, stopped]
    straight = _run(tmp_path / "straight", *LONG, f"train.max_steps={end}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert _step_losses(run) == _step_losses(tmp_path / "straight")
    a = ckpt_io.load(ckpt_io.last_path(str(run)))["model"]
    b = ckpt_io.load(ckpt_io.last_path(str(tmp_path / "straight")))["model"]
    assert _saved_step(run) == end and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_signals_are_left_to_slurm_inside_a_job(monkeypatch):
    from ssl_bf.train.step_signals import StopSignals

    # Python's SIGINT handler, as in a process started from a terminal (under nohup or in a
    # background job SIGINT starts ignored, and StopSignals rightly leaves an ignored signal alone)
    outer_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    stop = StopSignals().install()
    assert not stop.previous and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.delenv("SLURM_JOB_ID")
    old = signal.signal(signal.SIGTERM, lambda *a: None)  # e.g. submitit's handler: left alone
    try:
        stop = StopSignals().install()
        assert list(stop.previous) == [signal.SIGINT]
        os.kill(os.getpid(), signal.SIGINT)  # the first one only asks
        for _ in range(100):
            if stop.requested:
                break
            time.sleep(0.01)
        assert stop.requested == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # the second one stops at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        stop.uninstall()
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, outer_int)


# --- the run folder lock --------------------------------------------------------------------------
def test_a_second_pretrain_on_a_live_run_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    first = _start(run, *LONG)
    try:
        _wait_for_step(run, first, 2)
        config_before = (run / "config.yaml").read_bytes()
        second = _run(run, *LONG)
        assert second.returncode == 2, second.stderr[-3000:]
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"PID {first.pid} on {socket.gethostname()}" in lines[0] and f"{run}/.lock" in lines[0]
        assert (run / "config.yaml").read_bytes() == config_before
        assert len([r for r in _records(run) if r.get("event") == "start"]) == 1  # no start line from it
        holder = json.loads((run / ".lock").read_text())
        assert holder["pid"] == first.pid
    finally:
        first.kill()  # SIGKILL: no handler, no clean-up; the kernel drops the lock
        first.communicate(timeout=60)
    again = _run(run, *LONG, "train.max_steps=2")  # the killed run never leaves a stale lock
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / ".lock").read_text() == ""  # a clean end empties the holder's note


def test_the_lock_is_released_when_fit_raises_and_held_only_during_fit(tmp_path):
    import fcntl

    cfg = tiny_config(tmp_path, *SMALL, "train.epochs=1")
    trainer = Trainer(cfg)
    forward = trainer.model.forward
    seen = []

    def probe(*args, **kwargs):  # during the run another open file description cannot lock it
        fd = os.open(os.path.join(cfg.run.dir, ".lock"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(True)
        finally:
            os.close(fd)
        raise RuntimeError("boom")

    trainer.model.forward = probe
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert seen
    trainer.model.forward = forward
    Trainer(tiny_config(tmp_path, *SMALL, "train.epochs=1")).fit()  # released: the next one runs


def test_torchrun_ranks_all_refuse_a_locked_run_folder_without_hanging(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    try:
        done = subprocess.run([torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
                               "-m", "ssl_bf", *_args(run, "train.batch_size=32", "moco.queue_size=128")],
                              env=_env(), capture_output=True, text=True, timeout=240)
    finally:
        os.close(fd)
    assert done.returncode != 0
    assert f"PID {os.getpid()}" in done.stderr  # rank 0 names the holder; rank 1 follows it out
    assert "rank 0 could not take the run folder" in done.stderr
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()


# --- what a resume may change -----------------------------------------------------------------
def test_a_longer_run_recomputes_the_lr_schedule_over_the_new_total(tmp_path, capsys):
    cfg = tiny_config(tmp_path, *SMALL, "train.epochs=1")
    Trainer(cfg).fit()
    assert main(_args(cfg.run.dir, "train.epochs=2")) == 0
    assert "train.epochs 1 -> 2: the lr schedule now runs over 10 steps" in capsys.readouterr().out
    records = _records(cfg.run.dir)
    start = [r for r in records if r.get("event") == "start"][-1]
    assert start["resumed_from_step"] == 5 and start["epochs_extended_from"] == 1
    assert start["schedule_total_steps"] == 10
    peak = 0.06 * 64 / 256
    lr = {r["step"]: r["lr"] for r in records if "lr" in r}
    # steps 1-5 ran on the 5-step cosine; from step 6 on the 10-step cosine, at the resume position
    assert lr[5] == pytest.approx(warmup_cosine(4, 5, 0, peak))
    assert lr[6] == pytest.approx(warmup_cosine(5, 10, 0, peak)) == pytest.approx(peak / 2)
    assert lr[10] == pytest.approx(warmup_cosine(9, 10, 0, peak))
    assert all(math.isfinite(v) and v > 0 for v in lr.values())
    assert ckpt_io.load(ckpt_io.last_path(cfg.run.dir))["config"]["train"]["epochs"] == 2


def test_a_shorter_run_is_refused_and_resume_safe_settings_are_not(tmp_path, capsys):
    cfg = tiny_config(tmp_path, *SMALL, "train.epochs=3", "train.max_steps=2")
    Trainer(cfg).fit()
    before = (tmp_path / "run" / "config.yaml").read_bytes()
    with pytest.raises(RunFolderError, match=r"train\.epochs: 3 -> 2\).* may grow, not shrink"):
        Trainer(tiny_config(tmp_path, *SMALL, "train.epochs=2"))
    assert (tmp_path / "run" / "config.yaml").read_bytes() == before
    # everything in RESUME_SAFE may change: logging, checkpoints, stopping, device, monitor
    safe = ("train.log_every=2", "train.checkpoint_every_steps=3", "train.max_steps=4", "train.time_budget_min=30",
            "train.device=cpu", "train.amp=false", "data.num_workers=0", "monitor.knn_every=3", "monitor.knn_k=5",
            "monitor.bank_subset=100", "monitor.query_subset=50", "run.tensorboard=false", "run.progress=false")
    keys = {s.split("=")[0] for s in safe}
    small = [s for s in SMALL if s.split("=")[0] not in keys]  # safe sets them: a key is given once
    assert main(["pretrain", "--config", TINY, f"run.dir={cfg.run.dir}", *small, "train.epochs=3", *safe]) == 0
    assert _saved_step(cfg.run.dir) == 4


def test_the_resume_check_runs_again_under_the_lock(tmp_path):
    """A checkpoint written between the early check and fit() (another run's) is checked too."""
    cfg = tiny_config(tmp_path, *SMALL, "train.epochs=1")
    trainer = Trainer(cfg)  # an empty folder: nothing to check yet
    Trainer(tiny_config(tmp_path, *SMALL, "train.epochs=1", "seed=5")).fit()  # meanwhile, another run
    with pytest.raises(RunFolderError, match="seed: 5 -> 0"):
        trainer.fit()


def test_a_requeued_attempt_waits_for_the_lock_of_the_attempt_still_ending(tmp_path, capsys):
    """launch/job.py gives a requeued pretrain `lock_wait_s`: a holder that lets go in time is
    waited for; one that does not is named after the wait."""
    import threading

    from ssl_bf.train.run_lock import RunLock, RunLockError

    holder = RunLock(str(tmp_path)).acquire()
    threading.Timer(1.0, holder.release).start()
    t0 = time.monotonic()
    second = RunLock(str(tmp_path)).acquire(wait_s=30)
    assert 0.9 < time.monotonic() - t0 < 10 and second.held
    assert "ssl-bf: waiting up to 30 s for" in capsys.readouterr().err
    with pytest.raises(RunLockError, match=rf"PID {os.getpid()} .*\(waited 1 s\)"):
        RunLock(str(tmp_path)).acquire(wait_s=1)
    second.release()


# --- issue 21, cause 4: what marks a run folder, metrics.jsonl, the checkpoint's schema ---------------
def test_a_new_run_may_use_a_missing_an_empty_or_a_submit_prepared_folder_but_not_a_folder_of_other_files(tmp_path):
    from ssl_bf.train.run_folder import RunFolder

    for name, prepare in (("missing", lambda p: None), ("empty", os.makedirs),
                          ("submitted", lambda p: os.makedirs(os.path.join(p, "submitit", "logs")))):
        path = str(tmp_path / name)
        prepare(path)
        RunFolder(tiny_config(None, f"run.dir={path}"), 1)  # accepted: a new run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("lr: 0.1\n")
    with pytest.raises(RunFolderError, match=r"holds files \(config.yaml\) but is not an ssl-bf run folder"):
        RunFolder(tiny_config(None, f"run.dir={mine}"), 1)
    assert [p.name for p in mine.iterdir()] == ["config.yaml"] and (mine / "config.yaml").read_text() == "lr: 0.1\n"
    (mine / ".lock").touch()  # what pretrain creates first: now it is a run folder (a run killed early)
    RunFolder(tiny_config(None, f"run.dir={mine}"), 1)


def test_metrics_jsonl_drops_only_a_torn_last_line_and_names_any_other_bad_line(tmp_path):
    from ssl_bf.train.metrics import MetricsError, read_metrics_log, record_problem
    from ssl_bf.train.run_folder import RunFolder

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0, "event": "start"}\n\n{"step": 2, "loss": 1.5}\n{"step": 4, "lo')
    log = read_metrics_log(str(path))
    assert log.records == [{"step": 0, "event": "start"}, {"step": 2, "loss": 1.5}]
    assert log.notes == [f"{path}: the last line is cut short (a run killed while writing it) and is dropped"]
    for text, line, words in ((b'{"step": 0}\n{"step": 4, "lo\n{"step": 5}\n', 2, "is not JSON"),
                              (b'{"step": 0}\n[1, 2]\n', 2, "is JSON but not an object"),
                              (b'{"step": -1}\n', 1, "'step' = -1"), (b'{"step": 1}\n{"knn_top1": 100.5}', 2, "[0, 100]"),
                              (b'\xff\xfe\n{"step": 1}\n', 1, "not UTF-8")):
        path.write_bytes(text)
        with pytest.raises(MetricsError, match=rf"^{path}: line {line} .*{words}".replace("[", r"\[")):
            read_metrics_log(str(path))
    assert record_problem({"step": 3, "knn_top1": None, "loss": float("nan"), "note": "free"}) is None
    assert "'images_per_s'" in record_problem({"images_per_s": -1.0})
    os.remove(path)
    os.makedirs(path)
    with pytest.raises(MetricsError, match="is a folder"):
        read_metrics_log(str(path))
    # A fresh start in a run folder killed before its first checkpoint: the torn line and the
    # records of the killed attempt go, so the next append starts on a line of its own.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").touch()
    (run / "metrics.jsonl").write_bytes(b'{"event": "start", "step": 0}\n{"step": 2, "loss": 1.0}\n{"step": 4, "lo')
    notes = RunFolder(tiny_config(None, f"run.dir={run}"), 1).rewind_metrics(0)
    assert "cut short" in notes[0] and (run / "metrics.jsonl").read_text() == '{"event": "start", "step": 0}\n'


@pytest.mark.parametrize("legacy", ["mocov2_bf", "mocov3_bf"])
def test_checkpoints_of_an_earlier_ssl_bf_pass_the_schema(tmp_path, legacy):
    """SGD with a BatchFormer group (mocov2_bf) and LARS (mocov3_bf): the set-up checks every field
    against what it built, and accepts what the trainer of that day saved."""
    import shutil

    from ssl_bf.run_config import load_config

    run = tmp_path / legacy
    shutil.copytree(os.path.join(os.path.dirname(__file__), "golden", "legacy", legacy), run)
    trainer = Trainer(load_config(str(run / "config.yaml"), [f"run.dir={run}", "train.device=cpu"]))
    layout = trainer.folder.layout
    assert layout is not None and layout.state_kinds == {"momentum_buffer": "param"}
    assert trainer.folder.checked_state()["step"] == 4


def test_the_optimizer_state_kinds_come_from_the_optimizer_itself():
    from ssl_bf.train.checkpoint_schema import optimizer_state_kinds
    from ssl_bf.train.optim import LARS

    p = [torch.nn.Parameter(torch.zeros(3, 2))]
    assert optimizer_state_kinds(torch.optim.AdamW(p, lr=0.1)) == {"step": "scalar", "exp_avg": "param",
                                                                   "exp_avg_sq": "param"}
    assert optimizer_state_kinds(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == {"momentum_buffer": "param"}
    assert optimizer_state_kinds(LARS(p, lr=0.1)) == {"momentum_buffer": "param"}


def test_a_saved_rng_state_is_checked_without_touching_the_global_generators():
    import random

    import numpy as np

    from ssl_bf.train.rng import rng_state, rng_state_problem

    cpu = torch.device("cpu")
    state = rng_state(cpu)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert rng_state_problem(state, cpu) is None
    bad = {**state, "torch": torch.zeros(7, dtype=torch.uint8)}
    assert rng_state_problem(bad, cpu).startswith("rng['torch'] is not a state torch accepts")
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]
    words = state["numpy"].clone()
    words[-1] = 625
    assert rng_state_problem({**state, "numpy": words}, cpu) == "rng['numpy'] has position 625, outside [0, 624]"
    assert "only zero words" in rng_state_problem({**state, "python": torch.zeros(625, dtype=torch.int64)}, cpu)
