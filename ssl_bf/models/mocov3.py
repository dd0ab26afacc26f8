"""MoCo-v3: BN projector and predictor, symmetric in-batch InfoNCE scaled by 2T, a momentum that
rises on a cosine to 1.

With BatchFormer at `projection` it sits between projector and predictor, so the predictor is the
head shared by the plain and BatchFormer streams. The keys may pass the same BatchFormer in the
same batch (`same_batch`, the default): the in-batch negatives share the positive's batch context,
so it cancels in the softmax (docs/batchformer.md)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ..config import Config
from .base import KeyStream, MoCoBase, OptimizerDefaults, PairTerm
from .heads import mlp
from .losses import float32_logits, info_nce_in_batch
from .norm import NormPlan


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """MoCo-v3 momentum: `base` at step 0, rising on a half cosine to 1 at `total_steps`."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MoCoV3(MoCoBase):
    """MoCo-v3: BN projector and predictor, symmetric in-batch InfoNCE scaled by 2T."""

    name = "mocov3"
    symmetric = True
    zero_init_residual = True  # the reference builds its ResNets with zero_init_residual=True
    default_key_branch = "same_batch"

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        super().__init__(cfg, in_channels, image_size, 1 if split_bn_groups is None else split_bn_groups)
        self.predictor = mlp(cfg.moco.dim, cfg.moco.pred_hidden_dim, cfg.moco.dim, layers=2, batch_norm=True)

    # --- the method's config and run ----------------------------------------------------
    @classmethod
    def optimizer_defaults(cls, cfg: Config) -> OptimizerDefaults:
        """The reference recipes: ResNets LARS, lr 0.6 per 256 images, wd 1e-6, 10 warmup epochs;
        ViTs AdamW, lr 1.5e-4 per 256 images, wd 0.1, 40 warmup epochs."""
        if cfg.backbone.name.startswith("vit"):
            return OptimizerDefaults("adamw", 1.5e-4, 0.1, 40.0)
        return OptimizerDefaults("lars", 0.6, 1e-6, 10.0)

    @classmethod
    def norm_plan(cls, cfg: Config, world: int, device_type: str) -> NormPlan:
        """SyncBN on CUDA under DDP; torch's SyncBatchNorm has no CPU kernel, so on CPU each
        process normalises over its own batch."""
        if world > 1 and device_type == "cuda":
            return NormPlan(1, True, f"SyncBatchNorm across {world} ranks")
        if world > 1:
            return NormPlan(1, False, f"plain BatchNorm over each process's own batch: torch's SyncBatchNorm "
                                      f"runs only on CUDA, so on {device_type} the {world} ranks do not share "
                                      f"batch statistics")
        return NormPlan(1, False, "plain BatchNorm over the whole batch (one process)")

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(step, total_steps, self.cfg.moco.momentum)

    # --- the model ------------------------------------------------------------------------
    @staticmethod
    def build_projector(cfg: Config, feature_dim: int) -> nn.Module:
        return mlp(feature_dim, cfg.moco.hidden_dim or feature_dim, cfg.moco.dim, layers=cfg.moco.proj_layers,
                   batch_norm=True, last_bn=True)

    @torch.no_grad()
    def key_streams(self, x: torch.Tensor) -> list[KeyStream]:
        """Momentum keys gathered from every rank: [plain] or [plain, BatchFormer], each (W*N, D)."""
        h_k = self.momentum_backbone(x)  # (N, F)
        z_k = self.momentum_projector(h_k)  # (N, D)
        streams = [z_k]
        if self.uses_key_bf():
            streams.append(self.key_bf_stream(h_k, z_k, x))
        return [KeyStream(dist_utils.gather_rows(F.normalize(k, dim=1).float())) for k in streams]

    def pair_loss(self, q: torch.Tensor, key: KeyStream) -> PairTerm:
        k = key.keys
        n, offset = q.shape[0], dist_utils.rank() * q.shape[0]
        with torch.no_grad(), float32_logits(q.device):
            sims = q.float() @ k.float().t()  # (N, W*N)
            positive = sims[torch.arange(n, device=q.device), torch.arange(n, device=q.device) + offset]
            negative = (sims.sum() - positive.sum()) / max(1, sims.numel() - n)
        return PairTerm(info_nce_in_batch(q, k, self.cfg.moco.temperature, offset), positive.mean(), negative)
