"""MoCo-v2 and MoCo-v3 on one small base, each with an optional BatchFormer.

Design notes: ../shared/design/batchformer.md and protocols.md. BatchFormer sits either on the
pooled backbone feature (`position=backbone`, the reference) or on the projected feature
(`position=projection`, our default). The key side never gets gradients and BatchFormer is
never part of the momentum (EMA) encoder.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils
from .backbones import build_backbone
from .batchformer import BatchFormer, transform_recomposed
from .config import Config
from .heads import mlp
from .losses import info_nce_in_batch, info_nce_queue


def build_projector(cfg: Config, feature_dim: int) -> nn.Module:
    """The method's projector MLP on top of a `feature_dim` backbone."""
    hidden = cfg.moco.hidden_dim or feature_dim
    if cfg.method == "mocov2":
        return mlp(feature_dim, hidden, cfg.moco.dim)  # 2 layers, no BN (reference)
    return mlp(feature_dim, hidden, cfg.moco.dim, layers=cfg.moco.proj_layers, batch_norm=True, last_bn=True)


class Encoder(nn.Module):
    """Backbone (+ projector): what evaluation sees. Never holds BatchFormer."""

    def __init__(self, backbone: nn.Module, projector: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        if projector is not None:
            self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)  # (N, F)
        return self.projector(h) if hasattr(self, "projector") else h


def _backbone(cfg: Config, in_channels: int, image_size: int, split_bn_groups: int = 1) -> nn.Module:
    b = cfg.backbone
    return build_backbone(b.name, b.stem, b.width, in_channels, b.stem_stride, split_bn_groups,
                          image_size, b.patch_size, b.freeze_patch_embed)


def build_encoder(cfg: Config, in_channels: int = 3, features: str = "backbone", image_size: int = 224) -> Encoder:
    """An evaluation encoder with the same parameter names as the training model."""
    backbone = _backbone(cfg, in_channels, image_size)
    if features == "backbone":
        return Encoder(backbone)
    if features == "projection":
        return Encoder(backbone, build_projector(cfg, backbone.feature_dim))
    raise ValueError(f"features must be 'backbone' or 'projection', not '{features}'")


