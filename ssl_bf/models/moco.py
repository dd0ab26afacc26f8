"""MoCo-v2 and MoCo-v3 on one base, each with an optional BatchFormer.

The base owns the query streams (plain, and BatchFormer's when it is on), the momentum update and
the loss: the mean over every (query stream, key stream) pair, summed over the view directions.
A method supplies only its key streams (`key_streams`) and its pairwise loss term (`pair_loss`).
BatchFormer sits on the projected feature (`position=projection`, the default), on the pooled
backbone feature (`position=backbone`, the reference) or, as BatchFormerV2, between a ViT's blocks
(`position=vit_blocks`); it never gets into the momentum encoder.
docs/batchformer.md explains the wiring and the batch-context shortcut.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from .backbones import build_backbone
from .batchformer import BatchFormer, transform_recomposed, transform_with_context
from .batchformer_v2 import BatchFormerV2, build_batchformer_v2, key_side_apply, query_side_apply
from ..config import Config
from .heads import mlp
from .losses import info_nce_in_batch, info_nce_queue


@dataclass
class PairTerm:
    """One (query stream, key stream) loss and its mean positive / negative cosine (detached)."""

    loss: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


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
        return Encoder(backbone, MODELS[cfg.method].build_projector(cfg, backbone.feature_dim))
    raise ValueError(f"features must be 'backbone' or 'projection', not '{features}'")


class MoCoBase(nn.Module):
    """Query encoder, momentum encoder, optional BatchFormer, and the loss over stream pairs.

    Subclasses set `symmetric` (both views are queries and keys) and implement `build_projector`,
    `key_streams` and `pair_loss`.
    """

    symmetric = False

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224, split_bn_groups: int = 1):
        super().__init__()
        self.cfg = cfg
        bf = cfg.batchformer
        self.backbone = _backbone(cfg, in_channels, image_size, split_bn_groups)
        feature_dim = self.backbone.feature_dim
        self.projector = self.build_projector(cfg, feature_dim)
        self.predictor: nn.Module = nn.Identity()  # MoCo-v3 replaces it
        self.batchformer: Optional[BatchFormer | BatchFormerV2] = None
        if bf.enabled and bf.position == "vit_blocks":
            self.batchformer = build_batchformer_v2(bf, self.backbone)
        elif bf.enabled:
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
        bf = self.batchformer if (self.batchformer is not None and self.training) else None
        if isinstance(bf, BatchFormerV2):  # the two streams split inside the ViT
            return self.projector(self.backbone(x, bf.two_streams(query_side_apply(self._bf_gather()))))  # (2N, D)
        h = self.backbone(x)  # (N, F)
        if bf is not None and self.cfg.batchformer.position == "backbone":
            h2 = torch.cat([h, bf.transform(h, self._bf_gather())])  # (2N, F)
            return self.projector(h2)  # (2N, D)
        z = self.projector(h)  # (N, D)
        if bf is not None:
            z = torch.cat([z, bf.transform(z, self._bf_gather())])  # (2N, D)
        return z

    @torch.no_grad()
    def key_bf_stream(self, h_k: torch.Tensor, z_k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """BatchFormer stream of the keys with the live weights, no gradient: (N, D). `x` is the
        key view (N, C, H, W), which BatchFormerV2 needs (it acts inside the momentum ViT)."""
        bf, opts = self.batchformer, self.cfg.batchformer
        assert bf is not None
        if isinstance(bf, BatchFormerV2):
            apply = key_side_apply(opts, x.shape[0], self._bf_gather(), x.device)
            return self.momentum_projector(self.momentum_backbone(x, bf.bf_stream(apply)))  # (N, D)
        x = h_k if opts.position == "backbone" else z_k
        if opts.key_branch == "same_batch":
            out = bf.transform(x, self._bf_gather())  # same composition as the queries
        else:
            out = transform_recomposed(bf, x, opts.recompose_groups)
        return self.momentum_projector(out) if opts.position == "backbone" else out

    def uses_key_bf(self) -> bool:
        return self.batchformer is not None and self.training \
            and self.cfg.batchformer.key_branch != "pre_only"

    # --- the method's hooks -----------------------------------------------------------
    @staticmethod
    def build_projector(cfg: Config, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def key_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """L2-normalised float key streams of view `x`: [k_pre] or [k_pre, k_bf]."""
        raise NotImplementedError

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, key_stream: int = 0) -> PairTerm:
        """The loss of one query stream (N, D) against key stream number `key_stream` (0: plain)."""
        raise NotImplementedError

    # --- the step -----------------------------------------------------------------------
    def queries(self, x: torch.Tensor) -> list[torch.Tensor]:
        """L2-normalised float query streams of view `x` after the predictor: S x (N, D)."""
        n = x.shape[0]
        return list(F.normalize(self.predictor(self.query_streams(x)), dim=1).float().split(n))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, momentum: Optional[float] = None) -> dict:
        """Two views (N, C, H, W) -> {'loss', 'loss_plain', 'pos_logit', 'neg_logit'} (device tensors).

        Per direction (query view, key view) the loss is the mean over every (query stream, key
        stream) pair; directions are summed (MoCo-v3's symmetric loss). With BatchFormer off this is
        exactly the plain method's loss. `loss_plain` is the plain pair's share, not recomputed.
        """
        views = (x1, x2)
        directions = ((0, 1), (1, 0)) if self.symmetric else ((0, 1),)
        query_views = sorted({qi for qi, _ in directions})
        key_views = sorted({ki for _, ki in directions})
        q = {i: self.queries(views[i]) for i in query_views}
        with torch.no_grad():
            self.momentum_update(self.cfg.moco.momentum if momentum is None else momentum)
            k = {i: self.key_streams(views[i]) for i in key_views}
        loss, plain = [], []
        for qi, ki in directions:
            terms = [self.pair_loss(qs, ks, s) for qs in q[qi] for s, ks in enumerate(k[ki])]
            loss.append(torch.stack([t.loss for t in terms]).mean())
            plain.append(terms[0])
        t = self.cfg.moco.temperature
        return {"loss": sum(loss[1:], loss[0]),
                "loss_plain": sum((p.loss for p in plain[1:]), plain[0].loss).detach(),
                "pos_logit": torch.stack([p.positive for p in plain]).mean(),
                "neg_logit": torch.stack([p.negative for p in plain]).mean()}


class MoCoV2(MoCoBase):
    """MoCo-v2: momentum key encoder with shuffle-BN, a queue of negatives, InfoNCE at T."""

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        groups = cfg.moco.split_bn_groups if split_bn_groups is None else split_bn_groups
        super().__init__(cfg, in_channels, image_size, groups)
        k, d = cfg.moco.queue_size, cfg.moco.dim
        self.register_buffer("queue", F.normalize(torch.randn(k, d), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if self._context_matched():  # the queued keys before L2 norm: what BatchFormer takes as input
            self.register_buffer("feature_queue", self.queue.clone())  # (K, D)
        self._negatives: list[torch.Tensor] = []  # per key stream, this step's (K, D) negatives

    def _context_matched(self) -> bool:
        return self.cfg.batchformer.enabled and self.cfg.batchformer.key_branch == "context_matched"

    @staticmethod
    def build_projector(cfg: Config, feature_dim: int) -> nn.Module:
        return mlp(feature_dim, cfg.moco.hidden_dim or feature_dim, cfg.moco.dim)  # 2 layers, no BN

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, features: Optional[torch.Tensor] = None) -> None:
        """Write `keys` (B, D) at the pointer, wrapping; B must divide the queue size. `features`
        (B, D), the same keys before L2 norm, go to `feature_queue` at the same rows."""
        keys = dist_utils.gather_rows(keys)  # (B * world, D)
        b, k = keys.shape[0], self.queue.shape[0]
        if k % b:
            raise ValueError(f"queue size {k} is not a multiple of the enqueued batch {b}")
        # the pointer stays on the device: no host sync per step
        rows = (self.queue_ptr + torch.arange(b, device=self.queue.device)) % k  # (B,)
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        if features is not None:
            self.feature_queue.index_copy_(0, rows, dist_utils.gather_rows(features).to(self.feature_queue.dtype))
        self.queue_ptr.add_(b).remainder_(k)

    @torch.no_grad()
    def momentum_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum-encoder keys with shuffled BN: (h_k (N, F), z_k (N, D)), original order."""
        if self.cfg.moco.shuffle_keys:
            x, restore = dist_utils.shuffle_batch(x)
        h_k = self.momentum_backbone(x)  # (N, F)
        if self.cfg.moco.shuffle_keys:
            h_k = restore(h_k)
        return h_k, self.momentum_projector(h_k)

    @torch.no_grad()
    def key_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[k_pre] or [k_pre, k_bf], each (N, D). This step's negatives are the queue as it was
        before these keys enter it (the reference enqueues after the loss)."""
        h_k, z_k = self.momentum_keys(x)
        streams = [F.normalize(z_k, dim=1).float()]
        negatives = self.queue.clone()  # (K, D): the in-place enqueue must not reach autograd
        self._negatives = [negatives]
        if self.uses_key_bf() and self._context_matched():
            bf_keys, bf_negatives = self.context_matched_keys(z_k)  # (N, D), (K, D)
            streams.append(F.normalize(bf_keys, dim=1).float())
            self._negatives.append(F.normalize(bf_negatives, dim=1).float())
        elif self.uses_key_bf():
            streams.append(F.normalize(self.key_bf_stream(h_k, z_k, x), dim=1).float())
            self._negatives.append(negatives)
        if self._context_matched():
            self.enqueue(streams[0], z_k)
        else:
            self.enqueue(torch.cat(streams) if self.cfg.batchformer.enqueue_both else streams[0])
        return streams

    @torch.no_grad()
    def context_matched_keys(self, z_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`context_matched`: the BatchFormer key stream and its own negatives, both in this batch's
        context. Keys pass BatchFormer as a batch (N, D); every queued key passes it as one extra
        member of that same batch, with the same live weights (K, D). Positive and negatives then
        carry the same batch context, so it cancels in the softmax, as MoCo-v3's in-batch
        negatives do (docs/batchformer.md)."""
        context = z_k
        gather = self._bf_gather()
        rows = slice(None)
        if gather is not None:
            context, rows = gather(z_k)  # (M, D), this rank's rows
        bf_context, bf_queue = transform_with_context(self.batchformer, context, self.feature_queue)
        return bf_context[rows], bf_queue

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, key_stream: int = 0) -> PairTerm:
        t = self.cfg.moco.temperature
        loss, logits = info_nce_queue(q, k, self._negatives[key_stream], t)  # logits (N, 1 + K)
        logits = logits.detach()
        return PairTerm(loss, logits[:, 0].mean() * t, logits[:, 1:].mean() * t)


