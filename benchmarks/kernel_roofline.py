"""How close the native kernels run to the core's FMA peak, stage by stage, at one thread.

    python benchmarks/kernel_roofline.py [--size 256x256] [--build tiles=wide] [--runs 9] [--widths 64 128 256 512]
                                         [--in_place]

Measures the core's peak rate of vector FMAs (benchmarks/kernels/fma_peak.cpp, built like the kernels, on their
vector width), then times the kernels' stages on one thread (the whole network, one distillation block, the
tail) and divides each stage's conv multiply-accumulates (the fused model's real channels, not the padding the
kernels compute) by its time. What separates a stage from 100% is the padding of channels to whole vectors,
GELU, LayerNorm, the depthwise convs' loads and the stores: a kernel change can win at most that gap; a larger
speed-up needs less arithmetic. `--in_place`: what each part costs inside a block, where the parts overlap and
read rings from L2 and beyond (the block timed with each part's arithmetic left out). `--build`: a kernel build
(utils/runtime/native_tune.py's settings; default: the one chosen for this CPU at one thread).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import torch
from bench_inference import load_model, round_ratios  # this script's folder

from models import LKDN
from utils.cli import positive_int
from utils.device import cpu_description
from utils.errors import UserError, run_cli
from utils.measure.timing import median_ms
from utils.native import build
from utils.native.build import build_and_load
from utils.runtime import native
from utils.runtime.native_tune import chosen_build, flags_of, name_of, parse_choice

PEAK_SOURCE = Path(__file__).with_name("kernels") / "fma_peak.cpp"
PARTS_SOURCE = Path(__file__).with_name("kernels") / "kernel_parts.cpp"
PARTS = (  # kernel_parts.cpp's parts, in its order, and how many of each one block runs per pixel
    ("distillation product (42 -> 63)", 3),
    ("product 42 -> 42 (LKA, c6)", 2),
    ("product 84 -> 42 (c5)", 1),
    ("product 42 -> 21 (c4)", 1),
    ("depthwise 3x3, 42 channels", 3),
    ("depthwise 3x3, 21 channels", 1),
    ("depthwise 5x5", 1),
    ("depthwise 5x5, dilation 3", 1),
)


def load_parts(flags: tuple[str, ...], ring_offset: int = 0) -> ctypes.CDLL:
    """kernel_parts.cpp built with the kernels' flags, in a folder of its own: not the kernel cache, whose key
    does not cover the kernel source it includes whole."""
    import tempfile

    compiler = build.find_compiler()
    if compiler is None:
        raise UserError("no C++ compiler found (install g++ or clang++, or set CXX)")
    extra = [
        "-O3",
        "-march=native",
        *flags,
        f"-DPARTS_RING_OFFSET={ring_offset}",
        f"-I{native.SOURCE.parent}",
    ]
    try:
        target = build.compile_library(
            PARTS_SOURCE, compiler, extra, Path(tempfile.mkdtemp(prefix="lkdn_parts_")), "parts"
        )
    except build.KernelUnavailable as err:
        raise UserError(str(err)) from None
    lib = ctypes.CDLL(str(target))
    lib.kernel_part.restype = ctypes.c_double
    lib.kernel_part.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.POINTER(ctypes.c_double)]
    return lib


def part_rows(
    flags: tuple[str, ...], peak: float, lanes: int, ring_offset: int = 0
) -> tuple[list[str], float]:
    """A line per part (ns per pixel, GMAC/s of what it computes, share of the peak) and the nanoseconds per
    pixel one block's parts add up to (GELU included)."""
    lib = load_parts(flags, ring_offset)
    macs = ctypes.c_double()
    lines, block_ns = [], 0.0
    for i, (name, per_block) in enumerate(PARTS):
        seconds = lib.kernel_part(i, 2000, ctypes.byref(macs))
        ns = seconds / 256 * 1e9
        block_ns += per_block * ns
        lines.append(
            f"  {name:34s} {ns:7.2f} ns/pixel {macs.value / seconds / 1e9:6.1f} GMAC/s {macs.value / seconds / peak:6.1%}"
        )
    gelu_ns = lib.kernel_part(8, 2000, ctypes.byref(macs)) / 256 * 1e9
    c, d = 42, 21
    vectors = (
        3 * (-(-(c + d) // lanes) - c // lanes) + 3 * -(-c // lanes) + -(-d // lanes)
    )  # GELU'd per pixel
    block_ns += vectors * gelu_ns
    lines.append(f"  {'GELU':34s} {gelu_ns:7.2f} ns/vector ({vectors} vectors per pixel in a block)")
    return lines, block_ns


def fma_peak(flags: tuple[str, ...] = (), rounds: int = 50_000_000) -> tuple[float, int]:
    """(multiply-accumulates per second, vector lanes) of one core, best of three."""
    lib = build_and_load(PEAK_SOURCE, extra_flags=flags)
    lib.fma_rounds.restype, lib.fma_rounds.argtypes = ctypes.c_float, [ctypes.c_long]
    lanes = lib.fma_lanes()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        lib.fma_rounds(rounds)
        best = min(best, time.perf_counter() - start)
    return rounds * 12 * lanes / best, lanes


def conv_macs_per_pixel(module: torch.nn.Module) -> int:
    """Multiply-accumulates per LR pixel of the convs in `module` (the upsampler's at LR resolution)."""
    return sum(
        m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d)
    )


def stage_times(model: LKDN, flags: tuple[str, ...], h: int, w: int, runs: int) -> dict[str, float]:
    """Milliseconds of the whole network, one block and the tail on one thread (seeded random inputs)."""
    runner = native.NativeLKDN(model, flags).eval()
    lib = native.load_kernel(flags)
    c, blocks = model.num_feat, len(model.blocks)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, h, w, generator=g)
    feat = torch.rand(1, h, w, c, generator=g)
    hidden = [torch.rand(1, h, w, c, generator=g) for _ in range(blocks)]
    out, sr = torch.empty_like(feat), torch.empty(1, 3, 4 * h, 4 * w)
    eps = ctypes.c_float(model.blocks[0].pixel_norm.eps)
    with torch.inference_mode():
        return {
            "network": median_ms(lambda: runner(x), runs),
            "block": median_ms(
                lambda: lib.lkdb_forward(feat.data_ptr(), out.data_ptr(), 1, h, w, c, runner.packed0.data_ptr(), eps, 1),
                runs,
            ),
            "tail": median_ms(
                lambda: lib.lkdn_tail(native._pointers(hidden), blocks, feat.data_ptr(), sr.data_ptr(), 1, h, w, c,
                                      runner.packed_tail.data_ptr(), 1),
                runs,
            ),
        }  # fmt: skip


