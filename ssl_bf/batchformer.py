"""BatchFormer: a Transformer encoder that attends across the batch axis (arXiv 2203.01522).

The batch is ONE sequence: an (N, C) feature matrix becomes (N, 1, C) for a
`batch_first=False` encoder (sequence length N, batch 1). No positional encoding, no mask.
In training the module returns the two streams `cat([x, BF(x)])` (2N rows) so that every
shared head after it sees both; in eval mode it is the identity, so inference costs nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class BatchFormer(nn.Module):
    """Stack of `TransformerEncoderLayer`s over the batch axis, two-stream in training."""

    def __init__(self, dim: int, layers: int = 1, heads: int = 4, dim_feedforward: int = 0,
                 dropout: float = 0.5):
        super().__init__()
        if dim % heads:
            raise ValueError(f"BatchFormer: feature dim {dim} is not divisible by heads={heads}")
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=dim_feedforward or dim, dropout=dropout,
            activation="relu", batch_first=False, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.dim = dim

    def transform(self, x: torch.Tensor,
                  gather: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, slice]]] = None
                  ) -> torch.Tensor:
        """BF(x) alone: (N, C) -> (N, C). `gather` optionally widens the attended batch.

        `gather(x)` returns (x_all (M, C), rows) where rows selects this process's N rows of
        x_all; used for the global scope under DDP.
        """
        if gather is not None:
            x_all, rows = gather(x)  # (M, C)
            return self.encoder(x_all.unsqueeze(1)).squeeze(1)[rows]  # (N, C)
        return self.encoder(x.unsqueeze(1)).squeeze(1)  # (N, 1, C) -> (N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: (N, C) -> (2N, C) = cat([x, BF(x)]). Eval: identity."""
        if not self.training:
            return x
        return torch.cat([x, self.transform(x)], dim=0)  # (2N, C)


def recompose(x: torch.Tensor, groups: int, generator: Optional[torch.Generator] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle rows and cut them into `groups` sequences: (N, C) -> (G, N/G, C), plus the order.

    Each group is a batch of a different composition from the original one; the returned
    permutation `perm` maps group rows back: out.reshape(N, C)[inverse(perm)] restores order.
    """
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device, generator=generator)  # (N,)
    return x[perm].reshape(groups, n // groups, -1), perm


def transform_recomposed(bf: BatchFormer, x: torch.Tensor, groups: int) -> torch.Tensor:
    """BF applied to re-composed groups of the batch, rows returned in the original order."""
    grouped, perm = recompose(x, groups)  # (G, N/G, C)
    out = bf.encoder(grouped.transpose(0, 1)).transpose(0, 1)  # seq = N/G, batch = G
    out = out.reshape(x.shape[0], -1)  # (N, C) in shuffled order
    restored = torch.empty_like(out)
    restored[perm] = out
    return restored