class MoCoV3(MoCoBase):
    """MoCo-v3: BN projector and predictor, symmetric in-batch InfoNCE scaled by 2T.

    With BatchFormer at `projection` it sits between projector and predictor, so the
    predictor is the head shared by the plain and BatchFormer streams.
    """

    symmetric = True

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        super().__init__(cfg, in_channels, image_size, 1 if split_bn_groups is None else split_bn_groups)
        self.predictor = mlp(cfg.moco.dim, cfg.moco.pred_hidden_dim, cfg.moco.dim, layers=2, batch_norm=True)

    @staticmethod
    def build_projector(cfg: Config, feature_dim: int) -> nn.Module:
        return mlp(feature_dim, cfg.moco.hidden_dim or feature_dim, cfg.moco.dim, layers=cfg.moco.proj_layers,
                   batch_norm=True, last_bn=True)

    @torch.no_grad()
    def key_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Momentum keys gathered from every rank: [k_pre] or [k_pre, k_bf], each (W*N, D)."""
        h_k = self.momentum_backbone(x)  # (N, F)
        z_k = self.momentum_projector(h_k)  # (N, D)
        streams = [z_k]
        if self.uses_key_bf():
            streams.append(self.key_bf_stream(h_k, z_k, x))
        return [dist_utils.gather_rows(F.normalize(k, dim=1).float()) for k in streams]

    def pair_loss(self, q: torch.Tensor, k: torch.Tensor, key_stream: int = 0) -> PairTerm:
        n, offset = q.shape[0], dist_utils.rank() * q.shape[0]
        with torch.no_grad():
            sims = q @ k.t()  # (N, W*N)
            positive = sims[torch.arange(n, device=q.device), torch.arange(n, device=q.device) + offset]
            negative = (sims.sum() - positive.sum()) / max(1, sims.numel() - n)
        return PairTerm(info_nce_in_batch(q, k, self.cfg.moco.temperature, offset), positive.mean(), negative)


MODELS: dict[str, type[MoCoBase]] = {"mocov2": MoCoV2, "mocov3": MoCoV3}


def build_model(cfg: Config, in_channels: int = 3, image_size: int = 224,
                split_bn_groups: Optional[int] = None) -> MoCoBase:
    """The method's model (`split_bn_groups` None: MoCo-v2 takes the config's, MoCo-v3 none)."""
    if cfg.method not in MODELS:
        raise ValueError(f"unknown method '{cfg.method}'; choose {', '.join(MODELS)}")
    return MODELS[cfg.method](cfg, in_channels, image_size, split_bn_groups)
