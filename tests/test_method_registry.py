"""A method owns its logic: a third method plugs in from this file alone.

`SimCLRLike` (a SimCLR-style symmetric in-batch loss with no momentum encoder and no queue) is
defined and registered here, touching no other module; the config, the trainer, the checkpoint, the
resume and the evaluation encoder then work with `method: simclr_test` as with the built-in ones.
"""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bf.config import ConfigError
from ssl_bf.models.base import KeyStream, MoCoBase, OptimizerDefaults, PairTerm
from ssl_bf.models.heads import mlp
from ssl_bf.models.registry import METHODS, build_encoder, register_method, unregister_method
from ssl_bf.run_config import load_config
from ssl_bf.train.trainer import Trainer

from tiny_run import ROOT, TINY


class SimCLRLike(MoCoBase):
    """Queries and keys from the same online encoder (with gradient), in-batch NT-Xent at T."""

    name = "simclr_test"
    symmetric = True
    uses_momentum_encoder = False

    @classmethod
    def optimizer_defaults(cls, cfg) -> OptimizerDefaults:
        return OptimizerDefaults("sgd", 0.3, 1e-6, 0.0)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.batchformer.enabled:
            raise ConfigError("simclr_test has no BatchFormer wiring")

    @staticmethod
    def build_projector(cfg, feature_dim: int) -> nn.Module:
        return mlp(feature_dim, cfg.moco.hidden_dim or feature_dim, cfg.moco.dim)

    def key_streams(self, x: torch.Tensor) -> list[KeyStream]:
        return [KeyStream(F.normalize(self.projector(self.backbone(x)), dim=1).float())]  # (N, D)

    def pair_loss(self, q: torch.Tensor, key: KeyStream) -> PairTerm:
        logits = q @ key.keys.t() / self.cfg.moco.temperature  # (N, N)
        labels = torch.arange(q.shape[0], device=q.device)
        with torch.no_grad():
            sims = q @ key.keys.t()
            positive = sims.diagonal().mean()
            negative = (sims.sum() - sims.diagonal().sum()) / max(1, sims.numel() - q.shape[0])
        return PairTerm(F.cross_entropy(logits, labels), positive, negative)


@pytest.fixture
def simclr():
    register_method(SimCLRLike)
    yield SimCLRLike
    unregister_method(SimCLRLike.name)


def test_an_unknown_method_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"method: 'simclr_test' is not one of \['mocov2', 'mocov3'\]"):
        load_config(TINY, ["method=simclr_test"])


@pytest.mark.slow
def test_a_method_registered_from_a_test_file_trains_resumes_and_embeds(tmp_path, simclr):
    overrides = ["method=simclr_test", f"run.dir={tmp_path}/run", "data.subset=256", "train.epochs=2",
                 "train.log_every=1", "train.max_steps=0"]
    cfg = load_config(TINY, overrides)
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("sgd", 1e-6)  # its own defaults (tiny sets base_lr)
    with pytest.raises(ConfigError, match="no BatchFormer wiring"):  # its own checks
        load_config(TINY, [*overrides, "batchformer.enabled=true"])

    straight = Trainer(load_config(TINY, [*overrides[:1], f"run.dir={tmp_path}/straight", *overrides[2:]])).fit()
    assert not hasattr(Trainer(cfg).model, "momentum_backbone")
    first = Trainer(load_config(TINY, [*overrides[:-1], "train.max_steps=3"])).fit()
    assert first["stopped_early"] and first["step"] == 3
    resumed = Trainer(cfg).fit()
    assert resumed["step"] == straight["step"] == 8
    assert resumed["loss"] == straight["loss"]  # the resume is exact

    state = torch.load(os.path.join(cfg.run.dir, "checkpoints", "last.pt"), weights_only=True)
    encoder = build_encoder(cfg, in_channels=1, features="projection", image_size=28)
    encoder.load_state_dict({k: v for k, v in state["model"].items() if k.split(".")[0] in ("backbone", "projector")})
    assert encoder.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, cfg.moco.dim)
    assert set(METHODS) == {"mocov2", "mocov3", "simclr_test"}


def test_no_module_outside_models_branches_on_the_method():
    """`cfg.method ==` (or `.method in`) lives only in ssl_bf/models/: everything else asks the class."""
    pattern = re.compile(r"\.method\s*(==|!=|\bin\b|\bnot in\b)")
    found = []
    for folder in ("ssl_bf", "eval", "launch", "report"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            if os.path.relpath(dirpath, ROOT).startswith(os.path.join("ssl_bf", "models")):
                continue
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path) as f:
                        found += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1)
                                  if pattern.search(line)]
    assert not found, found
