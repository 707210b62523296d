"""How long each thread of a team waits at the native kernels' barriers, per forward pass.

    python benchmarks/barrier_waits.py [--threads 2] [--sizes 80x120 256x256] [--runs 15] [--build tiles=wide]

The threads of one image split every pipeline step's columns and meet at a barrier per step (utils/runtime/
kernels/lkdn_cpu.cpp, Team). Built with LKDN_PROFILE_WAITS=1 (on top of `--build`, default: the build tuned for
this CPU and thread count), the barrier adds up each member's waiting time; printed per size: the forward pass's
median time and each member's median wait (member 0 is the calling thread). A member that waits much longer
than the others has less work than they do: the columns are not split evenly for this CPU (the tuner's
`caller_share` setting moves the split).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_inference import load_model  # this script's folder

from utils.cli import positive_int
from utils.device import cpu_description
from utils.errors import UserError, run_cli
from utils.runtime import native
from utils.runtime.native_tune import chosen_build, flags_of, name_of, parse_choice

PROFILE = "-DLKDN_PROFILE_WAITS=1"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--sizes", nargs="+", default=["80x120", "256x256"], help="LR sizes HxW")
    p.add_argument("--runs", type=positive_int, default=15)
    p.add_argument(
        "--build", default=None, help="a kernel build: default, tiles=wide, ... (default: the tuned one)"
    )
    p.add_argument("--model_path", default=None)
    args = p.parse_args()
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
        choice = parse_choice(args.build) if args.build is not None else None
    except ValueError as err:
        raise UserError(f"--sizes {' '.join(args.sizes)} / --build {args.build}: {err}") from None
    model, weights = load_model(args.model_path)
    torch.set_num_threads(args.threads)
    if choice is None:
        choice = chosen_build(model, args.threads)
    flags = (*flags_of(choice), PROFILE)
    runner = native.NativeLKDN(model, flags).eval()
    lib = native.load_kernel(flags)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {args.threads} threads; weights: {weights}")
    print(f"kernel build: {name_of(choice)} + {PROFILE}; medians of {args.runs} forward passes")
    members = range(args.threads)
    g = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=g)
        times, waits = [], {m: [] for m in members}
        with torch.inference_mode():
            runner(x)
            for m in members:
                lib.lkdn_barrier_wait_ns(m)
            for _ in range(args.runs):
                start = time.perf_counter()
                runner(x)
                times.append(time.perf_counter() - start)
                for m in members:
                    waits[m].append(lib.lkdn_barrier_wait_ns(m) / 1e6)
        total = statistics.median(times) * 1e3
        shown = ", ".join(
            f"member {m}{' (caller)' if m == 0 else ''} {statistics.median(waits[m]):.2f} ms "
            f"({statistics.median(waits[m]) / total:.1%})"
            for m in members
        )
        print(f"LR {h}x{w}: forward {total:.1f} ms; waits: {shown}")
    return 0


if __name__ == "__main__":
    run_cli(main)
