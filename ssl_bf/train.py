"""The pretraining loop: data -> device augmentation -> MoCo step -> logs and checkpoints.

Resume is exact on CPU: the batch order of an epoch is a function of (seed, epoch), and the
checkpoint holds the model, optimiser, queue, RNG states and the position in the epoch.
Preemption handlers (SIGUSR2/SIGTERM) are deferred to the end of a step (step_signals.py), so a
SLURM handler that calls `save_checkpoint()` always sees the state between two steps.
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

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .augment import EvalTransform, build_two_views
from .config import Config, save_config, to_dict
from .data import build_dataset
from .metrics import MetricsLogger, truncate_metrics
from .moco import build_model
from .optim import build_optimizer, set_lr
from .schedule import cosine_momentum, warmup_cosine
from .step_signals import StepSignalGuard

_CURRENT: Optional["Trainer"] = None


def current_trainer() -> Optional["Trainer"]:
    """The trainer running in this process (for a SLURM job's `checkpoint()`)."""
    return _CURRENT


class RunFolderError(RuntimeError):
    """The run folder holds something this config must not continue (the message says what)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():  # works with one visible GPU per task or all GPUs per node
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


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
        self.device = resolve_device(cfg.train.device)
        self.distributed = dist_utils.init_distributed(self.device)
        self.is_main = dist_utils.is_main()
        self.world = dist_utils.world_size()
        self.run_dir = cfg.run.dir
        self._seed_everything(cfg.seed + dist_utils.rank())

        d = cfg.data
        self.train_set = build_dataset(d.name, d.root, "train", d.subset, d.load_size)
        self.image_size = cfg.augment.image_size or self.train_set.image_size
        self.in_channels = self.train_set.num_channels
        self.views = build_two_views(cfg.augment.recipe, self.image_size, self.in_channels,
                                     self.train_set.mean, self.train_set.std,
                                     None if cfg.augment.crop_scale_min <= 0 else cfg.augment.crop_scale_min,
                                     cfg.augment.jitter_strength, cfg.augment.blur).to(self.device)

        self.model = build_model(cfg, self.in_channels, self.image_size).to(self.device)
        if self.device.type == "cuda" and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.distributed and self.device.type == "cuda" and cfg.method == "mocov3":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # GPU only in torch
        self.ddp = DistributedDataParallel(self.model) if self.distributed else None

        self.global_batch = cfg.train.batch_size * self.world
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the train set ({len(self.train_set)} images) is smaller than one global "
                             f"batch ({self.global_batch})")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        enqueued = self.global_batch * (2 if cfg.batchformer.enabled and cfg.batchformer.enqueue_both
                                        and cfg.batchformer.key_branch != "pre_only" else 1)
        if cfg.method == "mocov2" and cfg.moco.queue_size % enqueued:
            raise ValueError(f"moco.queue_size ({cfg.moco.queue_size}) must be a multiple of the keys enqueued "
                             f"per step ({enqueued} = batch x processes x key streams)")
        self.peak_lr = cfg.train.base_lr * self.global_batch / 256
        self.optimizer = build_optimizer(self.model, cfg, self.peak_lr)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.last_loss = float("nan")
        self.logger = MetricsLogger(self.run_dir, self.is_main, cfg.run.tensorboard)

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
        """Write RUN/checkpoints/last.pt atomically (rank 0 only; no collectives)."""
        if not self.is_main:
            return None
        path = ckpt_io.last_path(self.run_dir)
        ckpt_io.save_atomic(self.state_dict(), path)
        return path

    def _resume(self) -> Optional[int]:
        path = ckpt_io.find_latest(self.run_dir)
        if path is None:
            return None
        state = ckpt_io.load(path, map_location="cpu")  # RNG states must stay on the CPU
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            raise RuntimeError(
                f"{path} was written by a run with {saved_world} processes; this one has {self.world}. "
                "The global batch, lr schedule and epoch position would all shift: resume with the same "
                "number of processes, or start a new run folder.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        if self.world == 1:
            _set_rng_state(state["rng"], self.device)  # exact resume
        else:  # only rank 0's RNG is saved: give each rank its own deterministic stream
            self._seed_everything(self.cfg.seed * 1_000_003 + self.step * 1009 + dist_utils.rank())
        self.last_loss = state.get("loss", float("nan"))
        return self.step

    # --- data ----------------------------------------------------------------------------
    def _batches(self, epoch: int, start: int) -> Iterator[torch.Tensor]:
        """uint8 batches of this rank for `epoch`, from step `start` on."""
        order = epoch_batches(len(self.train_set), self.global_batch, epoch, self.cfg.seed)
        r, b = dist_utils.rank(), self.cfg.train.batch_size
        mine = order[start:, r * b:(r + 1) * b]  # (steps, B)
        if hasattr(self.train_set, "get_batch"):
            for idx in mine:
                yield self.train_set.get_batch(idx)[0]
            return
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=mine.tolist(), num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch))  # keeps the global RNG untouched
        for images, _ in loader:
            yield images

    # --- training ------------------------------------------------------------------------
    def _train_step(self, images: torch.Tensor) -> dict:
        images = images.to(self.device, non_blocking=True)
        x1, x2 = self.views(images)  # 2 x (N, C, S, S)
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        lr = warmup_cosine(self.step, self.total_steps,
                           int(self.cfg.train.warmup_epochs * self.steps_per_epoch), self.peak_lr)
        set_lr(self.optimizer, lr)
        momentum = self.cfg.moco.momentum
        if self.cfg.method == "mocov3":
            momentum = cosine_momentum(self.step, self.total_steps, self.cfg.moco.momentum)
        with self._autocast():
            out = (self.ddp or self.model)(x1, x2, momentum=momentum)
        loss = out["loss"]
        finite = torch.isfinite(loss.detach()).float().cpu().view(1)
        if self.distributed:  # every rank stops together, or none does
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite.item():
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {self.epoch} step {self.step}; stopping. The last good "
                f"checkpoint ({ckpt_io.last_path(self.run_dir)}) is kept. Try a lower train.base_lr.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "lr": lr, **{k: float(v) for k, v in out.items() if k != "loss"}}

    def _should_stop(self, started: float) -> bool:
        """max_steps reached or time budget spent; under DDP every rank takes rank 0's decision."""
        t = self.cfg.train
        if t.max_steps and self.step >= t.max_steps:
            return True
        if not t.time_budget_min:
            return False
        flag = torch.tensor([float(time.time() - started > 60 * t.time_budget_min)])
        if self.distributed:
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def fit(self) -> dict:
        """Train (resuming from RUN/checkpoints/last.pt if present) and return a summary."""
        global _CURRENT
        _CURRENT = self
        os.makedirs(self.run_dir, exist_ok=True)
        resumed = self._resume()
        if resumed and self.cfg.train.epochs == 0:
            raise RunFolderError(f"{self.run_dir} holds a trained checkpoint (step {resumed}); train.epochs=0 "
                                 "saves an untrained network: use a fresh run.dir")
        if self.is_main:  # after the checks: a refused run leaves the folder's config as it was
            save_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))
        if self.is_main and resumed is not None:
            truncate_metrics(self.logger.path, resumed)
        self.logger.log({"event": "start", "step": self.step, "epoch": self.epoch,
                         "resumed_from_step": resumed,
                         "requeue_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                         "world_size": self.world, "device": str(self.device), "peak_lr": self.peak_lr})
        if resumed is None and self.cfg.monitor.knn_at_start:
            init_top1 = self.knn_monitor(full=self.cfg.monitor.full_sets)
            self.logger.log({"event": "knn_init", "step": 0, "knn_top1": init_top1})
            if self.is_main:
                print(f"random-init k-NN top-1: {init_top1:.2f}", flush=True)
        started, summary = time.time(), {}
        self._signals = StepSignalGuard().install()
        try:
            summary = self._loop(started)
        finally:
            self._signals.uninstall()
            self.logger.close()
            _CURRENT = None
        return summary

    def _loop(self, started: float) -> dict:
        from tqdm import tqdm

        cfg, knn_top1 = self.cfg, None
        if cfg.train.epochs == 0:  # the random-init baseline: its checkpoint is the untrained network
            self.save_checkpoint()
            return self._summary(knn_top1)
        if cfg.train.max_steps and self.step >= cfg.train.max_steps:
            return self._summary(knn_top1, stopped_early=True)
        while self.epoch < cfg.train.epochs:
            self.model.train()
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, disable=not (
                self.is_main and cfg.run.progress), desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                       unit="step", dynamic_ncols=True, leave=False)
            losses, t0, seen = [], time.time(), 0
            for images in self._batches(self.epoch, self.step_in_epoch):
                with self._signals.step():
                    stats = self._train_step(images)
                    self.step += 1
                    self.step_in_epoch += 1
                    self.last_loss = stats["loss"]
                losses.append(stats["loss"])
                seen += images.shape[0] * self.world
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
                if self.step % cfg.train.log_every == 0:
                    self.logger.log({"step": self.step, "epoch": self.epoch, **stats})
                if cfg.train.checkpoint_every_steps and self.step % cfg.train.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                if self._should_stop(started):
                    bar.close()
                    self.save_checkpoint()
                    return self._summary(knn_top1, stopped_early=True)
            bar.close()
            record = {"epoch": self.epoch, "step": self.step, "loss": float(np.mean(losses)) if losses else
                      self.last_loss, "images_per_s": seen / max(time.time() - t0, 1e-9),
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
            if cfg.monitor.knn_every and (self.epoch % cfg.monitor.knn_every == 0 or final):
                t_knn = time.time()
                knn_top1 = self.knn_monitor(full=final and cfg.monitor.full_sets)
                self.logger.log({"event": "knn", "epoch": record["epoch"], "step": self.step,
                                 "knn_top1": knn_top1, "knn_seconds": time.time() - t_knn})
                msg += f"  knn_top1 {knn_top1:.2f}" if knn_top1 is not None else ""
            if self.is_main:
                print(msg, flush=True)
            self.save_checkpoint()
        return self._summary(knn_top1)

    def _summary(self, knn_top1: Optional[float], stopped_early: bool = False) -> dict:
        return {"run_dir": self.run_dir, "epoch": self.epoch, "step": self.step, "loss": self.last_loss,
                "knn_top1": knn_top1, "stopped_early": stopped_early}

    # --- online k-NN monitor -------------------------------------------------------------
    @torch.no_grad()
    def embed(self, dataset, limit: Optional[int] = None, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features of the first `limit` images (eval mode, no BatchFormer)."""
        transform = EvalTransform(self.image_size, dataset.mean, dataset.std).to(self.device)
        backbone = self.model.backbone
        was_training = backbone.training
        backbone.eval()
        if limit is None or limit >= len(dataset):
            order = torch.arange(len(dataset))
        else:  # a fixed random subset: folder datasets are sorted by class
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        feats, labels = [], []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if hasattr(dataset, "get_batch"):
                images, y = dataset.get_batch(idx)
            else:
                items = [dataset[i] for i in idx.tolist()]
                images, y = torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
            with self._autocast():
                feats.append(backbone(transform(images.to(self.device))).float().cpu())
            labels.append(y)
        backbone.train(was_training)
        return torch.cat(feats), torch.cat(labels)

    def knn_monitor(self, full: bool) -> Optional[float]:
        """k-NN top-1 (%) of test images against the train bank, backbone features."""
        from .eval.knn import knn_accuracy

        if not self.train_set.classes:  # unlabeled data: nothing to score
            return None
        if not self.is_main:  # (the process group timeout is raised to cover this wait)
            dist_utils.barrier()
            return None
        try:
            m = self.cfg.monitor
            if not hasattr(self, "_test_set"):
                self._test_set = build_dataset(self.cfg.data.name, self.cfg.data.root, "test", None,
                                               self.cfg.data.load_size)
                self._bank_set = build_dataset(self.cfg.data.name, self.cfg.data.root, "train", None,
                                               self.cfg.data.load_size)
            bank, bank_y = self.embed(self._bank_set, None if full else m.bank_subset)
            query, query_y = self.embed(self._test_set, None if full else m.query_subset)
            result = knn_accuracy(bank, bank_y, query, query_y, ks=(m.knn_k,), temperatures=(m.knn_temperature,),
                                  num_classes=len(self._bank_set.classes))
            return float(result[0]["top1"])
        finally:
            dist_utils.barrier()


def pretrain(cfg: Config) -> dict:
    """Run (or resume) one pretraining run to completion."""
    return Trainer(cfg).fit()
