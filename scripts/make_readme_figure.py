"""The README's before/after picture: MATLAB bicubic vs LKDN x4 on a test chart this repository draws itself.

    python scripts/make_readme_figure.py                      # the bundled checkpoint (model_zoo/)
    python scripts/make_readme_figure.py --model_path LKDN-S_x4.pth

Draws the chart (utils/image/chart.py), downscales it x4 with the MATLAB-exact bicubic (as every SR benchmark's LR
is made), upscales that LR with MATLAB bicubic and with inference.py, and writes crops side by side (bicubic,
LKDN, the original chart; shown at 2x, nearest neighbour) to docs/before_after_x4.png. Prints the PSNR of both
upscalings against the chart.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

import inference
from models import BUNDLED_CHECKPOINT, config_from_state_dict
from utils.errors import run_cli
from utils.files.checkpoint import config_name, read_state_dict
from utils.files.image_io import read_rgb, write_image, write_rgb
from utils.image.chart import draw_test_chart
from utils.image.imresize import matlab_imresize
from utils.measure.metrics import psnr_rgb, psnr_y

SCALE = 4
OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "before_after_x4.png"
CROPS = ((10, 12, 150, 150), (500, 100, 150, 150))  # (top, left, height, width) in chart pixels: text, star
ZOOM = 2
GAP, HEADER = 6, 30
PAPER = 255


def compose(columns: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Crops of each image side by side (one row per crop), zoomed, with a title above each column."""
    rows = []
    for top, left, height, width in CROPS:
        cells = [img[top : top + height, left : left + width] for _, img in columns]
        cells = [cv2.resize(c, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST) for c in cells]
        spacer = np.full((height * ZOOM, GAP, 3), PAPER, np.uint8)
        rows.append(np.hstack([x for cell in cells for x in (cell, spacer)][:-1]))
    width = rows[0].shape[1]
    header = np.full((HEADER, width, 3), PAPER, np.uint8)
    cell_width = CROPS[0][3] * ZOOM + GAP
    for i, (title, _) in enumerate(columns):
        size = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0]
        x = i * cell_width + (cell_width - GAP - size[0]) // 2
        cv2.putText(header, title, (x, HEADER - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    spacer = np.full((GAP, width, 3), PAPER, np.uint8)
    return np.vstack([header] + [x for row in rows for x in (row, spacer)][:-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", help="checkpoint (default: the bundled one in model_zoo/)")
    p.add_argument("--label", help="the network's column title (default: its configuration, e.g. LKDN-S)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--output", type=Path, default=OUTPUT)
    args = p.parse_args()

    chart = draw_test_chart()
    lr = matlab_imresize(chart, 1 / SCALE)
    bicubic = matlab_imresize(lr, SCALE)
    with tempfile.TemporaryDirectory() as tmp:
        write_rgb(Path(tmp) / "chart.png", lr)
        argv = ["-i", str(Path(tmp) / "chart.png"), "-o", tmp, "--device", args.device]
        code = inference.main(argv + (["--model_path", args.model_path] if args.model_path else []))
        if code:
            return code
        sr = read_rgb(Path(tmp) / f"chart_x{SCALE}.png")
    if args.label is None:
        found = config_from_state_dict(read_state_dict(args.model_path or BUNDLED_CHECKPOINT))
        args.label = config_name(found["num_feat"], found["num_blocks"])
    for name, img in (("MATLAB bicubic", bicubic), (args.label, sr)):
        print(
            f"{name:>15s}: PSNR {psnr_rgb(img, chart, SCALE):.2f} dB (RGB), {psnr_y(img, chart, SCALE):.2f} dB (Y)"
        )
    figure = compose([("bicubic (MATLAB)", bicubic), (f"{args.label} x{SCALE}", sr), ("original", chart)])
    write_image(args.output, figure, (cv2.IMWRITE_PNG_COMPRESSION, 9))
    print(
        f"wrote {args.output} ({figure.shape[1]}x{figure.shape[0]}, {args.output.stat().st_size // 1024} KB)"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
