"""Device-side two-view augmentation and the evaluation transform, checked by what the ops do to
images: crops move and magnify a marker, flips mirror it at about p=0.5, grayscale makes the
channels equal at its stated rate, MoCo-v3 solarizes only its second view. Every random draw comes
from torch's CPU generator whatever the device, and nothing is read back from the device
(simulated on the 'meta' device). Equality with torchvision: tests/test_augment_fidelity.py.

Rates are counted on a fixed seed over N samples and must lie within 3 binomial standard
deviations of the recipe's probability. Colour jitter of strength 0 and no blur leave the other
ops as the only ones changing an image (jitter of strength 0 is the identity up to float error).
"""
import math
import os

import pytest
import torch
from fuzz_contract import count, fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_bf.data.augment import EvalTransform, build_two_views
from ssl_bf.data.view_params import ViewRecipe, draw_view_params

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


# --- every draw on the CPU generator, whatever the device --------------------------------------
RANDOM_OPS = {"uniform", "normal", "bernoulli", "random", "randperm", "rand", "randn", "randint",
              "multinomial", "exponential", "geometric", "cauchy", "log_normal", "poisson"}


class RandomDraws(TorchDispatchMode):
    """Records the device of every random op torch runs inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.devices: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__.rstrip("_") in RANDOM_OPS:
            self.devices.append(out.device.type)
        return out


def recorded_params(monkeypatch) -> list:
    """Every ViewParams the views draw, as drawn (on the CPU, before the copy to the device)."""
    import ssl_bf.data.augment as augment

    drawn, draw = [], augment.draw_view_params
    monkeypatch.setattr(augment, "draw_view_params", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    return drawn


@pytest.mark.parametrize("recipe", ["mocov2", "mocov3", "light"])
@pytest.mark.parametrize("crop", [True, False])
def test_the_views_draw_on_the_cpu_generator_and_read_nothing_back_from_the_device(monkeypatch, recipe, crop):
    """The device path simulated on the 'meta' device: a meta tensor has no values, so any read
    back to the host (`.item()`, `bool()`, `.tolist()`) raises, and a random op drawn on the
    images' device shows up as a meta draw. The draws equal the CPU run's, and leave torch's CPU
    generator (the state the trainer saves) where the CPU run leaves it."""
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    batch = images if crop else (images[..., :16, :16], images[..., 8:, 8:])
    views = build_two_views(recipe, 16, 3, (0.5,) * 3, (0.25,) * 3, crop=crop)
    drawn = recorded_params(monkeypatch)
    torch.manual_seed(7)
    on_cpu = views(batch)
    after_cpu = torch.get_rng_state()
    torch.manual_seed(7)
    meta_batch = batch.to("meta") if crop else tuple(b.to("meta") for b in batch)
    with RandomDraws() as draws:
        on_meta = views.to("meta")(meta_batch)
    assert torch.equal(torch.get_rng_state(), after_cpu)
    assert draws.devices and set(draws.devices) == {"cpu"}, draws.devices
    assert [v.device.type for v in on_meta] == ["meta", "meta"]
    assert [v.shape for v in on_meta] == [v.shape for v in on_cpu]
    cpu_draws, meta_draws = drawn[:2], drawn[2:]
    for a, b in zip(cpu_draws, meta_draws):
        tensors = lambda p: [t for v in vars(p).values() for t in (v if isinstance(v, tuple) else (v,))]
        assert all(torch.equal(s, t) for s, t in zip(tensors(a), tensors(b))), "draws differ"


def test_the_parameters_reach_the_device_in_one_copy(monkeypatch):
    copies = []
    original = torch.Tensor.to

    def counted(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "meta":
            copies.append(tuple(self.shape))
        return out

    views = build_two_views("mocov3", 16, 3, (0.5,) * 3, (0.25,) * 3).to("meta")
    monkeypatch.setattr(torch.Tensor, "to", counted)
    views(torch.zeros(8, 3, 24, 24, dtype=torch.uint8, device="meta"))
    assert len(copies) == 2, copies  # one packed copy per view


def test_the_probe_crops_draw_on_the_cpu_generator_on_any_device():
    """The image probe saves torch's CPU RNG only; its kornia crop and flip samplers must stay on
    the CPU when the transform moves to the training device (kornia moves them with `.to()`)."""
    from ssl_bf.eval.linear_images import ProbeTrainTransform

    images = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    tf = ProbeTrainTransform(10, [0.5], [0.25])
    torch.manual_seed(3)
    on_cpu = tf(images)
    after_cpu = torch.get_rng_state()
    moved = ProbeTrainTransform(10, [0.5], [0.25]).to("meta")
    torch.manual_seed(3)
    with RandomDraws() as draws:
        on_meta = moved(images.to("meta"))
    assert torch.equal(torch.get_rng_state(), after_cpu)  # the same draws from the same generator
    assert draws.devices and set(draws.devices) == {"cpu"}, draws.devices
    assert on_meta.device.type == "meta" and on_meta.shape == on_cpu.shape


def test_the_installed_kornia_is_the_pinned_minor():
    """kornia's ops change meaning between releases (0.9's ColorJiggle: additive brightness, one op
    order per batch); pyproject.toml and environment.yml pin the minor the probe was tested with."""
    import tomllib

    import kornia

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        pin = next(d for d in tomllib.load(f)["project"]["dependencies"] if d.startswith("kornia"))
    minor = pin.split("~=")[1].rsplit(".", 1)[0]  # "kornia~=0.9.0" -> "0.9"
    assert kornia.__version__.startswith(minor + "."), (
        f"kornia {kornia.__version__} is installed but {pin} is pinned: install the pinned version, "
        f"or check the probe's crops against the new release and move the pin")


def test_a_jitter_strength_past_torchvisions_hue_bound_is_refused():
    """torchvision's ColorJitter takes a hue jitter of at most 0.5 (half a turn): the recipes'
    0.1 (mocov2, mocov3) and 0.05 (light) may be scaled up to 5x and 10x."""
    from ssl_bf.data.augment import RecipeRangeError

    assert build_two_views("light", 16, 3, (0.5,) * 3, (0.25,) * 3, jitter_strength=10).view1.recipe.jitter[3] == 0.5
    with pytest.raises(RecipeRangeError, match=r"^5.5 makes the mocov2 recipe's hue jitter 0.55.*at most 5 here"):
        build_two_views("mocov2", 16, 3, (0.5,) * 3, (0.25,) * 3, jitter_strength=5.5)
    with pytest.raises(RecipeRangeError, match="at most 10 here"):
        build_two_views("light", 16, 1, (0.5,), (0.25,), jitter_strength=10.5)  # the recipe's, even on gray images


@settings(max_examples=fuzz_examples(40))
@given(n=st.integers(0, 40), height=st.integers(1, 64), width=st.integers(1, 64), seed=st.integers(0, 2**31 - 1),
       crop=st.booleans(), p=st.floats(0.0, 1.0))
def test_property_the_packed_copy_carries_every_parameter_exactly(n, height, width, seed, crop, p):
    """`ViewParams.to` packs every field (crop boxes, per-slot coefficients, masks, the hue rows
    planned on the CPU) into one float32 copy and unpacks it: the same values, dtypes and shapes."""
    count("augment_params", 1)
    recipe = ViewRecipe((0.08, 1.0) if crop else None, (0.4, 0.4, 0.4, 0.1), p, p, p, p, p)
    torch.manual_seed(seed)
    params = draw_view_params(recipe, n, height, width)
    moved, meta = params.to(torch.device("cpu")), params.to(torch.device("meta"))
    for name, value in vars(params).items():
        for a, b, m in zip(*((v if isinstance(v, tuple) else (v,)) for v in (value, vars(moved)[name], vars(meta)[name]))):
            assert a.dtype == b.dtype == m.dtype and a.shape == b.shape == m.shape and torch.equal(a, b), name
    top, left, h, w = params.boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1) & (top + h <= height) & (left + w <= width)).all())
