"""Per-sample augmentation ops: shapes, identities, per-image randomness and their statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from scipy import stats
from torchvision.transforms import InterpolationMode

from cnnstress.core.augment import IMAGE_OPS, MIX_OPS, build_augmentation, sample_beta
from cnnstress.core.augment.ops import jitter_colors, rotate
from cnnstress.core.config import build
from cnnstress.core.errors import ConfigError

# Every op with parameters that make it act on every image (flip keeps its 0.5).
ALWAYS = {
    "crop": {"padding": 4, "p": 1.0},
    "flip": {"p": 0.5},
    "rotation": {"degrees": 30.0, "p": 1.0},
    "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "p": 1.0},
    "cutout": {"size": 8, "p": 1.0},
    "erasing": {"p": 1.0},
    "cutmix": {"alpha": 1.0, "p": 1.0},
    "mixup": {"alpha": 1.0, "p": 1.0},
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_op(name: str, **params: object):
    return IMAGE_OPS[name](**{**ALWAYS[name], **params})


def mix_op(name: str, **params: object):
    return MIX_OPS[name](**{**ALWAYS[name], **params})


def random_images(n: int = 16, c: int = 3, h: int = 32, w: int = 32, seed: int = 1):
    return torch.rand(n, c, h, w, generator=gen(seed))


def constant_images(values: torch.Tensor, c: int = 1, h: int = 32, w: int = 32) -> torch.Tensor:
    """``(N, c, h, w)`` images, image ``i`` filled with ``values[i]``."""
    return values.view(-1, 1, 1, 1).expand(-1, c, h, w).contiguous()


def test_registries_cover_every_op_and_config_file():
    assert list(IMAGE_OPS) == ["crop", "flip", "rotation", "color_jitter", "cutout", "erasing"]
    assert list(MIX_OPS) == ["cutmix", "mixup"]
    assert set(ALWAYS) == set(IMAGE_OPS) | set(MIX_OPS)


# -- contracts shared by every op ------------------------------------------------------------
@pytest.mark.parametrize("name", list(IMAGE_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_op_keeps_shape_dtype_range_and_input(name, dtype):
    images = random_images(8, h=24, w=40).to(dtype)
    before = images.clone()
    out = image_op(name)(images, gen())
    assert out.shape == images.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(images, before), "ops must not modify their input"


@pytest.mark.parametrize("name", list(MIX_OPS))
def test_mix_op_keeps_shapes_and_makes_distributions(name):
    images, targets = random_images(32), F.one_hot(torch.arange(32) % 10, 10).float()
    out, soft = mix_op(name)(images, targets, gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert soft.shape == (32, 10) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(32))
    assert (soft >= 0).all()


@pytest.mark.parametrize("name", list(IMAGE_OPS))
def test_image_op_with_p_zero_is_identity(name):
    images = random_images(32)
    assert torch.equal(image_op(name, p=0.0)(images, gen()), images)


@pytest.mark.parametrize("name", list(MIX_OPS))
def test_mix_op_with_p_zero_is_identity(name):
    images, targets = random_images(32), F.one_hot(torch.arange(32) % 10, 10).float()
    out, soft = mix_op(name, p=0.0)(images, targets, gen())
    assert torch.equal(out, images) and torch.equal(soft, targets)


@pytest.mark.parametrize("name", list(IMAGE_OPS))
def test_image_op_parameters_differ_across_the_batch(name):
    """Copies of one image come out differently: parameters are drawn per image."""
    images = random_images(1).expand(64, -1, -1, -1).contiguous()
    out = image_op(name)(images, gen())
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct == 2 if name == "flip" else distinct >= 40


@pytest.mark.parametrize("name", list(MIX_OPS))
def test_mix_op_weights_differ_across_the_batch(name):
    targets = F.one_hot(torch.arange(64), 64).float()
    _, soft = mix_op(name)(random_images(64), targets, gen())
    own = soft.diagonal()
    assert torch.unique(own[own < 1]).numel() >= 20


def ops(names) -> dict:
    """The ops of ``names`` with their :data:`ALWAYS` parameters."""
    return {name: {**IMAGE_OPS, **MIX_OPS}[name](**ALWAYS[name]) for name in names}


def test_pipeline_is_seeded_and_leaves_the_global_rng_alone():
    augment = build_augmentation(ops([*IMAGE_OPS, "mixup"]), num_classes=10)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen(5))
    targets = torch.arange(32) % 10
    state = torch.get_rng_state()
    a, soft_a = augment(images, targets, gen(7))
    b, soft_b = augment(images, targets, gen(7))
    c, _ = augment(images, targets, gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.dtype == torch.float32 and soft_a.shape == (32, 10)
    assert torch.equal(a, b) and torch.equal(soft_a, soft_b)
    assert not torch.equal(a, c)


def test_ops_apply_in_registry_order_whatever_the_config_order():
    forward = ops(IMAGE_OPS)
    backward = dict(reversed(forward.items()))
    a, b = build_augmentation(forward, 10), build_augmentation(backward, 10)
    assert [type(op) for op in b.image_ops] == list(IMAGE_OPS.values())
    images, targets = random_images(16), torch.zeros(16, dtype=torch.long)
    assert torch.equal(a(images, targets, gen())[0], b(images, targets, gen())[0])


# -- statistics over many images -------------------------------------------------------------
def test_flip_rate_is_p():
    row = torch.tensor([0.0, 0.25, 0.5, 0.75])
    out = image_op("flip", p=0.3)(row.view(1, 1, 1, 4).expand(20000, 1, 1, 4), gen())[:, 0, 0]
    flipped = (out == row.flip(0)).all(1)
    assert (flipped | (out == row).all(1)).all(), "each image is either kept or mirrored"
    assert stats.binomtest(int(flipped.sum()), 20000, 0.3).pvalue > 1e-3


def test_crop_offsets_cover_the_whole_range_uniformly_and_stay_in_bounds():
    n, size, pad = 10000, 8, 3
    base = (torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) + 1) / 100
    out = image_op("crop", padding=pad)(base.expand(n, 1, size, size).contiguous(), gen())
    # Output pixel (pad, pad) always comes from inside the image; its value gives the offset.
    source = (out[:, 0, pad, pad] * 100).round().long() - 1
    dy, dx = source // size, source % size  # = offset on each axis, in [0, 2 * pad]
    assert dy.min() == 0 and dy.max() == 2 * pad and dx.min() == 0 and dx.max() == 2 * pad
    counts = torch.bincount(dy * (2 * pad + 1) + dx, minlength=(2 * pad + 1) ** 2)
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    padded = F.pad(base, (pad, pad, pad, pad))[0]
    for i in range(50):  # every crop is exactly the shifted, zero-padded image
        expected = padded[:, dy[i] : dy[i] + size, dx[i] : dx[i] + size]
        assert torch.equal(out[i], expected)


def _boxes(mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bounding boxes ``(top, bottom, left, right)`` of ``(N, H, W)`` masks; checks they are
    exactly filled rectangles."""
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :]), "not a rectangle"
    h, w = mask.shape[1:]
    top = torch.where(rows.any(1), rows.int().argmax(1), 0)
    bottom = torch.where(rows.any(1), h - rows.flip(1).int().argmax(1), 0)
    left = torch.where(cols.any(1), cols.int().argmax(1), 0)
    right = torch.where(cols.any(1), w - cols.flip(1).int().argmax(1), 0)
    return top, bottom, left, right


