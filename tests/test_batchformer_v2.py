"""BatchFormerV2 (batchformer.position=vit_blocks): batch attention between a real ViT's blocks."""
import copy

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from ssl_bf.models.backbones import ViTBackbone
from ssl_bf.models.batchformer import BatchFormer
from ssl_bf.models.batchformer_v2 import BatchFormerV2, across_batch, across_recomposed
from ssl_bf.checkpoints.checkpoint import backbone_state_dict
from ssl_bf.config import ConfigError
from ssl_bf.models.registry import build_encoder, build_model

from tiny_run import tiny_config

# a real ViT-tiny (6 blocks, 192 wide) on 28 px images in 7 px patches: 16 patches + the class token
VIT = ("backbone.name=vit_mini", "backbone.patch_size=7")
V3 = ("method=mocov3", "moco.dim=32", "moco.hidden_dim=64", "moco.pred_hidden_dim=64")


def _v2(*extra: str, method: tuple = V3, inserts: str = "[2]"):
    return tiny_config(None, *method, *VIT, "batchformer.enabled=true", "batchformer.position=vit_blocks",
                       f"batchformer.insert_after={inserts}", *extra)


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _block_outputs(vit_backbone: ViTBackbone, run) -> list[torch.Tensor]:
    """Each block's output tokens while `run()` executes, via forward hooks on the blocks."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
               for b in vit_backbone.vit.encoder.layers]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_block_by_block_forward_is_torchvisions_and_keeps_its_keys():
    torch.manual_seed(0)
    backbone = ViTBackbone("vit_mini", 28, 7, in_channels=1).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(backbone(x), backbone.vit(x))  # torchvision's own forward
    reference = VisionTransformer(28, 7, 6, 3, 192, 768)
    assert {k for k in backbone.state_dict()} == {f"vit.{k}" for k in reference.state_dict() if not k.startswith("heads")}


def test_across_batch_is_v1_batchformer_at_every_token_position():
    """Sequence = batch, batch = positions: position t's output is BatchFormer v1 on tokens[:, t]."""
    torch.manual_seed(0)
    bf = BatchFormer(16, dropout=0.0).train()
    tokens = torch.randn(12, 5, 16)  # (N, T, C)
    out = across_batch(bf, tokens)
    for t in range(5):
        assert torch.allclose(out[:, t], bf.transform(tokens[:, t]), atol=1e-5), t
    perm = torch.randperm(12)
    assert torch.allclose(across_batch(bf, tokens[perm]), out[perm], atol=1e-5)  # equivariant over the batch
    changed = tokens.clone()
    changed[0] += 3.0
    assert ((across_batch(bf, changed)[1:] - out[1:]).abs().amax(dim=(1, 2)) > 1e-4).all()  # batch is context
    # re-composition into one group is only a permutation; into three it attends within groups
    assert torch.allclose(across_recomposed(bf, tokens, perm, groups=1), out, atol=1e-5)
    grouped = across_recomposed(bf, tokens, perm, groups=3)
    first = perm[:4]  # the first group's rows
    assert torch.allclose(grouped[first], across_batch(bf, tokens[first]), atol=1e-5)


@pytest.mark.parametrize("method", [V3, ()], ids=["mocov3", "mocov2"])
def test_off_and_eval_are_exactly_the_plain_vit(method):
    """BatchFormer off, or the model in eval, or the exported backbone: the plain ViT, bit for bit."""
    torch.manual_seed(0)
    model = build_model(_v2(method=method, inserts="[1,3]"), 1, 28)
    x = _images()
    model.train()
    model(x, x.flip(-1))["loss"].backward()  # one step's worth of graph so nothing is at init only
    model.eval()
    with torch.no_grad():
        with_bf = model.query_streams(x)
        plain_vit = model.projector(model.backbone.vit(x))  # torchvision's forward, no hook at all
    assert torch.equal(with_bf, plain_vit)
    encoder = build_encoder(model.cfg, in_channels=1, features="projection", image_size=28).eval()
    encoder.backbone.load_state_dict(backbone_state_dict(model.state_dict()), strict=True)
    encoder.projector.load_state_dict(model.projector.state_dict())
    with torch.no_grad():
        assert torch.equal(encoder(x), with_bf)
    assert not any("batchformer" in k for k in encoder.state_dict())
    off = build_model(tiny_config(None, *method, *VIT), 1, 28)
    off.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("batchformer.")})
    off.train()
    model.train()
    with torch.no_grad():
        model.batchformer, saved = None, model.batchformer
        assert torch.equal(off.query_streams(x), model.query_streams(x))  # training, BatchFormer off
        model.batchformer = saved


