"""BatchFormer: attends across the batch, two streams in training, identity in eval."""
import copy

import pytest
import torch

from ssl_bf.models.batchformer import BatchFormer, transform_recomposed
from ssl_bf.checkpoints.checkpoint import backbone_state_dict
from ssl_bf.models.registry import build_encoder, build_model

from tiny_run import tiny_config


def _bf(dim=16, dropout=0.0):
    torch.manual_seed(0)
    return BatchFormer(dim, layers=1, heads=4, dropout=dropout)


def test_reference_defaults():
    bf = BatchFormer(32)
    layer = bf.encoder.layers[0]
    assert len(bf.encoder.layers) == 1 and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 32 and layer.dropout.p == 0.5
    assert not layer.norm_first and layer.self_attn.batch_first is False


def test_permutation_equivariance():
    bf = _bf().train()
    x = torch.randn(12, 16)
    perm = torch.randperm(12)
    assert torch.allclose(bf.transform(x)[perm], bf.transform(x[perm]), atol=1e-5)


def test_output_depends_on_other_samples():
    """The batch is the sequence: changing sample 0 changes every other sample's output."""
    bf = _bf().train()
    x = torch.randn(8, 16)
    y = x.clone()
    y[0] += 3.0
    diff = (bf.transform(x)[1:] - bf.transform(y)[1:]).abs().amax(dim=1)  # (7,)
    assert (diff > 1e-4).all()


def test_train_doubles_batch_and_eval_is_identity():
    bf = _bf(dropout=0.5)
    x = torch.randn(10, 16)
    out = bf.train()(x)
    assert out.shape == (20, 16) and torch.equal(out[:10], x)
    assert not torch.allclose(out[10:], x)
    assert bf.eval()(x) is x


def test_recomposed_groups_restore_order():
    """With one group (the whole batch) re-composition is only a permutation: same result."""
    bf = _bf().train()
    x = torch.randn(12, 16)
    assert torch.allclose(transform_recomposed(bf, x, groups=1), bf.transform(x), atol=1e-5)
    assert transform_recomposed(bf, x, groups=3).shape == (12, 16)


@pytest.mark.parametrize("position", ["projection", "backbone"])
def test_batchformer_gets_gradients_and_stays_out_of_ema(position):
    cfg = tiny_config(None, "batchformer.enabled=true", f"batchformer.position={position}")
    model = build_model(cfg, in_channels=1).train()
    bf_before = copy.deepcopy(model.batchformer.state_dict())
    x = torch.randn(64, 1, 28, 28)
    out = model(x, x.flip(-1))
    out["loss"].backward()
    for name, p in model.batchformer.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    bf_ids = {id(p) for p in model.batchformer.parameters()}
    assert not bf_ids & {id(p) for p in model.momentum_parameters()}
    assert not any("batchformer" in n for n, _ in model.momentum_backbone.named_parameters())
    model.momentum_update(0.5)
    for k, v in model.batchformer.state_dict().items():
        assert torch.equal(v, bf_before[k]), k


def test_eval_path_never_contains_batchformer(tmp_path):
    """Eval-mode outputs are identical with and without the module present, and the exported
    backbone (loaded into a fresh encoder) reproduces them."""
    cfg = tiny_config(tmp_path, "batchformer.enabled=true")
    model = build_model(cfg, in_channels=1)
    x = torch.randn(64, 1, 28, 28)
    model.train()
    model(x, x)["loss"].backward()  # one real step so BN stats and weights move
    model.eval()
    with torch.no_grad():
        with_bf = model.query_streams(x)
        saved = model.batchformer
        model.batchformer = None
        without_bf = model.query_streams(x)
        model.batchformer = saved
    assert torch.equal(with_bf, without_bf)
    encoder = build_encoder(cfg, in_channels=1, features="projection").eval()
    encoder.backbone.load_state_dict(backbone_state_dict(model.state_dict()), strict=True)
    encoder.projector.load_state_dict(model.projector.state_dict())
    with torch.no_grad():
        assert torch.equal(encoder(x), with_bf)
    assert not any("batchformer" in k for k in encoder.state_dict())


@pytest.mark.parametrize("layers", [1, 2])
def test_context_attention_treats_each_row_as_one_more_batch_member(layers):
    """transform_with_context: the context's output is BF(context); with one layer each row's output
    is BF(cat([context, row]))[-1]; rows never see each other (chunking changes nothing)."""
    from ssl_bf.models.batchformer import transform_with_context

    torch.manual_seed(0)
    bf = BatchFormer(32, layers, 4, 0, 0.5).eval()
    context, rows = torch.randn(16, 32), torch.randn(7, 32)
    ctx_out, rows_out = transform_with_context(bf, context, rows)
    assert torch.allclose(ctx_out, bf.transform(context), atol=1e-6)
    _, chunked = transform_with_context(bf, context, rows, chunk=3)
    assert torch.allclose(chunked, rows_out, atol=1e-6)
    _, alone = transform_with_context(bf, context, rows[4:5])
    assert torch.allclose(alone, rows_out[4:5], atol=1e-6)
    if layers == 1:
        for r in range(rows.shape[0]):
            expected = bf.transform(torch.cat([context, rows[r:r + 1]]))[-1]
            assert torch.allclose(rows_out[r], expected, atol=1e-5)
    _, other = transform_with_context(bf, context + 1.0, rows)  # the context matters
    assert (other - rows_out).abs().max() > 1e-2
