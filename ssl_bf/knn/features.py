"""Frozen-encoder feature extraction, sharded over the ranks of a process group when there is one.

The one extraction path of ssl-bf: `ssl-bf embed`, the linear probe's test pass and the trainer's
online k-NN monitor all call `extract_features`. Each rank embeds a contiguous shard of the wanted
images; rank 0 receives every shard in rank order, i.e. the rows in the order asked for.

A dataset that can skip unreadable images (`get_or_skip(i) -> (image, label, readable)`, image
folders) says per row whether its image was read; rows that were not are left out of the
features and the labels alike, and `Extracted.positions` / `.skipped` say which dataset positions
the rows are and which were left out, so paths stay aligned with the rows.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .. import distributed as dist_utils


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous shard of n items; sizes differ by at most one, larger first."""
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Extracted(tuple):
    """`(features (N, D) float32, labels (N,) int64)`, unpacked as a pair, plus the dataset
    positions of those rows (`positions` (N,) int64) and the positions left out because their image
    could not be read (`skipped` (M,) int64), both in the order asked for."""

    positions: torch.Tensor
    skipped: torch.Tensor

    def __new__(cls, features: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                skipped: torch.Tensor) -> "Extracted":
        pair = super().__new__(cls, (features, labels))
        pair.positions, pair.skipped = positions, skipped
        return pair


class _RowsWithReadability(torch.utils.data.Dataset):
    """`dataset[i]` as (image, label, readable): the dataset's own `get_or_skip` when it has one."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.get = getattr(dataset, "get_or_skip", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        if self.get is not None:
            return self.get(index)
        image, label = self.dataset[index]
        return image, label, True


def _batches(dataset, positions: torch.Tensor, batch_size: int, num_workers: int,
             pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 (B, C, H, W), int64 (B,), bool readable (B,)) batches of `dataset` at `positions`,
    in that order."""
    if hasattr(dataset, "get_batch"):  # in memory: slice whole batches, every row readable
        for start in range(0, len(positions), batch_size):
            images, labels = dataset.get_batch(positions[start:start + batch_size])
            yield images, torch.as_tensor(labels, dtype=torch.int64), torch.ones(len(images), dtype=torch.bool)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_RowsWithReadability(dataset), positions.tolist()), batch_size=batch_size,
        shuffle=False, num_workers=num_workers, pin_memory=pin_memory, drop_last=False, persistent_workers=False)
    for images, labels, readable in loader:
        yield images, torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(readable, dtype=torch.bool)


def _positions(dataset, indices: Optional[torch.Tensor]) -> torch.Tensor:
    """The wanted dataset positions as a 1-D int64 tensor (all of them when `indices` is None)."""
    n = len(dataset)
    if indices is None:
        return torch.arange(n, dtype=torch.int64)
    positions = torch.as_tensor(indices).reshape(-1)
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"indices must be integer dataset positions, got dtype {positions.dtype}")
    positions = positions.to(torch.int64)
    if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= n):
        raise ValueError(f"indices must lie in [0, {n}) for a dataset of {n} images, got "
                         f"[{int(positions.min())}, {int(positions.max())}]")
    return positions


@torch.no_grad()
def extract_features(model: nn.Module, dataset, transform: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, indices: Optional[torch.Tensor] = None, batch_size: int = 256,
                     num_workers: int = 0, progress: bool = True, desc: str = "embed",
                     autocast_dtype: Optional[torch.dtype] = None, gather: bool = True
                     ) -> Optional[Extracted]:
    """Features of `dataset[indices]` (all images when None) with `model` in eval mode.

    `transform` maps a uint8 batch on `device` to the model's input. Under a process group every
    rank must call this; each embeds its contiguous shard, and rank 0 returns
    `Extracted(features (N, D) float32, labels (N,) int64)` on the CPU in the order of `indices`
    while the other ranks return None. Without a process group it is returned directly. With
    `gather=False` every rank returns its own shard's rows instead (no collective at all). Rows
    whose image could not be read (a dataset with `get_or_skip` that skips them) are left out.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    positions = _positions(dataset, indices)  # (N,)
    if len(positions) == 0:
        raise ValueError(f"nothing to embed: {'the dataset is empty' if indices is None else 'indices is empty'}"
                         f" ({type(dataset).__name__} with {len(dataset)} images)")
    rank, world = dist_utils.rank(), dist_utils.world_size()
    lo, hi = shard_bounds(len(positions), rank, world)
    mine = positions[lo:hi]  # this rank's shard, (n_r,)
    use_amp = autocast_dtype is not None and device.type == "cuda"
    amp = torch.autocast(device.type, dtype=autocast_dtype) if use_amp else contextlib.nullcontext()

    was_training = model.training
    model.eval()
    feats, labels, kept = [], [], []
    try:
        with tqdm(total=len(mine), desc=desc, unit="img", disable=not progress or rank != 0) as bar:
            for images, y, readable in _batches(dataset, mine, batch_size, num_workers, device.type == "cuda"):
                x = transform(images.to(device, non_blocking=True))  # (B, C, S, S) float
                with amp:
                    f = model(x)  # (B, D)
                feats.append(f.float().cpu()[readable])  # (b, D): the rows whose image was read
                labels.append(y.cpu()[readable])
                kept.append(readable)
                bar.update(len(y))
    finally:
        model.train(was_training)
    read = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.bool)  # (n_r,)
    mine_kept, mine_skipped = mine[read], mine[~read]  # dataset positions of this rank's rows
    y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)  # (n_r,)
    if feats:
        x_all = torch.cat(feats)  # (n_r, D)
    else:  # an empty shard (fewer images than ranks): learn D from the others
        x_all = None
    if x_all is None and not gather:  # an empty shard: D from a forward of one image
        images, _, _ = next(_batches(dataset, positions[:1], 1, 0, False))
        with torch.no_grad(), amp:
            x_all = model.eval()(transform(images.to(device))).float().cpu()[:0]
        model.train(was_training)
    if not dist_utils.is_initialized() or not gather:
        return Extracted(x_all, y_all, mine_kept, mine_skipped)
    if len(positions) < world:  # some shard is empty: agree on D (the same on every rank)
        dim = torch.tensor([x_all.shape[1] if x_all is not None else 0], dtype=torch.int64, device=device)
        dist_utils.all_reduce_(dim, op="max")
        if x_all is None:
            x_all = torch.zeros(0, int(dim.item()), dtype=torch.float32)
    x_main = dist_utils.gather_shards_to_main(x_all, device)  # (N, D) on rank 0, else None
    y_main = dist_utils.gather_shards_to_main(y_all, device)  # (N,) on rank 0, else None
    kept_main = dist_utils.gather_shards_to_main(mine_kept, device)  # (N,) positions of the rows
    skipped_main = dist_utils.gather_shards_to_main(mine_skipped, device)  # (M,) left out
    if x_main is None:
        return None
    return Extracted(x_main.float(), y_main.to(torch.int64), kept_main, skipped_main)
