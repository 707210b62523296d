"""PSNR and SSIM exactly as the SR literature and the NTIRE efficient-SR kit compute them.

One metrics module for the whole repository (test_demo, validation, benchmarks), so that every number we
print is comparable with the published tables: images in [0, 255] (uint8 RGB), a `border` of `scale` pixels
cropped on every side, float64 arithmetic, luma from the ITU-R BT.601 formula MATLAB's `rgb2ycbcr` uses.
Channel order is RGB; convert cv2's BGR before calling.
"""

from __future__ import annotations

import cv2
import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_WINDOW = 11
SSIM_WINDOW = _SSIM_WINDOW  # an image needs at least this many pixels per side inside its border for SSIM
_SSIM_SIGMA = 1.5


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] of an RGB image in [0, 255] (HxWx3); HxW grayscale counts as R = G = B.

    Not rounded: the literature evaluates on the unrounded float luma.
    """
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return 16.0 + img * (_Y_WEIGHTS.sum() / 255.0)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects HxWx3 RGB or HxW gray, got shape {img.shape}")
    return 16.0 + img @ (_Y_WEIGHTS / 255.0)


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop height and width down to multiples of `scale` (bottom/right), as HR images are for evaluation."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _crop_border(img: np.ndarray, border: int) -> np.ndarray:
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(f"image of shape {img.shape} is too small for a border of {border}")
    return img[border:-border, border:-border]


def _pair(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SR and HR shapes differ: {sr.shape} vs {hr.shape}")
    return _crop_border(sr, border).astype(np.float64), _crop_border(hr, border).astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """PSNR (dB) over all channels of two images in [0, 255], `border` pixels cropped on every side."""
    return _psnr(*_pair(sr, hr, border))


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """PSNR (dB) on the BT.601 luma of two RGB images in [0, 255], `border` pixels cropped on every side."""
    sr, hr = _pair(sr, hr, border)
    return _psnr(rgb_to_y(sr), rgb_to_y(hr))


def _ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two float64 single-channel images: Gaussian 11x11 (sigma 1.5) statistics, valid region only."""
    if min(a.shape) < _SSIM_WINDOW:
        size = f"{_SSIM_WINDOW}x{_SSIM_WINDOW}"
        raise ValueError(f"SSIM needs at least {size} pixels after cropping the border, got {a.shape}")
    g = cv2.getGaussianKernel(_SSIM_WINDOW, _SSIM_SIGMA)
    window = g @ g.T
    m = _SSIM_WINDOW // 2

    def filt(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[m:-m, m:-m]

    mu_a, mu_b = filt(a), filt(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = filt(a * a) - mu_aa
    var_b = filt(b * b) - mu_bb
    cov = filt(a * b) - mu_ab
    ssim_map = ((2 * mu_ab + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_aa + mu_bb + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """SSIM of two images in [0, 255] (HxW or HxWxC; the mean of per-channel SSIMs), border cropped."""
    sr, hr = _pair(sr, hr, border)
    if sr.ndim == 2:
        return _ssim_2d(sr, hr)
    if sr.ndim != 3:
        raise ValueError(f"ssim expects HxW or HxWxC images, got shape {sr.shape}")
    return float(np.mean([_ssim_2d(sr[..., c], hr[..., c]) for c in range(sr.shape[2])]))


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int = 4) -> float:
    """SSIM on the BT.601 luma of two RGB images in [0, 255], border cropped."""
    sr, hr = _pair(sr, hr, border)
    return _ssim_2d(rgb_to_y(sr), rgb_to_y(hr))
