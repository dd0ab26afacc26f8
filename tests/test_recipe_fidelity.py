"""Where the GPU path could silently depart from the reference recipes, checked on the CPU:
fp32 logits under autocast, MoCo-v3's zero-init residuals, the GPU presets, split BatchNorm in
channels_last."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from ssl_bf.models.backbones import build_backbone
from ssl_bf.models.losses import info_nce_in_batch, info_nce_queue
from ssl_bf.models.norm import SplitBatchNorm2d
from ssl_bf.models.registry import build_model, method_class
from ssl_bf.run_config import load_config

from tiny_run import ROOT, tiny_config

PRESETS = ("mocov2_r50_imagenet", "mocov3_r50_imagenet", "mocov3_vits_imagenet", "gpu_fmnist")


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=1)


def test_the_infonce_logits_are_float32_under_a_bf16_autocast():
    """Under autocast the matmuls would run in bf16 (8-bit mantissa: logit errors of ~1e-2 at T=0.2);
    the losses compute their logits with autocast off, so loss and logits equal the fp32 ones."""
    torch.manual_seed(0)
    q, k, queue = _unit(64, 128), _unit(64, 128), _unit(4096, 128)
    fp32_queue, fp32_logits = info_nce_queue(q, k, queue, 0.2)
    fp32_batch = info_nce_in_batch(q, k, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_queue, bf16_logits = info_nce_queue(q, k, queue, 0.2)
        bf16_batch = info_nce_in_batch(q, k, 0.2)
        unguarded = (q @ queue.t()).float() / 0.2  # (N, K): what autocast would have given
    assert bf16_logits.dtype == torch.float32 and torch.equal(bf16_logits, fp32_logits)
    assert abs(bf16_queue.item() - fp32_queue.item()) < 1e-5
    assert abs(bf16_batch.item() - fp32_batch.item()) < 1e-5
    assert (unguarded - fp32_logits[:, 1:]).abs().max() > 1e-3  # what the guard prevents is real


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_a_methods_pair_loss_is_the_fp32_loss_under_autocast(method):
    cfg = tiny_config(None, f"method={method}", "moco.dim=32")
    model = build_model(cfg, 1, 28).train()
    q = _unit(8, 32)
    x = torch.randn(8, 1, 28, 28)
    streams = model.key_streams(x)
    fp32 = model.pair_loss(q, streams[0]).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.pair_loss(q, streams[0]).loss
    assert abs(fp32.item() - bf16.item()) < 1e-5


@pytest.mark.parametrize("name,last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_mocov3_resnets_start_each_residual_branch_at_zero_and_mocov2_does_not(name, last_bn):
    v3 = build_model(load_config(None, ["method=mocov3", f"backbone.name={name}", "backbone.width=16",
                                        "moco.hidden_dim=64", "moco.pred_hidden_dim=64", "moco.dim=32"]), 3, 64)
    v2 = build_model(load_config(None, [f"backbone.name={name}", "backbone.width=16", "moco.hidden_dim=64",
                                        "moco.dim=32", "moco.queue_size=256", "train.batch_size=32"]), 3, 64)
    for model, zero in ((v3, True), (v2, False)):
        branch_bns = [m for n, m in model.backbone.named_modules() if n.endswith(last_bn) and n.startswith("layer")]
        assert branch_bns
        assert all(bool((bn.weight == 0).all()) == zero for bn in branch_bns)
        assert bool((model.backbone.bn1.weight == 1).all())  # the stem's BN is not zeroed
    assert method_class("mocov3").zero_init_residual and not method_class("mocov2").zero_init_residual


@pytest.mark.parametrize("preset", PRESETS)
def test_the_gpu_presets_ask_for_cuda_so_a_broken_install_fails_loudly(preset):
    cfg = load_config(os.path.join(ROOT, "configs", f"{preset}.yaml"))
    assert cfg.train.device == "cuda"


def test_the_mocov2_imagenet_preset_protects_a_one_gpu_run_from_the_bn_leak():
    cfg = load_config(os.path.join(ROOT, "configs", "mocov2_r50_imagenet.yaml"))
    one = method_class("mocov2").norm_plan(cfg, 1, "cuda")
    assert one.split_bn_groups == 8 and "shuffled keys" in one.description
    eight = method_class("mocov2").norm_plan(cfg, 8, "cuda")
    assert eight.split_bn_groups == 1 and "shuffle-BN" in eight.description


def test_split_batchnorm_keeps_channels_last_and_its_values():
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(8, groups=4).train()
    x = torch.randn(16, 8, 5, 5)
    plain = bn(x)
    bn2 = SplitBatchNorm2d(8, groups=4).train()
    out = bn2(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, plain, atol=1e-6)
    assert torch.allclose(bn.running_mean, bn2.running_mean) and torch.allclose(bn.running_var, bn2.running_var)
    net = build_backbone("resnet18", "small", 8, 1, split_bn_groups=4).train()
    y = net(torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert y.shape == (8, 64)
