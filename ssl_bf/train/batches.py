"""The data order of pretraining: an epoch's shuffled global batches, a function of (seed, epoch)
alone, and this rank's share of them from any step on (what makes a mid-epoch resume exact)."""
from __future__ import annotations

from typing import Iterator

import torch

from .. import distributed as dist_utils


def epoch_batches(n: int, global_batch: int, epoch: int, seed: int) -> torch.Tensor:
    """The epoch's shuffled sample order as whole global batches: (steps, global_batch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    steps = n // global_batch  # drop_last: the queue needs whole batches
    return torch.randperm(n, generator=g)[: steps * global_batch].view(steps, global_batch)


def rank_batches(train_set, loader_set, epoch: int, start: int, batch_size: int, seed: int,
                 crops_in_workers: bool, num_workers: int, pin_memory: bool) -> Iterator:
    """This rank's batches of `epoch` from step `start` on: uint8 (B, C, H, W) from a tensor
    dataset, or for image folders the pair of uint8 crops ((B, 3, S, S), (B, 3, S, S)) cut in the
    DataLoader workers from `loader_set`."""
    order = epoch_batches(len(train_set), batch_size * dist_utils.world_size(), epoch, seed)
    r = dist_utils.rank()
    mine = order[start:, r * batch_size:(r + 1) * batch_size]  # (steps, B)
    if not crops_in_workers:
        for idx in mine:
            yield train_set.get_batch(idx)[0]
        return
    loader_set.set_epoch(epoch)  # the crop geometry is a function of (seed, epoch, index)
    loader = torch.utils.data.DataLoader(
        loader_set, batch_sampler=mine.tolist(), num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed + epoch))  # keeps the global RNG untouched
    for crops1, crops2, _ in loader:
        yield crops1, crops2
