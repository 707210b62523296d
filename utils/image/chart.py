"""A resolution test chart drawn from scratch (numpy + cv2): the README's before/after picture needs an image we
may publish, and one whose ideal upscaled form is known exactly (the chart itself).

It holds what separates super-resolution from interpolation: text at falling sizes, line pairs at rising
frequencies, a fan of converging lines (a Siemens star), a zone plate (every frequency and orientation up to
Nyquist), coloured text and a grey ramp. Everything is anti-aliased (drawn at 4x and area-averaged) so the chart
is itself a clean high-resolution image.
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 768  # a multiple of 4: the x4 LR is exactly SIZE / 4
SUPERSAMPLE = 4
INK, PAPER = 20, 245


def _squared_radius(size: int) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    return x[:, None] ** 2 + x[None, :] ** 2


def zone_plate(size: int) -> np.ndarray:
    """A circular zone plate, 0.5 + 0.5 cos(pi f r^2), whose local frequency f r reaches Nyquist (0.5
    cycles/pixel) at the rim of the inscribed disc; float in [0, 1] (outside the disc it aliases: mask it)."""
    return 0.5 + 0.5 * np.cos(np.pi * (0.5 / (size / 2)) * _squared_radius(size))


def _siemens_star(canvas: np.ndarray, centre: tuple[int, int], radius: int, spokes: int) -> None:
    cy, cx = centre
    yy, xx = np.mgrid[-radius:radius, -radius:radius].astype(np.float64) + 0.5
    inside = np.hypot(yy, xx) < radius
    dark = (np.floor((np.arctan2(yy, xx) + np.pi) / (2 * np.pi) * spokes * 2) % 2) == 0
    region = canvas[cy - radius : cy + radius, cx - radius : cx + radius]
    region[inside & dark] = INK


def _line_pairs(canvas: np.ndarray, top: int, left: int, height: int, periods: list[int], s: int) -> None:
    """Groups of 4 dark bars, one group per period (in output pixels), vertical bars then horizontal."""
    x = left
    for period in periods:
        for k in range(4):
            x0 = x + k * period * s
            canvas[top : top + height, x0 : x0 + period * s // 2] = INK
        x += (4 * period + 6) * s
    y = top + height + 8 * s
    x = left
    for period in periods:
        for k in range(4):
            y0 = y + k * period * s
            canvas[y0 : y0 + period * s // 2, x : x + 4 * period * s] = INK
        x += (4 * period + 6) * s


def draw_test_chart(size: int = SIZE) -> np.ndarray:
    """The chart as a size x size uint8 RGB image (size a multiple of 4, at least 512); laid out for 768."""
    if size % 4 or size < 512:
        raise ValueError(f"draw_test_chart: size must be a multiple of 4 and >= 512, got {size}")
    s = SUPERSAMPLE
    big = np.full((size * s, size * s, 3), PAPER, dtype=np.uint8)
    font, aa = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA

    def text(line: str, x: int, y: int, scale: float, color=(INK, INK, INK), thickness: int = 1) -> None:
        cv2.putText(big, line, (x * s, y * s), font, scale * s, color, thickness * s, aa)

    # top left: text at falling sizes (cap heights of about 20 down to 7 output pixels) and in colour
    text("LKDN x4 super-resolution", 16, 40, 1.0, thickness=2)
    y = 76
    for scale in (0.65, 0.55, 0.45, 0.37, 0.31, 0.26):
        text("Sphinx of black quartz, judge my vow 0123456789", 16, y, scale)
        y += round(40 * scale) + 8
    for color, name in (((200, 30, 30), "red"), ((30, 140, 40), "green"), ((40, 60, 200), "blue")):
        text(f"{name}: Sphinx of black quartz, judge my vow", 16, y + 4, 0.45, color)
        y += 22

    # below the text: line pairs with periods of 8 down to 2 output pixels (2 is Nyquist)
    _line_pairs(big, (y + 10) * s, 16 * s, 40 * s, [8, 6, 5, 4, 3, 2], s)

    # bottom left: a Siemens star (48 spokes)
    _siemens_star(big, ((size - 180) * s, 180 * s), 160 * s, 48)
    out = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)

    # top right: a fan of thin lines converging on one point (drawn at full resolution, anti-aliased)
    origin = (size - 230, 24)
    for angle in range(0, 91, 5):
        dx, dy = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        end = (round(origin[0] + 210 * dx), round(origin[1] + 210 * dy))
        cv2.line(out, origin, end, (INK,) * 3, 1, aa)

    # bottom right: a zone plate; along the bottom: a grey ramp
    plate = size // 2 - 24
    top, left = size - plate - 24, size - plate - 16
    disc = _squared_radius(plate) <= (plate / 2) ** 2
    out[top : top + plate, left : left + plate][disc] = np.round(
        INK + (PAPER - INK) * zone_plate(plate)[disc, None]
    )
    ramp = np.round(np.linspace(0, 255, size - 32)).astype(np.uint8)
    out[size - 16 : size - 6, 16 : size - 16] = ramp[None, :, None]
    return out
