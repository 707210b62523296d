"""What bf16 inference costs in PSNR: float32 vs bfloat16 runners on Set5 and B100 (Y channel, x4).

    python benchmarks/bf16_psnr.py [--model_path CKPT] [--datasets Set5 B100] [--backends reference fast]

The authors' fused LKDN-S checkpoint by default (../shared/reference/LKDN-S_del_rep_x4.pth); LR images are the
MATLAB-bicubic ones in ../shared/data/benchmark. Outputs are quantised to uint8 as the NTIRE kit does, PSNR is on
the BT.601 luma with a 4-pixel border, averaged over the images (utils.measure.metrics). For each backend the script
prints the float32 PSNR, the bf16 PSNR and their difference, plus how many uint8 output values bf16 changed.
bf16 on a CPU without native bf16 instructions is slow; the figure that matters here is the PSNR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from utils.errors import UserError, run_cli
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor, to_uint8
from utils.measure.metrics import psnr_y
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
AUTHORS_FUSED = SHARED / "reference" / "LKDN-S_del_rep_x4.pth"
BENCHMARK = SHARED / "data" / "benchmark"


def image_pairs(dataset: str) -> list[tuple[Path, Path]]:
    hr_dir, lr_dir = BENCHMARK / dataset / "HR", BENCHMARK / dataset / "LR_bicubic_x4"
    if not hr_dir.is_dir() or not lr_dir.is_dir():
        raise UserError(
            f"{BENCHMARK / dataset}: no HR/ and LR_bicubic_x4/ folders; pass --datasets that exist"
        )
    return [(lr_dir / hr.name, hr) for hr in sorted(hr_dir.glob("*.png"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", default=str(AUTHORS_FUSED))
    p.add_argument("--datasets", nargs="+", default=["Set5", "B100"])
    p.add_argument("--backends", nargs="+", default=["reference", "fast"])
    args = p.parse_args()
    model = build_model_from_checkpoint(args.model_path, fused=True)
    scale = model.scale
    runners = {
        (backend, precision): make_runner(model, "cpu", backend, precision=precision)
        for backend in args.backends
        for precision in ("fp32", "bf16")
    }
    print(f"weights: {args.model_path}; PSNR on Y, border {scale}, uint8 outputs, mean over images")
    head = f"{'dataset':8s} {'backend':10s} {'fp32 dB':>8s} {'bf16 dB':>8s} {'delta dB':>9s}"
    print(head + f" {'worst image delta':>18s} {'uint8 values changed':>21s} {'max |change|':>12s}")
    for dataset in args.datasets:
        pairs = image_pairs(dataset)
        for backend in args.backends:
            fp32, bf16, changed, total, worst_change = [], [], 0, 0, 0
            for lr_path, hr_path in pairs:
                lr, hr = to_tensor(read_rgb(lr_path)), read_rgb(hr_path)
                out32 = to_uint8(runners[backend, "fp32"](lr))
                out16 = to_uint8(runners[backend, "bf16"](lr))
                fp32.append(psnr_y(out32, hr, border=scale))
                bf16.append(psnr_y(out16, hr, border=scale))
                diff = np.abs(out32.astype(np.int16) - out16.astype(np.int16))
                changed += int((diff > 0).sum())
                total += diff.size
                worst_change = max(worst_change, int(diff.max()))
            deltas = np.array(bf16) - np.array(fp32)
            print(
                f"{dataset:8s} {backend:10s} {np.mean(fp32):8.3f} {np.mean(bf16):8.3f} {np.mean(deltas):+9.3f} "
                f"{deltas.min():+18.3f} {changed / total:20.1%} {worst_change:12d}"
            )


if __name__ == "__main__":
    run_cli(main)
