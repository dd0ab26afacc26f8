"""The augmentation recipes equal torchvision's, op by op and view by view.

Each op of `ssl_bf.data.photometric` / `resized_crop` is driven with fixed parameters and compared
with `torchvision.transforms.v2.functional` (TF) driven with the same parameters on the same real
images (Fashion-MNIST test images; Grace Hopper's photo from matplotlib's sample data; colour
images made of three Fashion-MNIST images; smooth synthetic colour gradients). The tolerances are
those of docs/protocols.md ("Augmentation fidelity"):
- float rounding (1e-5) wherever the formula is torchvision's;
- 2e-4 where ssl-bf weighs gray as PIL does (0.299 R) and torchvision's tensor ops use 0.2989 R;
  a float64 numpy reference with PIL's weights then holds it to float rounding;
- against PIL on uint8 images (MoCo's own pipeline), PIL's rounding to uint8 and its box-blur
  approximation of the Gaussian, each stated where it is checked.
Whole views are checked with every random parameter fixed: the parameters one `AugmentView` draws
are replayed through TF, image by image. The draws are checked against the reference
distributions, and hypothesis drives random images and parameters within the recipe ranges.
"""
from __future__ import annotations

import itertools
import math

import matplotlib.cbook
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fuzz_contract import count, fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torchvision.transforms import RandomResizedCrop

from ssl_bf.data import build_dataset
from ssl_bf.data import photometric as P
from ssl_bf.data.augment import AugmentView, apply_view, blur_kernel_size, build_two_views
from ssl_bf.data.resized_crop import CROP_TRIES, crop_boxes, resized_crop
from ssl_bf.data.view_params import JITTER_OPS, ViewParams, ViewRecipe, draw_view_params, factor_ranges

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FLOAT = 1e-5  # float32 rounding of the same formula
LUMA_GAP = 2e-4  # PIL's 0.299 R against torchvision's 0.2989 R
ONE = torch.tensor([True])


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def fashion_mnist(n: int = 16) -> torch.Tensor:
    """(n, 1, 28, 28) float in [0, 1]: the first n Fashion-MNIST test images."""
    data = build_dataset("fashion-mnist", FMNIST_ROOT, "test", subset=n)
    return data.get_batch(torch.arange(n))[0].float() / 255


def grace_hopper(size: int = 64) -> torch.Tensor:
    """(1, 3, size, size) float: matplotlib's sample photo, centre square resized by PIL."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as img:
        img = img.convert("RGB").crop((0, 44, 512, 556)).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


def gradients(size: int = 32) -> torch.Tensor:
    """(2, 3, size, size): a full hue wheel at varying saturation and value, and a smooth mix."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    hues = _hsv(x, 0.2 + 0.8 * y, 0.2 + 0.8 * x)  # hue across, saturation down, value across
    mix = torch.stack([(torch.sin(6 * x) + 1) / 2, y * x, (torch.cos(5 * y) + 1) / 2])
    return torch.stack([hues, mix])


