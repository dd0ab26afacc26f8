"""BatchFormer: a Transformer encoder that attends across the batch axis (arXiv 2203.01522).

The batch is ONE sequence: an (N, C) feature matrix becomes (N, 1, C) for a
`batch_first=False` encoder (sequence length N, batch 1). No positional encoding, no mask.
In training the module returns the two streams `cat([x, BF(x)])` (2N rows) so that every
shared head after it sees both; in eval mode it is the identity, so inference costs nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
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


def _attend_as_extra_member(layer: nn.TransformerEncoderLayer, rows: torch.Tensor, context: torch.Tensor
                            ) -> torch.Tensor:
    """Self-attention output of each row of `rows` (M, C) as if it were one more member of the
    sequence `context` (N, C): row r attends over the N context rows and over itself. (M, C)."""
    attn = layer.self_attn
    c, h = rows.shape[1], attn.num_heads
    d = c // h
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)  # 3 x (C, C)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    q = F.linear(rows, w_q, b_q).view(-1, h, d)  # (M, H, d)
    k_self = F.linear(rows, w_k, b_k).view(-1, h, d)  # (M, H, d)
    v_self = F.linear(rows, w_v, b_v).view(-1, h, d)  # (M, H, d)
    k_ctx = F.linear(context, w_k, b_k).view(-1, h, d)  # (N, H, d)
    v_ctx = F.linear(context, w_v, b_v).view(-1, h, d)  # (N, H, d)
    scale = d ** -0.5
    logits_ctx = torch.einsum("mhd,nhd->mhn", q, k_ctx) * scale  # (M, H, N)
    logits_self = (q * k_self).sum(-1, keepdim=True) * scale  # (M, H, 1)
    weights = torch.cat([logits_ctx, logits_self], dim=-1).softmax(dim=-1)  # (M, H, N + 1)
    weights = F.dropout(weights, attn.dropout, layer.training)
    out = torch.einsum("mhn,nhd->mhd", weights[..., :-1], v_ctx) + weights[..., -1:] * v_self  # (M, H, d)
    return attn.out_proj(out.reshape(-1, c))  # (M, C)


def _layer_as_extra_member(layer: nn.TransformerEncoderLayer, rows: torch.Tensor, context: torch.Tensor
                           ) -> torch.Tensor:
    """One post-norm encoder layer applied to `rows` (M, C), each as an extra member of `context`."""
    if layer.norm_first:
        raise ValueError("context attention supports post-norm encoder layers (BatchFormer's)")
    x = layer.norm1(rows + layer.dropout1(_attend_as_extra_member(layer, rows, context)))
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
    return layer.norm2(x + layer.dropout2(ff))  # (M, C)


def transform_with_context(bf: BatchFormer, context: torch.Tensor, rows: torch.Tensor, chunk: int = 8192
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """BF over the batch `context` (N, C), and BF of every row of `rows` (M, C) as one extra member
    of that batch (it attends over the context and itself, never over the other rows).

    Returns (BF(context) (N, C), rows' outputs (M, C)). A row observes the batch without
    changing it: at every layer it attends over the context as that layer sees it, and the context
    never attends over a row. With one layer, row r's output is BF(cat([context, r]))[-1]. Rows are processed
    `chunk` at a time, so a 65,536-row queue needs (chunk x N) attention weights, not (M + N)^2.
    """
    layer_inputs = [context]  # the context as each layer sees it, one dropout draw per layer
    for layer in bf.encoder.layers:
        layer_inputs.append(layer(layer_inputs[-1].unsqueeze(1)).squeeze(1))  # (N, C)
    outs = []
    for start in range(0, rows.shape[0], chunk):
        x = rows[start:start + chunk]  # (m, C)
        for layer, ctx in zip(bf.encoder.layers, layer_inputs):
            x = _layer_as_extra_member(layer, x, ctx)
        outs.append(x)
    if bf.encoder.norm is not None:
        return bf.encoder.norm(layer_inputs[-1]), bf.encoder.norm(torch.cat(outs))
    return layer_inputs[-1], torch.cat(outs)  # (N, C), (M, C)
