"""Pretraining on shards: each DataLoader worker streams its own shards and cuts two random
resized crops per image from the whole image, as `TwoCropFolder` does for image folders.

The batch order is `order.py`'s (a function of seed and epoch, the same for any number of workers
that divides the stream count). The crop geometry of sample g is drawn from (seed, epoch, g),
exactly as `TwoCropFolder` draws it for index g: skipping samples on a resume changes no crop.
A worker opens a shard at its first sample and closes it after its last one; the sha256 check
runs once per shard and run (`VerifiedShards`). A member that does not decode stops the run
with a ShardError naming the shard and the member.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from ..crops import decode_two_crops
from .dataset import ShardImageDataset, undecodable
from .order import EpochPlan, worker_batches
from .tar_access import ShardFile


class ShardCropStream:
    """The loader set of pretraining on shards: `batches(...)` yields pairs of uint8 crop batches
    ((B, 3, S, S), (B, 3, S, S)) for one process of one epoch."""

    num_channels = 3

    def __init__(self, images: ShardImageDataset, out_size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), seed: int = 0, streams: int = 40,
                 buffer: int = 1000) -> None:
        if out_size <= 0 or streams < 1 or buffer < 1:
            raise ValueError(f"out_size, streams and buffer must be positive, got {out_size}, {streams}, {buffer}")
        self.images = images
        self.out_size = out_size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.seed, self.streams, self.buffer = seed, streams, buffer
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()  # (2,): epoch, first step

    image_size = property(lambda self: self.out_size)
    classes = property(lambda self: self.images.classes)
    mean = property(lambda self: self.images.mean)
    std = property(lambda self: self.images.std)
    name = property(lambda self: self.images.name)
    root = property(lambda self: self.images.root)

    def __len__(self) -> int:
        return len(self.images)

    def plan(self, epoch: int, world: int, batch: int) -> EpochPlan:
        im = self.images
        return EpochPlan.make(im.offsets, im.start, im.stop, self.seed, epoch, world, batch, self.streams)

    def set_position(self, epoch: int, start: int) -> None:
        """The epoch the next pass of `rank_stream` makes, from step `start` on; in shared memory, so
        DataLoader workers that are already running (`persistent_workers`) read it too."""
        self._position.copy_(torch.tensor([epoch, start]))

    def position(self) -> tuple[int, int]:
        """(epoch, first step) as last set."""
        epoch, start = self._position.tolist()
        return int(epoch), int(start)

    def rank_stream(self, rank: int, world: int, batch: int) -> "RankBatches":
        """Process `rank`'s crop batches of the epoch set last (`set_position`), for a DataLoader
        with `batch_size=None` whose worker count divides the stream count."""
        return RankBatches(self, rank, world, batch)

    def __repr__(self) -> str:
        return (f"ShardCropStream(manifest={self.root!r}, n={len(self)}, size={self.out_size}, scale={self.scale}, "
                f"seed={self.seed}, streams={self.streams}, buffer={self.buffer})")


class RankBatches(IterableDataset):
    """One process's batches of the epoch its stream is set to; each DataLoader worker makes its
    share (order.py). The epoch and first step are read when a pass starts, in the worker."""

    def __init__(self, stream: ShardCropStream, rank: int, world: int, batch: int):
        self.stream, self.rank, self.world, self.batch = stream, rank, world, batch

    def my_batches(self, epoch: int, start: int, worker: int, workers: int) -> list[np.ndarray]:
        """The sample numbers of each batch this worker makes, in order: list of (B,)."""
        s = self.stream
        plan = s.plan(epoch, self.world, self.batch)
        jobs = worker_batches(start, plan.steps, worker, workers, s.streams)
        orders = {v: plan.stream_order(self.rank, v, s.buffer) for v in sorted({v for _, v, _ in jobs})}
        b = self.batch
        return [orders[v][k * b:(k + 1) * b] for _, v, k in jobs]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = self.stream.position()  # once per pass: the epoch this pass makes
        batches = self.my_batches(epoch, start, worker, workers)
        reader = _Reader(self.stream.images, np.concatenate(batches) if batches else np.zeros(0, np.int64))
        try:
            for refs in batches:
                pairs = [self._two_crops(reader, epoch, int(g)) for g in refs]
                crops1, crops2 = default_collate(pairs)  # 2 x (B, 3, S, S); in shared memory in a worker
                yield crops1, crops2
        finally:
            reader.close()

    def _two_crops(self, reader: "_Reader", epoch: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stream
        f, name, data = reader.read(g)
        rng = np.random.default_rng([s.seed, epoch, g])  # TwoCropFolder's geometry for index g
        try:
            return decode_two_crops(io.BytesIO(data), s.out_size, s.scale, s.ratio, rng)
        except Exception as err:  # a decode boundary: any failure means a bad member
            raise undecodable(f, name, err) from None


class _Reader:
    """Reads the samples `sequence` lists, in that order: a shard is opened at its first sample
    and closed after its last one."""

    def __init__(self, images: ShardImageDataset, sequence: np.ndarray) -> None:
        self.images = images
        slots = np.searchsorted(images.offsets, sequence, side="right") - 1  # (n,)
        self.last_use = {int(slot): i for i, slot in enumerate(slots.tolist())}
        self.position = 0
        self.open: dict[int, ShardFile] = {}

    def read(self, g: int) -> tuple[ShardFile, str, bytes]:
        slot, m = self.images.locate(g)
        f = self.open.get(slot)
        if f is None:
            f = self.open[slot] = self.images.open_shard(slot)
        name, data = f.image_bytes(m)
        if self.last_use[slot] == self.position:
            self.open.pop(slot).close()
        self.position += 1
        return f, name, data

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()
