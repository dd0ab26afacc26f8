"""What runs inside a submitit job: `ssl-bf ARGV` in-process, checkpoint and requeue.

`SubcommandJob` exports the torch.distributed variables
(`submitit.helpers.TorchDistributedEnvironment`, env://, no shared init file) and runs the
subcommand in-process. Its `checkpoint()` (called by submitit on preemption or at the time limit)
saves the trainer state and requeues a clean copy of the job. Every start resumes from
RUN/checkpoints/last.pt (the trainer looks it up), so a plain `scontrol requeue` or a node failure,
which rerun the ORIGINAL pickle without calling `checkpoint()`, resume as well.

submitit pickles these callables by reference to this module (`ssl_bf.launch.job`): the job's
Python must have ssl-bf installed.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import socket
import sys
from typing import Any, Optional

from ssl_bf.cli_args import EXIT_BAD_INPUT


REQUEUE_LOCK_WAIT_S = 120.0  # how long a requeued pretrain waits for the run folder's lock
REFUSED_MARK = "[ssl-bf job: the command refused its input] "  # finds the line in a failed job's report


class JobInputRefused(RuntimeError):
    """The job's command refused its input (its exit code 2): the message is REFUSED_MARK and the
    command's one error line. The job fails (SLURM marks it FAILED, an afterok chain is cancelled);
    `ssl-bf submit --wait` finds the line in the failure and prints it alone (`refused_line`)."""

    def __init__(self, line: str):
        super().__init__(REFUSED_MARK + " ".join(line.split()))


def refused_line(report: str) -> Optional[str]:
    """The command's error line in a failed job's report (submitit's text of the job's exception),
    or None when the job failed for another reason."""
    for line in reversed(report.splitlines()):
        if REFUSED_MARK in line:
            return line.split(REFUSED_MARK, 1)[1].strip()
    return None


class SubcommandJob:
    """`ssl-bf ARGV` as a checkpointable submitit callable (optionally followed by `then`).

    Holds only the command line: a requeue never trusts state pickled at submission time.
    """

    def __init__(self, argv: list[str], then: Optional[list[str]] = None):
        self.argv = list(argv)
        self.then = list(then) if then else None

    def __call__(self) -> dict:
        import submitit

        job_env = submitit.JobEnvironment()
        # overwrite: the submitter's environment (inherited by sbatch) may carry stale values.
        # CUDA_VISIBLE_DEVICES stays as SLURM set it; the trainer picks cuda:LOCAL_RANK.
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        print(f"[ssl-bf job] {job_env}; MASTER_ADDR={dist_env.master_addr} "
              f"MASTER_PORT={dist_env.master_port} WORLD_SIZE={dist_env.world_size} "
              f"restart={os.environ.get('SLURM_RESTART_COUNT', '0')}", flush=True)
        # A result left by an earlier attempt of this job id (requeued after it finished) would
        # make the submitter think this attempt is done.
        with contextlib.suppress(Exception):  # (the debug executor has no result files)
            job_env.paths.result_pickle.unlink()
        try:
            if self.argv[0] == "pretrain":
                result = _run_pretrain(self.argv[1:])
            else:
                result = {"rc": self._run_cli(self.argv)}
            if self.then:  # every task: the evaluation splits its work over the same processes
                result["then_rc"] = self._run_cli(self.then)
        except JobInputRefused as refused:
            if job_env.cluster != "debug":
                raise
            # --cluster debug runs in the submitter's process, where submitit would open a debugger
            # on an exception: the refusal comes back as the result instead.
            return {"rc": 2, "refused": refused_line(str(refused)), "argv": self.argv}
        result.update(rank=dist_env.rank, world_size=dist_env.world_size, host=socket.gethostname(),
                      node=os.environ.get("SLURMD_NODENAME"),
                      job_id=job_env.job_id, argv=self.argv)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Save the training state (rank 0 writes) and requeue a clean copy of this job.

        submitit calls this on rank 0 only, from its signal handler. Signals are not blocked: during
        a training step the trainer's guard (`ssl_bf/train/step_signals.py`) only records the signal
        and runs the handler when the step ends, so the state saved is that of the last completed
        step. No barrier here: the other ranks may sit in an all-reduce, and a collective in a
        handler deadlocks.
        """
        import submitit

        try:
            from ssl_bf.train.trainer import current_trainer
            trainer = current_trainer()
        except ImportError:
            trainer = None
        if trainer is not None:
            path = trainer.save_checkpoint()
            print(f"[ssl-bf job] preempted at step {trainer.step}: saved {path}; requeueing", flush=True)
        else:
            print("[ssl-bf job] preempted (no trainer running; `linear --work-dir` resumes from its last epoch); "
                  "requeueing", flush=True)
        return submitit.helpers.DelayedSubmission(SubcommandJob(self.argv, self.then))

    def _run_cli(self, argv: list[str]) -> int:
        # A bad argument is exit code 2 here (the subcommands never exit); submitit's own exit
        # after a requeue passes through.
        with _LastLine(sys.stderr) as stderr, contextlib.redirect_stderr(stderr):
            rc = int(_runner(argv[0])(list(argv[1:])) or 0)
        if rc == EXIT_BAD_INPUT:
            raise JobInputRefused(stderr.last or f"`ssl-bf {shlex.join(argv)}` refused its input (exit 2)")
        if rc != 0:
            raise RuntimeError(f"`ssl-bf {shlex.join(argv)}` exited with code {rc}")
        return rc

    def __repr__(self) -> str:
        then = f" then {shlex.join(self.then)}" if self.then else ""
        return f"SubcommandJob(ssl-bf {shlex.join(self.argv)}{then})"