def _hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Textbook HSV -> RGB (3, H, W), for the synthetic hue wheel."""
    k = torch.stack([(n + 6 * h) % 6 for n in (5.0, 3.0, 1.0)])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def colour_images() -> torch.Tensor:
    """(6, 3, 32, 32): Grace Hopper, two gradients, three colour mixes of Fashion-MNIST images."""
    fm = TF.resize(fashion_mnist(9), [32, 32], antialias=True)[:, 0]  # (9, 32, 32)
    mixes = torch.stack([fm[0:3], fm[3:6], fm[6:9]])  # each channel a different garment
    return torch.cat([grace_hopper(32), gradients(32), mixes]).clamp(0, 1)


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) float on the uint8 grid -> PIL image (L or RGB)."""
    array = (x * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def from_pil(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.float32) / 255
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def on_uint8_grid(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


def each(x: torch.Tensor, fn) -> torch.Tensor:
    """fn applied to every image of the batch alone, as torchvision's transforms see them."""
    return torch.stack([fn(image) for image in x])


def per_image(value: float, n: int) -> torch.Tensor:
    return torch.full((n,), float(value))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------------
# op by op, fixed parameters
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    return {"fashion-mnist": fashion_mnist(16), "colour": colour_images()}


@pytest.mark.parametrize("kind", ["fashion-mnist", "colour"])
@pytest.mark.parametrize("factor", [0.6, 0.93, 1.0, 1.4])
def test_brightness_contrast_and_saturation_equal_torchvision(images, kind, factor):
    x = images[kind]
    n, f = len(x), per_image(factor, len(x))
    zero = torch.zeros(n)
    assert max_error(P.blend(x, f, zero, zero), each(x, lambda i: TF.adjust_brightness(i, factor))) <= FLOAT
    gap = FLOAT if kind == "fashion-mnist" else LUMA_GAP  # one channel: the image is its own gray
    assert max_error(P.blend(x, f, 1 - f, zero), each(x, lambda i: TF.adjust_contrast(i, factor))) <= gap
    if kind == "colour":  # torchvision leaves one-channel images alone, as the recipes do
        assert max_error(P.blend(x, f, zero, 1 - f), each(x, lambda i: TF.adjust_saturation(i, factor))) <= gap


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_colour_ops_are_close_to_pils_on_uint8_images(images, factor):
    """MoCo's ColorJitter runs on PIL images: each op rounds to uint8 (and the hue is a uint8 HSV
    channel), so PIL's result sits within 1.5/255 of ours for the blends; the hue within 16/255 at
    most and 1.5/255 on average."""
    x = on_uint8_grid(images["colour"])
    f, zero = per_image(factor, len(x)), torch.zeros(len(x))
    for coefficients, enhance in (((f, zero, zero), ImageEnhance.Brightness), ((f, 1 - f, zero), ImageEnhance.Contrast),
                                  ((f, zero, 1 - f), ImageEnhance.Color)):
        pil = each(x, lambda i: from_pil(enhance(to_pil(i)).enhance(factor)))
        assert max_error(P.blend(x, *coefficients), pil) <= 1.5 / 255, enhance.__name__
    shift = (factor - 1) / 4  # -0.1, 0.1
    ours = P.shift_hue(x, per_image(shift, len(x)))
    pil = each(x, lambda i: from_pil(TF.adjust_hue(to_pil(i), shift)))
    assert max_error(ours, pil) <= 16 / 255 and (ours - pil).abs().mean() <= 1.5 / 255


def numpy_blend(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """float64 reference with PIL's luma weights: clamp(a x + b mean(gray) + c gray)."""
    gray = (np.tensordot([0.299, 0.587, 0.114], x, axes=(0, 0)) if len(x) == 3 else x[0])[None]
    return np.clip(a * x + b * gray.mean() + c * gray, 0.0, 1.0)


@pytest.mark.parametrize("coefficients", [(1.3, -0.3, 0.0), (0.7, 0.3, 0.0), (0.65, 0.0, 0.35), (1.4, 0.0, -0.4)])
def test_blend_equals_a_float64_reference_with_pils_luma(images, coefficients):
    x = images["colour"]
    a, b, c = (per_image(v, len(x)) for v in coefficients)
    ours = P.blend(x, a, b, c).double().numpy()
    reference = np.stack([numpy_blend(image, *coefficients) for image in x.double().numpy()])
    assert np.abs(ours - reference).max() <= FLOAT


@pytest.mark.parametrize("shift", [-0.5, -0.1, -0.013, 0.0, 0.05, 0.1, 0.37, 0.5])
def test_hue_shift_equals_torchvision(images, shift):
    x = images["colour"]
    ours = P.shift_hue(x, per_image(shift, len(x)))
    assert max_error(ours, each(x, lambda i: TF.adjust_hue(i, shift))) <= FLOAT


def test_hue_shift_is_per_image():
    x = colour_images()
    shifts = torch.linspace(-0.1, 0.1, len(x))
    expected = torch.stack([TF.adjust_hue(i, float(s)) for i, s in zip(x, shifts)])
    assert max_error(P.shift_hue(x, shifts), expected) <= FLOAT


def test_grayscale_equals_torchvision_and_pil(images):
    x = on_uint8_grid(images["colour"])
    ours = P.grayscale(x, torch.ones(len(x), dtype=torch.bool))
    assert max_error(ours, each(x, lambda i: TF.rgb_to_grayscale(i, 3))) <= LUMA_GAP
    pil = each(x, lambda i: from_pil(to_pil(i).convert("L")).expand(3, -1, -1))
    assert max_error(ours, pil) <= 0.5 / 255 + FLOAT  # PIL rounds the gray to uint8
    assert torch.equal(P.grayscale(x, torch.zeros(len(x), dtype=torch.bool)), x)
    white = torch.ones(1, 3, 4, 4)
    assert torch.equal(P.grayscale(white, ONE), white)  # PIL's weights sum to one


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 1.7, 2.0])
@pytest.mark.parametrize("kind", ["fashion-mnist", "colour"])
def test_gaussian_blur_equals_torchvision(images, kind, sigma):
    x = images[kind]
    k = blur_kernel_size(x.shape[-1])
    ours = P.gaussian_blur(x, P.gaussian_kernels(per_image(sigma, len(x)), k), torch.ones(len(x), dtype=torch.bool))
    assert max_error(ours, each(x, lambda i: TF.gaussian_blur(i, [k, k], [sigma, sigma]))) <= FLOAT


def test_blur_kernel_reaches_three_sigma_and_fits_small_images():
    assert blur_kernel_size(224) == blur_kernel_size(28) == 13  # 3 x 2.0 each side
    assert blur_kernel_size(4) == 7 and blur_kernel_size(1) == 1  # reflect padding needs pad < side


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_the_13_tap_blur_is_byols_23_tap_blur_at_224_px(sigma):
    """BYOL (and MoCo-v3 ports in torchvision) blur with kernel 23 at 224 px: at sigma <= 2 the
    taps past 3 sigma hold < 0.3% of the mass; the outputs stay within 1/255."""
    x = grace_hopper(224)
    ours = P.gaussian_blur(x, P.gaussian_kernels(per_image(sigma, 1), blur_kernel_size(224)), ONE)
    assert max_error(ours, TF.gaussian_blur(x, [23, 23], [sigma, sigma])) <= 1 / 255


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_the_blur_is_close_to_pils_box_blur_approximation(sigma):
    """MoCo blurs with PIL's GaussianBlur(radius=sigma): three extended box passes of the same
    variance, on uint8. Away from the border (PIL extends the edge pixel, torchvision reflects),
    the two stay within a few levels of 255 on a photo."""
    x = on_uint8_grid(grace_hopper(96))
    ours = P.gaussian_blur(x, P.gaussian_kernels(per_image(sigma, 1), blur_kernel_size(96)), ONE)
    pil = from_pil(to_pil(x[0]).filter(ImageFilter.GaussianBlur(radius=sigma)))
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert max_error(ours[0][inner], pil[inner]) <= 4 / 255
    assert (ours[0][inner] - pil[inner]).abs().mean().item() <= 0.6 / 255


def test_an_unblurred_image_is_left_exactly_as_it_was(images):
    x = images["colour"]
    kernels = P.gaussian_kernels(per_image(1.5, len(x)), 13)
    assert torch.equal(P.gaussian_blur(x, kernels, torch.zeros(len(x), dtype=torch.bool)), x)


def test_solarize_equals_torchvision_and_pils_threshold_128(images):
    x = on_uint8_grid(images["colour"])
    ours = P.solarize(x, torch.ones(len(x), dtype=torch.bool))
    assert torch.equal(ours, each(x, lambda i: TF.solarize(i, 0.5)))
    pil = each(x, lambda i: from_pil(ImageOps.solarize(to_pil(i), 128)))
    assert max_error(ours, pil) <= FLOAT
    assert torch.equal(P.solarize(x, torch.zeros(len(x), dtype=torch.bool)), x)


def test_flip_equals_torchvision(images):
    x = images["colour"]
    flips = torch.arange(len(x)) % 2 == 0
    expected = torch.stack([TF.horizontal_flip(i) if f else i for i, f in zip(x, flips)])
    assert torch.equal(P.hflip(x, flips), expected)


BOXES = [(0, 0, 28, 28), (3, 5, 12, 9), (10, 2, 5, 17), (0, 21, 28, 7), (27, 27, 1, 1)]


@pytest.mark.parametrize("size", [28, 16, 40])
def test_resized_crop_equals_torchvision_on_fashion_mnist(images, size):
    """Boxes that enlarge (most of them at 28 px), shrink (to 16 px) and change the aspect."""
    x = images["fashion-mnist"][:len(BOXES)]
    ours = resized_crop(x, torch.tensor(BOXES), size)
    expected = torch.stack([TF.resized_crop(i, *box, [size, size], antialias=True) for i, box in zip(x, BOXES)])
    assert max_error(ours, expected) <= FLOAT


def test_resized_crop_is_close_to_pils_on_uint8_images():
    """MoCo crops PIL images (crop, then PIL's antialiased bilinear resize, rounded to uint8)."""
    x = on_uint8_grid(grace_hopper(200))
    for box in [(13, 40, 150, 97), (50, 50, 24, 24), (0, 0, 200, 200)]:
        pil = from_pil(TF.resized_crop(to_pil(x[0]), *box, [64, 64]))
        assert max_error(resized_crop(x, torch.tensor([box]), 64)[0], pil) <= 1 / 255, box


def test_resized_crop_equals_torchvision_on_a_photo_when_shrinking():
    x = grace_hopper(200).expand(4, -1, -1, -1)
    boxes = [(0, 0, 200, 200), (13, 40, 150, 97), (100, 7, 61, 180), (50, 50, 24, 24)]
    ours = resized_crop(x, torch.tensor(boxes), 24)
    expected = torch.stack([TF.resized_crop(i, *box, [24, 24], antialias=True) for i, box in zip(x, boxes)])
    assert max_error(ours, expected) <= FLOAT


# ------------------------------------------------------------------------------------------------
# whole views with every random parameter fixed
# ------------------------------------------------------------------------------------------------


def slot_ops(params: ViewParams, n: int) -> list[tuple[str, float]]:
    """Image n's jitter as torchvision calls (op name, factor), decoded from its four slots."""
    ops = []
    for k in range(4):
        a, b, c = (float(t[n, k]) for t in (params.blend_a, params.blend_b, params.blend_c))
        if bool(params.hue_apply[n, k]):
            ops.append(("hue", float(params.hue_shift[n, k])))
        elif b != 0:
            ops.append(("contrast", a))
        elif c != 0:
            ops.append(("saturation", a))
        elif a != 1:
            ops.append(("brightness", a))
    return ops


TV_OPS = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
          "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}


def torchvision_view(image: torch.Tensor, params: ViewParams, n: int, recipe: ViewRecipe, size: int) -> torch.Tensor:
    """Image n through torchvision's functional ops with the parameters ssl-bf drew for it."""
    if recipe.crop_scale is not None:
        image = TF.resized_crop(image, *params.boxes[n].tolist(), [size, size], antialias=True)
    for name, factor in slot_ops(params, n):
        image = TV_OPS[name](image, factor)
    if image.shape[0] == 3 and bool(params.gray[n]) and recipe.p_gray > 0:
        image = TF.rgb_to_grayscale(image, 3)
    if bool(params.blur[n]) and recipe.p_blur > 0:
        k, sigma = blur_kernel_size(size), float(params.sigma[n])
        image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
    if bool(params.solarize[n]) and recipe.p_solarize > 0:
        image = TF.solarize(image, 0.5)
    return TF.horizontal_flip(image) if bool(params.flip[n]) else image


VIEWS = {"mocov2": ViewRecipe((0.2, 1.0), (0.4, 0.4, 0.4, 0.1), p_blur=0.5),
         "mocov3-1": ViewRecipe((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), p_blur=1.0),
         "mocov3-2": ViewRecipe((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), p_blur=0.1, p_solarize=0.2),
         "light": ViewRecipe((0.3, 1.0), (0.4, 0.4, 0.2, 0.05)),
         "pre-cut": ViewRecipe(None, (0.4, 0.4, 0.4, 0.1), p_blur=0.5)}


@pytest.mark.parametrize("name", list(VIEWS))
@pytest.mark.parametrize("kind", ["fashion-mnist", "colour"])
def test_a_whole_view_equals_torchvision_with_the_same_draws(images, name, kind):
    recipe = VIEWS[name]
    x = images[kind].repeat(4, 1, 1, 1)  # every image under several draws
    if x.shape[1] == 1:
        recipe = ViewRecipe(recipe.crop_scale, (*recipe.jitter[:2], 0.0, 0.0), recipe.p_jitter, 0.0,
                            recipe.p_blur, recipe.p_solarize)
    size = x.shape[-1]
    torch.manual_seed(11)
    params = draw_view_params(recipe, len(x), *x.shape[-2:])
    ours = apply_view(x, params, recipe, size)
    expected = torch.stack([torchvision_view(image, params, n, recipe, size) for n, image in enumerate(x)])
    # hue, gray and contrast/saturation: PIL's luma weights, compounded over up to four ops
    assert max_error(ours, expected) <= (FLOAT if kind == "fashion-mnist" else 4 * LUMA_GAP)
    torch.manual_seed(11)
    module = AugmentView(recipe, size, [0.5] * x.shape[1], [0.25] * x.shape[1])
    assert torch.equal(module(x), (ours - 0.5) / 0.25)  # the module draws exactly these parameters


# ------------------------------------------------------------------------------------------------
# the draws against the reference distributions
# ------------------------------------------------------------------------------------------------

DRAWN = 24_000


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def mocov3_second_view() -> ViewParams:
    torch.manual_seed(3)
    return draw_view_params(VIEWS["mocov3-2"], DRAWN, 224, 224)


def test_probabilities_are_the_recipes(mocov3_second_view):
    p = mocov3_second_view
    jittered = (p.blend_a != 1) | (p.blend_b != 0) | (p.blend_c != 0) | p.hue_apply
    assert within(int(jittered.any(1).sum()), DRAWN, 0.8)
    for mask, rate in ((p.gray, 0.2), (p.blur, 0.1), (p.solarize, 0.2), (p.flip, 0.5)):
        assert within(int(mask.sum()), DRAWN, rate)


def test_every_one_of_the_24_orders_is_drawn_about_equally_often(mocov3_second_view):
    p = mocov3_second_view
    jittered = p.hue_apply.any(1).nonzero()[:, 0]
    counts = {order: 0 for order in itertools.permutations(JITTER_OPS)}
    for n in jittered.tolist():
        counts[tuple(name for name, _ in slot_ops(p, n))] += 1
    assert len(counts) == 24 and sum(counts.values()) == len(jittered)  # every image got all four ops
    assert all(within(c, len(jittered), 1 / 24) for c in counts.values()), counts
    chi2 = sum((c - len(jittered) / 24) ** 2 / (len(jittered) / 24) for c in counts.values())
    assert chi2 < 49.7  # 23 degrees of freedom, p = 0.001


def test_jitter_factors_are_uniform_on_colorjitters_ranges(mocov3_second_view):
    p = mocov3_second_view
    factors: dict[str, list[float]] = {name: [] for name in JITTER_OPS}
    for n in p.hue_apply.any(1).nonzero()[:2000, 0].tolist():
        for name, value in slot_ops(p, n):
            factors[name].append(value)
    for name, (lo, hi) in zip(JITTER_OPS, factor_ranges(VIEWS["mocov3-2"].jitter)):
        values = np.asarray(factors[name])
        assert lo <= values.min() and values.max() <= hi, name
        assert values.min() < lo + 0.01 * (hi - lo) and values.max() > hi - 0.01 * (hi - lo), name
        sd = (hi - lo) / math.sqrt(12)
        assert abs(values.mean() - (lo + hi) / 2) <= 4 * sd / math.sqrt(len(values)), name
        assert abs(values.std() - sd) <= 0.05 * sd, name


def test_blur_sigma_is_uniform_on_moco_range(mocov3_second_view):
    sigma = mocov3_second_view.sigma.double()
    assert 0.1 <= sigma.min() < 0.11 and 1.99 < sigma.max() <= 2.0
    assert abs(sigma.mean().item() - 1.05) <= 4 * (1.9 / math.sqrt(12)) / math.sqrt(DRAWN)


def torchvision_boxes(height: int, width: int, scale: tuple[float, float], n: int) -> np.ndarray:
    torch.manual_seed(5)
    image = torch.zeros(1, height, width)
    return np.asarray([RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])


@pytest.mark.parametrize("shape,scale", [((224, 224), (0.08, 1.0)), ((28, 28), (0.2, 1.0)),
                                         ((375, 500), (0.2, 1.0)), ((40, 160), (0.3, 1.0))])
def test_crop_boxes_follow_torchvisions_sampler(shape, scale):
    """Area fraction, aspect, centre and the fallback rate of 8000 boxes, against 8000 of
    torchvision's `RandomResizedCrop.get_params` (a very wide image makes it fall back often)."""
    height, width = shape
    n = 8000
    torch.manual_seed(6)
    ours = crop_boxes(height, width, torch.rand(n, 2 * CROP_TRIES + 2), scale).numpy()
    theirs = torchvision_boxes(height, width, scale, n)
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    stats = []
    for top, left, h, w in (ours.T, theirs.T):
        stats.append([h * w / (height * width), np.log(w / h), (top + h / 2) / height, (left + w / 2) / width])
    for name, a, b in zip(("area", "log aspect", "centre y", "centre x"), *stats):
        spread = max(a.std(), b.std(), 1e-3)
        assert abs(a.mean() - b.mean()) <= 5 * spread * math.sqrt(2 / n), name
        assert np.abs(np.quantile(a, [0.1, 0.5, 0.9]) - np.quantile(b, [0.1, 0.5, 0.9])).max() <= 0.1 * spread + 2e-3, name
    centred = torch_fallback(height, width)
    rates = [float((boxes == centred).all(1).mean()) for boxes in (ours, theirs)]
    assert abs(rates[0] - rates[1]) <= 0.03, rates


def torch_fallback(height: int, width: int) -> np.ndarray:
    """torchvision's box when no try fits: 10 tries at an area above the image's."""
    return np.asarray(RandomResizedCrop.get_params(torch.zeros(1, height, width), [50.0, 50.0], [3 / 4, 4 / 3]))


def test_the_fallback_is_torchvisions_centred_box():
    never = torch.full((3, 2 * CROP_TRIES + 2), 0.999)  # the whole area at aspect ~4/3: never fits
    for shape in ((20, 160), (160, 20), (30, 30)):
        assert crop_boxes(*shape, never, (1.0, 1.0)).tolist() == [torch_fallback(*shape).tolist()] * 3
    assert crop_boxes(20, 160, never, (1.0, 1.0)).tolist() == [[0, 66, 20, 27]] * 3  # w = round(20 * 4 / 3)
    assert crop_boxes(160, 20, never, (1.0, 1.0)).tolist() == [[66, 0, 27, 20]] * 3
    assert crop_boxes(30, 30, never, (1.0, 1.0)).tolist() == [[0, 0, 30, 30]] * 3


# ------------------------------------------------------------------------------------------------
# property tests: random images and parameters within the recipe ranges
# ------------------------------------------------------------------------------------------------


@st.composite
def image_batches(draw, channels=(1, 3)) -> torch.Tensor:
    c = draw(st.sampled_from(channels))
    h, w = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2, c, h, w), generator=g)
    if draw(st.booleans()):
        x = on_uint8_grid(x)
    if draw(st.booleans()):  # flat areas and saturated pixels: the edge cases of hue and contrast
        x = (x * 3).round() / 3
    return x


