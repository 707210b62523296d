"""oneDNN's depthwise-conv gradients on this CPU: why train/depthwise_backward.py exists, and what it leaves.

    python benchmarks/bench_depthwise.py [--threads 1] [--batch 16] [--size 64] [--runs 8]

One LKDN-S-sized batch (42 channels, channels-last). Prints, per kernel shape, the median time of the weight
gradient and of the input gradient as oneDNN computes them, and of the input gradient computed as a forward conv
with the flipped kernel (what training on a CPU runs), with the largest difference between the two.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

CHANNELS = 42
SHAPES = [(3, 3, 1), (5, 1, 1), (1, 5, 1), (5, 5, 1), (3, 3, 3), (5, 5, 3)]  # (kh, kw, dilation)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure_shape(x: torch.Tensor, grad: torch.Tensor, kh: int, kw: int, dilation: int, runs: int) -> str:
    """One row: weight gradient, input gradient, input gradient as a flipped forward conv, their difference."""
    weight = torch.randn(CHANNELS, 1, kh, kw)
    padding = [dilation * (kh - 1) // 2, dilation * (kw - 1) // 2]

    def backward(mask: list[bool]) -> tuple:
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], padding, [dilation] * 2, False, [0, 0], CHANNELS, mask
        )

    def as_forward() -> torch.Tensor:
        return F.conv2d(grad, weight.flip(2, 3), None, 1, padding, dilation, CHANNELS)

    wgrad = median_ms(lambda: backward([False, True, False]), runs)
    igrad = median_ms(lambda: backward([True, False, False]), runs)
    flipped = median_ms(as_forward, runs)
    diff = (backward([True, False, False])[0] - as_forward()).abs().max().item()
    return f"{wgrad:>12.1f} {igrad:>11.1f} {flipped:>11.1f} {diff:>10.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.batch, CHANNELS, args.size, args.size)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    print(
        f"depthwise conv gradients, batch {shape}, channels-last, {args.threads} thread(s), median of {args.runs}"
    )
    print(f"{'kernel':>12} {'weight grad':>12} {'input grad':>11} {'as forward':>11} {'max|diff|':>10}  [ms]")
    for kh, kw, dilation in SHAPES:
        name = f"{kh}x{kw}" + (f" d{dilation}" if dilation > 1 else "")
        print(f"{name:>12} " + measure_shape(x, grad, kh, kw, dilation, args.runs))


if __name__ == "__main__":
    main()
