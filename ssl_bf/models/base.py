"""The base every method builds on: query streams, momentum encoder, BatchFormer plumbing and the
loss over (query stream, key stream) pairs.

A method is one subclass. It says who it is (`name`), builds its heads (`build_projector`), makes
its key streams (`key_streams`) and scores one pair (`pair_loss`); the hooks take what they need
as arguments and return what the next one needs, so no state passes between them through `self`.
It also owns the knowledge the rest of ssl-bf must not branch on: its defaults (`resolve`), its
config checks (`check_config`), its normalisation plan (`norm_plan`), what a world size must
satisfy (`check_world`), its momentum schedule (`momentum_at`) and its momentum pairs.

BatchFormer sits on the projected feature (`position=projection`, the default), on the pooled
backbone feature (`position=backbone`, the reference) or, as BatchFormerV2, between a ViT's blocks
(`position=vit_blocks`); it never gets into the momentum encoder. docs/batchformer.md explains the
wiring and the batch-context shortcut.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ..config import Config, ConfigError
from .backbones import build_backbone
from .batchformer import BatchFormer, transform_recomposed
from .batchformer_v2 import BatchFormerV2, build_batchformer_v2, check_vit_blocks, key_side_apply, query_side_apply
from .norm import NormPlan


@dataclass
class PairTerm:
    """One (query stream, key stream) loss and its mean positive / negative cosine (detached)."""

    loss: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


@dataclass
class KeyStream:
    """One key stream of a view: L2-normalised float keys (M, D) and, for a method with a queue, the
    negatives (K, D) this stream is scored against."""

    keys: torch.Tensor
    negatives: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class OptimizerDefaults:
    """A method's optimiser recipe for `train.optimizer: auto` and the null train keys."""

    optimizer: str
    base_lr: float
    weight_decay: float
    warmup_epochs: float


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


def build_config_backbone(cfg: Config, in_channels: int, image_size: int, split_bn_groups: int = 1,
                          zero_init_residual: bool = False) -> nn.Module:
    """The backbone `cfg.backbone` describes (`zero_init_residual`: ResNets' last BN of each
    residual branch starts at zero)."""
    b = cfg.backbone
    return build_backbone(b.name, b.stem, b.width, in_channels, b.stem_stride, split_bn_groups,
                          image_size, b.patch_size, b.freeze_patch_embed, zero_init_residual)