@pytest.mark.parametrize("size", [4, 5, 13])
def test_cutout_zeroes_one_size_by_size_square_clipped_at_the_borders(size):
    n, h, w = 6000, 10, 12
    out = image_op("cutout", size=size)(torch.ones(n, 3, h, w), gen(size))
    hole = out == 0
    assert torch.equal(hole, hole[:, :1].expand_as(hole)), "same hole in every channel"
    assert torch.equal(out[~hole], torch.ones_like(out[~hole])), "the rest untouched"
    top, bottom, left, right = _boxes(hole[:, 0])
    # Rebuild the centre: the box is rows [cy - size // 2, cy - size // 2 + size) clipped.
    cy = torch.where(top > 0, top + size // 2, bottom - size + size // 2)
    cx = torch.where(left > 0, left + size // 2, right - size + size // 2)
    assert torch.equal(top, (cy - size // 2).clamp(min=0))
    assert torch.equal(bottom, (cy - size // 2 + size).clamp(max=h))
    assert torch.equal(right, (cx - size // 2 + size).clamp(max=w))
    assert ((bottom - top) * (right - left) == hole[:, 0].sum((1, 2))).all()
    if size < min(h, w):  # centres (recoverable unless clipped on both sides) cover the image
        for centre, extent in ((cy, h), (cx, w)):
            counts = torch.bincount(centre, minlength=extent)
            assert counts.numel() == extent and stats.chisquare(counts.numpy()).pvalue > 1e-3
        unclipped = (top > 0) & (bottom < h) & (left > 0) & (right < w)
        assert unclipped.any() and ((bottom - top)[unclipped] == size).all()
        assert ((right - left)[unclipped] == size).all()
        assert (bottom - top).min() < size, "holes near a border are clipped"


def test_cutout_fill_is_in_pixel_space():
    out = image_op("cutout", size=4, fill=0.25)(torch.ones(8, 3, 8, 8), gen())
    assert ((out == 0.25).sum((1, 2, 3)) == 3 * 16).sum() >= 1
    assert set(out.unique().tolist()) == {0.25, 1.0}


def test_erasing_matches_torchvision_random_erasing_distribution():
    n, h, w = 4000, 32, 32
    params = {"p": 0.5, "scale": (0.02, 0.33), "ratio": (0.3, 3.3), "value": 0.0}
    out = image_op("erasing", **params)(torch.ones(n, 1, h, w), gen())
    ours = _boxes(out[:, 0] == 0)
    erased = ours[1] > ours[0]
    assert stats.binomtest(int(erased.sum()), n, 0.5).pvalue > 1e-3
    # torchvision's RandomErasing on one image at a time (its per-sample semantics) as reference.
    torch.manual_seed(0)
    reference = T.RandomErasing(**params)
    theirs = _boxes(torch.stack([reference(torch.ones(1, h, w))[0] == 0 for _ in range(n)]))
    for name, a, b in (
        ("height", ours[1] - ours[0], theirs[1] - theirs[0]),
        ("width", ours[3] - ours[2], theirs[3] - theirs[2]),
        ("top", ours[0], theirs[0]),
        ("left", ours[2], theirs[2]),
    ):
        a, b = a[erased], b[theirs[1] > theirs[0]]
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, name
    heights, widths = (ours[1] - ours[0])[erased], (ours[3] - ours[2])[erased]
    assert heights.max() < h and widths.max() < w
    assert ours[0][erased].min() == 0 and (ours[1][erased] == h).any()


def test_rotate_matches_torchvision_per_image():
    images = random_images(6, h=24, w=40)
    angles = torch.tensor([0.0, 7.5, -12.0, 45.0, 90.0, -170.0])
    expected = torch.stack(
        [
            TF.rotate(image, float(angle), interpolation=InterpolationMode.BILINEAR)
            for image, angle in zip(images, angles, strict=True)
        ]
    )
    torch.testing.assert_close(rotate(images, angles), expected, atol=1e-5, rtol=0)


def test_rotation_angles_are_uniform_in_range():
    n, degrees = 3000, 20.0
    images = torch.zeros(n, 1, 32, 32)
    images[:, :, 15:17, 27:29] = 1.0  # a dot 12 px right of the centre (15.5, 15.5)
    out = image_op("rotation", degrees=degrees)(images, gen())[:, 0]
    mass = out.sum((1, 2))
    y = (out.sum(2) * torch.arange(32.0)).sum(1) / mass - 15.5
    x = (out.sum(1) * torch.arange(32.0)).sum(1) / mass - 15.5
    angle = torch.rad2deg(torch.atan2(-y, x))  # anticlockwise, rows grow downwards
    assert angle.abs().max() < degrees + 0.5
    assert angle.min() < -degrees + 0.5 and angle.max() > degrees - 0.5
    assert stats.kstest(angle.numpy(), stats.uniform(-degrees, 2 * degrees).cdf).pvalue > 1e-3


def test_jitter_colors_matches_torchvision_per_image():
    images = random_images(6)
    factors = torch.tensor([[1.0, 1.0, 1.0], [0.6, 1.4, 0.7], [1.4, 0.6, 1.3]]).repeat(2, 1)
    expected = torch.stack(
        [
            TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(im, b), c), s)
            for im, (b, c, s) in zip(images, factors.tolist(), strict=True)
        ]
    )
    torch.testing.assert_close(jitter_colors(images, factors), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["brightness", "contrast", "saturation"])
def test_color_jitter_factors_are_uniform_per_image(kind):
    n, strength = 4000, 0.5
    params = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, kind: strength}
    if kind == "brightness":  # mid grey scales by the factor
        images, recover = torch.full((n, 3, 4, 4), 0.5), lambda out: out[:, 0, 0, 0] / 0.5
    elif kind == "contrast":  # grey halves at 0.25 / 0.75: the spread scales by the factor
        images = torch.full((n, 3, 4, 4), 0.25)
        images[:, :, 2:] = 0.75
        recover = lambda out: (out[:, 0, 3, 0] - out[:, 0, 0, 0]) / 0.5  # noqa: E731
    else:  # a constant colour moves away from its grey level by the factor
        images = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(n, 3, 4, 4)
        grey = 0.2989 * 0.2 + 0.587 * 0.5 + 0.114 * 0.8
        recover = lambda out: (out[:, 0, 0, 0] - grey) / (0.2 - grey)  # noqa: E731
    factors = recover(image_op("color_jitter", **params)(images, gen()))
    low, high = 1 - strength, 1 + strength
    assert factors.min() >= low - 1e-4 and factors.max() <= high + 1e-4
    assert stats.kstest(factors.numpy(), stats.uniform(low, high - low).cdf).pvalue > 1e-3


@pytest.mark.parametrize(("a", "b"), [(0.2, 0.2), (1.0, 1.0), (3.0, 3.0), (2.0, 0.5)])
def test_sample_beta_follows_beta(a, b):
    draws = sample_beta(a, b, 20000, gen(3))
    assert draws.dtype == torch.float64 and draws.min() >= 0 and draws.max() <= 1
    assert stats.kstest(draws.numpy(), stats.beta(a, b).cdf).pvalue > 1e-3


def _mix_batches(name: str, batches: int, n: int = 64, **params: object):
    """Mix batches of constant images whose value and label identify them."""
    values = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
    images, targets = constant_images(values), F.one_hot(torch.arange(n), n).float()
    op, generator = mix_op(name, **params), gen(11)
    outs = [op(images, targets, generator) for _ in range(batches)]
    return values, torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def test_cutmix_label_weight_is_the_exact_pasted_area():
    n, h, w = 64, 32, 32
    values, out, soft = _mix_batches("cutmix", 40, n, p=0.5)
    own = values.repeat(40)
    pasted = out[:, 0] != own[:, None, None]
    top, bottom, left, right = _boxes(pasted)  # the pasted region is one rectangle
    fraction = (bottom - top) * (right - left) / (h * w)
    rows = torch.arange(len(out))
    torch.testing.assert_close(soft[rows, rows % n], 1 - fraction, atol=1e-6, rtol=0)
    # The partner's class gets the pasted fraction, and the pasted pixels are the partner's.
    others = soft.clone()
    others[rows, rows % n] = -1
    partner = torch.where(pasted.any((1, 2)), others.argmax(1), rows % n)
    torch.testing.assert_close(soft[rows, partner] * pasted.any((1, 2)), fraction.float())
    assert torch.equal(out[:, 0][pasted], values[partner][:, None, None].expand_as(pasted)[pasted])
    torch.testing.assert_close(soft @ values, out[:, 0].mean((1, 2)))
    mixed = pasted.any((1, 2)).float().mean().item()
    assert abs(mixed - 0.5 * (n - 1) / n) < 0.04, "about p of the images are mixed"
    assert (top == 0).any() and (bottom == h).any() and ((bottom - top) < (right - left)).any()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_mixup_lambda_follows_beta_and_mixes_images_and_labels_alike(alpha):
    n = 64
    values, out, soft = _mix_batches("mixup", 50, n, alpha=alpha)
    torch.testing.assert_close(out[:, 0, 0, 0], soft @ values)
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out)), "one weight per image"
    own = soft[torch.arange(len(soft)), torch.arange(len(soft)) % n]
    lam = own[own < 1]  # drop images paired with themselves
    assert len(lam) > 0.95 * len(own)
    assert stats.kstest(lam.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3


# -- config errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+augmentation.blur.x=1"],
            r"unknown augmentation op 'blur'; valid: crop, flip, rotation, "
            r"color_jitter, cutout, erasing, cutmix, mixup",
        ),
        (["augmentation=[cutout]", "augmentation.cutout.radius=3"], r"unknown key augmentation"),
        (
            ["augmentation=[cutout]", "augmentation.cutout.p=1.5"],
            r"augmentation.cutout.p must be a probability in \[0, 1\], got 1.5",
        ),
        (["augmentation.flip.p=-0.1"], r"augmentation.flip.p must be a probability"),
        (
            ["augmentation=[cutout]", "augmentation.cutout.size=0"],
            r"augmentation.cutout.size must be an integer >= 1, got 0",
        ),
        (
            ["augmentation=[cutout]", "augmentation.cutout.size=2.5"],
            r"augmentation.cutout.size must be an integer",
        ),
        (["augmentation.crop.padding=-1"], r"augmentation.crop.padding must be an integer >= 0"),
        (
            ["augmentation=[cutmix]", "augmentation.cutmix.alpha=0"],
            r"augmentation.cutmix.alpha must be a number > 0, got 0",
        ),
        (["augmentation=[cutmix,mixup]"], r"at most one batch-mixing op of cutmix, mixup"),
        (
            ["augmentation=[rotation]", "augmentation.rotation.degrees=lots"],
            r"augmentation.rotation.degrees must be a number",
        ),
        (
            ["augmentation=[rotation]", "augmentation.rotation.degrees=270"],
            r"augmentation.rotation.degrees must be a number in \[0, 180\], got 270",
        ),
        (
            ["augmentation=[color_jitter]", "augmentation.color_jitter.contrast=-0.2"],
            r"augmentation.color_jitter.contrast must be a number >= 0, got -0.2",
        ),
        (
            ["augmentation=[erasing]", "augmentation.erasing.scale=[0.5,0.1]"],
            r"augmentation.erasing.scale must be a pair \[min, max\] with 0 < min <= max <= 1",
        ),
        (
            ["augmentation.crop.padding_mode=wrap"],
            r"augmentation.crop.padding_mode must be one of constant, reflect, got 'wrap'",
        ),
        (
            ["augmentation.crop.padding_mode=reflect", "augmentation.crop.padding=32"],
            r"augmentation.crop.padding must be < 32 \(the image size\) with padding_mode=reflect",
        ),
    ],
)
def test_bad_augmentation_config_is_one_config_error_line(make_config, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        make_config(*overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", [*IMAGE_OPS, *MIX_OPS])
def test_every_op_config_file_composes_into_its_op(make_config, name):
    cfg = make_config(f"augmentation=[{name}]")
    op = build(cfg.augmentation[name])
    assert type(op) is {**IMAGE_OPS, **MIX_OPS}[name]
    assert op == type(op)()  # the file adds nothing to the op's defaults
