"""Inference speed of every CPU path against the straightforward fused module, over a sweep of image sizes.

    python benchmarks/bench_inference.py [--threads 1 2] [--sizes 32x32 80x120 256x256 339x510 512x512]
                                         [--baseline 6213163] [--builds wide_tiles ...] [--runs 31]
                                         [--no-onnx] [--no-openvino] [--compile] [--detail] [--model_path CKPT]

One process. For each thread count and each LR size (random 1x3xHxW inputs, seeded; `div2k` names the
DIV2K-valid-sized ../shared/data/div2k_sample/0853x4.png), every path is warmed up, then timed in interleaved
rounds (the order rotates each round), so load from other processes hits all of them alike. Printed per path:
median wall time; its speed relative to the reference (the straightforward fused module) and to the `native`
backend of each `--baseline` revision (that commit's kernel and Python module, built and run in this process:
benchmarks/baseline.py; `REV:BUILD`: its kernel built with that build's settings), each the median over rounds of
the other path's time divided by this path's in the same round, so that a shared machine's speed drifting between
rounds cancels, with the quartiles of those per-round ratios against the reference; and the max abs difference from
the reference output. Paths: reference, native (the kernel build utils/runtime/native_tune.py chose for this CPU
and thread count, tuned first if it has not been; `native:<candidate>` when that is not the default build), each
`--builds` candidate beside it (`native:<name>`), native at each baseline revision, fast, onnxruntime and OpenVINO
(both on the exported ONNX graph; OpenVINO's CPU plugin compiled for the size with f32 inference precision),
torch.compile of the reference with `--compile`. Rounds: `--runs`, fewer (at least 3) where the reference's calls
would take over 20 s in all.

`--detail` adds, per size, the peak resident memory one call of each path adds (measured in a fresh process
per path), the bytes written by its tensor ops, and a rough roofline: the conv MACs and exact-GELU elements at
the machine's measured matmul and GELU rates, and the bytes written at its measured memory bandwidth.

Weights: the authors' fused LKDN-S checkpoint (../shared/reference/LKDN-S_del_rep_x4.pth) when present,
else `--model_path`, else seeded random weights (said in the output; speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from baseline import BaselineUnavailable, load_native  # this script's folder
from torch.utils._python_dispatch import TorchDispatchMode

from models import lkdn_s
from utils.cli import non_negative_int, positive_int
from utils.device import cpu_description
from utils.errors import UserError, run_cli
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor
from utils.measure.model_summary import conv_activations, count_conv_macs
from utils.measure.timing import MB, PeakMemory
from utils.runtime.backends import ModuleRunner, make_runner
from utils.runtime.native import KernelUnavailable, NativeLKDN
from utils.runtime.native_tune import flags_of, name_of, parse_choice

ROOT = Path(__file__).resolve().parents[1]

AUTHORS_FUSED = ROOT.parent / "shared" / "reference" / "LKDN-S_del_rep_x4.pth"
DIV2K_SAMPLE = ROOT.parent / "shared" / "data" / "div2k_sample" / "0853x4.png"


def load_model(model_path: str | None) -> tuple[torch.nn.Module, str]:
    path = Path(model_path) if model_path else AUTHORS_FUSED
    if path.is_file():
        return build_model_from_checkpoint(path, fused=True).eval(), str(path)
    torch.manual_seed(0)
    return lkdn_s(fused=True).eval(), f"RANDOM weights (seed 0): {path} not found"


SIZES = ("32x32", "80x120", "256x256", "339x510", "512x512")
BASELINE = "6213163"  # the commit before the native kernels' rework for every size and CPU


def make_input(size: str) -> tuple[str, torch.Tensor]:
    """(label, 1x3xHxW input) for "HxW" (seeded random) or "div2k" (the DIV2K-valid-sized sample image)."""
    if size == "div2k":
        if not DIV2K_SAMPLE.is_file():
            raise UserError(f"{DIV2K_SAMPLE} not found; give --sizes as HxW only")
        x = to_tensor(read_rgb(DIV2K_SAMPLE))
        return f"{DIV2K_SAMPLE.name} {x.shape[2]}x{x.shape[3]}", x
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UserError(f"--sizes: {size!r} is not HxW (e.g. 80x120) or div2k") from None
    if h < 1 or w < 1:
        raise UserError(f"--sizes: {size!r} needs positive sides")
    return f"{h}x{w}", torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 10007 + w))


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


def peak_in_fresh_process(args: argparse.Namespace, path: str, size: str, threads: int) -> float:
    """`peak_extra_mb` of one path in a new process: memory freed earlier in this one would hide the peak."""
    cmd = [sys.executable, __file__, "--peak", path, size, "--threads", str(threads)]
    cmd += ["--model_path", args.model_path] if args.model_path else []
    cmd += ["--baseline", *args.baseline]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return float("nan")
    return float(done.stdout.split()[-1])


def time_interleaved(
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, runs: int, warmup: int
) -> dict[str, list[float]]:
    """{name: wall seconds} over `runs` interleaved rounds, order rotated each round."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - start)
    return times