def block_ns_per_pixel(
    model: LKDN,
    flags: tuple[str, ...],
    cases: dict[object, tuple[ctypes.CDLL, torch.Tensor, torch.Tensor]],
    runs: int,
) -> dict[object, list[float]]:
    """One block (the first's weights, packed for `flags`) through each case's library from its NHWC input into its
    output on one thread, in `runs` interleaved rounds after one that warms up: each case's ns per pixel by round."""
    # held here: the kernels read it through a bare pointer, and the module owning it is not kept
    packed = native.NativeLKDN(model, flags).eval().packed0
    eps = ctypes.c_float(model.blocks[0].pixel_norm.eps)
    per_pixel: dict[object, list[float]] = {key: [] for key in cases}
    for round_ in range(runs + 1):
        for key, (lib, x, out) in cases.items():
            n, h, w, c = x.shape
            start = time.perf_counter()
            lib.lkdb_forward(x.data_ptr(), out.data_ptr(), n, h, w, c, packed.data_ptr(), eps, 1)
            if round_:
                per_pixel[key].append((time.perf_counter() - start) * 1e9 / (n * h * w))
    return per_pixel


def width_rows(model: LKDN, flags: tuple[str, ...], widths: list[int], runs: int, h: int = 128) -> list[str]:
    """One block's time per pixel on h-row images of each width, each as one column strip (the build's strip
    widened past them): what the rings' growing footprint costs (one row of every ring per pipeline step; wider
    rows leave L1, then L2; the images grow too). The widths are timed in interleaved rounds, and each is compared
    with the narrowest in the same round (the median of those ratios), as the machine's speed drifts."""
    flags = (*(f for f in flags if not f.startswith("-DLKDN_STRIP=")), f"-DLKDN_STRIP={max(widths)}")
    lib, g = native.load_kernel(flags), torch.Generator().manual_seed(0)
    inputs = {w: torch.rand(1, h, w, model.num_feat, generator=g) for w in widths}
    per_pixel = block_ns_per_pixel(
        model, flags, {w: (lib, x, torch.empty_like(x)) for w, x in inputs.items()}, runs
    )
    return [
        f"  LR {h}x{w}: {statistics.median(per_pixel[w]):5.0f} ns per pixel, "
        f"{statistics.median(round_ratios(per_pixel, w, widths[0])):.2f}x LR {h}x{widths[0]}'s"
        for w in widths
    ]


LEFT_OUT = (  # lkdn_cpu.cpp's LKDN_SKIP bits, and what each leaves out
    (1, "the products' multiply-adds"),
    (2, "the depthwise convs' multiply-adds"),
    (4, "GELU"),
    (8, "LayerNorm's statistics"),
    (15, "all four"),
)


