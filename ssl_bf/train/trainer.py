"""The pretraining loop: data -> device augmentation -> the method's step -> logs and checkpoints.

Set-up, one step, the loop; delegated: the run folder (run_folder.py), the data order (batches.py), the
chosen images (train_subset.py), the online k-NN (monitor.py), the method's knowledge (ssl_bf/models/).

Resume is exact on CPU: an epoch's batch order is a function of (seed, epoch); the checkpoint holds the
model, optimiser, queue, RNG states and the position. Preemption handlers (SIGUSR2/SIGTERM) wait for a
step's end (step_signals.py), so SLURM's `save_checkpoint()` sees the state between two steps; outside
SLURM, Ctrl-C and SIGTERM stop a one-process run at the next step with a checkpoint (`TrainingInterrupted`).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as dist_utils
from ..config import Config, ConfigError, save_config, to_dict
from ..devices import resolve_device, tune_for_fixed_shapes
from ..models.registry import build_model, method_class
from .batches import PretrainBatches
from .checkpoint_schema import TrainingLayout
from .data_setup import UnreadableLog, pretraining_data
from .metrics import MetricsLogger
from .monitor import KnnMonitor, knn_text
from .optim import build_optimizer, set_lr
from .rng import rng_state, seed_everything, set_rng_state
from .run_folder import RunFolder, RunFolderError
from .schedule import warmup_cosine
from .step_signals import StepSignalGuard, StopSignals
from .step_stats import StepStats
from .train_subset import check_saved_indices, subset_fields, write_indices

__all__ = ["NonFiniteLossError", "RunFolderError", "Trainer", "TrainingInterrupted", "current_trainer", "pretrain"]

_CURRENT: Optional["Trainer"] = None


def current_trainer() -> Optional["Trainer"]:
    """The trainer running in this process (for a SLURM job's `checkpoint()`)."""
    return _CURRENT


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run at a step boundary; `path` is the checkpoint it saved."""

    def __init__(self, signum: int, path: Optional[str], step: int, where: str):
        super().__init__(f"stopped by signal {signum} at step {step} ({where})")
        self.signum, self.path, self.step, self.where = signum, path, step, where


@dataclass
class EpochClock:
    """When this process's share of the epoch started and how many images the run has seen since."""

    started: float
    images: int = 0


class Trainer:
    """Owns one pretraining run in `cfg.run.dir`; `fit()` runs (or resumes) it to the end."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        try:
            self.device = resolve_device(cfg.train.device)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"train.device: {e}; set train.device=auto or cpu") from None
        tune_for_fixed_shapes(self.device)
        self.distributed = dist_utils.init_distributed(self.device, force=cfg.train.process_group == "always")
        self.is_main = dist_utils.is_main()
        self.world = dist_utils.world_size()
        self.run_dir = cfg.run.dir
        method = method_class(cfg.method)
        method.check_world(cfg, self.world)
        # Read-only checks of the run folder before the (slow) set-up; fit() repeats the checkpoint
        # check under the lock, should another process have written it meanwhile.
        self.folder = RunFolder(cfg, self.world, self.device)
        seed_everything(cfg.seed + dist_utils.rank())
        data = pretraining_data(cfg, self.device)
        self.train_set, self.loader_set, self.views, self.chosen = data.train_set, data.loader_set, data.views, data.chosen
        self.crops_in_workers, self.image_size, self.in_channels = data.crops_in_workers, data.image_size, data.in_channels
        self.batches = PretrainBatches(self.train_set, self.loader_set, cfg.train.batch_size, cfg.seed, self.crops_in_workers,
                                       cfg.data.num_workers, pin_memory=self.device.type == "cuda")

        self.norm = method.norm_plan(cfg, self.world, self.device.type)
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
        self.peak_lr = cfg.train.base_lr * self.global_batch / 256
        self.optimizer = build_optimizer(self.model, cfg, self.peak_lr)
        # the checkpoint's fields against what was built, before anything is loaded or written
        self.folder.expect(TrainingLayout.of(self.model, self.optimizer, self.steps_per_epoch, cfg.train.epochs,
                                             self.in_channels, self.image_size))
        self.monitor = KnnMonitor(cfg, self.device, self.image_size, bool(self.train_set.classes), self.chosen)
        self.unreadable = UnreadableLog(cfg, [self.train_set, self.monitor.bank_set, self.monitor.query_set])
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.last_loss = float("nan")
        self.last_knn: Optional[float] = None
        self.stats = StepStats(self.device)
        self._epoch_losses: list[float] = []
        self._saved_step: Optional[int] = None
        self._stop = StopSignals()  # installed by fit() for one-process runs
        self._signals = StepSignalGuard()  # installed by fit()
        self.logger: Optional[MetricsLogger] = None  # opened by fit(), after the run folder checks

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "rng": rng_state(self.device), "config": to_dict(self.cfg),
                "in_channels": self.in_channels, "image_size": self.image_size, "world_size": self.world,
                "loss": self.last_loss}

    def save_checkpoint(self) -> Optional[str]:
        """RUN/checkpoints/last.pt, atomically, by rank 0 (no collectives: a signal handler may call it)."""
        if not self.is_main or not self.stats.locally_finite():  # a non-finite state is never written
            return None
        if self.world == 1 and len(self.stats):  # log the steps it holds first (one process: no peer to wait)
            self._sync(time.time())
        path = self.folder.save(self.state_dict())
        self._saved_step = self.step
        return path

    def _checkpoint_together(self) -> None:
        """`save_checkpoint()` where every rank arrives: the others wait for rank 0's write on the
        long-wait group (`wait_for_main`), never in the next step's collective, whose timeout is short."""
        self.save_checkpoint()
        dist_utils.wait_for_main()

    def _resume(self, state: Optional[dict]) -> Optional[int]:
        """Load a checked checkpoint state (or None: a fresh run) into the model and optimiser."""
        if state is None:
            return None
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise self.folder.not_loadable(e) from None
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        if self.world == 1:
            set_rng_state(state["rng"], self.device)  # exact resume
        else:  # only rank 0's RNG is saved: give each rank its own deterministic stream
            seed_everything(self.cfg.seed * 1_000_003 + self.step * 1009 + dist_utils.rank())
        self.last_loss = state.get("loss", float("nan"))
        self._saved_step = self.step
        return self.step

    # --- one step ------------------------------------------------------------------------
    def _to_device(self, batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return tuple(b.to(self.device, non_blocking=True) for b in batch)

    def _lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, int(self.cfg.train.warmup_epochs * self.steps_per_epoch),
                             self.peak_lr)

    def _train_step(self, batch) -> tuple[dict, float]:
        """One optimiser step; returns the model's outputs as device tensors (no host sync) and the lr."""
        x1, x2 = self.views(self._to_device(batch))  # 2 x (N, C, S, S)
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        lr = self._lr_at(self.step)
        set_lr(self.optimizer, lr)
        momentum = self.model.momentum_at(self.step, self.total_steps)
        with self._autocast():
            out = (self.ddp or self.model)(x1, x2, momentum=momentum)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        return out, lr

    def _sync(self, started: float) -> bool:
        """Read back the pending steps (one host sync), log them, and agree on stopping. Returns
        whether the time budget is spent. Raises NonFiniteLossError when any rank saw a NaN/inf
        loss since the last sync; no checkpoint has been written since then."""
        budget = self.cfg.train.time_budget_min
        result = self.stats.sync(over_budget=bool(budget) and time.time() - started > 60 * budget)
        if result.non_finite:
            kept = self.folder.latest()
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
        self.unreadable.log(self.logger, self.step, self.epoch, self.device, self.is_main)
        return result.over_budget

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

    # --- the run -------------------------------------------------------------------------
    def fit(self, lock_wait_s: float = 0.0) -> dict:
        """Train (resuming from RUN/checkpoints/last.pt if present) and return a summary.

        The run folder's lock is held from before the first write to the end; `lock_wait_s`: how
        long to wait for another holder (a requeued job whose previous attempt is still ending)."""
        self.folder.claim(self.device, lock_wait_s)
        try:
            return self._fit()
        finally:
            self.folder.release()

    def _fit(self) -> dict:
        global _CURRENT
        state = self.folder.checked_state()
        check_saved_indices(self.run_dir, self.chosen, resuming=state is not None)  # before any write
        resumed = self._resume(state)
        epochs_before = state["config"].get("train", {}).get("epochs") if state is not None else None
        del state
        if self.is_main:  # after the checks: a refused run leaves the folder's files as they were
            for note in self.folder.rewind_metrics(resumed or 0):  # a fresh start redoes everything
                print(f"note: {note}", flush=True)
            save_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))
            write_indices(self.run_dir, self.chosen)  # RUN/data_indices.npy: a long tail or index file only
        self.logger = MetricsLogger(self.run_dir, self.is_main, self.cfg.run.tensorboard)
        _CURRENT = self  # a SLURM checkpoint() from here on saves this (fully loaded) state
        self._log_start(resumed, epochs_before)
        if self.world == 1:  # DDP: torchrun owns the signals (a peer's collective would block the stop)
            self._stop = StopSignals().install()
        try:
            if resumed is None and self.cfg.monitor.knn_at_start:
                init_top1 = self.knn_monitor(full=self.cfg.monitor.full_sets)
                self.logger.log({"event": "knn_init", "step": 0, "knn_top1": init_top1})
                if self.is_main:
                    print(f"random-init k-NN top-1: {init_top1:.2f}", flush=True)
            self._signals = StepSignalGuard().install()
            try:
                return self._loop(time.time())
            finally:
                self._signals.uninstall()
        finally:
            self._stop.uninstall()
            self.batches.close()
            self.logger.close()
            _CURRENT = None

    def _log_start(self, resumed: Optional[int], epochs_before) -> None:
        start = {"event": "start", "step": self.step, "epoch": self.epoch, "resumed_from_step": resumed,
                 "requeue_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                 "world_size": self.world, "device": str(self.device), "peak_lr": self.peak_lr,
                 "normalisation": self.norm.description,
                 "crops": "in DataLoader workers (whole image)" if self.crops_in_workers else "on the device",
                 **subset_fields(self.chosen)}
        extended = resumed is not None and isinstance(epochs_before, int) and epochs_before != self.cfg.train.epochs
        if extended:  # the lr cosine now runs over the new total from this step on
            start.update(epochs_extended_from=epochs_before, schedule_total_steps=self.total_steps)
        self.logger.log(start)
        if self.is_main and extended:
            print(f"train.epochs {epochs_before} -> {self.cfg.train.epochs}: the lr schedule now runs over "
                  f"{self.total_steps} steps; from step {self.step} the lr is {self._lr_at(self.step):.4g}", flush=True)
        if self.is_main and self.cfg.run.progress:
            print(f"{self.world} process(es) on {self.device}; normalisation: {self.norm.description}", flush=True)

    def _loop(self, started: float) -> dict:
        """Epochs until the last, or until a stop: max_steps, the time budget (both checkpointed), or
        a signal (TrainingInterrupted). epochs=0 saves the untrained network (a random-init baseline)."""
        epochs, max_steps = self.cfg.train.epochs, self.cfg.train.max_steps
        stopped_early = False
        if epochs == 0:
            self._checkpoint_together()
        elif max_steps and self.step >= max_steps:
            stopped_early = True
        else:
            self._stop_if_asked(started)
        while not stopped_early and self.epoch < epochs:
            clock = EpochClock(time.time())
            stopped_early = self._train_epoch(started, clock) or self._end_epoch(started, clock)
        return {"run_dir": self.run_dir, "epoch": self.epoch, "step": self.step, "loss": self.last_loss,
                "knn_top1": self.last_knn, "stopped_early": stopped_early, **subset_fields(self.chosen)}

    def _train_epoch(self, started: float, clock: EpochClock) -> bool:
        """The steps of the current epoch from its saved position; True when max_steps or the time
        budget stopped it (after a checkpoint)."""
        from tqdm import tqdm

        cfg = self.cfg
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, disable=not (
            self.is_main and cfg.run.progress), desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                   unit="step", dynamic_ncols=True, leave=False)
        self._epoch_losses = []
        stop = False
        for batch in self.batches.epoch(self.epoch, self.step_in_epoch):
            with self._signals.step():
                out, lr = self._train_step(batch)
                self.step += 1
                self.step_in_epoch += 1
                self.stats.add(self.step, self.epoch, lr, out, log=self.step % cfg.train.log_every == 0)
            clock.images += cfg.train.batch_size * self.world
            bar.update(1)
            if self._stop.requested is not None:
                bar.close()
                self._stop_if_asked(started)
            save = bool(cfg.train.checkpoint_every_steps) and self.step % cfg.train.checkpoint_every_steps == 0
            enough = bool(cfg.train.max_steps) and self.step >= cfg.train.max_steps
            if self.step % cfg.train.log_every == 0 or save or enough:  # else: no host sync
                over_budget = self._sync(started)
                bar.set_postfix(loss=f"{self.last_loss:.3f}",
                                img_s=f"{clock.images / (time.time() - clock.started):.0f}")
                if save or enough or over_budget:
                    with self._signals.step():  # a preemption waits for this save, never interrupts it
                        self._checkpoint_together()
                stop = enough or over_budget
                if stop:
                    break
        bar.close()
        return stop

    def _end_epoch(self, started: float, clock: EpochClock) -> bool:
        """Log the finished epoch, run the monitor when due, checkpoint; True when the time budget
        stops the run here."""
        cfg = self.cfg
        over_budget = self._sync(started)  # the epoch's last steps
        record = {"epoch": self.epoch, "step": self.step, "loss": float(np.mean(self._epoch_losses))
                  if self._epoch_losses else self.last_loss,
                  "images_per_s": clock.images / max(time.time() - clock.started, 1e-9),
                  "train_seconds": time.time() - clock.started}  # this process's share of the epoch
        # A handler never sees epoch and position half-updated, nor loses the epoch's record to the k-NN below.
        with self._signals.step():
            self.epoch += 1
            self.step_in_epoch = 0
            self.logger.log(record)
        final = self.epoch == cfg.train.epochs
        stop = over_budget and not final
        if stop:
            self._checkpoint_together()
        else:
            if not final:  # before the k-NN check (the epoch's checkpoint included); a finished run just ends
                self._stop_if_asked(started)
            self._monitor_and_save(record, final)
            if not final:
                self._stop_if_asked(started)
        return stop

    def _monitor_and_save(self, record: dict, final: bool) -> None:
        """The epoch's line on stdout, with the online k-NN when it is due, and its checkpoint."""
        cfg = self.cfg
        msg = f"epoch {self.epoch}/{cfg.train.epochs}  loss {record['loss']:.4f}  {record['images_per_s']:.0f} img/s"
        if cfg.monitor.knn_every and (self.epoch % cfg.monitor.knn_every == 0 or final):
            t_knn = time.time()
            self.last_knn = self.knn_monitor(full=final and cfg.monitor.full_sets)
            self.logger.log({"event": "knn", "epoch": record["epoch"], "step": self.step, "knn_top1": self.last_knn,
                             "knn_seconds": time.time() - t_knn, **self.monitor.group_fields()})
            self.unreadable.log(self.logger, self.step, self.epoch, self.device, self.is_main)
            msg += knn_text(self.last_knn, self.monitor.per_group)
        if self.is_main:
            print(msg, flush=True)
        self._checkpoint_together()

    def knn_monitor(self, full: bool) -> Optional[float]:
        """The online k-NN top-1 of the backbone now (rank 0's figure; None elsewhere or when off)."""
        return self.monitor.top1(self.model.backbone, full)


def pretrain(cfg: Config) -> dict:
    """Run (or resume) one pretraining run to completion."""
    return Trainer(cfg).fit()
