"""MoCo-v2: loss, queue, key shuffle, split BN, BatchFormer-off parity and the shortcut."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ssl_bf import distributed as dist_utils
from ssl_bf.models.backbones import build_backbone
from ssl_bf.models.losses import info_nce_queue
from ssl_bf.models.registry import build_model
from ssl_bf.models.norm import SplitBatchNorm2d

from tiny_run import tiny_config


def test_info_nce_equals_hand_computation():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    t = 0.5
    loss, logits = info_nce_queue(q, k, queue, t)
    # row 0: pos 0.8, negs (0, -1, 1); row 1: pos 0.8, negs (0.8, -0.6, 0.6)
    rows = [(0.8, [0.0, -1.0, 1.0]), (0.8, [0.8, -0.6, 0.6])]
    expected = sum(-p / t + math.log(math.exp(p / t) + sum(math.exp(n / t) for n in negs)) for p, negs in rows) / 2
    assert logits.shape == (2, 4)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_queue_enqueues_rows_and_wraps():
    cfg = tiny_config(None, "moco.queue_size=256", "train.batch_size=64")
    model = build_model(cfg, in_channels=1)
    batches = [F.normalize(torch.randn(64, 32), dim=1) for _ in range(5)]
    for b in batches[:4]:
        model.enqueue(b)
    assert int(model.queue_ptr) == 0
    assert torch.equal(model.queue, torch.cat(batches[:4]))
    model.enqueue(batches[4])  # wraps: overwrites the oldest rows
    assert int(model.queue_ptr) == 64
    assert torch.equal(model.queue[:64], batches[4]) and torch.equal(model.queue[64:], torch.cat(batches[1:4]))
    with pytest.raises(ValueError, match="multiple"):
        model.enqueue(torch.randn(48, 32))


def test_shuffle_and_restore_are_inverses():
    x = torch.arange(40.0).view(20, 2)
    shuffled, restore = dist_utils.shuffle_batch(x)
    assert not torch.equal(shuffled, x)
    assert torch.equal(restore(shuffled), x)
    assert torch.equal(restore(shuffled * 3 + 1), x * 3 + 1)  # per-row outputs come back in order


def test_split_bn_state_dict_loads_into_plain_torchvision_resnet():
    net = build_backbone("resnet18", "imagenet", 64, 3, split_bn_groups=8)
    assert any(isinstance(m, SplitBatchNorm2d) for m in net.modules())
    net.train()(torch.randn(16, 3, 64, 64))  # update running stats
    state = net.state_dict()
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(state, strict=True)
    net.eval(), plain.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), plain(x), atol=1e-5)


def test_split_bn_normalises_each_contiguous_group_separately():
    bn = SplitBatchNorm2d(3, groups=2).train()
    x = torch.randn(8, 3, 4, 4)
    x[4:] = x[4:] * 5 + 7  # the second group has different statistics
    ref = torch.nn.BatchNorm2d(3).train()
    expected = torch.cat([ref(x[:4]), ref(x[4:])])
    assert torch.allclose(bn(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        bn(torch.randn(7, 3, 4, 4))


def _plain_mocov2_loss(model, x1, x2, m):
    """Textbook MoCo-v2 step from the model's parts (shuffle with the same permutation)."""
    with torch.no_grad():
        for p_k, p_q in zip(model.momentum_parameters(), model.online_parameters()):
            p_k.mul_(m).add_(p_q, alpha=1 - m)
        perm = torch.randperm(x2.shape[0])
        h = model.momentum_backbone(x2[perm])[torch.argsort(perm)]
        k = F.normalize(model.momentum_projector(h), dim=1)
    q = F.normalize(model.projector(model.backbone(x1)), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ model.queue.t()], dim=1) / model.cfg.moco.temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


@pytest.mark.parametrize("key_branch", ["pre_only", "context_matched"])
def test_batchformer_off_is_exactly_plain_mocov2(key_branch):
    cfg = tiny_config(None, f"batchformer.key_branch={key_branch}")
    model = build_model(cfg, in_channels=1).train()
    reference = build_model(cfg, in_channels=1).train()
    reference.load_state_dict(model.state_dict())
    assert "feature_queue" not in model.state_dict()  # BatchFormer off: no second queue either
    x1, x2 = torch.randn(64, 1, 28, 28), torch.randn(64, 1, 28, 28)
    torch.manual_seed(1)
    loss = model(x1, x2, momentum=0.99)["loss"]
    torch.manual_seed(1)
    expected = _plain_mocov2_loss(reference, x1, x2, 0.99)
    assert loss.item() == expected.item()


@pytest.mark.parametrize("key_branch", ["pre_only", "context_matched"])
def test_batchformer_plain_term_matches_the_baseline_and_scale_is_unchanged(key_branch):
    cfg_off = tiny_config(None, "batchformer.dropout=0")
    cfg_on = tiny_config(None, "batchformer.enabled=true", "batchformer.dropout=0", f"batchformer.key_branch={key_branch}")
    off, on = build_model(cfg_off, 1).train(), build_model(cfg_on, 1).train()
    on.load_state_dict({**on.state_dict(), **off.state_dict()})
    x1, x2 = torch.randn(64, 1, 28, 28), torch.randn(64, 1, 28, 28)
    torch.manual_seed(3)
    out_off = off(x1, x2)
    torch.manual_seed(3)
    out_on = on(x1, x2)
    assert out_on["loss_plain"].item() == pytest.approx(out_off["loss"].item(), abs=1e-6)
    assert abs(out_on["loss"].item() - out_off["loss"].item()) < 0.25 * out_off["loss"].item()
