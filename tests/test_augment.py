"""Device-side two-view augmentation (kornia) and the evaluation transform."""
import pytest
import torch

from ssl_bf.augment import EvalTransform, build_two_views


@pytest.mark.parametrize("recipe", ["mocov2", "mocov3", "light"])
@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_are_batched_float_and_differ(recipe, channels):
    images = torch.randint(0, 256, (16, channels, 40, 40), dtype=torch.uint8)
    views = build_two_views(recipe, 32, channels, (0.5,) * channels, (0.25,) * channels)
    x1, x2 = views(images)
    assert x1.shape == x2.shape == (16, channels, 32, 32) and x1.dtype == torch.float32
    assert not torch.allclose(x1, x2)  # independent random draws per view
    assert not torch.allclose(x1[0], x1[1])  # and per sample


def test_views_are_reproducible_from_the_torch_seed():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    views = build_two_views("mocov2", 28, 1, (0.3,), (0.35,))
    torch.manual_seed(5)
    a = views(images)
    torch.manual_seed(5)
    b = views(images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mocov3_recipe_is_asymmetric():
    """View 2 may solarize, view 1 never does: solarized pixels invert bright regions."""
    views = build_two_views("mocov3", 16, 3, (0.0,) * 3, (1.0,) * 3)
    assert not any("Solarize" in type(m).__name__ for m in views.view1)
    assert any("Solarize" in type(m).__name__ for m in views.view2)
    assert [type(m).__name__ for m in views.view1].count("RandomGaussianBlur") == 1


def test_eval_transform_normalises_and_centre_crops():
    images = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    images[:, :, 28:36, 28:36] = 0  # a dark centre square
    out = EvalTransform(32, (0.5,) * 3, (0.5,) * 3)(images)
    assert out.shape == (2, 3, 32, 32)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-4)  # white -> (1 - 0.5) / 0.5
    assert out[0, 0, 16, 16].item() < -0.9  # the centre survives the crop
    same = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(EvalTransform(28, (0.0,), (1.0,))(same), same.float() / 255)