class _LastLine(io.TextIOBase):
    """A text stream that passes everything to `stream` and keeps the last non-empty line."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self.last, self._partial = stream, "", ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        done = [line for line in lines if line.strip()]
        if done:
            self.last = done[-1]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __exit__(self, *exc):
        if self._partial.strip():
            self.last = self._partial
        return False  # the stream it passes to stays open


class SubcommandChain:
    """Several SubcommandJobs run one after another in one job: a lane of a throttled local sweep
    (`--cluster local --max-parallel N`). A requeue carries the job in progress and those after it."""

    def __init__(self, jobs: list[SubcommandJob]):
        self.jobs = list(jobs)
        self.current = 0

    def __call__(self) -> list[dict]:
        results = []
        for i, job in enumerate(self.jobs):
            self.current = i
            results.append(job())
        return results

    def checkpoint(self, *args: Any, **kwargs: Any):
        delayed = self.jobs[self.current].checkpoint(*args, **kwargs)  # saves the running trainer
        rest = [delayed.function, *(SubcommandJob(j.argv, j.then) for j in self.jobs[self.current + 1:])]
        import submitit
        return submitit.helpers.DelayedSubmission(SubcommandChain(rest))

    def __repr__(self) -> str:
        return f"SubcommandChain({len(self.jobs)} jobs: {', '.join(map(repr, self.jobs))})"


def weights_digest(model) -> str:
    """sha256 over the parameters (names and values): equal digests mean equal weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _runner(command: str):
    """The entry point of a subcommand that a job may run (the names in submission.COMMANDS)."""
    from ssl_bf.eval.embed_cli import embed_main
    from ssl_bf.eval.evaluate_cli import evaluate_main
    from ssl_bf.eval.knn_cli import knn_main
    from ssl_bf.eval.linear_cli import linear_main
    from ssl_bf.train.cli import pretrain_main

    runners = {"pretrain": pretrain_main, "embed": embed_main, "knn": knn_main, "linear": linear_main,
               "evaluate": evaluate_main}
    if command not in runners:
        raise ValueError(f"a job cannot run `ssl-bf {command}`; choose one of {', '.join(runners)}")
    return runners[command]


def _run_pretrain(args: list[str]) -> dict:
    """Run (or resume) the pretraining in this process; rank 0 alone writes (the trainer's rule)."""
    from ssl_bf import distributed as dist_utils
    from ssl_bf.atomic_write import write_json
    from ssl_bf.cli_args import ArgumentError, one_line
    from ssl_bf.config import ConfigError
    from ssl_bf.data import DataError
    from ssl_bf.outputs import OutputError
    from ssl_bf.process_env import ProcessEnvError
    from ssl_bf.train.cli import pretrain_config_from_args
    from ssl_bf.train.trainer import RunFolderError, Trainer

    try:
        cfg = pretrain_config_from_args(args)
        trainer = Trainer(cfg)
        # A requeued attempt may start while the previous one's processes are still ending (the kernel
        # drops their RUN/.lock as they exit): wait for it rather than fail. A first attempt that finds
        # the folder locked is refused at once (another job trains there).
        requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        summary = trainer.fit(lock_wait_s=REQUEUE_LOCK_WAIT_S if requeued else 0.0)
    except (ArgumentError, ConfigError, DataError, OutputError, ProcessEnvError, RunFolderError) as err:  # pretrain's exit 2
        kind = {ConfigError: "config error: ", DataError: "data error: "}.get(type(err), "")
        raise JobInputRefused(f"ssl-bf pretrain: {kind}{one_line(err, 1000)}") from None
    digest = weights_digest(trainer.model)
    json_out = _option_value(args, "--json")
    if json_out and trainer.is_main:
        write_json(summary, json_out, option="--json", runs=[cfg.run.dir])
    dist_utils.shut_down(wait=True)  # rank 0 may still write the summary
    return {"rc": 0, "summary": summary, "weights_sha256": digest, "run_dir": cfg.run.dir}


def _option_value(args: list[str], name: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None
