"""One prepared GPU session: the CUDA tests, every GPU inference path timed the NTIRE kit's way, the precisions'
PSNR cost, training speed, and the bundled checkpoint's run continued on the GPU; one JSON.

    python benchmarks/gpu_carry.py                    # here, once: wheels and data for the GPU machine into .gpu/
    bash benchmarks/on_gpu.sh "$OUT"             # on the GPU machine: installs the wheels, runs this script
    python benchmarks/gpu_check.py --out DIR --dry    # anywhere: tiny sizes, on the CPU, to test the script

Phases (each timed; one that fails is recorded with its error and the next runs; the summary is rewritten after
each, so a session cut short keeps what it measured):

1. `cuda_tests`: `pytest -m cuda` (tests/test_cuda.py), output into the log;
2. `inference`: on a DIV2K-valid-sized input (1x3x339x510), with the kit's method (CUDA events, synchronize,
   `max_memory_allocated`), the IEEE float32 module and every GPU path: the kit's own conditions (PyTorch's
   default TF32 convolutions), the fast path, bf16 / fp16, channels-last with cuDNN autotuning, the CUDA graph,
   torch.compile; each with its max abs difference from the float32 module and its first call (capture or
   compilation included);
3. `psnr`: the bundled checkpoint on the carried Set5 and Set14 at each precision, the cost of each in dB;
4. `training`: iterations per second of the trainer's step at the recipe's batch and patch (128 x 64x64 LR);
5. `continuation`: train/runs/lkdn_s_gpu/continue.yml for what is left of `--minutes`, its length set from
   phase 4's speed so the schedule ends in time (stopped by the clock first, its last EMA weights are exported);
   the run folder comes back as gpu_run.tar and its fused weights are measured on Set5 and Set14 beside the
   bundled checkpoint's.

Writes `gpu_check.json` and `gpu_check.log` (and gpu_run.tar) into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import re
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_train import make_step  # this script's folder: the same step bench_train.py times

from data.datasets import ValidationSet
from models import BUNDLED_CHECKPOINT, LKDN, lkdn_s
from utils.device import cuda_float32
from utils.errors import run_cli
from utils.files.atomic_write import write_text_atomic
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import to_tensor, to_uint8
from utils.measure.metrics import psnr_y
from utils.measure.timing import MB, PeakMemory, timed_ms
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]
CONTINUATION = ROOT / "train" / "runs" / "lkdn_s_gpu" / "continue.yml"
FULL = {"input": (1, 3, 339, 510), "runs": 20, "batch": 128, "patch": 64, "steps": 10}
DRY = {"input": (1, 3, 24, 32), "runs": 2, "batch": 2, "patch": 8, "steps": 2}
EVAL_SETS = ("Set5", "Set14")


class Session:
    """The summary, rewritten to `out/gpu_check.json` after every phase, and the log."""

    def __init__(self, out: Path, dry: bool, minutes: float) -> None:
        self.out, self.dry, self.deadline = out, dry, time.monotonic() + 60 * minutes
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu_check.log", "w")  # noqa: SIM115 (open for the whole session)
        self.summary: dict = {"dry": dry, "seconds": {}}

    def minutes_left(self) -> float:
        return (self.deadline - time.monotonic()) / 60

    def phase(self, name: str, fn: Callable[[], object]) -> object:
        """Runs one phase; a failure is a finding (recorded with its traceback), not the end of the session."""
        started = time.monotonic()
        self.log.write(f"== {name}\n")
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 (every failure is recorded and the session goes on)
            result = {"error": f"{type(err).__name__}: {err}"}
            self.log.write(traceback.format_exc())
        self.summary[name] = result
        self.summary["seconds"][name] = round(time.monotonic() - started, 1)
        self.log.write(json.dumps({name: result}, indent=2) + "\n")
        self.log.flush()
        write_text_atomic(self.out / "gpu_check.json", json.dumps(self.summary, indent=2) + "\n")
        return result


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(),
                 "default_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision}  # fmt: skip
    return info


def cuda_tests(log) -> dict:
    """`pytest -m cuda`: the counts from its closing line, its output into the log."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log.write(done.stdout + done.stderr)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    failed = re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    return {"exit_code": done.returncode, **counts, "failed_tests": failed}


