"""MoCo-v2: a momentum key encoder with shuffle-BN, a queue of negatives, InfoNCE at T.

With BatchFormer, MoCo-v2's leak-free key side is `context_matched`: the BatchFormer key stream
and every queued negative it is scored against pass BatchFormer in the same batch context
(docs/batchformer.md)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ..config import Config, ConfigError
from .base import KeyStream, MoCoBase, OptimizerDefaults, PairTerm
from .batchformer import transform_with_context
from .heads import mlp
from .losses import info_nce_queue
from .norm import NormPlan


class MoCoV2(MoCoBase):
    """MoCo-v2: momentum key encoder with shuffle-BN, a queue of negatives, InfoNCE at T."""

    name = "mocov2"
    default_key_branch = "context_matched"
    supports_context_matched = True

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224,
                 split_bn_groups: Optional[int] = None):
        groups = cfg.moco.split_bn_groups if split_bn_groups is None else split_bn_groups
        super().__init__(cfg, in_channels, image_size, groups)
        k, d = cfg.moco.queue_size, cfg.moco.dim
        self.register_buffer("queue", F.normalize(torch.randn(k, d), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if self._context_matched():  # the queued keys before L2 norm: what BatchFormer takes as input
            self.register_buffer("feature_queue", self.queue.clone())  # (K, D)

    # --- the method's config and run ----------------------------------------------------
    @classmethod
    def optimizer_defaults(cls, cfg: Config) -> OptimizerDefaults:
        """The reference recipe: SGD, lr 0.03 per 256 images, wd 1e-4, no warmup."""
        return OptimizerDefaults("sgd", 0.03, 1e-4, 0.0)

    @classmethod
    def key_branch_for(cls, cfg: Config) -> str:
        """context_matched where it applies (the queue holds projected keys), else pre_only."""
        bf = cfg.batchformer
        return "context_matched" if bf.position == "projection" and not bf.enqueue_both else "pre_only"

    @classmethod
    def resolve(cls, cfg: Config) -> Config:
        out = super().resolve(cfg)
        if out.backbone.name.startswith("vit") and out.moco.split_bn_groups > 1:
            out.moco.split_bn_groups = 1  # a ViT has no BatchNorm to split
        return out

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        super().check_config(cfg)
        bf, moco, batch = cfg.batchformer, cfg.moco, cfg.train.batch_size
        if bf.enabled and bf.key_branch == "context_matched":
            if bf.position != "projection":
                raise ConfigError("batchformer.key_branch=context_matched needs batchformer.position=projection "
                                  "(the queue holds projected keys, so only they can pass BatchFormer)")
            if bf.enqueue_both:
                raise ConfigError("batchformer.enqueue_both does not combine with key_branch=context_matched "
                                  "(its queue holds plain keys; BatchFormer is applied to them at every step)")
        if bf.enabled and bf.enqueue_both and bf.key_branch != "pre_only" and moco.queue_size % (2 * batch):
            raise ConfigError("with batchformer.enqueue_both, moco.queue_size must be a multiple of 2 x train.batch_size")
        if moco.queue_size % batch:
            raise ConfigError(f"moco.queue_size ({moco.queue_size}) must be a multiple of train.batch_size "
                              f"({batch}) so that whole batches are enqueued")
        if moco.split_bn_groups > 1 and batch % moco.split_bn_groups:
            raise ConfigError(f"train.batch_size ({batch}) must be divisible by moco.split_bn_groups "
                              f"({moco.split_bn_groups})")

    @classmethod
    def check_world(cls, cfg: Config, world: int) -> None:
        bf = cfg.batchformer
        streams = 2 if bf.enabled and bf.enqueue_both and bf.key_branch != "pre_only" else 1
        enqueued = cfg.train.batch_size * world * streams
        if cfg.moco.queue_size % enqueued:
            raise ConfigError(f"moco.queue_size ({cfg.moco.queue_size}) must be a multiple of the keys enqueued "
                              f"per step ({enqueued} = batch x processes x key streams)")

    @classmethod
    def norm_plan(cls, cfg: Config, world: int, device_type: str) -> NormPlan:
        """One process: split BN with shuffled keys; several: shuffle-BN across ranks with plain BN
        (the preset's split groups are ignored)."""
        groups, shuffled = cfg.moco.split_bn_groups, cfg.moco.shuffle_keys
        if world == 1:
            if groups > 1:
                keys = "shuffled keys" if shuffled else "UNshuffled keys (moco.shuffle_keys=false)"
                return NormPlan(groups, False, f"split BatchNorm ({groups} groups) with {keys} (one process)")
            return NormPlan(1, False, "plain BatchNorm over the whole batch (moco.split_bn_groups=1, "
                                      "one process: no shuffle-BN protection)")
        ignored = f"; moco.split_bn_groups={groups} is ignored" if groups > 1 else ""
        keys = "shuffle-BN: keys shuffled across" if shuffled else "keys NOT shuffled across"
        return NormPlan(1, False, f"plain BatchNorm per process, {keys} {world} ranks{ignored}")

    # --- the model ------------------------------------------------------------------------
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
    def key_streams(self, x: torch.Tensor) -> list[KeyStream]:
        """[plain] or [plain, BatchFormer], keys (N, D) each with the negatives it is scored
        against: the queue as it was before these keys enter it (the reference enqueues after the
        loss)."""
        h_k, z_k = self.momentum_keys(x)
        plain = F.normalize(z_k, dim=1).float()  # (N, D)
        negatives = self.queue.clone()  # (K, D): the in-place enqueue must not reach autograd
        streams = [KeyStream(plain, negatives)]
        if self.uses_key_bf() and self._context_matched():
            bf_keys, bf_negatives = self.context_matched_keys(z_k)  # (N, D), (K, D)
            streams.append(KeyStream(F.normalize(bf_keys, dim=1).float(), F.normalize(bf_negatives, dim=1).float()))
        elif self.uses_key_bf():
            streams.append(KeyStream(F.normalize(self.key_bf_stream(h_k, z_k, x), dim=1).float(), negatives))
        if self._context_matched():
            self.enqueue(plain, z_k)
        else:
            both = self.cfg.batchformer.enqueue_both and len(streams) == 2
            self.enqueue(torch.cat([s.keys for s in streams]) if both else plain)
        return streams

    @torch.no_grad()
    def context_matched_keys(self, z_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`context_matched`: the BatchFormer key stream and its own negatives, both in this batch's
        context. Keys pass BatchFormer as a batch (N, D); every queued key passes it as one extra
        member of that same batch, with the same live weights (K, D). Positive and negatives then
        carry the same batch context, so it cancels in the softmax, as MoCo-v3's in-batch
        negatives do (docs/batchformer.md)."""
        context = z_k
        gather = self.bf_gather()
        rows = slice(None)
        if gather is not None:
            context, rows = gather(z_k)  # (M, D), this rank's rows
        bf_context, bf_queue = transform_with_context(self.batchformer, context, self.feature_queue)
        return bf_context[rows], bf_queue

    def pair_loss(self, q: torch.Tensor, key: KeyStream) -> PairTerm:
        t = self.cfg.moco.temperature
        loss, logits = info_nce_queue(q, key.keys, key.negatives, t)  # logits (N, 1 + K)
        logits = logits.detach()
        return PairTerm(loss, logits[:, 0].mean() * t, logits[:, 1:].mean() * t)
