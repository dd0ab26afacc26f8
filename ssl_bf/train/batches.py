"""The data order of pretraining: an epoch's shuffled global batches, a function of (seed, epoch)
alone, and this rank's share of them from any step on (what makes a mid-epoch resume exact).
Shards have an order of their own, by shard and stream (ssl_bf/data/shards/order.py).

Image folders and shards are read by one DataLoader for the whole run: its workers are started
once (`persistent_workers`) and learn each new epoch (and a resume's first step) through shared
memory (`TwoCropFolder.set_epoch`, `ShardCropStream.set_position`), so nothing but the index
lists changes between epochs and the crops are the ones a fresh DataLoader per epoch cut.
"""
from __future__ import annotations

import atexit
import weakref
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from .. import distributed as dist_utils
from ..data.shards import ShardCropStream


def epoch_batches(n: int, global_batch: int, epoch: int, seed: int) -> torch.Tensor:
    """The epoch's shuffled sample order as whole global batches: (steps, global_batch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    steps = n // global_batch  # drop_last: the queue needs whole batches
    return torch.randperm(n, generator=g)[: steps * global_batch].view(steps, global_batch)


class EpochBatchSampler(Sampler[list[int]]):
    """The batch sampler of the run's DataLoader: the index lists of the epoch set last. It runs in
    the main process (the workers are sent the index lists), so a plain attribute is enough."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def set_batches(self, batches: torch.Tensor) -> None:
        self.batches = batches.tolist()  # (steps, B) -> steps lists of B indices

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """A DataLoader worker leaves SIGTERM, SIGUSR1 and SIGUSR2 to the trainer: SLURM signals every
    process of a job on preemption or timeout, and a worker killed by one would make torch raise
    in the trainer while it saves its checkpoint. The worker still ends with the trainer (torch's
    parent watchdog) or on SIGKILL."""
    import signal

    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


_OPEN: "weakref.WeakSet[PretrainBatches]" = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's own exit hook, so it runs before it
def _close_all_at_exit() -> None:
    """Stop the workers of every PretrainBatches still open when the interpreter exits. Without it
    multiprocessing's exit hook would SIGTERM them (ignored, see above) and wait for ever: a
    program that called `pretrain` and kept its exception would hang at exit."""
    for batches in list(_OPEN):
        batches.close()


class PretrainBatches:
    """This rank's batches of each epoch: uint8 (B, C, H, W) from a tensor dataset, or for image
    folders and shards the pair of uint8 crops ((B, 3, S, S), (B, 3, S, S)) cut in the DataLoader
    workers from `loader_set`. `close()` stops the workers, also when an epoch is left mid-way
    (an exception, a stop); the workers of one never closed stop at interpreter exit."""

    def __init__(self, train_set, loader_set, batch_size: int, seed: int, crops_in_workers: bool,
                 num_workers: int, pin_memory: bool) -> None:
        self.train_set, self.loader_set = train_set, loader_set
        self.batch_size, self.seed = batch_size, seed
        self.sampler: Optional[EpochBatchSampler] = None
        self.loader: Optional[DataLoader] = None
        options = dict(num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                       generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
                       worker_init_fn=_worker_ignores_stop_signals if num_workers > 0 else None)
        self._running: Optional[Iterator] = None  # the epoch being read
        self._workers = None  # the DataLoader's persistent iterator: it owns the worker processes
        if isinstance(loader_set, ShardCropStream):  # streamed: the order is the stream's
            rank_set = loader_set.rank_stream(dist_utils.rank(), dist_utils.world_size(), batch_size)
            self.loader = DataLoader(rank_set, batch_size=None, **options)
        elif crops_in_workers:
            self.sampler = EpochBatchSampler()
            self.loader = DataLoader(loader_set, batch_sampler=self.sampler, **options)

        if self.loader is not None and num_workers > 0:
            _OPEN.add(self)

    def epoch(self, epoch: int, start: int) -> Iterator:
        """The batches of `epoch` from step `start` on."""
        if self._running is not None:
            self._running.close()  # an epoch left mid-way (max_steps) ends here
        self._running = self._epoch(epoch, start)
        return self._running

    def _epoch(self, epoch: int, start: int) -> Iterator:
        if isinstance(self.loader_set, ShardCropStream):
            self.loader_set.set_position(epoch, start)  # read by the workers when the epoch starts
            yield from self._loader_iterator()
            return
        order = epoch_batches(len(self.train_set), self.batch_size * dist_utils.world_size(), epoch, self.seed)
        r = dist_utils.rank()
        mine = order[start:, r * self.batch_size:(r + 1) * self.batch_size]  # (steps, B)
        if self.loader is None:
            for idx in mine:
                yield self.train_set.get_batch(idx)[0]
            return
        self.loader_set.set_epoch(epoch)  # the crop geometry is a function of (seed, epoch, index)
        self.sampler.set_batches(mine)
        for crops1, crops2, _ in self._loader_iterator():
            yield crops1, crops2

    def _loader_iterator(self) -> Iterator:
        """The DataLoader's iterator for a new epoch: with workers, the same (persistent) object
        every epoch, kept so that close() can stop its workers."""
        iterator = iter(self.loader)
        if self.loader.num_workers > 0:
            self._workers = iterator
        return iterator

    def close(self) -> None:
        """Stop the workers now: end the epoch being read, then have the DataLoader's iterator send
        its workers their stop and join them. Dropping the DataLoader is not enough: an exception
        raised while reading a batch keeps the iterator alive in its traceback (torch frames hold
        it), and with it the workers. `_shutdown_workers` is torch's own stop, the one the
        iterator's `__del__` calls; torch is pinned and tests/test_private_apis.py watches it."""
        if self._running is not None:
            self._running.close()  # GeneratorExit at its `yield`
            self._running = None
        workers, self._workers = self._workers, None
        self.loader = None
        _OPEN.discard(self)
        if workers is not None:
            workers._shutdown_workers()  # idempotent: __del__ later finds it done
