"""Metrics against hand-computable cases and an independent per-window SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.measure.metrics import crop_to_multiple, psnr_rgb, psnr_y, rgb_to_y, ssim, ssim_y


def _rand_img(seed: int, h: int = 32, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _noisy(img: np.ndarray, seed: int, amp: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amp, amp + 1, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("rgb", "y"),
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),
        ((255, 0, 0), 16.0 + 65.481),
        ((0, 255, 0), 16.0 + 128.553),
        ((0, 0, 255), 16.0 + 24.966),
        ((10, 20, 30), 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255.0),
    ],
)
def test_rgb_to_y_known_colours(rgb, y):
    img = np.full((2, 3, 3), rgb, dtype=np.uint8)
    out = rgb_to_y(img)
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_allclose(out, y, rtol=0, atol=1e-12)


def test_rgb_to_y_gray_is_replicated_rgb():
    gray = _rand_img(0)[..., 0]
    np.testing.assert_allclose(rgb_to_y(gray), rgb_to_y(np.stack([gray] * 3, -1)), rtol=0, atol=1e-12)


def test_psnr_constant_offset():
    hr = np.full((20, 20, 3), 100, dtype=np.uint8)
    sr = hr + np.uint8(5)
    assert psnr_rgb(sr, hr) == pytest.approx(20 * math.log10(255 / 5), abs=1e-10)
    # The luma difference of a grey offset d is d * 219 / 255.
    assert psnr_y(sr, hr) == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)), abs=1e-10)


def test_psnr_mse_over_all_channels():
    hr = np.zeros((10, 10, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[..., 0] = 6  # one channel off by 6: MSE = 36 / 3 = 12
    assert psnr_rgb(sr, hr, border=0) == pytest.approx(10 * math.log10(255**2 / 12), abs=1e-10)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    img = _rand_img(1)
    assert psnr_rgb(img, img) == math.inf
    assert psnr_y(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim_y(img, img) == pytest.approx(1.0, abs=1e-12)


def test_psnr_is_not_rounded_or_uint8_wrapped():
    # uint8 subtraction would wrap around: 0 - 1 = 255. The metric must compute in float.
    hr = np.zeros((12, 12, 3), dtype=np.uint8)
    sr = np.ones((12, 12, 3), dtype=np.uint8)
    assert psnr_rgb(hr, sr) == pytest.approx(20 * math.log10(255), abs=1e-10)


@pytest.mark.parametrize("metric", [psnr_rgb, psnr_y, ssim, ssim_y])
def test_border_pixels_are_excluded(metric):
    hr = _rand_img(2)
    sr = _noisy(hr, 3, 9)
    base = metric(sr, hr, border=4)
    changed = sr.copy()
    changed[:4] = 0
    changed[-4:] = 255
    changed[:, :4] = 0
    changed[:, -4:] = 255
    assert metric(changed, hr, border=4) == base
    # ... and the interior is not: the same change one pixel further in is seen.
    inner = sr.copy()
    inner[4] = 0
    assert metric(inner, hr, border=4) != base
    # border=0 sees the edge.
    assert metric(changed, hr, border=0) != metric(sr, hr, border=0)


def test_ssim_symmetric():
    a, b = _rand_img(4), _rand_img(5)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert ssim_y(a, b) == pytest.approx(ssim_y(b, a), abs=1e-12)


def test_ssim_of_two_constant_images():
    # Zero variance everywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 50.0, 80.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    sr = np.full((16, 16), a)
    hr = np.full((16, 16), b)
    assert ssim(sr, hr, border=0) == pytest.approx(expected, abs=1e-9)


def _ssim_per_window(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM: explicit Gaussian-weighted statistics of every full 11x11 window."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_per_window_definition():
    hr = _rand_img(6, 23, 27)
    sr = _noisy(hr, 7, 30)
    a, b = sr.astype(np.float64), hr.astype(np.float64)
    expected = np.mean([_ssim_per_window(a[..., c], b[..., c]) for c in range(3)])
    expected_cropped = np.mean([_ssim_per_window(a[2:-2, 2:-2, c], b[2:-2, 2:-2, c]) for c in range(3)])
    assert ssim(sr, hr, border=0) == pytest.approx(expected, abs=1e-10)
    assert ssim(sr, hr, border=2) == pytest.approx(expected_cropped, abs=1e-10)
    assert ssim_y(sr, hr, border=0) == pytest.approx(_ssim_per_window(rgb_to_y(sr), rgb_to_y(hr)), abs=1e-10)
    assert 0 < ssim(sr, hr, border=0) < 1


def test_shape_mismatch_and_tiny_images_are_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_rgb(_rand_img(8, 10, 10), _rand_img(9, 10, 12))
    with pytest.raises(ValueError, match="too small"):
        psnr_y(_rand_img(8, 8, 8), _rand_img(9, 8, 8), border=4)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(_rand_img(8, 16, 16), _rand_img(9, 16, 16), border=4)


def test_crop_to_multiple():
    img = _rand_img(10, 35, 42)
    out = crop_to_multiple(img, 4)
    assert out.shape == (32, 40, 3)
    np.testing.assert_array_equal(out, img[:32, :40])
    assert crop_to_multiple(img[:32, :40], 4).shape == (32, 40, 3)