# ------------------------------------------------------------------------------------------------ inference


def gpu_paths(model, device: torch.device) -> dict[str, Callable[[], Callable]]:
    """Every way of running the fused model to time, built lazily (name -> builder of a callable)."""
    paths = {
        "reference": lambda: make_runner(model, device, "reference", "fp32"),
        "fast": lambda: make_runner(model, device, "fast", "fp32"),
        "reference+bf16": lambda: make_runner(model, device, "reference", "bf16"),
        "fast+bf16": lambda: make_runner(model, device, "fast", "bf16"),
    }
    if device.type == "cuda":
        paths |= {
            "reference+tf32": lambda: make_runner(model, device, "reference", "tf32"),  # the kit's conditions
            "fast+tf32": lambda: make_runner(model, device, "fast", "tf32"),
            "reference+fp16": lambda: make_runner(model, device, "reference", "fp16"),
            "fast+fp16": lambda: make_runner(model, device, "fast", "fp16"),
            "cuda_graph": lambda: make_runner(model, device, "cuda_graph", "fp32"),
            "cuda_graph+tf32": lambda: make_runner(model, device, "cuda_graph", "tf32"),
            "channels_last+autotune": lambda: _channels_last(model, tf32=False),
            "channels_last+autotune+tf32": lambda: _channels_last(model, tf32=True),
        }
    paths["compile"] = lambda: _compiled(model, device, tf32=False)  # last: the slowest to build
    if device.type == "cuda":
        paths["compile+tf32"] = lambda: _compiled(model, device, tf32=True)
    return paths


def inference_paths(model, device: torch.device, shape: tuple[int, ...], runs: int, session: Session) -> dict:
    """Per path: median and min of `runs` timed calls (the kit's timing), its first call, peak memory, and the
    max abs difference from the IEEE float32 module. A path that fails is recorded and the others run."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    expected = make_runner(model, device, "reference", "fp32")(x)
    results = {}
    for name, build in gpu_paths(model, device).items():
        if name.startswith("compile") and session.minutes_left() < 4:
            results[name] = {"skipped": f"{session.minutes_left():.1f} minutes left"}
            continue
        try:
            runner = build()
            _, first_ms = timed_ms(lambda r=runner: r(x), device)  # capture, compilation, autotuning
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
                "first_call_ms": first_ms,
                "peak_memory_mb": memory.peak_mb,
                "max_abs_diff": float((out.float() - expected).abs().max()),
            }
        except Exception as err:  # noqa: BLE001 (one path failing leaves the others to measure)
            results[name] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
            session.log.write(traceback.format_exc())
    base = results["reference"].get("ms_median")
    for result in results.values():
        if base and "ms_median" in result:
            result["speedup_vs_reference"] = base / result["ms_median"]
    return results


def _channels_last(model, tf32: bool) -> Callable:
    """A copy of the module in channels-last memory with cuDNN autotuning (it picks per shape on the first call)."""
    module = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _cudnn(deterministic=False, benchmark=True), cuda_float32(tf32):
            return module(x.contiguous(memory_format=torch.channels_last))

    return run


def _compiled(model, device: torch.device, tf32: bool) -> Callable:
    """torch.compile of the module (default mode, one shape): Triton kernels fusing the elementwise steps."""
    module = torch.compile(model.to(device), dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        mode = cuda_float32(tf32) if device.type == "cuda" else contextlib.nullcontext()  # one use each
        with torch.inference_mode(), mode:
            return module(x)

    return run


@contextlib.contextmanager
def _cudnn(deterministic: bool, benchmark: bool):
    """cuDNN's algorithm choice for a block (deterministic algorithms only; autotuning), then the caller's."""
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = deterministic, benchmark
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = before


def speed_key(precision: str, deterministic: bool) -> str:
    """The training phase's name for a variant: `fp32`, or `fp32+autotuned` without deterministic cuDNN."""
    return precision + ("" if deterministic else "+autotuned")


