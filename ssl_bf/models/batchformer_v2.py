"""BatchFormerV2 (arXiv 2204.01254): batch-axis attention between a ViT's transformer blocks.

At every insertion point (after block i, `batchformer.insert_after`) a BatchFormer layer attends
across the batch at every token position, with the same weights at all positions: the (N, T, C)
tokens are fed to a `batch_first=False` encoder as they are, so the sequence is the batch (N) and
the T positions are the layer's batch.

Two streams, as in v1: at the first insertion the tokens become cat([x, BF(x)]) (2N rows); at later
insertions only the second half (the BatchFormer stream) passes the layer. Every other parameter
(the later blocks, the final norm, the heads) is shared by both streams. In eval nothing is
inserted, so the ViT is exactly the plain ViT. The module lives beside the backbone, never in it,
so no exported or embedded backbone contains it.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..config import BatchFormerConfig, Config, ConfigError
from .batchformer import BatchFormer
from .vit_shapes import VIT_SHAPES

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, slice]]
# how one BatchFormer layer is applied to the (N, T, C) tokens of one stream
Apply = Callable[[BatchFormer, torch.Tensor], torch.Tensor]
AfterBlock = Callable[[int, torch.Tensor], torch.Tensor]


def across_batch(bf: BatchFormer, tokens: torch.Tensor, gather: Optional[Gather] = None) -> torch.Tensor:
    """BF at every token position: (N, T, C) -> (N, T, C); sequence = batch, batch = positions.

    `gather(tokens)` (optional) returns (tokens of every rank (M, T, C), this rank's rows): the
    global scope under DDP, with gradient.
    """
    if gather is not None:
        every, rows = gather(tokens)  # (M, T, C)
        return bf.encoder(every)[rows]  # (N, T, C)
    return bf.encoder(tokens)  # (N, T, C)


def across_recomposed(bf: BatchFormer, tokens: torch.Tensor, perm: torch.Tensor, groups: int) -> torch.Tensor:
    """BF at every position over re-composed groups of the batch, rows back in their order.

    `perm` (N,) shuffles the rows, which are then cut into `groups` batches of N/G samples each.
    """
    n, t, c = tokens.shape
    grouped = tokens[perm].reshape(groups, n // groups, t, c).transpose(0, 1)  # (N/G, G, T, C)
    out = bf.encoder(grouped.reshape(n // groups, groups * t, c))  # seq = N/G, batch = G*T
    out = out.reshape(n // groups, groups, t, c).transpose(0, 1).reshape(n, t, c)  # shuffled order
    restored = torch.empty_like(out)
    restored[perm] = out
    return restored  # (N, T, C)


class BatchFormerV2(nn.Module):
    """BatchFormer layers for the insertion points after the ViT blocks `insert_after`: one layer
    shared by every point (`shared`), or one per point."""

    def __init__(self, dim: int, insert_after: Sequence[int], shared: bool = True, layers: int = 1,
                 heads: int = 4, dim_feedforward: int = 0, dropout: float = 0.5):
        super().__init__()
        if not insert_after:
            raise ValueError("BatchFormerV2 needs at least one insertion point")
        self.insert_after = tuple(sorted(set(insert_after)))
        count = 1 if shared else len(self.insert_after)
        self.layers = nn.ModuleList(BatchFormer(dim, layers, heads, dim_feedforward, dropout) for _ in range(count))
        self._slot = {block: 0 if shared else j for j, block in enumerate(self.insert_after)}

    def layer_after(self, block: int) -> Optional[BatchFormer]:
        """The BatchFormer inserted after block `block`, or None."""
        slot = self._slot.get(block)
        return None if slot is None else self.layers[slot]

    def two_streams(self, apply: Apply) -> AfterBlock:
        """The ViT's `after_block` hook for the query side: at the first point (N, T, C) becomes
        cat([x, BF(x)]) (2N, T, C); at later points the second half alone passes BF."""
        first = self.insert_after[0]

        def after_block(i: int, tokens: torch.Tensor) -> torch.Tensor:
            bf = self.layer_after(i)
            if bf is None:
                return tokens
            if i == first:
                return torch.cat([tokens, apply(bf, tokens)])  # (2N, T, C)
            n = tokens.shape[0] // 2
            return torch.cat([tokens[:n], apply(bf, tokens[n:])])  # (2N, T, C)
        return after_block

    def bf_stream(self, apply: Apply) -> AfterBlock:
        """The hook that yields the BatchFormer stream alone, (N, T, C) throughout (key side)."""

        def after_block(i: int, tokens: torch.Tensor) -> torch.Tensor:
            bf = self.layer_after(i)
            return tokens if bf is None else apply(bf, tokens)
        return after_block


def build_batchformer_v2(opts: BatchFormerConfig, vit: nn.Module) -> BatchFormerV2:
    """BatchFormerV2 for the ViT backbone `vit` (its token width) from the batchformer config."""
    if not hasattr(vit, "shape"):
        raise ValueError("batchformer.position=vit_blocks needs a ViT backbone")
    depth = vit.shape.layers
    if any(not 0 <= i < depth for i in opts.insert_after):
        raise ValueError(f"batchformer.insert_after {opts.insert_after}: the ViT has blocks 0-{depth - 1}")
    return BatchFormerV2(vit.feature_dim, opts.insert_after, opts.share_across_inserts, opts.layers, opts.heads,
                         opts.dim_feedforward, opts.dropout)


def query_side_apply(gather: Optional[Gather]) -> Apply:
    """The query streams' BatchFormer: over the batch (or, with `gather`, the global batch)."""
    return lambda bf, tokens: across_batch(bf, tokens, gather)


def key_side_apply(opts: BatchFormerConfig, n: int, gather: Optional[Gather], device: torch.device) -> Apply:
    """The key side's BatchFormer for `batchformer.key_branch` (keys of batch size `n`):
    same_batch attends over the query's batch composition (gathered like the queries');
    recomposed over shuffled groups, one shuffle for every insertion point of this forward."""
    if opts.key_branch == "same_batch":
        return query_side_apply(gather)
    if opts.key_branch == "recomposed":
        perm = torch.randperm(n, device=device)  # (N,)
        return lambda bf, tokens: across_recomposed(bf, tokens, perm, opts.recompose_groups)
    raise ValueError(f"batchformer.key_branch={opts.key_branch} has no key-side BatchFormerV2 stream")


# The key branches BatchFormerV2 (position vit_blocks) implements on the key side.
VIT_BLOCKS_KEY_BRANCHES = ("pre_only", "same_batch", "recomposed")


def check_vit_blocks(cfg: Config) -> None:
    """BatchFormerV2's settings (ConfigError): a ViT, valid distinct block indices, a width the
    heads divide, a key branch it implements."""
    bf = cfg.batchformer
    if not bf.enabled or bf.position != "vit_blocks":
        return
    if cfg.backbone.name not in VIT_SHAPES:
        raise ConfigError(f"batchformer.position=vit_blocks needs a ViT backbone, got backbone.name="
                          f"{cfg.backbone.name}; use backbone.name={' or '.join(VIT_SHAPES)}")
    shape = VIT_SHAPES[cfg.backbone.name]
    blocks = f"{cfg.backbone.name} has blocks 0-{shape.layers - 1}"
    if not bf.insert_after:
        raise ConfigError(f"batchformer.position=vit_blocks needs batchformer.insert_after, the blocks to insert "
                          f"BatchFormerV2 after, e.g. batchformer.insert_after=[{shape.layers // 2 - 1}] ({blocks})")
    if len(set(bf.insert_after)) != len(bf.insert_after) or any(not 0 <= i < shape.layers for i in bf.insert_after):
        raise ConfigError(f"batchformer.insert_after must list distinct block indices of the ViT ({blocks}), "
                          f"got {bf.insert_after}")
    if shape.dim % bf.heads:
        raise ConfigError(f"the ViT width ({shape.dim}) must be divisible by batchformer.heads ({bf.heads})")
    if bf.key_branch not in VIT_BLOCKS_KEY_BRANCHES:
        raise ConfigError(f"batchformer.key_branch={bf.key_branch} is not available with position=vit_blocks; "
                          f"choose one of {', '.join(VIT_BLOCKS_KEY_BRANCHES)}")