COMPILED = "torch.compile(reference), inductor + freezing"
OPENVINO = "openvino (ONNX graph, CPU, f32)"


class OpenVinoRunner:
    """The exported ONNX graph in OpenVINO's CPU plugin, compiled per input shape with f32 inference precision
    (the plugin may otherwise pick bf16 on CPUs that have it) and the current torch thread count."""

    def __init__(self, onnx_path: Path) -> None:
        import openvino as ov

        self.core, self.onnx_path, self.compiled = ov.Core(), onnx_path, {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.compiled:
            model = self.core.read_model(str(self.onnx_path))
            model.reshape({model.inputs[0]: list(shape)})
            config = {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
            }
            self.compiled[shape] = self.core.compile_model(model, "CPU", config)
        result = self.compiled[shape]({0: x.contiguous().numpy()})
        return torch.from_numpy(next(iter(result.values())).copy())


def _onnx_file(model: torch.nn.Module, folder: Path) -> Path:
    from utils.runtime.onnx_export import export_onnx, save_onnx

    data, _ = export_onnx(model)
    return save_onnx(data, folder / "lkdn.onnx")


def _choice(text: str) -> dict[str, str]:
    try:
        return parse_choice(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _baseline(text: str) -> str:
    # a build that names no setting's value: an argument error now, not after the timing
    _choice(text.partition(":")[2])
    return text


def build_runners(
    model: torch.nn.Module, args: argparse.Namespace, scratch: Path, only: str | None = None
) -> dict[str, Callable]:
    """The paths to compare at the current thread count, by name (`only`: just that one)."""
    runners: dict[str, Callable] = {}

    def wanted(name: str) -> bool:
        return only is None or name == only

    for backend in ("reference", "native"):
        if wanted(backend):
            try:
                runners[backend] = make_runner(model, "cpu", backend)
            except ValueError as err:  # native: no compiler, or a model the kernels were not written for
                print(f"{backend}: skipped ({err})")
    for choice in args.builds:
        label = f"native:{name_of(choice)}"
        if wanted(label):
            try:
                runners[label] = ModuleRunner(NativeLKDN(model, flags_of(choice)).eval(), label)
            except KernelUnavailable as err:
                print(f"{label}: skipped ({err})")
    for baseline in args.baseline:
        if wanted(f"native@{baseline}"):
            rev, _, build = baseline.partition(":")
            try:
                runners[f"native@{baseline}"] = load_native(rev, model, flags_of(parse_choice(build)))
            except BaselineUnavailable as err:
                print(f"native@{baseline}: skipped ({err})")
    if wanted("fast"):
        runners["fast"] = make_runner(model, "cpu", "fast")
    needs_onnx = (not args.no_onnx and wanted("onnxruntime")) or (not args.no_openvino and wanted(OPENVINO))
    onnx_path = scratch / "lkdn.onnx"
    if needs_onnx and not onnx_path.is_file():
        _onnx_file(model, scratch)
    if not args.no_onnx and wanted("onnxruntime"):
        runners["onnxruntime"] = make_runner(model, "cpu", "onnxruntime", onnx_path=onnx_path)
    if not args.no_openvino and wanted(OPENVINO):
        try:
            runners[OPENVINO] = OpenVinoRunner(onnx_path)
        except ImportError:
            print("openvino: skipped (not installed: pip install openvino)")
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


def rounds_for(args: argparse.Namespace, reference_seconds: float) -> int:
    """`--runs` rounds, fewer (at least 3) where the reference's calls would take over 20 s in all."""
    return min(args.runs, max(3, int(20 / reference_seconds)))


def round_ratios(times: dict[str, list[float]], over: str, name: str) -> list[float]:
    """`over`'s time divided by `name`'s, round by round (both ran in the same round)."""
    return [a / b for a, b in zip(times[over], times[name], strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile); all three the value itself for a single one."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure_size(
    model: torch.nn.Module,
    runners: dict[str, Callable],
    args: argparse.Namespace,
    size: str,
    threads: int,
    machine: dict[str, float] | None,
) -> None:
    label, x = make_input(size)
    with torch.inference_mode():
        start = time.perf_counter()
        expected = runners["reference"](x)
        runs = rounds_for(args, time.perf_counter() - start)
    diffs = {name: float((run(x) - expected).abs().max()) for name, run in runners.items()}  # also compiles
    times = time_interleaved(runners, x, runs, args.warmup)
    wall = {name: statistics.median(walls) for name, walls in times.items()}
    baselines = [name for name in runners if name.startswith("native@")]
    print(
        f"\n== {threads} thread{'s' if threads > 1 else ''}, LR {label} (median of {runs} interleaved rounds)"
    )
    head = f"{'path':40s} {'wall ms':>9s} {'vs reference':>12s} {'(quartiles)':>13s}"
    head += "".join(f" {'vs ' + b:>20s}" for b in baselines) + f" {'max|diff|':>10s}"
    print(head)
    for name in runners:
        q1, ratio, q3 = quartiles(round_ratios(times, "reference", name))
        row = f"{name:40s} {wall[name] * 1e3:9.1f} {ratio:11.2f}x {f'({q1:.2f}-{q3:.2f})':>13s}"
        row += "".join(f" {statistics.median(round_ratios(times, b, name)):19.2f}x" for b in baselines)
        print(row + f" {diffs[name]:10.2e}")
    if machine is not None:
        print_detail(model, runners, args, size, threads, x, wall, machine)


def print_detail(
    model: torch.nn.Module,
    runners: dict[str, Callable],
    args: argparse.Namespace,
    size: str,
    threads: int,
    x: torch.Tensor,
    wall: dict[str, float],
    machine: dict[str, float],
) -> None:
    """Peak memory per path, bytes written, and the roofline for this input."""
    memory = {name: peak_in_fresh_process(args, name, size, threads) for name in runners}
    # the tensor-op counter sees neither the ONNX runtimes' nor the native kernels' writes
    counts = {name: count_ops(run, x) for name, run in runners.items() if name in ("reference", "fast")}
    print("peak MB one call adds: " + ", ".join(f"{name} {mb:.0f}" for name, mb in memory.items()))
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
        written["native"] = native_bytes_written(model, shape)
    for name, nbytes in written.items():
        t_mem = 2 * nbytes / machine["bandwidth"]
        bound = max(t_mac + t_gelu, t_mem)
        print(
            f"  {name:12s} {nbytes / MB:7.0f} MB written, memory {t_mem * 1e3:6.1f} ms; bound {bound * 1e3:6.1f} ms; "
            f"measured {wall[name] * 1e3:7.1f} ms = {wall[name] / bound:.1f}x the bound"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads", type=positive_int, nargs="+", default=None, help="thread counts (default: torch's)"
    )
    p.add_argument(
        "--sizes", nargs="+", default=list(SIZES), help="LR sizes HxW, or div2k (the sample image)"
    )
    p.add_argument(
        "--baseline",
        nargs="*",
        default=[BASELINE],
        type=_baseline,
        metavar="REV[:BUILD]",
        help="git revisions whose native backend to time (:BUILD: its kernel built so, e.g. 434aa67:tiles=wide)",
    )
    p.add_argument(
        "--runs", type=positive_int, default=31, help="timed interleaved rounds, at most (medians reported)"
    )
    p.add_argument(
        "--builds", nargs="*", default=[], type=_choice, metavar="BUILD",
        help="native kernel builds to time beside the tuned one: default, tiles=wide, tiles=wide,strip=512, ...",
    )  # fmt: skip
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument(
        "--model_path", default=None, help=f"fused or training checkpoint (default {AUTHORS_FUSED})"
    )
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--no-openvino", action="store_true", help="skip OpenVINO")
    p.add_argument("--compile", action="store_true", help="also torch.compile(reference) (compile: minutes)")
    p.add_argument("--detail", action="store_true", help="peak memory, bytes written and roofline per size")
    p.add_argument("--peak", nargs=2, help=argparse.SUPPRESS)  # internal: one path's peak memory, one size
    args = p.parse_args()
    if args.runs < 1 or args.warmup < 0 or any(t < 1 for t in args.threads or []):
        raise UserError("--runs and --threads take positive numbers, --warmup zero or more")
    model, weights = load_model(args.model_path)
    with tempfile.TemporaryDirectory(prefix="lkdn-bench-") as scratch:
        if args.peak:
            name, size = args.peak
            torch.set_num_threads(args.threads[0])
            args.compile = name == COMPILED
            runner = build_runners(model, args, Path(scratch), only=name)[name]
            print(peak_extra_mb(runner, make_input(size)[1]))
            return
        print(f"torch {torch.__version__}, CPU: {cpu_description()}")
        print(f"weights: {weights}")
        for threads in args.threads or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            machine = machine_figures() if args.detail else None
            if machine is not None:
                print(
                    f"machine, {threads} threads: memory bandwidth {machine['bandwidth'] / 1e9:.1f} GB/s; sgemm "
                    f"{machine['mm_large'] / 1e9:.1f} GMAC/s (2048^3), {machine['mm_net'] / 1e9:.1f} GMAC/s "
                    f"(65536x42 @ 42x42); exact GELU {machine['gelu'] / 1e9:.2f} G elements/s"
                )
            runners = build_runners(
                model, args, Path(scratch)
            )  # per thread count: sessions take it at creation
            for size in args.sizes:
                measure_size(model, runners, args, size, threads, machine)


def native_bytes_written(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """What the native path writes to memory at least: the features, every block's output, the SR output
    (everything else stays in per-row buffers in cache)."""
    n, _, h, w = shape
    maps = (1 + model.num_blocks) * n * h * w * model.num_feat
    return 4 * (maps + n * 3 * h * w * model.scale**2)


if __name__ == "__main__":
    run_cli(main)
