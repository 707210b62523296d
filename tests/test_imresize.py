"""matlab_imresize: bit-exact against MATLAB-made benchmark LR, and the float/uint8/shape contracts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.image.imresize import matlab_imresize


def test_reproduces_every_benchmark_lr(benchmark_dir):
    hr_files = sorted(benchmark_dir.glob("*/HR/*.png"))
    assert len(hr_files) == 119  # Set5 + Set14 + B100
    mismatches = []
    for hr_path in hr_files:
        lr_path = hr_path.parent.parent / "LR_bicubic_x4" / hr_path.name
        hr = cv2.imread(str(hr_path), cv2.IMREAD_UNCHANGED)  # keeps grayscale 2-D: covers the HxW path
        lr = cv2.imread(str(lr_path), cv2.IMREAD_UNCHANGED)
        out = matlab_imresize(hr, 1 / 4)
        if out.shape != lr.shape or not np.array_equal(out, lr):
            mismatches.append(hr_path.name)
    assert mismatches == []


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def _round(x: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(x, 0, 255) + 0.5)


def test_uint8_rounds_after_each_pass_rows_first(image):
    image = image[:36, :52]  # multiples of 4: output_shape then gives the same scale as scale=1/4
    rows = matlab_imresize(image.astype(np.float64), output_shape=(9, 52))  # a scale of 1 is the identity
    both = matlab_imresize(_round(rows), output_shape=(9, 13))
    out = matlab_imresize(image, 1 / 4)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _round(both).astype(np.uint8))


def test_float_path_does_not_round(image):
    out = matlab_imresize(image.astype(np.float32) / 255, 1 / 4)
    assert out.dtype == np.float32
    assert not np.allclose(out * 255, np.round(out * 255))
    assert np.abs(out * 255 - matlab_imresize(image, 1 / 4)).max() <= 1.0  # the rounding steps, nothing else


def test_odd_sizes_channels_and_output_shape(image):
    assert matlab_imresize(image, 1 / 4).shape == (10, 14, 3)  # ceil(37/4), ceil(53/4): MATLAB's rule
    assert matlab_imresize(image, output_shape=(7, 11)).shape == (7, 11, 3)
    per_channel = np.stack([matlab_imresize(image[..., c], 1 / 3) for c in range(3)], axis=-1)
    np.testing.assert_array_equal(matlab_imresize(image, 1 / 3), per_channel)


def test_constant_image_stays_constant():
    flat = np.full((21, 30, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(matlab_imresize(flat, 1 / 4), np.full((6, 8, 3), 77, dtype=np.uint8))
    out = matlab_imresize(np.full((21, 30), 0.3), 1 / 4)
    np.testing.assert_allclose(out, 0.3, rtol=0, atol=1e-12)


def test_upscale_by_4_interpolates_a_ramp():
    ramp = np.tile(np.arange(20, dtype=np.float64), (9, 1))  # value = 0-based column
    out = matlab_imresize(ramp, 4)
    assert out.shape == (36, 80)
    u = np.arange(1, 81)  # 1-based output columns
    expected = u / 4 + 0.5 * (1 - 1 / 4) - 1  # their 0-based input coordinate
    interior = slice(12, 68)  # away from the replicated border, where the ramp bends
    np.testing.assert_allclose(
        out[:, interior], np.broadcast_to(expected[interior], (36, 56)), rtol=0, atol=1e-12
    )


def test_integer_output_is_clipped_not_wrapped():
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert matlab_imresize(checker.astype(np.float64), 4).max() > 255  # the cubic kernel overshoots...
    out = matlab_imresize(checker, 4)
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0  # ...and uint8 saturates
    out16 = matlab_imresize(checker.astype(np.uint16) * 257, 4)
    assert out16.dtype == np.uint16 and out16.max() == 65535


@pytest.mark.parametrize("scale", [0, -0.25, float("nan"), float("inf")])
def test_rejects_bad_scale(image, scale):
    with pytest.raises(ValueError, match="scale"):
        matlab_imresize(image, scale)


def test_rejects_bad_arguments(image):
    with pytest.raises(ValueError):
        matlab_imresize(image)
    with pytest.raises(ValueError):
        matlab_imresize(image, 0.5, output_shape=(4, 4))
    with pytest.raises(ValueError):
        matlab_imresize(image, output_shape=(0, 4))
    with pytest.raises(ValueError):
        matlab_imresize(image[None], 0.5)
    with pytest.raises(ValueError):
        matlab_imresize(image.astype(np.int16), 0.5)
