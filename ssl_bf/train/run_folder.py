"""The run folder's contract: one trainer at a time, a checkpoint read and checked before use, and
a resume refused when it would change the run.

A run folder belongs to one trainer at a time (RUN/.lock, run_lock.py) and remembers the settings
that define its run: the checkpoint's config is compared with the given one before anything in
the folder is written (ssl_bf/config/resume.py), and every field of the checkpoint is checked
against its schema (checkpoint_schema.py; what only the trainer's set-up knows arrives through
`expect`). An existing folder that holds files is used only if it is an ssl-bf run folder
(`RUN_MARKERS`), and its metrics.jsonl must be readable (metrics.py). Every refusal is a
RunFolderError whose one line names the file and the fix (for a bad checkpoint: the `mv` that
moves it aside). Nothing here builds data or a model, so the contract is testable on its own.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..checkpoints import checkpoint as ckpt_io
from ..config import Config, format_override_value, resume_differences
from ..atomic_write import write_torch
from ..io import UnreadableFileError
from ..outputs import folder_problem
from ..run_layout import RUN_MARKERS, Owner, is_run_folder
from .checkpoint_schema import TrainingLayout, fields_problem, layout_problem, missing_keys
from .metrics import MetricsError, read_metrics_log, truncate_metrics
from .run_lock import RunLock, RunLockError, claim_on_main

# What makes an existing folder an ssl-bf run folder is `run_layout.RUN_MARKERS` (`pretrain` creates
# RUN/.lock before it writes anything else there; older runs have RUN/checkpoints/last.pt).
# What `ssl-bf submit` puts into RUN before the job starts (its job folder): not the user's files.
LAUNCH_ENTRIES = ("submitit",)
METRICS = "metrics.jsonl"


class RunFolderError(RuntimeError):
    """The run folder holds something this config must not continue (the message says what)."""


def move_aside(path: str) -> str:
    return (f"Move it aside (mv {path} {path}.bad) to start this run over from step 0, or put back a "
            f"good copy")


def _stat_key(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class RunFolder:
    """RUN (`cfg.run.dir`) as one run of `cfg` on `world` processes: its lock, its checkpoint and the
    checks a resume needs. The constructor only reads (a refused run writes nothing)."""

    def __init__(self, cfg: Config, world: int, device: torch.device = torch.device("cpu")):
        self.cfg, self.world, self.device = cfg, world, device
        self.path = cfg.run.dir
        self.lock = RunLock(self.path)
        self.layout: Optional[TrainingLayout] = None  # what the trainer built (`expect`)
        self._check_folder()
        self._checked: tuple[Optional[tuple], Optional[dict]] = self._read_checkpoint()
        self._metrics_checked = self._check_metrics()

    @property
    def last(self) -> str:
        """RUN/checkpoints/last.pt: the one checkpoint a resume reads."""
        return ckpt_io.last_path(self.path)

    def _check_folder(self) -> None:
        """Refuse a run.dir that is a file, lies under a file or in a folder this process cannot write."""
        target = os.path.abspath(self.path)
        if os.path.exists(target) and not os.path.isdir(target):
            raise RunFolderError(f"run.dir {self.path} is a file, not a folder; give a folder (a new one starts a "
                                 "new run)")
        problem = folder_problem(target)
        if problem:
            raise RunFolderError(f"run.dir {self.path}: {problem}; choose another run.dir")
        if not os.path.isdir(target) or is_run_folder(target):
            return
        try:
            entries = sorted(e for e in os.listdir(target) if e not in LAUNCH_ENTRIES)
        except OSError as e:
            raise RunFolderError(f"run.dir {self.path} cannot be listed ({e.strerror or e}); choose another "
                                 "run.dir") from None
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise RunFolderError(
                f"run.dir {self.path} holds files ({shown}) but is not an ssl-bf run folder (it has no "
                f"{' or '.join(RUN_MARKERS)}): pretraining would write config.yaml, {METRICS} and checkpoints/ "
                f"there. Give an empty or new run.dir")

    # --- metrics.jsonl ------------------------------------------------------------------------
    @property
    def metrics(self) -> str:
        return os.path.join(self.path, METRICS)

    def _metrics_refusal(self, err: MetricsError) -> RunFolderError:
        verb = "resume" if os.path.lexists(self.last) else "start"
        return RunFolderError(f"cannot {verb}: {err}. Repair the file, or move it aside (mv {self.metrics} "
                              f"{self.metrics}.bad) to go on with a new {METRICS}")

    def _check_metrics(self) -> Optional[tuple]:
        """Read RUN/metrics.jsonl once (a run appends to it, a resume rewrites it); returns the
        identity of the file checked."""
        key = _stat_key(self.metrics)
        try:
            read_metrics_log(self.metrics)
        except MetricsError as err:
            raise self._metrics_refusal(err) from None
        return key

    def rewind_metrics(self, step: int) -> list[str]:
        """Drop the records after `step` (a resume redoes that work; a fresh start, step 0) and a
        torn last line, so appends start on a clean line; returns notes on what was dropped."""
        try:
            return truncate_metrics(self.metrics, step)
        except MetricsError as err:
            raise self._metrics_refusal(err) from None

    # --- the checkpoint -------------------------------------------------------------------
    def _read_checkpoint(self) -> tuple[Optional[tuple], Optional[dict]]:
        """(file identity, state) of the checkpoint after every check a resume needs, or (None, None)
        when there is none."""
        path = self.last
        if os.path.isdir(path):
            raise RunFolderError(f"{path} is a folder, not a checkpoint. {move_aside(path)}")
        if not os.path.lexists(path):
            return None, None
        key = _stat_key(path)
        try:
            state = ckpt_io.load(path, map_location="cpu")  # RNG states must stay on the CPU
        except UnreadableFileError as e:
            raise RunFolderError(f"cannot resume: {e}. {move_aside(path)}") from None
        except OSError as e:
            raise RunFolderError(f"cannot resume: cannot read {path} ({e.strerror or e}). {move_aside(path)}") from None
        self._check_state(state, path)
        return key, state

    def _check_state(self, state, path: str) -> None:
        """The one check of a checkpoint before use: its kind and keys, the run it belongs to (config,
        process count), then every field (checkpoint_schema: the config's ranges and RNG states;
        with `self.layout`, steps per epoch, model and optimiser)."""
        if not isinstance(state, dict):
            raise RunFolderError(f"cannot resume: {path} holds a {type(state).__name__}, not a training "
                                 f"checkpoint. {move_aside(path)}")
        wrong = missing_keys(state)
        if wrong:
            what = "lacks" if all(k not in state for k in wrong) else "has no valid"
            raise RunFolderError(f"cannot resume: {path} is not a training checkpoint of ssl-bf pretrain (it "
                                 f"{what} {', '.join(repr(k) for k in wrong)}; the saved config is what "
                                 f"a resume is checked against). {move_aside(path)}")
        if state["step"] and self.cfg.train.epochs == 0:
            raise RunFolderError(f"{self.path} holds a trained checkpoint (step {state['step']}); train.epochs=0 "
                                 "saves an untrained network: use a fresh run.dir")
        diffs = resume_differences(state["config"], self.cfg)
        if diffs:
            listed = "; ".join(f"{k}: {format_override_value(old)} -> {format_override_value(new)}"
                               for k, old, new in diffs)
            shrink = any(k == "train.epochs" for k, *_ in diffs)
            raise RunFolderError(
                f"{self.path} holds a run with other settings ({listed}). These settings define the run "
                f"(saved in {path}), so it cannot resume with them changed"
                f"{' (train.epochs may grow, not shrink: stop early with train.max_steps)' if shrink else ''}: "
                f"run again with the saved values, or start a new run with another run.dir "
                f"(e.g. run.dir={self.path.rstrip('/')}-2)")
        problem = fields_problem(state, self.cfg.train.epochs, self.device)
        if problem:
            raise RunFolderError(f"cannot resume: {path}: {problem}. {move_aside(path)}")
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            raise RunFolderError(
                f"{path} was written by a run with {saved_world} processes ('world_size'); this one has {self.world}. "
                "The global batch, lr schedule and epoch position would all shift: resume with the same "
                "number of processes, or start a new run with another run.dir.")
        problem = layout_problem(state, self.layout) if self.layout is not None else None
        if problem:
            raise RunFolderError(f"cannot resume: {path}: {problem}. {move_aside(path)}")

    def expect(self, layout: TrainingLayout) -> None:
        """Check the checkpoint read at construction against what the trainer built (steps per
        epoch, model, optimiser); from now on every re-read is checked against it too."""
        self.layout = layout
        state = self._checked[1]
        if state is not None:
            self._check_state(state, self.last)

    def checked_state(self) -> Optional[dict]:
        """The state checked at construction, re-read (and re-checked) if the file changed since;
        handed out once. metrics.jsonl is checked again too if it changed."""
        key, state = self._checked
        self._checked = (None, None)
        if _stat_key(self.last) != key or (key is None) != (state is None):
            key, state = self._read_checkpoint()
        if _stat_key(self.metrics) != self._metrics_checked:
            self._metrics_checked = self._check_metrics()
        return state

    def not_loadable(self, error: BaseException) -> RunFolderError:
        """The refusal for a checked checkpoint that still does not fit the model or optimiser."""
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        return RunFolderError(f"cannot resume: {self.last} does not fit the model of its own config ({first}). "
                              f"{move_aside(self.last)}")

    def save(self, state: dict) -> str:
        """Write the checkpoint atomically; returns its path."""
        write_torch(state, self.last, option="the run's checkpoint", owner=Owner.PRETRAIN)
        return self.last

    def latest(self) -> Optional[str]:
        return ckpt_io.find_latest(self.path)

    # --- the lock ---------------------------------------------------------------------------
    def claim(self, device: torch.device, wait_s: float = 0.0) -> None:
        """Create the folder and take its lock (rank 0 alone), before anything in it is written;
        every rank learns the outcome (`run_lock.claim_on_main`)."""
        try:
            claim_on_main(self.lock, device, wait_s=wait_s)
        except RunLockError as e:
            raise RunFolderError(str(e)) from None

    def release(self) -> None:
        self.lock.release()
