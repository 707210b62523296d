"""Images per second of inference.py on a folder of small images: one image at a time on every thread, against
several at once (`--jobs`) on a share of the threads each.

    python benchmarks/bench_folder.py [--sizes 80x120 256x256] [--images 8] [--jobs 1 2] [--runs 7]

One process. Per LR size, a folder of `--images` seeded random PNGs; per `--jobs` value, inference.py's own
batch (as the command runs it: read, upscale, check, write each image; the runner and its kernel build
made at that value's thread count, as `python inference.py --jobs N` makes them), timed in interleaved rounds
(the order rotates each round) into a fresh output folder. Printed per value: the median time per image and the
median over rounds of the one-at-a-time batch's time divided by this value's, in the same round, so that a
shared machine's drift cancels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_inference import AUTHORS_FUSED, round_ratios  # this script's folder

import inference
from models import BUNDLED_CHECKPOINT
from utils.cli import positive_int
from utils.device import cpu_description
from utils.errors import UserError, run_cli
from utils.files.image_io import write_image


def write_folder(folder: Path, count: int, height: int, width: int) -> None:
    g = np.random.default_rng(height * 10007 + width)
    for i in range(count):
        write_image(folder / f"{i:03d}.png", g.integers(0, 256, (height, width, 3), dtype=np.uint8))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["80x120", "256x256"], help="LR sizes HxW")
    p.add_argument("--images", type=positive_int, default=8)
    p.add_argument("--jobs", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=positive_int, default=7)
    p.add_argument("--model_path", type=Path, default=None)
    args = p.parse_args()
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    except ValueError:
        raise UserError(f"--sizes {' '.join(args.sizes)}: sizes are HxW, e.g. 80x120") from None
    weights = args.model_path or (AUTHORS_FUSED if AUTHORS_FUSED.is_file() else BUNDLED_CHECKPOINT)
    threads = torch.get_num_threads()
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {threads} threads; weights: {weights}")
    with tempfile.TemporaryDirectory(prefix="lkdn-folder-") as tmp:
        for h, w in sizes:
            folder = Path(tmp) / f"{h}x{w}"
            folder.mkdir()
            write_folder(folder, args.images, h, w)
            batches = {}
            for jobs in args.jobs:
                cli = ["-i", str(folder), "-o", str(Path(tmp) / "out"), "--model_path", str(weights)]
                options = inference.parse_args([*cli, "--device", "cpu", "--jobs", str(jobs)])
                with inference.threads_per_job(jobs):
                    upscaler, model, checkpoint = inference.load_upscaler(options, jobs)
                plan, _ = inference.plan_jobs(
                    inference.collect_inputs([str(folder)]), options.output, model.scale
                )
                batches[jobs] = (upscaler, checkpoint, plan)
            times: dict[int, list[float]] = {jobs: [] for jobs in args.jobs}
            order = list(args.jobs)
            for round_ in range(args.runs + 1):  # the first round warms up
                for k in range(len(order)):
                    jobs = order[(k + round_) % len(order)]
                    upscaler, checkpoint, plan = batches[jobs]
                    out = Path(tempfile.mkdtemp(dir=tmp))
                    work = [inference.Job(job.src, out / job.dst.name) for job in plan]
                    with inference.threads_per_job(jobs):
                        start = time.perf_counter()
                        failed = inference.upscale_jobs(work, upscaler, checkpoint, jobs, progress=False)
                        elapsed = time.perf_counter() - start
                    if failed:
                        raise UserError(
                            f"{failed} of {len(work)} images failed in the batch of --jobs {jobs}"
                        )
                    if round_:
                        times[jobs].append(elapsed)
            first = args.jobs[0]
            print(f"\n== {args.images} images of LR {h}x{w} (median of {args.runs} interleaved rounds)")
            print(
                f"{'--jobs':>6} {'threads each':>12} {'ms per image':>13} {'vs --jobs ' + str(first):>14}  backend"
            )
            for jobs in args.jobs:
                ratio = statistics.median(round_ratios(times, first, jobs))
                per_image = statistics.median(times[jobs]) / args.images * 1e3
                name = batches[jobs][0].runner.name
                print(f"{jobs:>6} {max(1, threads // jobs):>12} {per_image:>13.1f} {ratio:>13.2f}x  {name}")
    return 0


if __name__ == "__main__":
    run_cli(main)