@pytest.mark.parametrize("inserts,shared", [("[2]", "true"), ("[1,3]", "false"), ("[1,3]", "true")])
def test_the_batchformer_stream_departs_only_after_the_first_insertion(inserts, shared):
    """Hooks on the blocks: up to the first insertion the tokens are the plain ViT's (N rows);
    after it there are 2N rows, the first half still the plain ViT's, the second half different."""
    cfg = _v2("batchformer.dropout=0", f"batchformer.share_across_inserts={shared}", inserts=inserts)
    torch.manual_seed(0)
    model = build_model(cfg, 1, 28).train()
    first = cfg.batchformer.insert_after[0]
    assert len(model.batchformer.layers) == (1 if shared == "true" else len(cfg.batchformer.insert_after))
    x = _images()
    with torch.no_grad():
        plain = _block_outputs(model.backbone, lambda: model.backbone(x))
        streams = _block_outputs(model.backbone, lambda: model.query_streams(x))
    for i, (p, s) in enumerate(zip(plain, streams)):
        if i <= first:
            assert torch.equal(s, p), i
        else:
            assert s.shape[0] == 2 * p.shape[0], i
            assert torch.allclose(s[:16], p, atol=1e-5), i  # the plain stream is untouched
            assert (s[16:] - p).abs().amax() > 1e-2, i  # the BatchFormer stream is not


def test_the_key_sides_batchformer_stream_is_the_query_sides_second_stream():
    """Two implementations of the BatchFormer stream: the 2N-row query hook's second half and the
    N-row key-side hook (the same weights, no dropout) agree."""
    torch.manual_seed(0)
    model = build_model(_v2("batchformer.dropout=0", "batchformer.share_across_inserts=false", inserts="[0,2,4]"),
                        1, 28).train()
    bf, x = model.batchformer, _images()
    apply = lambda layer, tokens: across_batch(layer, tokens)  # noqa: E731
    with torch.no_grad():
        both = model.backbone(x, bf.two_streams(apply))  # (2N, D)
        alone = model.backbone(x, bf.bf_stream(apply))  # (N, D)
    assert torch.allclose(both[16:], alone, atol=1e-5)
    assert torch.allclose(both[:16], model.backbone(x), atol=1e-5)


@pytest.mark.parametrize("method", [V3, ()], ids=["mocov3", "mocov2"])
@pytest.mark.parametrize("shared", ["true", "false"])
def test_batchformer_v2_gets_gradients_and_stays_out_of_the_ema_and_the_backbone(method, shared):
    model = build_model(_v2(f"batchformer.share_across_inserts={shared}", method=method, inserts="[1,3]"), 1, 28)
    model.train()
    before = copy.deepcopy(model.batchformer.state_dict())
    x = _images(32)
    out = model(x, x.flip(-1))
    out["loss"].backward()
    for name, p in model.batchformer.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    bf_ids = {id(p) for p in model.batchformer.parameters()}
    assert not bf_ids & {id(p) for p in model.momentum_parameters()}
    assert not bf_ids & {id(p) for p in model.backbone.parameters()}
    model.momentum_update(0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.batchformer.state_dict().items())
    # the loss averages the stream pairs: the baseline's scale
    assert abs(out["loss"].item() - out["loss_plain"].item()) < 0.25 * out["loss_plain"].item()


@pytest.mark.parametrize("overrides,message", [
    (("batchformer.position=vit_blocks", "batchformer.insert_after=[2]"), "needs a ViT backbone"),
    ((*VIT, "batchformer.position=vit_blocks"), "needs batchformer.insert_after"),
    ((*VIT, "batchformer.position=vit_blocks", "batchformer.insert_after=[6]"), "blocks 0-5"),
    ((*VIT, "batchformer.position=vit_blocks", "batchformer.insert_after=[1,1]"), "distinct"),
    ((*VIT, "batchformer.position=vit_blocks", "batchformer.insert_after=[1]", "batchformer.heads=5"), "divisible"),
    ((*VIT, "batchformer.insert_after=[1]"), "is for batchformer.position=vit_blocks"),
    ((*VIT, "batchformer.position=vit_blocks", "batchformer.insert_after=[x]"), "expected an integer"),
])
def test_bad_vit_blocks_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(None, "batchformer.enabled=true", *overrides)


def test_insert_after_reads_a_list_a_number_or_comma_text():
    for value, expected in (("[3,1]", [3, 1]), ("2", [2]), ("1,4", [1, 4]), ("[]", [])):
        assert tiny_config(None, *VIT, f"batchformer.insert_after={value}").batchformer.insert_after == expected
    module = BatchFormerV2(16, [3, 1], shared=False, dropout=0.0)
    assert module.insert_after == (1, 3) and module.layer_after(2) is None
    assert module.layer_after(1) is module.layers[0] and module.layer_after(3) is module.layers[1]
