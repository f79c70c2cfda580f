"""Generated CIFAR-C corruptions: determinism, ranges, severity effect, fidelity to the
reference generator's library calls, published-file loading, and mCE."""

from __future__ import annotations

import colorsys
import io
import itertools

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

from cnnstress.core.errors import ConfigError, DataError
from cnnstress.stress import corruptions as C
from cnnstress.stress.corruption_suite import (
    corruption_errors,
    iter_corrupted,
    load_published,
    mce,
    published_types,
)

RANDOM_TYPES = {
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "fog",
    "elastic_transform",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def natural_like(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``(n, 3, 32, 32)``: smooth colour fields, a sharp-edged square, mild noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    mid = torch.rand(n, 3, 8, 8, generator=g)
    images = 0.6 * F.interpolate(low, size=32, mode="bicubic", align_corners=False)
    images += 0.3 * F.interpolate(mid, size=32, mode="bilinear", align_corners=False)
    for i in range(n):
        top, left = torch.randint(4, 20, (2,), generator=g).tolist()
        images[i, :, top : top + 10, left : left + 10] += 0.25
    images += 0.02 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return natural_like(16)


@pytest.fixture(scope="module")
def changes(images) -> dict[str, list[float]]:
    """Mean absolute change (grey levels) per type and severity 1..5."""
    out = {}
    for name in C.CORRUPTIONS:
        out[name] = [
            (C.corrupt(images, name, s, torch.Generator().manual_seed(1)).float() - images.float())
            .abs()
            .mean()
            .item()
            for s in C.SEVERITIES
        ]
    return out


def test_every_type_and_severity_is_deterministic_and_keeps_dtype_and_range(images):
    small = images[:4]
    unit = small.float() / 255
    for name in C.CORRUPTIONS:
        for severity in C.SEVERITIES:
            a = C.corrupt(small, name, severity, torch.Generator().manual_seed(7))
            b = C.corrupt(small, name, severity, torch.Generator().manual_seed(7))
            assert a.dtype == torch.uint8 and a.shape == small.shape, name
            assert torch.equal(a, b), f"{name} {severity} not deterministic"
            other = C.corrupt(small, name, severity, torch.Generator().manual_seed(8))
            assert torch.equal(a, other) != (name in RANDOM_TYPES), name
            f = C.corrupt(unit, name, severity, torch.Generator().manual_seed(7))
            assert f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 1, name
            # The float path is the uint8 path before truncation to 8 bits.
            assert (torch.floor(f * 255 + 1e-3) - a.float()).abs().max() <= 1, name


def test_severity_grows_the_change_where_the_published_parameters_do(changes):
    monotone = set(C.CORRUPTIONS) - {"glass_blur", "elastic_transform", "saturate"}
    for name in monotone:
        m = changes[name]
        assert all(a < b for a, b in itertools.pairwise(m)), f"{name}: {m}"
    # glass_blur: severities 1-3 are one pass of pixel copies with a small blur (sigma
    # 0.05/0.25/0.4), 4-5 two passes; the stronger blur of 5 smooths some copies away.
    m = changes["glass_blur"]
    assert min(m[3], m[4]) > 1.3 * max(m[:3])
    assert max(m[:3]) < 1.1 * min(m[:3])
    # elastic_transform: the random affine shrinks (2.56 -> 0.96 px) faster than the elastic
    # field grows, so the mean change falls with severity.
    m = changes["elastic_transform"]
    assert all(a > b for a, b in itertools.pairwise(m)), m
    # saturate: 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5, x2+0.1, x2.5+0.2).
    m = changes["saturate"]
    assert m[0] < m[1] and m[2] < m[3] < m[4] and m[2] == min(m)


def test_deterministic_types_match_the_reference_library_calls(images):
    """scipy / OpenCV / Pillow, exactly as make_cifar_c.py calls them."""
    x = images[:4]
    unit = x.float() / 255
    hwc = unit.permute(0, 2, 3, 1).double().numpy()
    pixels = x.permute(0, 2, 3, 1).numpy()
    g = torch.Generator()
    for s in C.SEVERITIES:
        sigma = [0.4, 0.6, 0.7, 0.8, 1][s - 1]
        ref = np.stack([ndi.gaussian_filter(im, (sigma, sigma, 0), mode="nearest") for im in hwc])
        got = C.gaussian_blur(unit, s, g).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-5)

        radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
        grid = np.arange(-8, 9)
        xx, yy = np.meshgrid(grid, grid)
        disk = np.array(xx**2 + yy**2 <= radius**2, dtype=np.float32)
        kernel = cv2.GaussianBlur(disk / disk.sum(), ksize=(3, 3), sigmaX=alias)
        ref = np.stack([cv2.filter2D(im, -1, kernel) for im in hwc])
        got = C.defocus_blur(unit, s, g).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-5)

        def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            img = ndi.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
            trim = (img.shape[0] - 32) // 2
            return img[trim : trim + 32, trim : trim + 32]

        zooms = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][s - 1], 0.01)
        ref = np.stack(
            [(im + sum(clipped_zoom(im, z) for z in zooms)) / (len(zooms) + 1) for im in hwc]
        )
        got = C.zoom_blur(unit, s, g).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-5)

        c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
        ref = np.stack(
            [
                np.asarray(
                    Image.fromarray(im)
                    .resize((int(32 * c),) * 2, Image.BOX)
                    .resize((32, 32), Image.BOX)
                )
                for im in pixels
            ]
        )
        got = C.corrupt(x, "pixelate", s).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, ref)

        refs = []
        for im in pixels:
            buffer = io.BytesIO()
            Image.fromarray(im).save(buffer, "JPEG", quality=[80, 65, 58, 50, 40][s - 1])
            refs.append(np.asarray(Image.open(buffer)))
        got = C.corrupt(x, "jpeg_compression", s).permute(0, 2, 3, 1).numpy()
        assert np.abs(got.astype(int) - np.stack(refs)).max() <= 2


