"""The run folder's contract: one trainer at a time, a checkpoint read and checked before use, and
a resume refused when it would change the run.

A run folder belongs to one trainer at a time (RUN/.lock, run_lock.py) and remembers the settings
that define its run: the checkpoint's config is compared with the given one before anything in
the folder is written (ssl_bf/config/resume.py). Every refusal is a RunFolderError whose one line
names the file and the fix (for a bad checkpoint: the `mv` that moves it aside). Nothing here
builds data or a model, so the contract is testable on its own.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..checkpoints import checkpoint as ckpt_io
from ..config import Config, format_override_value, resume_differences
from ..io import UnreadableFileError, folder_problem, save_atomic
from .run_lock import RunLock, RunLockError, claim_on_main

# What a resumable checkpoint must hold (and the type of each entry).
CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "config": dict, "epoch": int, "step": int,
                   "step_in_epoch": int, "rng": dict}


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

    def __init__(self, cfg: Config, world: int):
        self.cfg, self.world = cfg, world
        self.path = cfg.run.dir
        self.lock = RunLock(self.path)
        self._check_folder()
        self._checked: tuple[Optional[tuple], Optional[dict]] = self._read_checkpoint()

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
        if not isinstance(state, dict):
            raise RunFolderError(f"cannot resume: {path} holds a {type(state).__name__}, not a training "
                                 f"checkpoint. {move_aside(path)}")
        wrong = [k for k, t in CHECKPOINT_KEYS.items() if not isinstance(state.get(k), t)
                 or (t is int and isinstance(state.get(k), bool))]
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
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            raise RunFolderError(
                f"{path} was written by a run with {saved_world} processes; this one has {self.world}. "
                "The global batch, lr schedule and epoch position would all shift: resume with the same "
                "number of processes, or start a new run with another run.dir.")

    def checked_state(self) -> Optional[dict]:
        """The state checked at construction, re-read (and re-checked) if the file changed since;
        handed out once."""
        key, state = self._checked
        self._checked = (None, None)
        if _stat_key(self.last) != key or (key is None) != (state is None):
            key, state = self._read_checkpoint()
        return state

    def not_loadable(self, error: BaseException) -> RunFolderError:
        """The refusal for a checked checkpoint that still does not fit the model or optimiser."""
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        return RunFolderError(f"cannot resume: {self.last} does not fit the model of its own config ({first}). "
                              f"{move_aside(self.last)}")

    def save(self, state: dict) -> str:
        """Write the checkpoint atomically; returns its path."""
        save_atomic(state, self.last)
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
