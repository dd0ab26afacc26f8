"""MoCo-v3: loss, momentum schedule, LARS, BatchFormer parity and trainability, ViT."""
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_bf.models.losses import info_nce_in_batch
from ssl_bf.models.registry import build_model
from ssl_bf.train.optim import LARS
from ssl_bf.models.mocov3 import cosine_momentum

from tiny_run import tiny_config

V3 = ("method=mocov3", "moco.temperature=1.0", "moco.dim=32", "moco.hidden_dim=64", "moco.pred_hidden_dim=64")


def test_in_batch_info_nce_equals_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    t = 0.5
    # row 0 logits (0.6, 0.8)/t, label 0; row 1 logits (0.8, -0.6)/t, label 1
    ce0 = -0.6 / t + math.log(math.exp(0.6 / t) + math.exp(0.8 / t))
    ce1 = 0.6 / t + math.log(math.exp(0.8 / t) + math.exp(-0.6 / t))
    assert info_nce_in_batch(q, k, t).item() == pytest.approx((ce0 + ce1) / 2 * 2 * t, rel=1e-6)
    # with an offset the positives are further down the gathered keys
    k_all = torch.cat([torch.randn(2, 2), k])
    logits = q @ k_all.t() / t
    expected = F.cross_entropy(logits, torch.tensor([2, 3])) * 2 * t
    assert info_nce_in_batch(q, k_all, t, offset=2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_momentum_schedule_start_middle_end():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.99) < cosine_momentum(75, 100, 0.99)


def test_lars_scales_matrices_by_trust_ratio_and_leaves_vectors_alone():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([0.5, 0.5])
    opt = LARS([w, b], lr=0.1, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    opt.step()
    update = torch.tensor([[0.3, 1.4]])  # g + wd * w
    trust = 0.001 * 5.0 / update.norm()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.1 * trust * update)
    assert torch.allclose(b.detach(), torch.tensor([1.0, -1.0]) - 0.1 * torch.tensor([0.5, 0.5]))


def _plain_v3_loss(model, x1, x2, m):
    with torch.no_grad():
        for p_k, p_q in zip(model.momentum_parameters(), model.online_parameters()):
            p_k.mul_(m).add_(p_q, alpha=1 - m)
        k1 = F.normalize(model.momentum_projector(model.momentum_backbone(x1)), dim=1)
        k2 = F.normalize(model.momentum_projector(model.momentum_backbone(x2)), dim=1)
    q1 = F.normalize(model.predictor(model.projector(model.backbone(x1))), dim=1)
    q2 = F.normalize(model.predictor(model.projector(model.backbone(x2))), dim=1)
    t = model.cfg.moco.temperature
    labels = torch.arange(len(q1))
    return (F.cross_entropy(q1 @ k2.t() / t, labels) + F.cross_entropy(q2 @ k1.t() / t, labels)) * 2 * t


def test_batchformer_off_is_exactly_plain_mocov3():
    cfg = tiny_config(None, *V3)
    model = build_model(cfg, 1, 28).train()
    reference = build_model(cfg, 1, 28).train()
    reference.load_state_dict(model.state_dict())
    x1, x2 = torch.randn(32, 1, 28, 28), torch.randn(32, 1, 28, 28)
    loss = model(x1, x2, momentum=0.99)["loss"]
    assert loss.item() == _plain_v3_loss(reference, x1, x2, 0.99).item()


@pytest.mark.parametrize("position", ["projection", "backbone"])
def test_batchformer_is_trainable_in_mocov3(position):
    """The reference code froze BatchFormer with the momentum encoder; ours must learn."""
    cfg = tiny_config(None, *V3, "batchformer.enabled=true", f"batchformer.position={position}")
    model = build_model(cfg, 1, 28).train()
    assert all(p.requires_grad for p in model.batchformer.parameters())
    assert not any(p.requires_grad for p in model.momentum_parameters())
    out = model(torch.randn(32, 1, 28, 28), torch.randn(32, 1, 28, 28))
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.batchformer.parameters())
    # the loss is an average over stream pairs: same scale as the baseline
    assert abs(out["loss"].item() - out["loss_plain"].item()) < 0.25 * out["loss_plain"].item()


def test_vit_patch_projection_stays_frozen():
    cfg = tiny_config(None, *V3, "backbone.name=vit_mini", "backbone.patch_size=4",
                      "backbone.freeze_patch_embed=true", "train.optimizer=adamw")
    model = build_model(cfg, 1, 28).train()
    proj = model.backbone.vit.conv_proj
    before = proj.weight.detach().clone()
    blocks_before = model.backbone.vit.encoder.layers[0].mlp[0].weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss = model(torch.randn(16, 1, 28, 28), torch.randn(16, 1, 28, 28))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(proj.weight, before) and proj.weight.grad is None
    assert not torch.equal(model.backbone.vit.encoder.layers[0].mlp[0].weight, blocks_before)