def test_hsv_types_match_colorsys_per_pixel():
    """brightness / saturate on random colours (no ties between channels): skimage's HSV
    conventions agree with colorsys there."""
    unit = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    pixels = unit.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    for s in C.SEVERITIES:
        shift = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
        scale, offset = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s - 1]
        bright, sat = [], []
        for r, g, b in pixels:
            h, sv, v = colorsys.rgb_to_hsv(r, g, b)
            bright.append(colorsys.hsv_to_rgb(h, sv, min(v + shift, 1.0)))
            sat.append(colorsys.hsv_to_rgb(h, float(np.clip(sv * scale + offset, 0, 1)), v))
        for name, ref in (("brightness", bright), ("saturate", sat)):
            got = getattr(C, name)(unit, s, None).permute(0, 2, 3, 1).reshape(-1, 3)
            np.testing.assert_allclose(got.numpy(), np.array(ref), atol=1e-5, err_msg=name)


def test_random_types_match_the_reference_given_the_same_draws(images):
    """elastic_transform (OpenCV affine + scipy map_coordinates) and glass_blur (NumPy loop)."""
    x = images[:3]
    unit = x.float() / 255
    hwc = unit.permute(0, 2, 3, 1).double().numpy()
    rng = np.random.default_rng(0)
    for s in (2, 5):
        alpha, sigma, affine = (32 * a for a in [(0.05, 0.2, 0.07), (0.1, 0.03, 0.03)][s // 5])
        offsets = rng.uniform(-1, 1, (3, 3, 2))
        noise = rng.uniform(-1, 1, (2, 3, 32, 32))
        refs = []
        for i, im in enumerate(hwc.astype(np.float32)):
            pts1 = np.float32([[26, 26], [26, 6], [6, 6]])
            pts2 = pts1 + (affine * offsets[i]).astype(np.float32)
            warped = cv2.warpAffine(
                im,
                cv2.getAffineTransform(pts1, pts2),
                (32, 32),
                borderMode=cv2.BORDER_REFLECT_101,
            )
            dx, dy = (
                ndi.gaussian_filter(noise[k, i], sigma, mode="reflect", truncate=3) * alpha
                for k in (0, 1)
            )
            xs, ys, zs = np.meshgrid(np.arange(32), np.arange(32), np.arange(3))
            coords = [(ys + dy[..., None]).ravel(), (xs + dx[..., None]).ravel(), zs.ravel()]
            out = ndi.map_coordinates(warped, coords, order=1, mode="reflect").reshape(32, 32, 3)
            refs.append(np.clip(out, 0, 1))
        got = C.elastic_core(
            unit,
            torch.from_numpy(offsets).float(),
            torch.from_numpy(noise[0]).float(),
            torch.from_numpy(noise[1]).float(),
            s,
        )
        np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), np.stack(refs), atol=1e-4)

        sigma, delta, iterations = C._GLASS[s - 1]
        shifts = [
            tuple(torch.from_numpy(rng.integers(-1, 1, (3, 30, 30))) for _ in range(2))
            for _ in range(iterations)
        ]
        refs = []
        for i, im in enumerate(hwc):
            pix = np.uint8(ndi.gaussian_filter(im, (sigma, sigma, 0), mode="nearest") * 255)
            for dys, dxs in shifts:
                for h in range(32 - delta, delta, -1):
                    for w in range(32 - delta, delta, -1):
                        hp, wp = h + int(dys[i, h - 2, w - 2]), w + int(dxs[i, h - 2, w - 2])
                        pix[h, w], pix[hp, wp] = pix[hp, wp], pix[h, w]  # the reference's "swap"
            ref = ndi.gaussian_filter(pix / 255.0, (sigma, sigma, 0), mode="nearest")
            refs.append(np.clip(ref, 0, 1))
        got = C.glass_core(unit, s, shifts).permute(0, 2, 3, 1).numpy()
        # float32 vs float64 before the reference's uint8 truncation: at most one grey level
        np.testing.assert_allclose(got, np.stack(refs), atol=1.01 / 255)