@settings(max_examples=fuzz_examples(60))
@given(x=image_batches(), op=st.sampled_from(["brightness", "contrast", "saturation"]),
       factor=st.floats(0.0, 1.4))
def test_property_blends_equal_torchvision(x, op, factor):
    count("augment_fidelity", 1)
    f, zero = per_image(factor, len(x)), torch.zeros(len(x))
    coefficients = {"brightness": (f, zero, zero), "contrast": (f, 1 - f, zero), "saturation": (f, zero, 1 - f)}[op]
    if op == "saturation" and x.shape[1] == 1:
        return  # torchvision returns one-channel images unchanged; the recipes draw 0 saturation for them
    expected = each(x, lambda i: TV_OPS[op](i, factor))
    assert max_error(P.blend(x, *coefficients), expected) <= (FLOAT if x.shape[1] == 1 or op == "brightness" else LUMA_GAP)


@settings(max_examples=fuzz_examples(60))
@given(x=image_batches(channels=(3,)), shift=st.floats(-0.5, 0.5))
def test_property_hue_equals_torchvision(x, shift):
    count("augment_fidelity", 1)
    assert max_error(P.shift_hue(x, per_image(shift, len(x))), each(x, lambda i: TF.adjust_hue(i, shift))) <= FLOAT


@settings(max_examples=fuzz_examples(40))
@given(x=image_batches(), sigma=st.floats(0.1, 2.0))
def test_property_blur_equals_torchvision(x, sigma):
    count("augment_fidelity", 1)
    k = blur_kernel_size(min(x.shape[-2:]))
    ours = P.gaussian_blur(x, P.gaussian_kernels(per_image(sigma, len(x)), k), torch.ones(len(x), dtype=torch.bool))
    assert max_error(ours, each(x, lambda i: TF.gaussian_blur(i, [k, k], [sigma, sigma]))) <= FLOAT