def in_place_rows(model: LKDN, flags: tuple[str, ...], h: int, w: int, runs: int) -> list[str]:
    """One block's time per pixel, whole and with each part's arithmetic left out (LKDN_SKIP builds, whose output
    is wrong), timed in interleaved rounds: the time a part's absence saves, as the median of the rounds'
    differences, is what that part costs where it runs, overlapped with the others; what is left with all four
    out is the loads, stores and loops. Each build's max|diff| from the whole block shows that it left its part out.
    """
    x = torch.rand(1, h, w, model.num_feat, generator=torch.Generator().manual_seed(0))
    out = {bit: torch.empty_like(x) for bit in (0, *(bit for bit, _ in LEFT_OUT))}
    cases = {  # the packed weights do not depend on LKDN_SKIP
        bit: (native.load_kernel((*flags, f"-DLKDN_SKIP={bit}") if bit else flags), x, out[bit])
        for bit in out
    }
    per_pixel = block_ns_per_pixel(model, flags, cases, runs)
    whole = statistics.median(per_pixel[0])
    with torch.no_grad():  # the whole block's output is PyTorch's: the kernels ran on the block's weights
        reference = model.blocks[0](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    exact = (out[0] - reference).abs().max().item()
    lines = [f"  the whole block {whole:34.0f} ns per pixel, max|diff| from PyTorch's {exact:.1e}"]
    for bit, name in LEFT_OUT:
        saved = statistics.median(a - b for a, b in zip(per_pixel[0], per_pixel[bit], strict=True))
        diff = (out[bit] - out[0]).abs().max().item()
        if bit == 15:
            left = statistics.median(per_pixel[bit])
            lines.append(
                f"  {name} left out: {left:22.0f} ns per pixel remain ({left / whole:.0%}), max|diff| {diff:.1e}"
            )
        else:
            lines.append(
                f"  {name:38s} {saved:11.0f} ns per pixel ({saved / whole:.0%}), max|diff| {diff:.1e}"
            )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="256x256", help="LR size HxW")
    p.add_argument(
        "--build", default=None, help="a kernel build: default, tiles=wide, ... (default: the tuned one)"
    )
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--model_path", default=None)
    p.add_argument(
        "--widths", type=positive_int, nargs="*", default=[],
        help="also one block's ns per pixel at these LR widths (height 128), each as one column strip",
    )  # fmt: skip
    p.add_argument(
        "--ring_offset", type=int, default=0,
        help="floats between a cache line's start and the depthwise parts' ring (the kernels place it at 0)",
    )  # fmt: skip
    p.add_argument(
        "--in_place", action="store_true",
        help="also what each part of a block costs in place: the block timed with each part's arithmetic left out",
    )  # fmt: skip
    args = p.parse_args()
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
        choice = parse_choice(args.build) if args.build is not None else None
    except ValueError as err:
        raise UserError(f"--size {args.size} / --build {args.build}: {err}") from None
    torch.set_num_threads(1)
    model, weights = load_model(args.model_path)
    if choice is None:
        choice = chosen_build(model, 1)
    flags = flags_of(choice)
    peak, lanes = fma_peak(flags)
    times = stage_times(model, flags, h, w, args.runs)
    pixels = h * w
    block = conv_macs_per_pixel(model.blocks[0])
    whole = conv_macs_per_pixel(model)
    tail = sum(conv_macs_per_pixel(m) for m in (model.c1, model.c2, model.upsampler))
    macs = {"network": whole, "block": block, "tail": tail}
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; one thread; weights: {weights}")
    print(f"kernel build: {name_of(choice)}; FMA peak: {peak / 1e9:.1f} GMAC/s ({lanes}-float vectors)")
    print(f"LR {h}x{w}; stage: median ms, conv MACs per pixel, GMAC/s, share of the FMA peak")
    for stage, ms in times.items():
        rate = macs[stage] * pixels / (ms / 1e3)
        print(f"  {stage:8s} {ms:8.1f} ms {macs[stage]:7d} {rate / 1e9:6.1f} {rate / peak:6.1%}")
    lines, block_ns = part_rows(flags, peak, lanes, args.ring_offset)
    where = (
        f", the depthwise convs' ring {args.ring_offset} floats off a cache line" if args.ring_offset else ""
    )
    print(f"the block's parts alone (one row of 256 pixels kept in cache, padded channels counted{where}):")
    print("\n".join(lines))
    print(
        f"one block's parts add up to {block_ns:.0f} ns per pixel; the block took {times['block'] * 1e6 / pixels:.0f}"
        " (the rest: LayerNorm, stores, the rings' cache misses)"
    )
    if args.in_place:
        print(
            f"one block in place at LR {h}x{w}: the time it saves with a part left out (interleaved rounds)"
        )
        print("\n".join(in_place_rows(model, flags, h, w, args.runs)))
    if args.widths:
        print("one block by width, one column strip each (wider rows: larger rings):")
        print("\n".join(width_rows(model, flags, args.widths, args.runs)))
    return 0


if __name__ == "__main__":
    run_cli(main)