class MoCoBase(nn.Module):
    """Query encoder, momentum encoder and the optional BatchFormer; subclasses add the loss."""

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        bf = cfg.batchformer
        if split_bn_groups is None:  # the trainer passes its NormPlan's choice
            split_bn_groups = cfg.moco.split_bn_groups if cfg.method == "mocov2" else 1
        split = split_bn_groups
        self.backbone = _backbone(cfg, in_channels, image_size, split)
        feature_dim = self.backbone.feature_dim
        self.projector = build_projector(cfg, feature_dim)
        self.batchformer: Optional[BatchFormer] = None
        if bf.enabled:
            bf_dim = feature_dim if bf.position == "backbone" else cfg.moco.dim
            self.batchformer = BatchFormer(bf_dim, bf.layers, bf.heads, bf.dim_feedforward, bf.dropout)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)

    # --- momentum encoder -------------------------------------------------------------
    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters mirrored by the momentum encoder (same order as momentum_parameters)."""
        return list(self.backbone.parameters()) + list(self.projector.parameters())

    def momentum_parameters(self) -> list[nn.Parameter]:
        return list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters())

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """EMA of the online backbone and projector; BatchFormer is not part of it."""
        ema, online = self.momentum_parameters(), self.online_parameters()
        torch._foreach_mul_(ema, m)
        torch._foreach_add_(ema, online, alpha=1.0 - m)

    # --- BatchFormer plumbing ---------------------------------------------------------
    def _bf_gather(self):
        if self.cfg.batchformer.scope == "global" and dist_utils.world_size() > 1:
            return dist_utils.gather_rows_with_grad
        return None

    def query_streams(self, x: torch.Tensor) -> torch.Tensor:
        """Query features before the predictor: (S*N, D) with S = 2 streams when BF is on."""
        h = self.backbone(x)  # (N, F)
        bf = self.batchformer if (self.batchformer is not None and self.training) else None
        if bf is not None and self.cfg.batchformer.position == "backbone":
            h2 = torch.cat([h, bf.transform(h, self._bf_gather())])  # (2N, F)
            return self.projector(h2)  # (2N, D)
        z = self.projector(h)  # (N, D)
        if bf is not None:
            z = torch.cat([z, bf.transform(z, self._bf_gather())])  # (2N, D)
        return z

    @torch.no_grad()
    def key_bf_stream(self, h_k: torch.Tensor, z_k: torch.Tensor) -> torch.Tensor:
        """BatchFormer stream of the keys with the live weights, no gradient: (N, D)."""
        bf, opts = self.batchformer, self.cfg.batchformer
        assert bf is not None
        x = h_k if opts.position == "backbone" else z_k
        if opts.key_branch == "same_batch":
            out = bf.transform(x, self._bf_gather())  # same composition as the queries
        else:
            out = transform_recomposed(bf, x, opts.recompose_groups)
        return self.momentum_projector(out) if opts.position == "backbone" else out

    def uses_key_bf(self) -> bool:
        return self.batchformer is not None and self.training \
            and self.cfg.batchformer.key_branch != "pre_only"


class MoCoV2(MoCoBase):
    """MoCo-v2: momentum key encoder, queue of negatives, InfoNCE at T (0.2)."""

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        super().__init__(cfg, in_channels, image_size, split_bn_groups)
        k, d = cfg.moco.queue_size, cfg.moco.dim
        self.register_buffer("queue", F.normalize(torch.randn(k, d), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write `keys` (B, D) at the pointer, wrapping; B must divide the queue size."""
        keys = dist_utils.gather_rows(keys)  # (B * world, D)
        b, k = keys.shape[0], self.queue.shape[0]
        if k % b:
            raise ValueError(f"queue size {k} is not a multiple of the enqueued batch {b}")
        # the pointer stays on the device: no host sync per step
        rows = (self.queue_ptr + torch.arange(b, device=self.queue.device)) % k  # (B,)
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.add_(b).remainder_(k)

    @torch.no_grad()
    def keys(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum-encoder keys with shuffled BN: (h_k (N, F), z_k (N, D)), original order."""
        if self.cfg.moco.shuffle_keys:
            x2, restore = dist_utils.shuffle_batch(x2)
        h_k = self.momentum_backbone(x2)  # (N, F)
        if self.cfg.moco.shuffle_keys:
            h_k = restore(h_k)
        return h_k, self.momentum_projector(h_k)

    @torch.no_grad()
    def key_streams(self, x2: torch.Tensor) -> list[torch.Tensor]:
        """L2-normalised key targets: [k_pre] or [k_pre, k_bf], each (N, D)."""
        h_k, z_k = self.keys(x2)
        streams = [F.normalize(z_k, dim=1).float()]
        if self.uses_key_bf():
            streams.append(F.normalize(self.key_bf_stream(h_k, z_k), dim=1).float())
        return streams

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, momentum: Optional[float] = None) -> dict:
        """Two views (N, C, H, W) -> {'loss', 'loss_plain', 'pos_logit', 'neg_logit'}.

        The loss averages InfoNCE over every (query stream, key stream) pair, so with
        BatchFormer off it is exactly the plain MoCo-v2 loss.
        """
        n = x1.shape[0]
        z_q = self.query_streams(x1)  # (S*N, D)
        q_streams = F.normalize(z_q, dim=1).float().split(n)  # 1 or 2 x (N, D)
        with torch.no_grad():
            self.momentum_update(self.cfg.moco.momentum if momentum is None else momentum)
            k_streams = self.key_streams(x2)  # 1 or 2 x (N, D)
        queue = self.queue.clone().detach()  # (K, D)
        terms = [info_nce_queue(qs, ks, queue, self.cfg.moco.temperature) for qs in q_streams for ks in k_streams]
        loss = torch.stack([t[0] for t in terms]).mean()
        self.enqueue(torch.cat(k_streams) if self.cfg.batchformer.enqueue_both else k_streams[0])
        logits = terms[0][1].detach()  # (N, 1 + K) of the plain pair
        t = self.cfg.moco.temperature
        return {"loss": loss, "loss_plain": terms[0][0].detach(),
                "pos_logit": logits[:, 0].mean() * t, "neg_logit": logits[:, 1:].mean() * t}


class MoCoV3(MoCoBase):
    """MoCo-v3: BN projector and predictor, symmetric in-batch InfoNCE scaled by 2T.

    With BatchFormer at `projection` it sits between projector and predictor, so the
    predictor is the head shared by the plain and BatchFormer streams.
    """

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        super().__init__(cfg, in_channels, image_size, split_bn_groups)
        self.predictor = mlp(cfg.moco.dim, cfg.moco.pred_hidden_dim, cfg.moco.dim, layers=2, batch_norm=True)

    @torch.no_grad()
    def key_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Momentum keys gathered from every rank: [k_pre] or [k_pre, k_bf], each (W*N, D)."""
        h_k = self.momentum_backbone(x)  # (N, F)
        z_k = self.momentum_projector(h_k)  # (N, D)
        streams = [z_k]
        if self.uses_key_bf():
            streams.append(self.key_bf_stream(h_k, z_k))
        return [dist_utils.gather_rows(F.normalize(k, dim=1).float()) for k in streams]

    def _queries(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = x.shape[0]
        z = self.query_streams(x)  # (S*N, D)
        return list(F.normalize(self.predictor(z), dim=1).float().split(n))  # S x (N, D)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, momentum: Optional[float] = None) -> dict:
        """Two views (N, C, H, W) -> {'loss', 'loss_plain', 'pos_logit'}; loss averaged over
        stream pairs, so with BatchFormer off it is exactly ctr(q1, k2) + ctr(q2, k1)."""
        n, t = x1.shape[0], self.cfg.moco.temperature
        q1, q2 = self._queries(x1), self._queries(x2)
        with torch.no_grad():
            self.momentum_update(self.cfg.moco.momentum if momentum is None else momentum)
            k1, k2 = self.key_streams(x1), self.key_streams(x2)
        offset = dist_utils.rank() * n
        pairs = [(qa, kb) for qa in q1 for kb in k2], [(qa, kb) for qa in q2 for kb in k1]
        terms = [torch.stack([info_nce_in_batch(q, k, t, offset) for q, k in side]).mean() for side in pairs]
        loss = terms[0] + terms[1]
        plain = info_nce_in_batch(q1[0], k2[0], t, offset) + info_nce_in_batch(q2[0], k1[0], t, offset)
        pos = (q1[0] * k2[0][offset:offset + n]).sum(1).mean()
        return {"loss": loss, "loss_plain": plain.detach(), "pos_logit": pos.detach()}


def build_model(cfg: Config, in_channels: int = 3, image_size: int = 224,
                split_bn_groups: Optional[int] = None) -> MoCoBase:
    """The method's model: MoCoV2 or MoCoV3 (`split_bn_groups` None: the config's rule)."""
    if cfg.method == "mocov2":
        return MoCoV2(cfg, in_channels, image_size, split_bn_groups)
    if cfg.method == "mocov3":
        return MoCoV3(cfg, in_channels, image_size, split_bn_groups)
    raise ValueError(f"unknown method '{cfg.method}'")
