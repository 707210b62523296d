"""PyTorch's CPU GELU on a channels-last tensor against the same memory seen as NHWC (train/nhwc_gelu.py).

    python benchmarks/bench_gelu.py [--threads 1] [--batch 16] [--size 64] [--runs 15]

Medians of interleaved runs, forward and backward, for LKDN-S's 42- and 84-channel activations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"GELU, batch {args.batch} of {args.size}x{args.size}, {args.threads} thread(s), median of {args.runs}"
    )
    print(f"{'channels':>8} {'pass':>9} {'channels-last':>14} {'NHWC view':>10}  [ms]")
    for channels in (42, 84):
        x = torch.randn(args.batch, channels, args.size, args.size).contiguous(
            memory_format=torch.channels_last
        )
        grad = torch.randn_like(x)
        nhwc_x, nhwc_grad = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)
        runs = {
            ("forward", "channels-last"): lambda x=x: F.gelu(x),
            ("forward", "NHWC view"): lambda v=nhwc_x: F.gelu(v),
            ("backward", "channels-last"): lambda g=grad, x=x: torch.ops.aten.gelu_backward(g, x),
            ("backward", "NHWC view"): lambda g=nhwc_grad, v=nhwc_x: torch.ops.aten.gelu_backward(g, v),
        }
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for _ in range(args.runs + 1):  # the first round warms up
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        for step in ("forward", "backward"):
            cl, view = (
                1000 * statistics.median(times[step, layout][1:]) for layout in ("channels-last", "NHWC view")
            )
            print(f"{channels:>8} {step:>9} {cl:>14.2f} {view:>10.2f}")


if __name__ == "__main__":
    main()
