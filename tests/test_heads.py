"""Recipe fidelity: projector and predictor shapes and bias flags as the reference builders make them.

The reference descriptions, written out layer by layer:
- MoCo-v2 (moco `builder.py` with `mlp=True`): Linear(F, F) with bias -> ReLU -> Linear(F, dim) with bias.
- MoCo-v3 (moco-v3 `builder.py`, `_build_mlp`): every Linear has NO bias; each hidden Linear is
  followed by BatchNorm1d (affine) and ReLU; the projector ends with a non-affine BatchNorm1d, the
  predictor does not. ResNet-50: projector 2 layers (2048 -> 4096 -> 256); ViT: 3 layers.
"""
import pytest
from torch import nn

from ssl_bf.models.registry import build_model

from tiny_run import tiny_config


def _layers(module: nn.Module) -> list[tuple]:
    """(kind, in, out, bias or affine) for every Linear / BatchNorm1d, in order."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("bn", m.num_features, m.num_features, m.affine))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
    return out


def _v3_mlp(layers: int, in_dim: int, hidden: int, out: int, last_bn: bool) -> list[tuple]:
    """The reference `_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn)`."""
    desc = []
    for i in range(layers):
        d1 = in_dim if i == 0 else hidden
        d2 = out if i == layers - 1 else hidden
        desc.append(("linear", d1, d2, False))
        if i < layers - 1:
            desc += [("bn", d2, d2, True), ("relu",)]
        elif last_bn:
            desc.append(("bn", d2, d2, False))
    return desc


def test_mocov2_projector_matches_the_reference():
    cfg = tiny_config(None, "moco.dim=128", "moco.hidden_dim=0")  # hidden = the backbone width
    model = build_model(cfg, 1, 28)
    f = model.backbone.feature_dim
    assert _layers(model.projector) == [("linear", f, f, True), ("relu",), ("linear", f, 128, True)]
    assert _layers(model.predictor) == []  # MoCo-v2 has no predictor


@pytest.mark.parametrize("proj_layers", [2, 3], ids=["resnet-2-layer", "vit-3-layer"])
def test_mocov3_heads_match_the_reference(proj_layers):
    cfg = tiny_config(None, "method=mocov3", "moco.dim=32", "moco.hidden_dim=96", "moco.pred_hidden_dim=80",
                      f"moco.proj_layers={proj_layers}")
    model = build_model(cfg, 1, 28)
    f = model.backbone.feature_dim
    assert _layers(model.projector) == _v3_mlp(proj_layers, f, 96, 32, last_bn=True)
    assert _layers(model.predictor) == _v3_mlp(2, 32, 80, 32, last_bn=False)
    assert _layers(model.momentum_projector) == _layers(model.projector)


def test_resnet50_mocov3_head_parameter_count():
    """ResNet-50 recipe: 2048 -> 4096 -> 256 projector and 256 -> 4096 -> 256 predictor, no biases."""
    cfg = tiny_config(None, "method=mocov3", "backbone.name=resnet50", "backbone.width=64",
                      "moco.dim=256", "moco.hidden_dim=4096", "moco.pred_hidden_dim=4096", "moco.proj_layers=2")
    model = build_model(cfg, 3, 224)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model.projector) == 2048 * 4096 + 2 * 4096 + 4096 * 256
    assert count(model.predictor) == 256 * 4096 + 2 * 4096 + 4096 * 256
