"""Device-side two-view augmentation (kornia) and the evaluation transform, checked by what the ops
do to images: crops move and magnify a marker, flips mirror it at about p=0.5, grayscale makes the
channels equal at its stated rate, MoCo-v3 solarizes only its second view.

Rates are counted on a fixed seed over N samples and must lie within 3 binomial standard
deviations of the recipe's probability. Colour jitter of strength 0 and no blur leave the other
ops as the only ones changing an image (jitter of strength 0 is the identity up to float error).
"""
import math

import pytest
import torch

from ssl_bf.data.augment import EvalTransform, build_two_views

PLAIN = dict(jitter_strength=0.0, blur=False)  # geometry, grayscale and solarize only


def within_3_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p))


def marker_images(n: int, size: int = 32, row: int = 8, col: int = 8) -> torch.Tensor:
    """(n, 1, size, size) uint8: black with a 2x2 white marker at (row, col), left of centre."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, row:row + 2, col:col + 2] = 255
    return images


def both(views, images) -> torch.Tensor:
    return torch.cat(views(images))  # (2N, C, S, S): view 1, then view 2


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).amax(1)  # per sample


def test_random_resized_crops_move_and_magnify_the_marker():
    torch.manual_seed(0)
    images = marker_images(256)
    out = both(build_two_views("mocov2", 32, 1, (0.0,), (1.0,), **PLAIN), images)  # (512, 1, 32, 32)
    assert out.shape == (512, 1, 32, 32)
    mass = out.sum((1, 2, 3))  # 4.0 in the input (4 white pixels)
    seen = mass > 0.5
    positions = set(out.flatten(1).argmax(1)[seen].tolist())
    assert len(positions) >= 50  # the marker lands in many places
    assert (mass > 8.0).sum() >= 25  # crops of 20-100% of the area, resized up: magnified markers
    assert (~seen).sum() >= 25  # and crops that miss it
    assert mass.max() <= 4.0 / 0.2 * 1.5  # never more than the smallest crop (20% of the area) allows


def test_without_crop_the_size_and_geometry_are_kept_and_pairs_go_to_their_view():
    torch.manual_seed(0)
    images = marker_images(256)
    views = build_two_views("mocov2", 32, 1, (0.0,), (1.0,), crop=False, **PLAIN)
    out = both(views, images)
    x = torch.cat([images, images]).float() / 255
    same, mirrored = max_abs_diff(out, x) < 1e-5, max_abs_diff(out, x.flip(-1)) < 1e-5
    assert out.shape == (512, 1, 32, 32) and bool((same | mirrored).all())  # only flipped, nothing else
    dark = torch.zeros_like(images)
    v1, v2 = views((images, dark))  # pre-cut crops: view 1 gets the first batch, view 2 the second
    assert v1.sum().item() == pytest.approx(4.0 * 256) and v2.abs().sum().item() == 0.0


def test_horizontal_flip_happens_at_about_half_the_time():
    torch.manual_seed(1)
    images = marker_images(1000, col=4)  # marker in the left half
    out = both(build_two_views("mocov2", 32, 1, (0.0,), (1.0,), crop=False, **PLAIN), images)
    col = out.flatten(1).argmax(1) % 32
    flipped = int((col >= 16).sum())
    assert within_3_sigma(flipped, 2000, 0.5), flipped
    assert set(col.tolist()) == {4, 32 - 4 - 2}  # mirrored exactly: columns 4-5 -> 26-27


def test_grayscale_makes_channels_equal_at_p_0_2():
    torch.manual_seed(2)
    colour = torch.randint(0, 256, (1000, 3, 16, 16), dtype=torch.uint8)  # channels differ everywhere
    out = both(build_two_views("mocov2", 16, 3, (0.5,) * 3, (0.25,) * 3, crop=False, **PLAIN), colour)
    gray = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1)
    assert within_3_sigma(int(gray.sum()), 2000, 0.2), int(gray.sum())
    # the others keep their colours: the input (or its mirror) after normalisation
    x = torch.cat([colour, colour]).float() / 255
    restored = out * 0.25 + 0.5
    kept = torch.minimum(max_abs_diff(restored, x), max_abs_diff(restored, x.flip(-1))) < 1e-5
    assert bool((kept == ~gray).all())


def test_mocov3_solarizes_only_the_second_view():
    """Solarize (threshold 0.5) turns a white image black; grayscale, flips and crops cannot."""
    torch.manual_seed(3)
    white = torch.full((1000, 3, 16, 16), 255, dtype=torch.uint8)
    v1, v2 = build_two_views("mocov3", 16, 3, (0.0,) * 3, (1.0,) * 3, crop=False, **PLAIN)(white)
    assert bool((v1 == 1.0).all())  # view 1 never solarizes
    black = v2.amax((1, 2, 3)) == 0.0
    assert bool(((v2 == 1.0).flatten(1).all(1) | black).all())
    assert within_3_sigma(int(black.sum()), 1000, 0.2), int(black.sum())


@pytest.mark.parametrize("recipe", ["mocov2", "mocov3", "light"])
@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_are_batched_float_and_differ(recipe, channels):
    torch.manual_seed(4)
    images = torch.randint(0, 256, (8, channels, 24, 24), dtype=torch.uint8)
    views = build_two_views(recipe, 16, channels, (0.5,) * channels, (0.25,) * channels)
    x1, x2 = views(images)
    assert x1.shape == x2.shape == (8, channels, 16, 16) and x1.dtype == torch.float32
    assert bool((max_abs_diff(x1, x2) > 1e-3).all())  # the two views of every image differ
    one = images[:1].expand(8, -1, -1, -1)  # one image eight times: every draw is different
    y1, _ = views(one)
    assert len({tuple(v.flatten()[:64].tolist()) for v in y1}) == 8


def test_views_are_reproducible_from_the_torch_seed():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    views = build_two_views("mocov2", 28, 1, (0.3,), (0.35,))
    torch.manual_seed(5)
    a = views(images)
    torch.manual_seed(5)
    b = views(images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_transform_normalises_and_centre_crops():
    images = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    images[:, :, 28:36, 28:36] = 0  # a dark centre square
    out = EvalTransform(32, (0.5,) * 3, (0.5,) * 3)(images)
    assert out.shape == (2, 3, 32, 32)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-4)  # white -> (1 - 0.5) / 0.5
    assert out[0, 0, 16, 16].item() < -0.9  # the centre survives the crop
    same = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(EvalTransform(28, (0.0,), (1.0,))(same), same.float() / 255)
