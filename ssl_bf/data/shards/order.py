"""The pretraining order of a shard split: a pure function of (seed, epoch), exact from any step.

One epoch, for `world` processes of B samples per batch, V streams per process, buffer K:
1. The shards (their parts inside the sample range) are permuted by (seed, epoch) and their
   samples concatenated: the epoch's sequence of N samples. Each sample appears once.
2. T = N // (world x B) steps. Process r reads positions [r T B, (r + 1) T B); the last
   N - world T B positions (fewer than one global batch: the end of the epoch's last shards in
   this permutation, so other samples each epoch) are not read this epoch.
3. Batch j of a process is batch j // V of its stream j % V. Stream v reads the next contiguous
   part of the process's range, as many samples as its batches take, through a shuffle buffer of
   K samples drawn by (seed, epoch, r, v) (`buffer_shuffle`).
4. DataLoader worker w of W (W divides V) makes the batches j >= start with (j - start) % W == w:
   every batch of the streams v with (v - start) % W == w, so a worker reads its own shards. The
   DataLoader takes one batch from each worker in turn, which gives batch start, start + 1, ...
   for any such W; a resume at step `start` reads from there without decoding what came before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARD_ORDER = 2 ** 40 + 1  # RNG tags: never a seed (< 2**32), so never a crop's (seed, epoch, g)
STREAM_ORDER = 2 ** 40 + 2


def shard_parts(offsets: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
    """[start, stop) of every shard's non-empty part inside samples [lo, hi), in shard order."""
    starts, stops = np.maximum(offsets[:-1], lo), np.minimum(offsets[1:], hi)
    return [(int(a), int(b)) for a, b in zip(starts, stops) if a < b]


def epoch_sequence(parts: list[tuple[int, int]], seed: int, epoch: int) -> np.ndarray:
    """The epoch's samples: the parts in an order drawn by (seed, epoch), concatenated. (N,) int64."""
    if not parts:
        return np.zeros(0, np.int64)
    perm = np.random.default_rng([SHARD_ORDER, seed, epoch]).permutation(len(parts))
    return np.concatenate([np.arange(*parts[p], dtype=np.int64) for p in perm])


def buffer_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of `size` gives `items`: the first `size` fill it; each further
    item takes the place of a uniformly drawn one, which is emitted; at the end the buffer is
    emptied in uniformly drawn order. size 1 keeps the order."""
    if size < 1:
        raise ValueError(f"the shuffle buffer needs at least 1 place, got {size}")
    n = len(items)
    draws = rng.random(n)  # one per emitted item
    out = np.empty(n, dtype=items.dtype)
    buf: list = []
    o = 0
    for x in items.tolist():
        if len(buf) < size:
            buf.append(x)
            continue
        k = int(draws[o] * size)
        out[o], buf[k] = buf[k], x
        o += 1
    while buf:
        k = int(draws[o] * len(buf))
        out[o] = buf[k]
        buf[k] = buf[-1]
        buf.pop()
        o += 1
    return out


def stream_batch_counts(steps: int, streams: int) -> np.ndarray:
    """Batches of each stream in an epoch of `steps`: len(range(v, steps, streams)). (V,) int64."""
    v = np.arange(streams)
    return np.maximum(0, (steps - v + streams - 1) // streams).astype(np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order for every process (see the module docstring)."""

    sequence: np.ndarray  # (N,) the split's sample numbers in the epoch's shard order
    steps: int
    batch: int
    streams: int
    seed: int
    epoch: int

    @classmethod
    def make(cls, offsets: np.ndarray, lo: int, hi: int, seed: int, epoch: int, world: int, batch: int,
             streams: int) -> "EpochPlan":
        sequence = epoch_sequence(shard_parts(offsets, lo, hi), seed, epoch)
        return cls(sequence, len(sequence) // (world * batch), batch, streams, seed, epoch)

    def stream_span(self, rank: int, v: int) -> tuple[int, int]:
        """[lo, hi) of the sequence positions that stream v of process `rank` reads."""
        counts = stream_batch_counts(self.steps, self.streams)
        lo = (rank * self.steps + int(counts[:v].sum())) * self.batch
        return lo, lo + int(counts[v]) * self.batch

    def stream_order(self, rank: int, v: int, buffer: int) -> np.ndarray:
        """The samples of stream v of process `rank`, in the order it emits them: (n_v * B,)."""
        lo, hi = self.stream_span(rank, v)
        rng = np.random.default_rng([STREAM_ORDER, self.seed, self.epoch, rank, v])
        return buffer_shuffle(self.sequence[lo:hi], buffer, rng)

    def dropped(self, world: int) -> np.ndarray:
        """The samples no process reads this epoch (fewer than one global batch)."""
        return self.sequence[world * self.steps * self.batch:]


def worker_batches(start: int, steps: int, worker: int, workers: int, streams: int) -> list[tuple[int, int, int]]:
    """(process batch j, stream v, batch of that stream) that DataLoader worker `worker` of
    `workers` makes from step `start` on, in the order it yields them."""
    return [(j, j % streams, j // streams) for j in range(start + worker, steps, workers)]


def rank_batches_order(plan: EpochPlan, rank: int, buffer: int, start: int = 0) -> np.ndarray:
    """Every batch of process `rank` from step `start`, in order: (T - start, B). (For checks and tests.)"""
    orders = {v: plan.stream_order(rank, v, buffer) for v in range(plan.streams)}
    b = plan.batch
    rows = [orders[j % plan.streams][(j // plan.streams) * b:(j // plan.streams + 1) * b]
            for j in range(start, plan.steps)]
    return np.stack(rows) if rows else np.zeros((0, b), np.int64)
