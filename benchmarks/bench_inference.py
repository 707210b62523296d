"""Inference speed of every backend against the straightforward fused form, and the work that bounds it.

    python benchmarks/bench_inference.py [--runs 12] [--warmup 2] [--threads N] [--model_path CKPT]
                                         [--no-onnx] [--compile]

One process; for each input (1x3x256x256, the challenge's FLOPs size, and the DIV2K-valid-sized
../shared/data/div2k_sample/0853x4.png) every path is warmed up, then the paths are timed in interleaved
rounds (the order rotates each round), so load from other processes hits all of them alike. Printed per path:
median wall time, median process CPU time (less sensitive to a busy machine), the ratio of medians to the
reference, max abs difference from the reference output, the peak resident memory one call adds (measured in
a fresh process per path), and the bytes written by its tensor ops. Then the work figures (conv MACs; exact-GELU elements; bytes written) and
the time the machine's measured matmul throughput, GELU throughput and memory bandwidth would need for them:
a rough roofline, to show how far each path is from the limit.

Weights: the authors' fused LKDN-S checkpoint (../shared/reference/LKDN-S_del_rep_x4.pth) when present,
else `--model_path`, else seeded random weights (said in the output; speed does not depend on the values).
`--compile` adds torch.compile (inductor, freezing) of the reference form, with its compile time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models import lkdn_s
from utils.errors import run_cli
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor
from utils.measure.model_summary import conv_activations, count_conv_macs
from utils.measure.timing import MB, PeakMemory
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]

AUTHORS_FUSED = ROOT.parent / "shared" / "reference" / "LKDN-S_del_rep_x4.pth"
DIV2K_SAMPLE = ROOT.parent / "shared" / "data" / "div2k_sample" / "0853x4.png"


def load_model(model_path: str | None) -> tuple[torch.nn.Module, str]:
    path = Path(model_path) if model_path else AUTHORS_FUSED
    if path.is_file():
        return build_model_from_checkpoint(path, fused=True).eval(), str(path)
    torch.manual_seed(0)
    return lkdn_s(fused=True).eval(), f"RANDOM weights (seed 0): {path} not found"


def inputs(quiet: bool = False) -> list[tuple[str, torch.Tensor]]:
    found = [("1x3x256x256 (random)", torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))]
    if DIV2K_SAMPLE.is_file():
        x = to_tensor(read_rgb(DIV2K_SAMPLE))
        found.append((f"{DIV2K_SAMPLE.name} {tuple(x.shape)}", x))
    elif not quiet:
        print(f"note: {DIV2K_SAMPLE} not found; only the 256x256 input is measured")
    return found


# --- machine figures -----------------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], object], repeat: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bandwidth() -> float:
    src = torch.rand(64 * 1024 * 1024)  # 256 MB, far beyond the caches
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src))  # bytes read + written per second


def _matmul_rate(m: int, k: int, n: int) -> float:
    a, b = torch.rand(m, k), torch.rand(k, n)
    return m * k * n / _best_seconds(lambda: a @ b)


def _gelu_rate() -> float:
    x = torch.randn(4 * 1024 * 1024)
    return x.numel() / _best_seconds(lambda: F.gelu(x))


def machine_figures() -> dict[str, float]:
    """Memory bandwidth, sgemm MAC/s (a large square product and the network's 42x42 shape) and exact-GELU
    elements/s with the current thread count: best of 10, the least disturbed run."""
    return {
        "bandwidth": _bandwidth(),
        "mm_large": _matmul_rate(2048, 2048, 2048),
        "mm_net": _matmul_rate(256 * 256, 42, 42),
        "gelu": _gelu_rate(),
    }


# --- work figures ---------------------------------------------------------------------------------------


class _OpCounter(TorchDispatchMode):
    """Bytes written by every tensor op (outputs that are not views) and elements that went through GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_written = 0
        self.gelu_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.bytes_written += t.numel() * t.element_size()
        if func.__name__.startswith("gelu"):
            self.gelu_elements += out.numel()
        return out


def count_ops(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> _OpCounter:
    counter = _OpCounter()
    with counter:
        runner(x)
    return counter


# --- timing ---------------------------------------------------------------------------------------------


def peak_extra_mb(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Peak resident memory above the level before one call, after a small warm-up call (one-off buffers)."""
    import psutil

    runner(torch.rand(1, 3, 32, 32))
    before = psutil.Process().memory_info().rss / MB
    with PeakMemory(torch.device("cpu")) as peak:
        runner(x)
    return max(0.0, peak.peak_mb - before)


def peak_in_fresh_process(args: argparse.Namespace, path: str, input_index: int) -> float:
    """`peak_extra_mb` of one path in a new process: memory freed earlier in this one would hide the peak."""
    cmd = [sys.executable, __file__, "--peak", path, str(input_index)]
    cmd += ["--model_path", args.model_path] if args.model_path else []
    cmd += ["--threads", str(torch.get_num_threads())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return float("nan")
    return float(done.stdout.split()[-1])


def time_interleaved(
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, runs: int, warmup: int
) -> dict[str, tuple[list[float], list[float]]]:
    """{name: (wall seconds, process CPU seconds)} over `runs` interleaved rounds, order rotated each round."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](x)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            runners[name](x)
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    return times


PLAIN = "fast, plain ops (no oneDNN fusions)"
COMPILED = "torch.compile(reference), inductor + freezing"


def build_runners(
    model: torch.nn.Module, args: argparse.Namespace, only: str | None = None
) -> dict[str, Callable]:
    """The paths to compare, by name (`only`: just that one)."""
    runners: dict[str, Callable] = {}

    def wanted(name: str) -> bool:
        return only is None or name == only

    for backend in ("reference", "fast", "native"):
        if wanted(backend):
            try:
                runners[backend] = make_runner(model, "cpu", backend)
            except ValueError as err:  # native: no compiler, or a model the kernels were not written for
                print(f"{backend}: skipped ({err})")
    from utils.runtime.fast import CPU_FUSIONS, FastLKDN

    if CPU_FUSIONS and wanted(PLAIN):
        plain = FastLKDN(model, cpu_fusions=False).eval()

        def fast_plain(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return plain(x)

        runners[PLAIN] = fast_plain
    if not args.no_onnx and wanted("onnxruntime"):
        start = time.perf_counter()
        runners["onnxruntime"] = make_runner(model, "cpu", "onnxruntime")
        if only is None:
            print(f"onnxruntime: export + verification + session {time.perf_counter() - start:.1f} s")
    if args.compile and wanted(COMPILED):
        import copy

        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(copy.deepcopy(model).eval(), dynamic=False)

        def run_compiled(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return compiled(x)

        runners[COMPILED] = run_compiled
    return runners


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=12, help="timed interleaved rounds (median reported; >= 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument(
        "--model_path", default=None, help=f"fused or training checkpoint (default {AUTHORS_FUSED})"
    )
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime backend")
    p.add_argument("--compile", action="store_true", help="also torch.compile(reference) (compile: minutes)")
    p.add_argument("--peak", nargs=2, help=argparse.SUPPRESS)  # internal: one path's peak memory, one input
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights = load_model(args.model_path)
    if args.peak:
        name, index = args.peak[0], int(args.peak[1])
        args.compile = name == COMPILED
        runner = build_runners(model, args, only=name)[name]
        print(peak_extra_mb(runner, inputs(quiet=True)[index][1]))
        return
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "?")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu} ({platform.machine()})")
    print(f"weights: {weights}")
    machine = machine_figures()
    print(
        f"machine: memory bandwidth {machine['bandwidth'] / 1e9:.1f} GB/s (256 MB copy, read + write); "
        f"sgemm {machine['mm_large'] / 1e9:.1f} GMAC/s (2048^3), {machine['mm_net'] / 1e9:.1f} GMAC/s "
        f"(65536x42 @ 42x42); exact GELU {machine['gelu'] / 1e9:.2f} G elements/s"
    )
    runners = build_runners(model, args)
    for index, (label, x) in enumerate(inputs()):
        print(f"\n== input {label}")
        with torch.inference_mode():
            expected = runners["reference"](x)
        if COMPILED in runners:
            start = time.perf_counter()
            runners[COMPILED](x)
            print(f"torch.compile: first call (compile) {time.perf_counter() - start:.1f} s for this shape")
        diffs = {name: float((run(x) - expected).abs().max()) for name, run in runners.items()}
        memory = {name: peak_in_fresh_process(args, name, index) for name in runners}
        # the tensor-op counter sees neither onnxruntime's nor the native kernels' writes
        counts = {
            name: count_ops(run, x) for name, run in runners.items() if name not in ("onnxruntime", "native")
        }
        times = time_interleaved(runners, x, max(args.runs, 1), args.warmup)
        ref_wall = statistics.median(times["reference"][0])
        ref_cpu = statistics.median(times["reference"][1])
        head = f"{'path':48s} {'wall ms':>8s} {'ratio':>6s} {'CPU ms':>8s} {'ratio':>6s} {'max|diff|':>10s}"
        print(head + f" {'peak MB':>8s} {'written MB':>10s}")
        for name in runners:
            wall, cpu_s = statistics.median(times[name][0]), statistics.median(times[name][1])
            written = f"{counts[name].bytes_written / MB:10.0f}" if name in counts else f"{'n/a':>10s}"
            print(
                f"{name:48s} {wall * 1e3:8.1f} {ref_wall / wall:6.2f} {cpu_s * 1e3:8.1f} {ref_cpu / cpu_s:6.2f} "
                f"{diffs[name]:10.2e} {memory[name]:8.0f} {written}"
            )
        print(
            f"(median of {args.runs} interleaved runs after {args.warmup} warm-up runs each; ratio = reference / path)"
        )
        shape = tuple(x.shape)
        macs = count_conv_macs(model, shape)
        activations, convs = conv_activations(model, shape)
        gelu = counts["reference"].gelu_elements
        t_mac, t_gelu = macs / machine["mm_large"], gelu / machine["gelu"]
        print(
            f"work: {macs / 1e9:.2f} G conv MACs ({convs} convs), conv activations {activations / 1e6:.1f} M "
            f"({activations * 4 / MB:.0f} MB written), {gelu / 1e6:.1f} M exact-GELU elements"
        )
        print(
            f"roofline: MACs at the sgemm rate {t_mac * 1e3:.1f} ms + GELU at its rate {t_gelu * 1e3:.1f} ms "
            f"= compute {(t_mac + t_gelu) * 1e3:.1f} ms; memory (each byte written once and read once):"
        )
        written = {name: counter.bytes_written for name, counter in counts.items()}
        if "native" in runners:
            written["native (whole-image tensors only)"] = native_bytes_written(model, shape)
            times["native (whole-image tensors only)"] = times["native"]
        for name, nbytes in written.items():
            t_mem = 2 * nbytes / machine["bandwidth"]
            bound = max(t_mac + t_gelu, t_mem)
            wall = statistics.median(times[name][0])
            print(
                f"  {name:46s} memory {t_mem * 1e3:6.1f} ms; bound {bound * 1e3:6.1f} ms; "
                f"measured {wall * 1e3:7.1f} ms = {wall / bound:.1f}x the bound"
            )


def native_bytes_written(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """What the native path writes to memory at least: the features, every block's output, the SR output
    (everything else stays in per-row buffers in cache)."""
    n, _, h, w = shape
    maps = (1 + model.num_blocks) * n * h * w * model.num_feat
    return 4 * (maps + n * 3 * h * w * model.scale**2)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    run_cli(main)
