"""How the image probes split each global batch over the ranks of a process group.

The rule is the trainer's: one shuffled order for the whole job (the same generator on every
rank), cut into global batches of `recipe.batch_size`, and rank r takes its contiguous part of
each batch (`ssl_bf.features.shard_bounds`; the parts differ by at most one row, so the last,
smaller batch is split too and no image is dropped or seen twice). Everything random about a
batch is drawn for the global batch on every rank (the same draws, in the same order, as one
process makes), so N processes compute what one process computes on the same global batch, up
to float rounding:
- the crop and flip parameters (`ProbeTrainTransform` in linear_images.py slices them per rank);
- the loss is the sum over a rank's rows x world / (labelled rows of the global batch), so the
  gradient average of DDP is the mean over the global batch;
- the `--bn-head` BatchNorm normalises with the global batch's mean and variance
  (`normalise_over_global_batch`, two all-reduces; the backbone is frozen, so no gradient
  needs to flow through the statistics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bf import distributed as dist_utils
from ssl_bf.knn.features import shard_bounds


@dataclass
class ShardBatch:
    """This rank's part of one global batch."""

    images: torch.Tensor  # (b, C, H, W) uint8, b may be 0
    labels: torch.Tensor  # (b,) int64 dataset labels
    rows: slice  # where these rows sit in the global batch
    global_size: int  # m, the rows of the global batch
    labelled: int  # rows of the global batch whose label the train set knows (the loss divisor)


def epoch_order(dataset, generator: torch.Generator) -> torch.Tensor:
    """The epoch's shuffled order of all N images (N,), drawn from `generator`.

    For image folders the generator also makes the draws that the shuffling DataLoader of the
    one-process probe made with it: an int64 before the permutation (its worker base seed) and a
    second, unused permutation after it (RandomSampler draws one more as its loop ends), so a
    one-process run keeps the order it always had.
    """
    if hasattr(dataset, "get_batch"):
        return torch.randperm(len(dataset), generator=generator)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(len(dataset), generator=generator)
    torch.randperm(len(dataset), generator=generator)
    return order


def shard_batches(dataset, order: torch.Tensor, batch_size: int, known: np.ndarray, num_workers: int,
                  loader_seed: int, skip: int = 0, pin_memory: bool = False) -> Iterator[ShardBatch]:
    """This rank's part of every global batch of `order`, in order, from global batch `skip` on
    (the batches before it are neither loaded nor yielded: a probe resumed mid-epoch).

    `known` (N,) bool: whether each image's label is one the train set knows (counted for the loss
    divisor on every rank, from the labels alone, without a collective). `pin_memory`: a folder's
    batches come in page-locked memory (for a CUDA device: `non_blocking` copies then overlap).
    """
    rank, world = dist_utils.rank(), dist_utils.world_size()
    parts = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]  # (m,)
        lo, hi = shard_bounds(len(batch), rank, world)
        parts.append((batch[lo:hi], slice(lo, hi), len(batch), int(known[batch.numpy()].sum())))
    parts = parts[skip:]
    loaded = _load(dataset, [p[0] for p in parts if len(p[0])], num_workers, loader_seed, pin_memory)
    for mine, rows, size, labelled in parts:
        if len(mine):
            images, labels = next(loaded)
        else:  # a last batch smaller than the world: this rank has no row of it
            images, labels = _empty_like(dataset), torch.zeros(0, dtype=torch.int64)
        yield ShardBatch(images, labels, rows, size, labelled)


def _load(dataset, batches: list[torch.Tensor], num_workers: int, loader_seed: int,
          pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(dataset, "get_batch"):  # in memory: slice whole batches
        for idx in batches:
            images, labels = dataset.get_batch(idx)
            yield images, torch.as_tensor(labels, dtype=torch.int64)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b.tolist() for b in batches],
                                         num_workers=num_workers, pin_memory=pin_memory,
                                         generator=torch.Generator().manual_seed(loader_seed))  # global RNG untouched
    for images, labels in loader:
        yield images, torch.as_tensor(labels, dtype=torch.int64)


def _empty_like(dataset) -> torch.Tensor:
    image = dataset.get_batch(torch.arange(1))[0] if hasattr(dataset, "get_batch") else dataset[0][0][None]
    return image[:0]  # (0, C, H, W)


def shard_loss(logits: torch.Tensor, target: torch.Tensor, labelled: int) -> torch.Tensor:
    """This rank's share of the global batch's mean cross-entropy, scaled by the world size so that
    DDP's gradient average gives the gradient of the global mean (targets of -1 do not count)."""
    total = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
    return total * dist_utils.world_size() / max(1, labelled)


@torch.no_grad()
def _global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean (D,) and biased variance (D,) over the rows of every rank's x (b, D), and the row count."""
    count = torch.tensor([float(x.shape[0])], device=x.device, dtype=torch.float64)
    total = x.double().sum(0)  # (D,)
    dist_utils.all_reduce_(count)
    dist_utils.all_reduce_(total)
    n = int(count.item())
    mean = total / max(1, n)
    squares = (x.double() - mean).pow(2).sum(0)  # (D,), two passes: no cancellation
    dist_utils.all_reduce_(squares)
    return mean.to(x.dtype), (squares / max(1, n)).to(x.dtype), n


def normalise_over_global_batch(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` (non-affine BatchNorm1d) with the statistics of the whole global batch.

    In training mode the running statistics are updated as BatchNorm1d updates them (momentum,
    unbiased variance); in eval mode the running statistics are used as they are.
    """
    if not norm.training:
        return norm(x)
    mean, var, n = _global_moments(x)
    with torch.no_grad():
        m = norm.momentum
        norm.running_mean.mul_(1 - m).add_(mean, alpha=m)
        norm.running_var.mul_(1 - m).add_(var * (n / max(1, n - 1)), alpha=m)
        norm.num_batches_tracked.add_(1)
    return (x - mean) / torch.sqrt(var + norm.eps)  # (b, D)


def ddp_head(fc: nn.Module, device: torch.device) -> nn.Module:
    """The trainable linear layer under DistributedDataParallel (the backbone never is)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(fc, device_ids=[device.index] if device.type == "cuda" else None)


def count_hits(hits: Sequence[int], device: torch.device) -> tuple[int, ...]:
    """Counts (top-1 hits, top-5 hits, images, then any per-class counts) summed over every rank's
    shard of the test set."""
    t = torch.tensor(hits, dtype=torch.int64, device=device)
    dist_utils.all_reduce_(t)
    return tuple(int(v) for v in t.tolist())

