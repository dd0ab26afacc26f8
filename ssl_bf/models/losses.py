"""Pure contrastive loss functions of tensors.

The logits are computed in float32 outside autocast, as the references do: under a bf16 autocast
`q @ queue.t()` would otherwise run in bf16 (8 bits of mantissa) whatever the inputs' dtype, and
the InfoNCE over 65536 negatives at T = 0.2 is sensitive to that rounding.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F


@contextmanager
def float32_logits(device: torch.device) -> Iterator[None]:
    """A region where autocast is off (the matmuls run in the inputs' float32)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo-v2 InfoNCE: each query's positive is its key, the negatives are the queue.

    Args:
        q: (N, D) L2-normalised queries.
        k: (N, D) L2-normalised keys (no gradient needed).
        queue: (K, D) L2-normalised negatives.
        temperature: softmax temperature T.
    Returns:
        (loss, logits): mean cross-entropy with label 0, and the (N, 1 + K) logits.
    """
    with float32_logits(q.device):
        q, k, queue = q.float(), k.float(), queue.float()
        positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        negative = q @ queue.t()  # (N, K)
        logits = torch.cat([positive, negative], dim=1) / temperature  # (N, 1 + K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels), logits


def info_nce_in_batch(q: torch.Tensor, k: torch.Tensor, temperature: float, offset: int = 0
                      ) -> torch.Tensor:
    """MoCo-v3 InfoNCE with in-batch negatives, scaled by 2T as in the reference.

    Args:
        q: (N, D) L2-normalised queries of this process.
        k: (M, D) L2-normalised keys of all processes (M >= N).
        temperature: softmax temperature T.
        offset: row of k that holds this process's first key (rank * N under DDP).
    Returns:
        Scalar loss 2T * CE(q k^T / T, diagonal).
    """
    with float32_logits(q.device):
        logits = q.float() @ k.float().t() / temperature  # (N, M)
        labels = torch.arange(q.shape[0], device=q.device) + offset  # (N,)
        return F.cross_entropy(logits, labels) * (2 * temperature)
