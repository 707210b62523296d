"""Peak inference memory per LR pixel of the fused network: the figure behind inference.py's tile size.

    python benchmarks/inference_memory.py [--model lkdn_s|lkdn] [--device cpu|cuda] [--backend auto] [--sizes 128 256 384]

For each square LR size, runs one forward pass in a fresh process (freed memory a process keeps would hide
the next peak) (random weights: memory does not depend on them) and prints the
peak memory above what was in use just before it (CPU: the process's resident high-water mark, Linux; CUDA:
torch.cuda.max_memory_allocated), divided by the number of LR pixels, and the same figure in float32 feature maps
of num_feat channels once the float32 output is taken off: the unit of inference.py's FEATURE_MAPS_AT_PEAK.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from models import lkdn, lkdn_s
from utils.device import resolve_device
from utils.measure.timing import MB, PeakMemory, reset_high_water_mark
from utils.runtime.backends import make_runner


def _in_use(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MB
    import psutil

    return psutil.Process().memory_info().rss / MB


def measure(args: argparse.Namespace, size: int) -> float:
    """Peak bytes above the memory in use before one forward pass on a size x size LR input."""
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = (lkdn_s if args.model == "lkdn_s" else lkdn)(fused=True).eval()
    runner = make_runner(model, device, args.backend)
    runner(torch.rand(1, 3, 32, 32, device=device))  # warm-up: one-off allocations are not per-pixel
    x = torch.rand(1, 3, size, size, device=device)
    before = _in_use(device)
    with PeakMemory(device) as peak:
        runner(x)
    return (peak.peak_mb - before) * MB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("lkdn_s", "lkdn"), default="lkdn_s")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384, 512])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print bytes
    args = p.parse_args()
    if args.one:
        print(measure(args, args.one))
        return
    model = (lkdn_s if args.model == "lkdn_s" else lkdn)(fused=True)
    output_bytes = 4 * 3 * model.scale**2  # per LR pixel
    if resolve_device(args.device).type == "cpu" and not reset_high_water_mark():
        print(
            "note: the kernel high-water mark cannot be reset here; falling back to psutil sampling (less exact)"
        )
    print(f"{args.model} fused, device {args.device}, backend {args.backend}")
    print(f"{'LR size':>9s} {'peak MB':>9s} {'bytes/LR px':>12s} {'feature maps':>13s}")
    for size in sorted(args.sizes):
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device]
        cmd += ["--backend", args.backend, "--one", str(size)]
        extra = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        print(
            f"{size:>9d} {extra / MB:9.1f} {extra / size**2:12.0f} {(extra / size**2 - output_bytes) / (4 * model.num_feat):13.1f}"
        )


if __name__ == "__main__":
    main()
