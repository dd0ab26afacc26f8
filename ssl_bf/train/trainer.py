"""The pretraining loop: data -> device augmentation -> MoCo step -> logs and checkpoints.

Resume is exact on CPU: the batch order of an epoch is a function of (seed, epoch), and the
checkpoint holds the model, optimiser, queue, RNG states and the position in the epoch.
Preemption handlers (SIGUSR2/SIGTERM) are deferred to the end of a step (step_signals.py), so a
SLURM handler that calls `save_checkpoint()` always sees the state between two steps. Outside
SLURM, Ctrl-C and SIGTERM stop a one-process run at the next step boundary with a checkpoint
(`TrainingInterrupted`).

A run folder belongs to one trainer at a time (RUN/.lock, run_lock.py) and remembers the settings
that define its run: the checkpoint's config is compared with the given one before anything in
the folder is written (config.RUN_DEFINING / RESUME_SAFE / EXTEND_ONLY).
"""
from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from typing import Iterator, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import checkpoint as ckpt_io
from .. import distributed as dist_utils
from ..data.augment import EvalTransform, build_two_views, recipe_crop_scale
from ..config import Config, ConfigError, format_override_value, resume_differences, save_config, to_dict
from ..data import TwoCropFolder, build_dataset
from ..devices import resolve_device
from ..knn.features import extract_features
from ..io import UnreadableFileError, folder_problem, save_atomic
from .metrics import MetricsLogger, truncate_metrics
from ..models.moco import build_model
from ..models.norm import plan_normalisation
from .optim import build_optimizer, set_lr
from .schedule import cosine_momentum, warmup_cosine
from .run_lock import RunLock, RunLockError, claim_on_main
from .step_signals import StepSignalGuard, StopSignals
from .step_stats import StepStats

FOLDER_TRAIN_SIZE = 224  # image folders without augment.image_size: the standard 224 px crops

_CURRENT: Optional["Trainer"] = None


def current_trainer() -> Optional["Trainer"]:
    """The trainer running in this process (for a SLURM job's `checkpoint()`)."""
    return _CURRENT


class RunFolderError(RuntimeError):
    """The run folder holds something this config must not continue (the message says what)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run at a step boundary; `path` is the checkpoint it saved."""

    def __init__(self, signum: int, path: Optional[str], step: int, where: str):
        super().__init__(f"stopped by signal {signum} at step {step} ({where})")
        self.signum, self.path, self.step, self.where = signum, path, step, where


# What a resumable checkpoint must hold (and the type of each entry).
_CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "config": dict, "epoch": int, "step": int,
                    "step_in_epoch": int, "rng": dict}


def _move_aside(path: str) -> str:
    return (f"Move it aside (mv {path} {path}.bad) to start this run over from step 0, or put back a "
            f"good copy")


