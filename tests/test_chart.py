"""The drawn test chart and the README figure script that upscales it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import LKDN
from utils.image.chart import SIZE, draw_test_chart, zone_plate

ROOT = Path(__file__).resolve().parents[1]


def test_chart_is_a_deterministic_rgb_image_with_colour():
    chart = draw_test_chart()
    assert chart.shape == (SIZE, SIZE, 3) and chart.dtype == np.uint8 and SIZE % 4 == 0
    np.testing.assert_array_equal(chart, draw_test_chart())
    assert (chart.max(axis=2).astype(int) - chart.min(axis=2) > 100).any()  # the coloured text
    with pytest.raises(ValueError):
        draw_test_chart(770)


def test_chart_has_detail_up_to_nyquist():
    chart = cv2.cvtColor(draw_test_chart(), cv2.COLOR_RGB2GRAY).astype(np.float64)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(chart - chart.mean())))
    freq = np.fft.fftshift(np.fft.fftfreq(SIZE))
    radius = np.hypot(freq[:, None], freq[None, :])
    # energy well above a quarter of Nyquist: what a x4 downscale removes and super-resolution must restore
    assert spectrum[radius > 0.3].sum() / spectrum.sum() > 0.1


def test_zone_plate_reaches_nyquist_at_the_rim():
    size = 200
    row = zone_plate(size)[size // 2]  # through the centre: 0.5 + 0.5 cos(pi f x^2), local frequency f x
    crossings = np.flatnonzero(np.diff(np.sign(row - 0.5)))
    assert np.diff(crossings[:6]).max() == 1  # at the rim: a sign change every pixel, i.e. Nyquist
    assert not np.any(np.abs(crossings - size / 2) < 8)  # at the centre: the wide first zone
    assert row.min() >= 0 and row.max() <= 1


def test_readme_figure_script_makes_a_small_png(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "narrow.pth"
    torch.save(LKDN(num_feat=8, num_blocks=2, fused=True).state_dict(), weights)
    out = tmp_path / "figure.png"
    cmd = [
        sys.executable,
        "scripts/make_readme_figure.py",
        "--model_path",
        str(weights),
        "--output",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "MATLAB bicubic: PSNR" in result.stdout
    figure = cv2.imread(str(out))
    assert figure.ndim == 3 and figure.shape[1] > 600
    assert out.stat().st_size < 400 * 1024