@settings(max_examples=fuzz_examples(60))
@given(x=image_batches(), data=st.data(), size=st.integers(1, 40))
def test_property_resized_crop_equals_torchvision(x, data, size):
    count("augment_fidelity", 1)
    height, width = x.shape[-2:]
    boxes = []
    for _ in range(len(x)):
        h, w = data.draw(st.integers(1, height)), data.draw(st.integers(1, width))
        boxes.append((data.draw(st.integers(0, height - h)), data.draw(st.integers(0, width - w)), h, w))
    expected = torch.stack([TF.resized_crop(i, *b, [size, size], antialias=True) for i, b in zip(x, boxes)])
    assert max_error(resized_crop(x, torch.tensor(boxes), size), expected) <= FLOAT


@settings(max_examples=fuzz_examples(30))
@given(x=image_batches(), seed=st.integers(0, 2**31 - 1), name=st.sampled_from(list(VIEWS)))
def test_property_views_equal_torchvision(x, seed, name):
    count("augment_fidelity", 1)
    recipe = VIEWS[name]
    if x.shape[1] == 1:
        recipe = ViewRecipe(recipe.crop_scale, (*recipe.jitter[:2], 0.0, 0.0), recipe.p_jitter, 0.0,
                            recipe.p_blur, recipe.p_solarize)
    size = min(x.shape[-2:]) if recipe.crop_scale is None else 12
    x = x[..., :size, :size] if recipe.crop_scale is None else x
    torch.manual_seed(seed)
    params = draw_view_params(recipe, len(x), *x.shape[-2:])
    expected = torch.stack([torchvision_view(i, params, n, recipe, size) for n, i in enumerate(x)])
    assert max_error(apply_view(x, params, recipe, size), expected) <= (FLOAT if x.shape[1] == 1 else 4 * LUMA_GAP)


def test_views_of_a_one_channel_recipe_build_from_the_same_ops():
    views = build_two_views("light", 28, 1, (0.5,), (0.25,))
    assert views.view1.recipe.jitter == (0.4, 0.4, 0.0, 0.0) and views.view1.recipe.p_gray == 0.0
    assert build_two_views("light", 32, 3, (0.5,) * 3, (0.25,) * 3).view2.recipe == \
        ViewRecipe((0.3, 1.0), (0.4, 0.4, 0.2, 0.05))