def check_run_dir(run_dir: str) -> None:
    """Refuse a run.dir that is a file, lies under a file or in a folder this process cannot write
    (read-only: nothing is created)."""
    target = os.path.abspath(run_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise RunFolderError(f"run.dir {run_dir} is a file, not a folder; give a folder (a new one starts a "
                             "new run)")
    problem = folder_problem(target)
    if problem:
        raise RunFolderError(f"run.dir {run_dir}: {problem}; choose another run.dir")


def _stat_key(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def epoch_batches(n: int, global_batch: int, epoch: int, seed: int) -> torch.Tensor:
    """The epoch's shuffled sample order as whole global batches: (steps, global_batch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    steps = n // global_batch  # drop_last: the queue needs whole batches
    return torch.randperm(n, generator=g)[: steps * global_batch].view(steps, global_batch)


def _rng_state(device: torch.device) -> dict:
    """Every RNG the step uses, as tensors (so checkpoints stay weights_only-loadable)."""
    _, keys, pos, *_ = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.append(keys.astype(np.int64), pos)),
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"].numpy()
    np.random.set_state(("MT19937", numpy_state[:-1].astype(np.uint32), int(numpy_state[-1])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Owns one pretraining run in `cfg.run.dir`; `fit()` runs (or resumes) it to the end."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        try:
            self.device = resolve_device(cfg.train.device)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"train.device: {e}; set train.device=auto or cpu") from None
        self.distributed = dist_utils.init_distributed(self.device, force=cfg.train.process_group == "always")
        self.is_main = dist_utils.is_main()
        self.world = dist_utils.world_size()
        self.run_dir = cfg.run.dir
        self._lock = RunLock(self.run_dir)
        # Read-only checks of the run folder before the (slow) set-up; fit() repeats the checkpoint
        # check under the lock, should another process have written it meanwhile.
        check_run_dir(self.run_dir)
        self._checked: tuple[Optional[tuple], Optional[dict]] = self._read_checkpoint()
        self._seed_everything(cfg.seed + dist_utils.rank())

        d, a = cfg.data, cfg.augment
        if d.root is not None and os.path.exists(os.path.expanduser(d.root)) \
                and not os.path.isdir(os.path.expanduser(d.root)):
            raise ConfigError(f"data.root {d.root} is a file; give the folder that holds the {d.name} data")
        try:
            self.train_set = build_dataset(d.name, d.root, "train", d.subset if not d.val_holdout else None,
                                           d.load_size)
            if d.val_holdout:
                self.train_set.split_last(d.val_holdout)  # the held-out images are the monitor's
                if d.subset is not None:
                    if d.subset > len(self.train_set):
                        raise ValueError(f"subset={d.subset} is out of range: {len(self.train_set)} train "
                                         f"images remain after data.val_holdout={d.val_holdout}")
                    self.train_set.take_first(d.subset)
        except ValueError as e:  # a subset larger than the data
            key = "data.subset" if "subset" in str(e) else "data"
            raise ConfigError(f"{key}: {e}; lower {key} (null: every image)" if key == "data.subset"
                              else f"{key}: {e}") from None
        # Image folders: workers decode and cut both crops from the whole image; tensor datasets
        # go to the device whole and kornia crops there.
        self.crops_in_workers = not hasattr(self.train_set, "get_batch")
        if self.crops_in_workers:
            self.image_size = a.image_size or FOLDER_TRAIN_SIZE
            self.loader_set = TwoCropFolder(self.train_set, self.image_size,
                                            scale=(recipe_crop_scale(a.recipe, a.crop_scale_min), 1.0),
                                            seed=cfg.seed)
        else:
            self.image_size = a.image_size or self.train_set.image_size
            self.loader_set = self.train_set
        self.in_channels = self.train_set.num_channels
        self.views = build_two_views(a.recipe, self.image_size, self.in_channels,
                                     self.train_set.mean, self.train_set.std,
                                     None if a.crop_scale_min <= 0 else a.crop_scale_min,
                                     a.jitter_strength, a.blur, crop=not self.crops_in_workers).to(self.device)

        self.norm = plan_normalisation(cfg.method, cfg.moco.split_bn_groups, cfg.moco.shuffle_keys,
                                       self.world, self.device.type)
        self.model = build_model(cfg, self.in_channels, self.image_size, self.norm.split_bn_groups).to(self.device)
        if self.device.type == "cuda" and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.norm.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ddp = DistributedDataParallel(self.model) if self.distributed else None

        self.global_batch = cfg.train.batch_size * self.world
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the train set ({len(self.train_set)} images) is smaller than one global "
                              f"batch ({self.global_batch}); lower train.batch_size")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        enqueued = self.global_batch * (2 if cfg.batchformer.enabled and cfg.batchformer.enqueue_both
                                        and cfg.batchformer.key_branch != "pre_only" else 1)
        if cfg.method == "mocov2" and cfg.moco.queue_size % enqueued:
            raise ConfigError(f"moco.queue_size ({cfg.moco.queue_size}) must be a multiple of the keys enqueued "
                              f"per step ({enqueued} = batch x processes x key streams)")
        self.peak_lr = cfg.train.base_lr * self.global_batch / 256
        self.optimizer = build_optimizer(self.model, cfg, self.peak_lr)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.last_loss = float("nan")
        self.stats = StepStats(self.device)
        self._epoch_losses: list[float] = []
        self._saved_step: Optional[int] = None
        self._stop = StopSignals()  # installed by fit() for one-process runs
        self.logger: Optional[MetricsLogger] = None  # opened by fit(), after the run folder checks

    # --- set-up helpers ------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "rng": _rng_state(self.device), "config": to_dict(self.cfg),
                "in_channels": self.in_channels, "image_size": self.image_size, "world_size": self.world, "loss": self.last_loss}

    def save_checkpoint(self) -> Optional[str]:
        """Write RUN/checkpoints/last.pt atomically (rank 0 only; no collectives, so a signal
        handler may call it). A state reached through a non-finite loss is never written."""
        if not self.is_main:
            return None
        if not self.stats.locally_finite():
            return None
        path = ckpt_io.last_path(self.run_dir)
        save_atomic(self.state_dict(), path)
        self._saved_step = self.step
        return path

    def _read_checkpoint(self) -> tuple[Optional[tuple], Optional[dict]]:
        """(file identity, state) of RUN/checkpoints/last.pt after every check a resume needs, or
        (None, None) when there is none. Raises RunFolderError (one line: the file and the fix)."""
        path = ckpt_io.last_path(self.run_dir)
        if os.path.isdir(path):
            raise RunFolderError(f"{path} is a folder, not a checkpoint. {_move_aside(path)}")
        if not os.path.lexists(path):
            return None, None
        key = _stat_key(path)
        try:
            state = ckpt_io.load(path, map_location="cpu")  # RNG states must stay on the CPU
        except UnreadableFileError as e:
            raise RunFolderError(f"cannot resume: {e}. {_move_aside(path)}") from None
        except OSError as e:
            raise RunFolderError(f"cannot resume: cannot read {path} ({e.strerror or e}). {_move_aside(path)}") from None
        self._check_checkpoint(state, path)
        return key, state

    def _check_checkpoint(self, state, path: str) -> None:
        if not isinstance(state, dict):
            raise RunFolderError(f"cannot resume: {path} holds a {type(state).__name__}, not a training "
                                 f"checkpoint. {_move_aside(path)}")
        wrong = [k for k, t in _CHECKPOINT_KEYS.items() if not isinstance(state.get(k), t)
                 or (t is int and isinstance(state.get(k), bool))]
        if wrong:
            what = "lacks" if all(k not in state for k in wrong) else "has no valid"
            raise RunFolderError(f"cannot resume: {path} is not a training checkpoint of ssl-bf pretrain (it "
                                 f"{what} {', '.join(repr(k) for k in wrong)}; the saved config is what "
                                 f"a resume is checked against). {_move_aside(path)}")
        if state["step"] and self.cfg.train.epochs == 0:
            raise RunFolderError(f"{self.run_dir} holds a trained checkpoint (step {state['step']}); train.epochs=0 "
                                 "saves an untrained network: use a fresh run.dir")
        diffs = resume_differences(state["config"], self.cfg)
        if diffs:
            listed = "; ".join(f"{k}: {format_override_value(old)} -> {format_override_value(new)}"
                               for k, old, new in diffs)
            shrink = any(k == "train.epochs" for k, *_ in diffs)
            raise RunFolderError(
                f"{self.run_dir} holds a run with other settings ({listed}). These settings define the run "
                f"(saved in {path}), so it cannot resume with them changed"
                f"{' (train.epochs may grow, not shrink: stop early with train.max_steps)' if shrink else ''}: "
                f"run again with the saved values, or start a new run with another run.dir "
                f"(e.g. run.dir={self.run_dir.rstrip('/')}-2)")
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            raise RunFolderError(
                f"{path} was written by a run with {saved_world} processes; this one has {self.world}. "
                "The global batch, lr schedule and epoch position would all shift: resume with the same "
                "number of processes, or start a new run with another run.dir.")

    def _resume(self, state: Optional[dict]) -> Optional[int]:
        """Load a checked checkpoint state (or None: a fresh run) into the model and optimiser."""
        if state is None:
            return None
        path = ckpt_io.last_path(self.run_dir)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise RunFolderError(f"cannot resume: {path} does not fit the model of its own config ({first}). "
                                 f"{_move_aside(path)}") from None
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        if self.world == 1:
            _set_rng_state(state["rng"], self.device)  # exact resume
        else:  # only rank 0's RNG is saved: give each rank its own deterministic stream
            self._seed_everything(self.cfg.seed * 1_000_003 + self.step * 1009 + dist_utils.rank())
        self.last_loss = state.get("loss", float("nan"))
        self._saved_step = self.step
        return self.step

    def _claim_run_folder(self, lock_wait_s: float) -> None:
        """Create the run folder and take its lock (rank 0 alone), before anything in it is
        written; every rank learns the outcome (`run_lock.claim_on_main`)."""
        try:
            claim_on_main(self._lock, self.device, wait_s=lock_wait_s)
        except RunLockError as e:
            raise RunFolderError(str(e)) from None

    def _checked_state(self) -> Optional[dict]:
        """The checkpoint state checked in __init__, re-read (and re-checked) if the file changed."""
        key, state = self._checked
        self._checked = (None, None)
        if _stat_key(ckpt_io.last_path(self.run_dir)) != key or (key is None) != (state is None):
            key, state = self._read_checkpoint()
        return state

    # --- data ----------------------------------------------------------------------------
    def _batches(self, epoch: int, start: int) -> Iterator:
        """This rank's batches of `epoch` from step `start` on: uint8 (B, C, H, W), or for image
        folders the pair of uint8 crops ((B, 3, S, S), (B, 3, S, S)) cut in the workers."""
        order = epoch_batches(len(self.train_set), self.global_batch, epoch, self.cfg.seed)
        r, b = dist_utils.rank(), self.cfg.train.batch_size
        mine = order[start:, r * b:(r + 1) * b]  # (steps, B)
        if not self.crops_in_workers:
            for idx in mine:
                yield self.train_set.get_batch(idx)[0]
            return
        self.loader_set.set_epoch(epoch)  # the crop geometry is a function of (seed, epoch, index)
        loader = torch.utils.data.DataLoader(
            self.loader_set, batch_sampler=mine.tolist(), num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch))  # keeps the global RNG untouched
        for crops1, crops2, _ in loader:
            yield crops1, crops2

    # --- training ------------------------------------------------------------------------
    def _to_device(self, batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return tuple(b.to(self.device, non_blocking=True) for b in batch)

    def _train_step(self, batch) -> tuple[dict, float]:
        """One optimiser step; returns the model's outputs as device tensors (no host sync) and the lr."""
        x1, x2 = self.views(self._to_device(batch))  # 2 x (N, C, S, S)
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        lr = self._lr_at(self.step)
        set_lr(self.optimizer, lr)
        momentum = self.cfg.moco.momentum
        if self.cfg.method == "mocov3":
            momentum = cosine_momentum(self.step, self.total_steps, self.cfg.moco.momentum)
        with self._autocast():
            out = (self.ddp or self.model)(x1, x2, momentum=momentum)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        return out, lr

    def _sync(self, started: float) -> tuple[list[dict], bool]:
        """Read back the pending steps (one host sync), log them, and agree on stopping.

        Returns (records logged, time budget spent). Raises NonFiniteLossError when any rank saw a
        NaN/inf loss since the last sync; no checkpoint has been written since then.
        """
        budget = self.cfg.train.time_budget_min
        result = self.stats.sync(over_budget=bool(budget) and time.time() - started > 60 * budget)
        if result.non_finite:
            kept = ckpt_io.find_latest(self.run_dir)
            where = (f"The last good checkpoint ({kept}, step {self._saved_step}) is kept."
                     if kept else "No checkpoint had been written yet.")
            at = f"step {result.first_bad_step}" if result.first_bad_step else f"steps up to {self.step}"
            raise NonFiniteLossError(
                f"the loss became NaN or inf (epoch {self.epoch}, {at}); stopping. {where} Check "
                f"train.base_lr and moco.temperature (they must be positive), or the input data.")
        if result.losses:
            self.last_loss = result.losses[-1]
            self._epoch_losses.extend(result.losses)
        for record in result.records:
            self.logger.log(record)
        return result.records, result.over_budget

    def fit(self, lock_wait_s: float = 0.0) -> dict:
        """Train (resuming from RUN/checkpoints/last.pt if present) and return a summary.

        The run folder's lock is held from before the first write to the end; `lock_wait_s`: how
        long to wait for another holder (a requeued job whose previous attempt is still ending)."""
        self._claim_run_folder(lock_wait_s)
        try:
            return self._fit()
        finally:
            self._lock.release()

    def _fit(self) -> dict:
        global _CURRENT
        state = self._checked_state()
        resumed = self._resume(state)
        epochs_before = state["config"].get("train", {}).get("epochs") if state is not None else None
        del state
        if self.is_main:  # after the checks: a refused run leaves the folder's config as it was
            save_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))
        if self.is_main and resumed is not None:
            truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), resumed)
        self.logger = MetricsLogger(self.run_dir, self.is_main, self.cfg.run.tensorboard)
        _CURRENT = self  # a SLURM checkpoint() from here on saves this (fully loaded) state
        start = {"event": "start", "step": self.step, "epoch": self.epoch, "resumed_from_step": resumed,
                 "requeue_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                 "world_size": self.world, "device": str(self.device), "peak_lr": self.peak_lr,
                 "normalisation": self.norm.description,
                 "crops": "in DataLoader workers (whole image)" if self.crops_in_workers else "on the device"}
        extended = resumed is not None and isinstance(epochs_before, int) and epochs_before != self.cfg.train.epochs
        if extended:  # the lr cosine now runs over the new total from this step on
            start.update(epochs_extended_from=epochs_before, schedule_total_steps=self.total_steps)
        self.logger.log(start)
        if self.is_main and extended:
            print(f"train.epochs {epochs_before} -> {self.cfg.train.epochs}: the lr schedule now runs over "
                  f"{self.total_steps} steps; from step {self.step} the lr is {self._lr_at(self.step):.4g}", flush=True)
        if self.is_main and self.cfg.run.progress:
            print(f"{self.world} process(es) on {self.device}; normalisation: {self.norm.description}", flush=True)
        if self.world == 1:  # DDP: torchrun owns the signals (a peer's collective would block the stop)
            self._stop = StopSignals().install()
        started, summary = time.time(), {}
        try:
            if resumed is None and self.cfg.monitor.knn_at_start:
                init_top1 = self.knn_monitor(full=self.cfg.monitor.full_sets)
                self.logger.log({"event": "knn_init", "step": 0, "knn_top1": init_top1})
                if self.is_main:
                    print(f"random-init k-NN top-1: {init_top1:.2f}", flush=True)
            self._signals = StepSignalGuard().install()
            try:
                summary = self._loop(started)
            finally:
                self._signals.uninstall()
        finally:
            self._stop.uninstall()
            self.logger.close()
            _CURRENT = None
        return summary

    def _lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, int(self.cfg.train.warmup_epochs * self.steps_per_epoch),
                             self.peak_lr)

    def _stop_if_asked(self, started: float) -> None:
        """At a step boundary: after Ctrl-C / SIGTERM, log what is pending, save and stop."""
        signum = self._stop.requested
        if signum is None:
            return
        self._sync(started)  # the pending step lines, and the NaN check (a NaN state is never saved)
        path = self.save_checkpoint()
        epochs = self.cfg.train.epochs
        where = (f"epoch {self.epoch + 1} of {epochs}, step {self.step_in_epoch} of {self.steps_per_epoch}"
                 if self.step_in_epoch else f"end of epoch {self.epoch} of {epochs}")
        raise TrainingInterrupted(signum, path, self.step, where)

    def _loop(self, started: float) -> dict:
        from tqdm import tqdm

        cfg, knn_top1 = self.cfg, None
        if cfg.train.epochs == 0:  # the random-init baseline: its checkpoint is the untrained network
            self.save_checkpoint()
            return self._summary(knn_top1)
        if cfg.train.max_steps and self.step >= cfg.train.max_steps:
            return self._summary(knn_top1, stopped_early=True)
        self._stop_if_asked(started)
        while self.epoch < cfg.train.epochs:
            self.model.train()
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, disable=not (
                self.is_main and cfg.run.progress), desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                       unit="step", dynamic_ncols=True, leave=False)
            self._epoch_losses, t0, seen = [], time.time(), 0
            for batch in self._batches(self.epoch, self.step_in_epoch):
                with self._signals.step():
                    out, lr = self._train_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    self.stats.add(self.step, self.epoch, lr, out, log=self.step % cfg.train.log_every == 0)
                seen += cfg.train.batch_size * self.world
                bar.update(1)
                if self._stop.requested is not None:
                    bar.close()
                    self._stop_if_asked(started)
                save = bool(cfg.train.checkpoint_every_steps) and self.step % cfg.train.checkpoint_every_steps == 0
                enough = bool(cfg.train.max_steps) and self.step >= cfg.train.max_steps
                if not (self.step % cfg.train.log_every == 0 or save or enough):
                    continue  # no host sync between log points
                _, over_budget = self._sync(started)
                bar.set_postfix(loss=f"{self.last_loss:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
                if save or enough or over_budget:
                    self.save_checkpoint()
                if enough or over_budget:
                    bar.close()
                    return self._summary(knn_top1, stopped_early=True)
            bar.close()
            _, over_budget = self._sync(started)  # the epoch's last steps
            record = {"epoch": self.epoch, "step": self.step, "loss": float(np.mean(self._epoch_losses))
                      if self._epoch_losses else self.last_loss,
                      "images_per_s": seen / max(time.time() - t0, 1e-9),
                      "train_seconds": time.time() - t0}  # this process's share of the epoch
            # A handler must never see epoch and position half-updated, and the epoch's record goes
            # with them: a preemption during the k-NN below cannot lose it.
            with self._signals.step():
                self.epoch += 1
                self.step_in_epoch = 0
                self.logger.log(record)
            final = self.epoch == cfg.train.epochs
            msg = (f"epoch {self.epoch}/{cfg.train.epochs}  loss {record['loss']:.4f}  "
                   f"{record['images_per_s']:.0f} img/s")
            if over_budget and not final:
                self.save_checkpoint()
                return self._summary(knn_top1, stopped_early=True)
            if not final:  # before the k-NN check (the epoch's checkpoint included); a finished run just ends
                self._stop_if_asked(started)
            if cfg.monitor.knn_every and (self.epoch % cfg.monitor.knn_every == 0 or final):
                t_knn = time.time()
                knn_top1 = self.knn_monitor(full=final and cfg.monitor.full_sets)
                self.logger.log({"event": "knn", "epoch": record["epoch"], "step": self.step,
                                 "knn_top1": knn_top1, "knn_seconds": time.time() - t_knn})
                msg += f"  knn_top1 {knn_top1:.2f}" if knn_top1 is not None else ""
            if self.is_main:
                print(msg, flush=True)
            self.save_checkpoint()
            if not final:
                self._stop_if_asked(started)
        return self._summary(knn_top1)

    def _summary(self, knn_top1: Optional[float], stopped_early: bool = False) -> dict:
        return {"run_dir": self.run_dir, "epoch": self.epoch, "step": self.step, "loss": self.last_loss,
                "knn_top1": knn_top1, "stopped_early": stopped_early}

    # --- online k-NN monitor -------------------------------------------------------------
    def embed(self, dataset, limit: Optional[int] = None, batch_size: int = 512
              ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Backbone features of `limit` images (a fixed random subset; None: all), eval mode, no
        BatchFormer. Every rank extracts its shard; rank 0 gets the result, the others None."""
        if limit is None or limit >= len(dataset):
            order = torch.arange(len(dataset))
        else:  # a fixed random subset: folder datasets are sorted by class
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        transform = EvalTransform(self.image_size, dataset.mean, dataset.std).to(self.device)
        amp = torch.bfloat16 if self.device.type == "cuda" and self.cfg.train.amp else None
        return extract_features(self.model.backbone, dataset, transform, self.device, indices=order,
                                batch_size=batch_size, num_workers=self.cfg.data.num_workers,
                                progress=False, desc="monitor", autocast_dtype=amp)

    def knn_monitor(self, full: bool) -> Optional[float]:
        """k-NN top-1 (%) of test images against the train bank, backbone features (rank 0's
        figure; the other ranks help extract and get None)."""
        from ..knn.vote import knn_accuracy

        if not self.train_set.classes:  # unlabeled data: nothing to score
            return None
        m = self.cfg.monitor
        if not hasattr(self, "_test_set"):
            d = self.cfg.data
            self._bank_set = build_dataset(d.name, d.root, "train", None, d.load_size)
            if d.val_holdout:  # tuning: the held-out train images against the rest; no test image
                self._test_set = self._bank_set.split_last(d.val_holdout)
            else:
                self._test_set = build_dataset(d.name, d.root, "test", None, d.load_size)
        bank = self.embed(self._bank_set, None if full else m.bank_subset)
        query = self.embed(self._test_set, None if full else m.query_subset)
        top1 = None
        if self.is_main:
            k = min(m.knn_k, len(bank[0]))  # a train split smaller than k: vote over all of it
            result = knn_accuracy(bank[0], bank[1], query[0], query[1], ks=(k,),
                                  temperatures=(m.knn_temperature,), num_classes=len(self._bank_set.classes))
            top1 = float(result[0]["top1"])
        dist_utils.barrier()  # the others wait for the vote (a short CPU job) here
        return top1


def pretrain(cfg: Config) -> dict:
    """Run (or resume) one pretraining run to completion."""
    return Trainer(cfg).fit()
