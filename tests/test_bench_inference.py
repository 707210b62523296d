"""The inference benchmark's own parts: an earlier commit's native backend loads and runs, and the sweep runs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import lkdn_s
from utils.runtime.native import NativeLKDN, native_available
from utils.runtime.native_tune import flags_of

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from baseline import BaselineUnavailable, load_native  # noqa: E402
from bench_inference import quartiles, round_ratios  # noqa: E402

in_git_checkout = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a git checkout"
)


@in_git_checkout
@pytest.mark.skipif(
    native_available() is not None, reason=f"native kernels unavailable: {native_available()}"
)
def test_the_baseline_of_head_is_todays_native_backend():
    """HEAD's committed native backend, loaded from git into a module of its own, runs the model: its output
    equals today's when the working tree's kernel is HEAD's (and stays within the tolerance otherwise)."""
    torch.manual_seed(0)
    model = lkdn_s(fused=True).eval()
    x = torch.rand(1, 3, 11, 17, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        today = NativeLKDN(model).eval()(x)
    torch.testing.assert_close(load_native("HEAD", model)(x), today, atol=1e-5, rtol=0)
    flags = flags_of({"tiles": "wide"})  # a build of HEAD's kernel: today's same build
    with torch.inference_mode():
        wide = NativeLKDN(model, flags).eval()(x)
    torch.testing.assert_close(load_native("HEAD", model, flags)(x), wide, atol=1e-5, rtol=0)


@in_git_checkout
def test_an_unknown_revision_is_reported_not_guessed():
    with pytest.raises(BaselineUnavailable, match="no-such-revision"):
        load_native("no-such-revision", lkdn_s(fused=True))


def test_ratios_are_taken_round_by_round_so_a_drifting_machine_cancels():
    """In every round native took a quarter of the reference's time, but the machine slowed to a third of its
    speed in round 3, between the two calls: the per-round ratios say 4x, the medians of the raw times
    (1.0 / 0.75) would say 1.33x."""
    times = {"reference": [1.0, 1.0, 1.0, 3.0, 3.0], "native": [0.25, 0.25, 0.75, 0.75, 0.75]}
    ratios = round_ratios(times, "reference", "native")
    assert ratios == pytest.approx([4.0, 4.0, 4.0 / 3.0, 4.0, 4.0])
    assert quartiles(ratios) == pytest.approx((4.0, 4.0, 4.0))
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)


def test_the_sweep_prints_a_row_per_path_and_size(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_inference.py"), "--threads", "1", "--sizes", "8x8",
         "9x13", "--runs", "1", "--warmup", "0", "--no-onnx", "--no-openvino", "--baseline", "--builds",
         "tiles=wide", "--model_path", str(tmp_path / "absent.pth")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RANDOM weights" in done.stdout
    for size in ("8x8", "9x13"):
        assert f"== 1 thread, LR {size}" in done.stdout
    rows = [line.split()[0] for line in done.stdout.splitlines() if line.endswith("e+00") or "e-0" in line]
    assert rows.count("reference") == 2 and rows.count("fast") == 2
    if native_available() is None:  # the tuned build, and the build asked for beside it
        assert rows.count("native") == 2 and rows.count("native:tiles=wide") == 2


@pytest.mark.skipif(
    native_available() is not None, reason=f"native kernels unavailable: {native_available()}"
)
def test_the_roofline_prints_each_stage_against_the_fma_peak(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_roofline.py"), "--size", "12x20", "--runs", "1",
         "--build", "tiles=wide", "--model_path", str(tmp_path / "absent.pth"), "--widths", "16", "24",
         "--in_place"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernel build: tiles=wide; FMA peak:" in done.stdout
    shares = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in done.stdout.splitlines()
              if line.startswith(("  network", "  block", "  tail", "  depthwise", "  product"))}  # fmt: skip
    assert {"network", "block", "tail", "depthwise", "product"} <= set(shares)
    assert all(0 < share < 200 for share in shares.values())  # percent (a busy machine may skew the peak)
    assert "GELU" in done.stdout and "one block's parts add up to" in done.stdout
    widths = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("  LR 128x")]
    assert widths == ["128x16:", "128x24:"]
    assert "1.00x LR 128x16's" in done.stdout  # each width against the narrowest
    # the whole block ran on the block's own weights: its output is PyTorch's
    whole, *left_out = [line for line in done.stdout.splitlines() if "max|diff|" in line]
    assert whole.strip().startswith("the whole block") and float(whole.split()[-1]) < 1e-4
    # each LKDN_SKIP build left its part out: its block's output is not the whole block's
    parts = ("the products'", "the depthwise convs'", "GELU", "LayerNorm's statistics", "all four left out")
    assert [line.strip()[: len(p)] for line, p in zip(left_out, parts, strict=True)] == list(parts)
    assert all(float(line.split()[-1]) > 1e-3 for line in left_out)


def test_a_bad_size_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_inference.py"), "--sizes", "8by8", "--no-onnx",
         "--no-openvino", "--baseline", "--model_path", str(tmp_path / "absent.pth")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --sizes: '8by8' is not HxW (e.g. 80x120) or div2k"


@pytest.mark.skipif(
    native_available() is not None, reason=f"native kernels unavailable: {native_available()}"
)
def test_the_barrier_waits_of_each_member_are_counted_in_a_profiling_build_only(tmp_path):
    from utils.runtime.native import load_kernel

    assert load_kernel().lkdn_barrier_wait_ns(0) == -1  # the build the network runs counts nothing
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "barrier_waits.py"), "--threads", "2", "--sizes", "16x40",
         "--runs", "2", "--build", "default", "--model_path", str(tmp_path / "absent.pth")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("LR 16x40")]
    assert "member 0 (caller)" in line and "member 1" in line


def test_the_folder_benchmark_times_each_jobs_value():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_folder.py"), "--sizes", "12x20", "--images", "3",
         "--runs", "1", "--jobs", "1", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"] and rows[0][3] == "1.00x", done.stdout