def test_iter_corrupted_is_deterministic_per_seed_and_batch(images):
    a = torch.cat(list(iter_corrupted(images, "gaussian_noise", 3, seed=0, batch_size=5)))
    b = torch.cat(list(iter_corrupted(images, "gaussian_noise", 3, seed=0, batch_size=5)))
    c = torch.cat(list(iter_corrupted(images, "gaussian_noise", 3, seed=1, batch_size=5)))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == images.shape


def test_bad_names_and_severities_raise_config_errors(images):
    with pytest.raises(ConfigError, match=r"motion_blur is not generated.*valid types: gaussian"):
        C.corrupt(images, "motion_blur", 1)
    with pytest.raises(ConfigError, match=r"severity must be one of 1, 2, 3, 4, 5, got"):
        C.corrupt(images, "fog", 6)


def write_published(root, names, per_severity=4, labels_per_block=False):
    """Files in the published layout: 5 severities x ``per_severity`` images, stacked."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for name in names:
        data[name] = rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", data[name])
    labels = rng.integers(0, 10, per_severity).astype(np.uint8)
    np.save(root / "labels.npy", labels if labels_per_block else np.tile(labels, 5))
    return data, labels


@pytest.mark.parametrize("labels_per_block", [False, True])
def test_published_layout_is_read_by_severity_block(tmp_path, labels_per_block):
    data, labels = write_published(tmp_path, ["fog", "frost"], 4, labels_per_block)
    assert published_types(tmp_path) == ["frost", "fog"]  # the paper's order
    for severity in C.SEVERITIES:
        split = load_published(tmp_path, "frost", severity)
        block = data["frost"][(severity - 1) * 4 : severity * 4]
        np.testing.assert_array_equal(split.images.permute(0, 2, 3, 1).numpy(), block)
        np.testing.assert_array_equal(split.labels.numpy(), labels)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    some = load_published(tmp_path, "fog", 2, torch.tensor([1, 3]))
    np.testing.assert_array_equal(some.images.permute(0, 2, 3, 1).numpy(), data["fog"][[5, 7]])


def test_malformed_published_files_raise_data_errors(tmp_path):
    write_published(tmp_path, ["fog"], 4)
    with pytest.raises(DataError, match=r"no snow\.npy.*found: fog"):
        load_published(tmp_path, "snow", 1)
    np.save(tmp_path / "contrast.npy", np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="not 5 severities"):
        load_published(tmp_path, "contrast", 1)
    np.save(tmp_path / "contrast.npy", np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 \(5 x N, 32, 32, 3\)"):
        load_published(tmp_path, "contrast", 1)
    np.save(tmp_path / "labels.npy", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="3 labels for 20 images"):
        load_published(tmp_path, "fog", 1)


def test_mce_follows_the_paper():
    run = {"fog": {1: 0.2, 2: 0.4}, "contrast": {1: 0.3, 2: 0.5}, "pixelate": {1: 0.1}}
    base = {"fog": {1: 0.3, 2: 0.5}, "contrast": {1: 0.2, 2: 0.4}}
    out = mce(run, base, clean_error=0.1, baseline_clean_error=0.15)
    assert out["corruptions/fog/ce"] == pytest.approx(0.6 / 0.8)
    assert out["corruptions/contrast/ce"] == pytest.approx(0.8 / 0.6)
    assert out["corruptions/mce"] == pytest.approx((0.6 / 0.8 + 0.8 / 0.6) / 2)
    assert out["corruptions/fog/relative_ce"] == pytest.approx((0.6 - 0.2) / (0.8 - 0.3))
    assert out["corruptions/relative_mce"] == pytest.approx(
        ((0.6 - 0.2) / (0.8 - 0.3) + (0.8 - 0.2) / (0.6 - 0.3)) / 2
    )
    assert "corruptions/pixelate/ce" not in out
    assert mce(run, run)["corruptions/mce"] == pytest.approx(1.0)
    flat = {
        "corruptions/fog/1/acc": 0.75,
        "corruptions/fog/mean_acc": 0.5,
        "corruptions/clean_acc": 1,
    }
    assert corruption_errors(flat) == {"fog": {1: pytest.approx(0.25)}}
    with pytest.raises(ValueError, match="no benchmark corruption type in common"):
        mce({"fog": {1: 0.1}}, {"contrast": {1: 0.1}})
    # The extra ("validation") types never enter mCE.
    extra = {"fog": {1: 0.2}, "speckle_noise": {1: 0.9}}
    assert mce(extra, {"fog": {1: 0.4}, "speckle_noise": {1: 0.1}})["corruptions/mce"] == 0.5