class MoCoBase(nn.Module):
    """Query encoder, momentum encoder, optional BatchFormer, and the loss over stream pairs."""

    name = ""  # the config's `method`
    symmetric = False  # both views are queries and keys
    uses_momentum_encoder = True
    default_key_branch = "pre_only"  # what batchformer.key_branch=auto becomes
    supports_context_matched = False  # key_branch=context_matched needs a queue of negatives
    zero_init_residual = False  # ResNets: start each residual branch's last BN at zero

    def __init__(self, cfg: Config, in_channels: int = 3, image_size: int = 224, split_bn_groups: int = 1):
        super().__init__()
        self.cfg = cfg
        bf = cfg.batchformer
        self.backbone = build_config_backbone(cfg, in_channels, image_size, split_bn_groups, self.zero_init_residual)
        feature_dim = self.backbone.feature_dim
        self.projector = self.build_projector(cfg, feature_dim)
        self.predictor: nn.Module = nn.Identity()  # MoCo-v3 replaces it
        self.batchformer: Optional[BatchFormer | BatchFormerV2] = None
        if bf.enabled and bf.position == "vit_blocks":
            self.batchformer = build_batchformer_v2(bf, self.backbone)
        elif bf.enabled:
            bf_dim = feature_dim if bf.position == "backbone" else cfg.moco.dim
            self.batchformer = BatchFormer(bf_dim, bf.layers, bf.heads, bf.dim_feedforward, bf.dropout)
        if self.uses_momentum_encoder:
            self.momentum_backbone = copy.deepcopy(self.backbone)
            self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)

    # --- what the method knows about its config and its run ----------------------------
    @classmethod
    def optimizer_defaults(cls, cfg: Config) -> OptimizerDefaults:
        """The optimiser recipe that `train.optimizer: auto` and null train keys take."""
        raise NotImplementedError

    @classmethod
    def key_branch_for(cls, cfg: Config) -> str:
        """What batchformer.key_branch=auto becomes for this config."""
        return cls.default_key_branch

    @classmethod
    def resolve(cls, cfg: Config) -> Config:
        """A copy of `cfg` with every `auto`/null key this method decides filled in."""
        out = copy.deepcopy(cfg)
        t, d = out.train, cls.optimizer_defaults(out)
        out.train = dataclasses.replace(
            t, optimizer=d.optimizer if t.optimizer == "auto" else t.optimizer,
            base_lr=d.base_lr if t.base_lr is None else t.base_lr,
            weight_decay=d.weight_decay if t.weight_decay is None else t.weight_decay,
            warmup_epochs=d.warmup_epochs if t.warmup_epochs is None else t.warmup_epochs)
        if out.batchformer.key_branch == "auto":
            out.batchformer.key_branch = cls.key_branch_for(out)
        return out

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Refuse (ConfigError) what this method cannot run; `cfg` is resolved and not changed."""
        check_vit_blocks(cfg)
        bf = cfg.batchformer
        if bf.enabled and bf.key_branch == "context_matched" and not cls.supports_context_matched:
            raise ConfigError(f"batchformer.key_branch=context_matched is MoCo-v2's (it treats the queue); "
                              f"{cls.name} has no queue of negatives: use same_batch or pre_only")

    @classmethod
    def norm_plan(cls, cfg: Config, world: int, device_type: str) -> NormPlan:
        """How BatchNorm meets the batch on `world` processes of `device_type`."""
        if world == 1:
            return NormPlan(1, False, "plain BatchNorm over the whole batch (one process)")
        return NormPlan(1, False, f"plain BatchNorm over each process's own batch ({world} processes)")

    @classmethod
    def check_world(cls, cfg: Config, world: int) -> None:
        """Refuse (ConfigError) a run of `world` processes this method cannot do with `cfg`."""

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The key encoder's EMA coefficient at `step` of `total_steps`."""
        return self.cfg.moco.momentum

    # --- momentum encoder -------------------------------------------------------------
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online module, its momentum copy) for every module the momentum encoder mirrors."""
        if not self.uses_momentum_encoder:
            return []
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters mirrored by the momentum encoder (same order as momentum_parameters)."""
        return [p for online, _ in self.momentum_pairs() for p in online.parameters()]

    def momentum_parameters(self) -> list[nn.Parameter]:
        return [p for _, ema in self.momentum_pairs() for p in ema.parameters()]

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """EMA of the online modules into their momentum copies; BatchFormer is not part of it."""
        ema, online = self.momentum_parameters(), self.online_parameters()
        if ema:
            torch._foreach_mul_(ema, m)
            torch._foreach_add_(ema, online, alpha=1.0 - m)

    # --- BatchFormer plumbing ---------------------------------------------------------
    def bf_gather(self):
        """The global-scope gather under DDP (batchformer.scope=global), else None."""
        if self.cfg.batchformer.scope == "global" and dist_utils.world_size() > 1:
            return dist_utils.gather_rows_with_grad
        return None

    def query_streams(self, x: torch.Tensor) -> torch.Tensor:
        """Query features before the predictor: (S*N, D) with S = 2 streams when BF is on."""
        bf = self.batchformer if (self.batchformer is not None and self.training) else None
        if isinstance(bf, BatchFormerV2):  # the two streams split inside the ViT
            return self.projector(self.backbone(x, bf.two_streams(query_side_apply(self.bf_gather()))))  # (2N, D)
        h = self.backbone(x)  # (N, F)
        if bf is not None and self.cfg.batchformer.position == "backbone":
            h2 = torch.cat([h, bf.transform(h, self.bf_gather())])  # (2N, F)
            return self.projector(h2)  # (2N, D)
        z = self.projector(h)  # (N, D)
        if bf is not None:
            z = torch.cat([z, bf.transform(z, self.bf_gather())])  # (2N, D)
        return z

    @torch.no_grad()
    def key_bf_stream(self, h_k: torch.Tensor, z_k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """BatchFormer stream of the keys with the live weights, no gradient: (N, D). `x` is the
        key view (N, C, H, W), which BatchFormerV2 needs (it acts inside the momentum ViT)."""
        bf, opts = self.batchformer, self.cfg.batchformer
        assert bf is not None
        if isinstance(bf, BatchFormerV2):
            apply = key_side_apply(opts, x.shape[0], self.bf_gather(), x.device)
            return self.momentum_projector(self.momentum_backbone(x, bf.bf_stream(apply)))  # (N, D)
        x = h_k if opts.position == "backbone" else z_k
        if opts.key_branch == "same_batch":
            out = bf.transform(x, self.bf_gather())  # same composition as the queries
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

    def key_streams(self, x: torch.Tensor) -> list[KeyStream]:
        """The key streams of view `x`: [plain] or [plain, BatchFormer]."""
        raise NotImplementedError

    def pair_loss(self, q: torch.Tensor, key: KeyStream) -> PairTerm:
        """The loss of one query stream (N, D) against one key stream."""
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
        self.momentum_update(self.cfg.moco.momentum if momentum is None else momentum)
        k = {i: self.key_streams(views[i]) for i in key_views}
        loss, plain = [], []
        for qi, ki in directions:
            terms = [self.pair_loss(qs, ks) for qs in q[qi] for ks in k[ki]]
            loss.append(torch.stack([t.loss for t in terms]).mean())
            plain.append(terms[0])
        return {"loss": sum(loss[1:], loss[0]),
                "loss_plain": sum((p.loss for p in plain[1:]), plain[0].loss).detach(),
                "pos_logit": torch.stack([p.positive for p in plain]).mean(),
                "neg_logit": torch.stack([p.negative for p in plain]).mean()}