# ---------------------------------------------------------------------------------------------------- PSNR


def mean_psnr(runner: Callable, folder: Path, device: torch.device) -> float:
    """Mean Y PSNR (border 4, uint8 outputs, as test_demo's benchmark mode) of a runner on a benchmark folder."""
    scores = [
        psnr_y(to_uint8(runner(to_tensor(lr).to(device))), hr, border=4)
        for _, lr, hr in ValidationSet(folder)
    ]
    return float(np.mean(scores))


def precision_psnr(
    checkpoint: Path, benchmark: Path, device: torch.device, precisions: tuple[str, ...] | None = None
) -> dict:
    """A checkpoint on each carried set at `precisions` (default: every one this device offers); deltas against
    IEEE fp32, which comes first."""
    model = build_model_from_checkpoint(checkpoint, fused=True)
    if precisions is None:
        precisions = ("fp32", "tf32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    results = {}
    for name in EVAL_SETS:
        if not (benchmark / name).is_dir():
            results[name] = {"skipped": f"{benchmark / name} not carried"}
            continue
        scores = {
            p: mean_psnr(make_runner(model, device, "reference", p), benchmark / name, device)
            for p in precisions
        }
        results[name] = {p: {"psnr_y": s, "delta_db": s - scores["fp32"]} for p, s in scores.items()}
    return results


# ------------------------------------------------------------------------------------------------ training


def training_speed(device: torch.device, batch: int, patch: int, steps: int) -> dict:
    """Iterations per second of the trainer's step (online-fused LKDN-S, L1, Adam, channels-last) on random
    patches: benchmarks/bench_train.py's step, for each precision; on CUDA with the trainer's deterministic cuDNN
    (its default) and with autotuned cuDNN."""
    variants = [("fp32", True), ("bf16", True)]
    if device.type == "cuda":
        variants += [("fp16", True), ("fp32", False), ("bf16", False)]
    results = {}
    for precision, deterministic in variants:
        with _cudnn(deterministic, benchmark=not deterministic):
            step = make_step(batch, patch, precision=precision, channels_last=True, device=device.type)
            step()  # warm-up (and autotuning)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for _ in range(steps):
                loss = step().item()  # .item() synchronizes every step
            elapsed = time.perf_counter() - started
        results[speed_key(precision, deterministic)] = {
            "iterations_per_s": steps / elapsed,
            "patches_per_s": steps * batch / elapsed,
            "loss": loss,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / MB if device.type == "cuda" else None,
        }
    return results


def continue_training(session: Session, carry: Path, speed: dict, device: torch.device) -> dict:
    """Runs train/runs/lkdn_s_gpu/continue.yml for what is left of the session (less 1.5 minutes to measure and
    pack), its total iterations set from the measured speed of its precision at its batch and patch, so the
    cosine schedule ends in time. Resumable: the tar it leaves holds the run's last state; with that state in
    the run folder, the run resumes with its saved recipe. `carry` is relative to the repository (as in the
    YAML, so that a resume elsewhere sees the same recipe) or absolute."""
    from train.config import load_config
    from train.state import latest_resumable

    config = load_config(CONTINUATION)
    minutes = 1.0 if session.dry else session.minutes_left() - 1.5
    if minutes < 1:
        return {"skipped": f"{session.minutes_left():.1f} minutes left"}
    measured = speed.get(speed_key(config.precision, config.deterministic)) or speed.get(config.precision, {})
    per_s = measured.get("iterations_per_s")
    if not per_s:
        return {"skipped": f"no measured {config.precision} training speed"}
    # phase 4's step is 128 x 64x64 LR: scale by patches per step, less 20% for loading and validation
    per_s *= 0.8 * (128 * 64 * 64) / (config.batch_size * config.lr_patch**2)
    iters = 4 if session.dry else max(2, int(per_s * 60 * minutes))
    run_dir = session.out / "gpu_run" if session.dry else ROOT / config.run_dir
    # dry: stopped by the clock after one step, as a long run would be
    stop_after = 1e-6 if session.dry else minutes
    flags = ["--max_minutes", f"{stop_after:g}", "--run_dir", str(run_dir), "--device", device.type,
             "--train_sources", str(carry / "train"), "--val_dirs", str(carry / "benchmark" / "Set5"),
             "--cache_dir", str(carry / "cache")]  # fmt: skip
    resuming = latest_resumable(run_dir) is not None
    if not resuming:
        flags += ["--total_iters", str(iters)]
    if session.dry:
        flags += ["--batch_size", "2", "--lr_patch", "8", "--num_workers", "0", "--val_every", "1",
                  "--save_every", "1", "--precision", "fp32"]  # fmt: skip
    recipe = [] if resuming else ["--config", str(CONTINUATION)]  # a resume takes the run's saved recipe
    cmd = [sys.executable, "train/train_lkdn.py", *recipe, *flags]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60 * minutes + 120)
        code, output = done.returncode, done.stdout[-4000:] + done.stderr[-4000:]
    except subprocess.TimeoutExpired as late:  # its state is saved every save_every steps: pack what there is
        code, output = "timeout", str(late.stderr)[-4000:]
    session.log.write(" ".join(cmd) + "\n" + output)
    result = {"command": " ".join(cmd[1:]), "exit_code": code, "resumed": resuming,
              "planned_iterations": None if resuming else iters,
              "minutes": round((time.monotonic() - started) / 60, 2)}  # fmt: skip
    fused = run_dir / "models" / "fused.pth"
    if (run_dir / "models" / "last.pth").is_file():  # the run writes fused.pth only when it finishes
        export = [sys.executable, "train/train_lkdn.py", "--config", str(CONTINUATION), "--run_dir", str(run_dir),
                  "--export_fused"]  # fmt: skip
        result["exported"] = subprocess.run(export, cwd=ROOT, capture_output=True).returncode == 0
    with tarfile.open(session.out / "gpu_run.tar", "w") as tar:
        tar.add(run_dir, arcname=Path(config.run_dir).name)
    if fused.is_file():
        benchmark = ROOT / carry / "benchmark"
        result["psnr"] = {name: precision_psnr(weights, benchmark, device, ("fp32",))
                          for name, weights in (("continued", fused), ("bundled", BUNDLED_CHECKPOINT))}  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for gpu_check.json, .log, gpu_run.tar"
    )
    parser.add_argument(
        "--carry", type=Path, default=Path(".gpu"), help="what gpu_carry.py made, relative to the repository"
    )
    parser.add_argument(
        "--minutes", type=float, default=7.0, help="the session's length; training gets the rest"
    )
    parser.add_argument("--dry", action="store_true", help="tiny sizes, on the CPU: tests the script itself")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry else FULL
    device = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    session = Session(args.out, args.dry, args.minutes)
    session.summary |= {"environment": environment(device), "sizes": sizes}
    session.phase("cuda_tests", lambda: "skipped (dry run)" if args.dry else cuda_tests(session.log))
    torch.manual_seed(0)  # random weights: speed and agreement do not depend on them; dry: a small network
    model = (LKDN(num_feat=8, num_blocks=1, fused=True) if args.dry else lkdn_s(fused=True)).eval()
    session.phase("inference", lambda: inference_paths(model, device, sizes["input"], sizes["runs"], session))
    session.phase("psnr", lambda: precision_psnr(BUNDLED_CHECKPOINT, ROOT / args.carry / "benchmark", device))
    speed = session.phase(
        "training", lambda: training_speed(device, sizes["batch"], sizes["patch"], sizes["steps"])
    )
    session.phase("continuation", lambda: continue_training(session, args.carry, speed, device))
    session.log.close()
    print(json.dumps(session.summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
