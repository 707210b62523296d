"""The training step's slow CPU ops as oneDNN / PyTorch run them, against what train/ runs instead.

    python benchmarks/bench_train_ops.py [--threads 1] [--batch 16] [--size 64] [--runs 8]

One LKDN-S-sized batch (channels-last), median times in ms:
- per depthwise kernel shape (42 channels): the weight gradient by oneDNN and by the C++ kernel
  (train/conv_backward.py), the input gradient by oneDNN and as a forward conv with the flipped kernel, and the
  largest difference between the two input gradients;
- per 1x1 conv shape of LKDN-S: oneDNN's three gradients (one call per conv of the input) against the C++
  kernel's one pass;
- GELU forward and backward on a channels-last tensor and on the same memory seen as NHWC (train/nhwc_gelu.py).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from train.native_conv_grad import depthwise_weight_grad, pointwise_backward
from utils.cli import positive_int
from utils.measure.timing import median_ms

CHANNELS = 42
SHAPES = [(3, 3, 1), (5, 1, 1), (1, 5, 1), (5, 5, 1), (3, 3, 3), (5, 5, 3)]  # (kh, kw, dilation)
# LKDN-S's 1x1 convs (in channels, out channels of each conv of that input)
POINTWISE = [(42, (42,)), (42, (21,)), (84, (42,)), (210, (42,)), (42, (42, 21))]


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

    def native() -> tuple:
        return depthwise_weight_grad(grad, x, (kh, kw), (dilation,) * 2, tuple(padding), with_bias=False)

    wgrad = median_ms(lambda: backward([False, True, False]), runs)
    native_wgrad = median_ms(native, runs)
    igrad = median_ms(lambda: backward([True, False, False]), runs)
    flipped = median_ms(as_forward, runs)
    diff = (backward([True, False, False])[0] - as_forward()).abs().max().item()
    return f"{wgrad:>12.1f} {native_wgrad:>7.1f} {igrad:>11.1f} {flipped:>11.1f} {diff:>10.1e}"


def measure_pointwise(batch: int, size: int, in_ch: int, outs: tuple[int, ...], runs: int) -> str:
    """One row: the gradients of 1x1 convs of one input (input gradient summed) by oneDNN, one call per conv,
    then by the C++ kernel's one pass."""
    x = torch.randn(batch, in_ch, size, size).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(batch, co, size, size).contiguous(memory_format=torch.channels_last) for co in outs]
    weights = [torch.randn(co, in_ch, 1, 1) for co in outs]

    def onednn() -> torch.Tensor:
        parts = [
            torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True]
            )
            for g, w in zip(grads, weights, strict=True)
        ]
        return sum(p[0] for p in parts)

    native = median_ms(lambda: pointwise_backward(grads, x, weights, (True, True, True)), runs)
    return f"{median_ms(onednn, runs):>12.1f} {native:>7.1f}"


def measure_gelu(batch: int, size: int, channels: int, runs: int) -> list[str]:
    """Two rows: GELU forward and backward on a channels-last tensor, then on its NHWC view."""
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    view_x, view_grad = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)
    forward = [median_ms(lambda t=t: F.gelu(t), runs) for t in (x, view_x)]
    backward = [
        median_ms(lambda g=g, t=t: torch.ops.aten.gelu_backward(g, t), runs)
        for g, t in ((grad, x), (view_grad, view_x))
    ]
    return [
        f"{name:>12} {a:>11.2f} {b:>11.2f}" for name, (a, b) in (("forward", forward), ("backward", backward))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--size", type=positive_int, default=64)
    parser.add_argument("--runs", type=positive_int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.batch, CHANNELS, args.size, args.size)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    print(f"conv gradients, batch {shape}, channels-last, {args.threads} thread(s), median of {args.runs}")
    print(f"{'':>12} {'weight grad':>12} {'':>7} {'input grad':>11}")
    print(
        f"{'depthwise':>12} {'oneDNN':>12} {'native':>7} {'oneDNN':>11} {'as forward':>11} {'max|diff|':>10}  [ms]"
    )
    for kh, kw, dilation in SHAPES:
        name = f"{kh}x{kw}" + (f" d{dilation}" if dilation > 1 else "")
        print(f"{name:>12} " + measure_shape(x, grad, kh, kw, dilation, args.runs))
    print(f"{'1x1 in->out':>12} {'all grads':>12} {'native':>7}  [ms]")
    for in_ch, outs in POINTWISE:
        row = measure_pointwise(args.batch, args.size, in_ch, outs, args.runs)
        print(f"{f'{in_ch}->' + '+'.join(map(str, outs)):>12} " + row)
    print(f"{'GELU':>12} {'pass':>12} {'chan.-last':>11} {'NHWC view':>11}  [ms]")
    for channels in (42, 84):
        for row in measure_gelu(args.batch, args.size, channels, args.runs):
            print(f"{channels:>12} " + row)


if __name__ == "__main__":
    main()
