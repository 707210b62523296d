"""One prepared GPU session: the CUDA tests, inference runtime the NTIRE kit's way, training speed; one JSON.

    python benchmarks/gpu_check.py --out "$OUT"            # on a CUDA machine (about 5 minutes)
    python benchmarks/gpu_check.py --out /tmp/check --dry   # anywhere: tiny sizes, on the CPU, to test the script

1. `pytest -m cuda` (tests/test_cuda.py: every backend that claims CUDA, bf16/fp16, training steps with AMP and an
   exact resume on CUDA, test_demo.py on a DIV2K-layout stand-in), output into the log;
2. inference on a DIV2K-valid-sized input (1x3x339x510) with the kit's method (CUDA events, synchronize,
   `max_memory_allocated`): the reference form and every GPU path (fast, channels-last, cuDNN autotuning, fp16,
   bf16), each with its max abs difference from the float32 reference;
3. training iterations per second at the recipe's batch and patch (128 x 64x64 LR) for fp32, bf16 and fp16.

Writes `gpu_check.json` (device name, torch and CUDA versions, every figure) and `gpu_check.log` into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_train import make_step  # this script's folder: the same step bench_train.py times

from models import lkdn_s
from utils.errors import run_cli
from utils.measure.timing import MB, PeakMemory, timed_ms
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]
FULL = {"input": (1, 3, 339, 510), "runs": 20, "batch": 128, "patch": 64, "steps": 10}
DRY = {"input": (1, 3, 24, 32), "runs": 2, "batch": 2, "patch": 8, "steps": 2}


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return info


def cuda_tests(log) -> dict:
    """`pytest -m cuda`: the counts from its closing line, its output into the log."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=480)
    log.write(done.stdout + done.stderr)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"exit_code": done.returncode, **counts}


def inference_paths(model, device: torch.device, shape: tuple[int, ...], runs: int) -> dict:
    """Runtime (median of `runs`, the kit's timing), peak memory and max abs difference of each path."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    reference = make_runner(model, device, "reference")
    with torch.inference_mode():
        expected = reference(x)
    paths = {
        "reference": lambda: reference,
        "fast": lambda: make_runner(model, device, "fast"),
        "reference+bf16": lambda: make_runner(model, device, "reference", precision="bf16"),
        "fast+bf16": lambda: make_runner(model, device, "fast", precision="bf16"),
    }
    if device.type == "cuda":
        paths["reference+fp16"] = lambda: _half_runner(model)
        paths["reference+channels_last"] = lambda: _channels_last_runner(model)
    results = {}
    for name, build in paths.items():
        with _cudnn_benchmark(name.endswith("channels_last")):
            runner = build()
            for _ in range(2):  # warm-up (the kit itself does none; cuDNN autotuning happens here)
                runner(x)
            times, memory = [], PeakMemory(device)
            for _ in range(runs):
                with memory:
                    out, ms = timed_ms(lambda r=runner: r(x), device)
                times.append(ms)
        times.sort()
        results[name] = {
            "ms_median": times[len(times) // 2],
            "ms_min": times[0],
            "peak_memory_mb": memory.peak_mb,
            "max_abs_diff": float((out.float() - expected).abs().max()),
        }
    return results


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _half_runner(model):
    half = lkdn_s(fused=True).to("cuda", torch.float16).eval()
    half.load_state_dict(model.state_dict())

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return half(x.half()).float()

    return run


def _channels_last_runner(model):
    module = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.contiguous(memory_format=torch.channels_last))

    return run


def training_speed(device: torch.device, batch: int, patch: int, steps: int) -> dict:
    """Iterations per second of the trainer's step (online-fused LKDN-S, L1, Adam, channels-last) on random
    patches: benchmarks/bench_train.py's step, on `device`, for each precision."""
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and device.type != "cuda":
            continue
        step = make_step(batch, patch, precision=precision, channels_last=True, device=device.type)
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            loss = step().item()  # .item() synchronizes every step
        elapsed = time.perf_counter() - started
        results[precision] = {
            "iterations_per_s": steps / elapsed,
            "patches_per_s": steps * batch / elapsed,
            "loss": loss,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / MB if device.type == "cuda" else None,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--dry", action="store_true", help="tiny sizes, on the CPU: tests the script itself")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    device = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"dry": args.dry, "environment": environment(device), "sizes": sizes}
    with open(args.out / "gpu_check.log", "w") as log:
        summary["cuda_tests"] = cuda_tests(log) if not args.dry else "skipped (dry run)"
        torch.manual_seed(0)
        model = lkdn_s(fused=True).eval()  # random weights: speed and agreement do not depend on them
        summary["inference"] = inference_paths(model, device, sizes["input"], sizes["runs"])
        summary["training"] = training_speed(device, sizes["batch"], sizes["patch"], sizes["steps"])
        log.write(json.dumps(summary, indent=2) + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
