"""benchmarks/gpu_carry.py and gpu_check.py run end to end here (the check in its dry mode: tiny sizes, on the CPU,
every phase, the training continuation included), so the GPU session they are prepared for does not find a broken
script."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared(tmp_path) -> Path:
    """A stand-in for ../shared: two small training sets and two benchmark sets of one image each."""
    rng = np.random.default_rng(0)
    for name in ("T91", "BSD200"):
        (tmp_path / "data/train" / name).mkdir(parents=True)
        for i in range(2):
            image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data/train" / name / f"{i}.png"), image)
    for name in ("Set5", "Set14"):
        for folder in ("HR", "LR_bicubic_x4"):
            (tmp_path / "data/benchmark" / name / folder).mkdir(parents=True)
        hr = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "data/benchmark" / name / "HR/a.png"), hr)
        cv2.imwrite(str(tmp_path / "data/benchmark" / name / "LR_bicubic_x4/a.png"), hr[::4, ::4])
    return tmp_path


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_the_carry_holds_lossless_training_images_and_the_benchmark_sets(shared, tmp_path):
    done = _run("benchmarks/gpu_carry.py", "--shared", shared, "--out", tmp_path / "carry", "--no-wheels")
    assert done.returncode == 0, done.stderr[-2000:]
    webp = sorted((tmp_path / "carry/train").iterdir())
    assert [p.name for p in webp] == ["BSD200_0.webp", "BSD200_1.webp", "T91_0.webp", "T91_1.webp"]
    original = cv2.imread(str(shared / "data/train/T91/1.png"))
    assert np.array_equal(cv2.imread(str(tmp_path / "carry/train/T91_1.webp")), original)
    assert (tmp_path / "carry/benchmark/Set14/LR_bicubic_x4/a.png").is_file()
    assert "of 64 MiB" in done.stdout


def test_the_carry_names_missing_data_in_one_line(tmp_path):
    done = _run("benchmarks/gpu_carry.py", "--shared", tmp_path, "--out", tmp_path / "carry", "--no-wheels")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'data/train/T91'}: missing; pass --shared" in done.stderr


@pytest.mark.slow
def test_the_gpu_check_runs_every_phase_dry(shared, tmp_path):
    assert (
        _run(
            "benchmarks/gpu_carry.py", "--shared", shared, "--out", tmp_path / "carry", "--no-wheels"
        ).returncode
        == 0
    )
    out = tmp_path / "out"
    done = _run("benchmarks/gpu_check.py", "--out", out, "--carry", tmp_path / "carry", "--dry")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry"] and summary["environment"]["torch"] and summary["cuda_tests"] == "skipped (dry run)"
    failed = {
        phase: result for phase, result in summary.items() if isinstance(result, dict) and "error" in result
    }
    assert not failed, failed
    inference = summary["inference"]
    assert {"reference", "fast", "reference+bf16", "fast+bf16", "compile"} <= set(inference)
    for path in ("fast", "compile"):
        assert inference[path]["max_abs_diff"] < 1e-4 and inference[path]["ms_median"] > 0, path
    assert summary["psnr"]["Set5"]["fp32"]["delta_db"] == 0 and "bf16" in summary["psnr"]["Set14"]
    assert summary["training"]["fp32"]["iterations_per_s"] > 0
    continuation = summary["continuation"]
    assert continuation["exit_code"] == 0 and set(continuation["psnr"]["continued"]) == {"Set5", "Set14"}
    assert continuation["exported"] and not continuation["resumed"]  # stopped by its clock after one step
    with tarfile.open(out / "gpu_run.tar") as tar:
        assert "continue/models/fused.pth" in tar.getnames()
    assert (out / "gpu_check.log").is_file()

    again = _run("benchmarks/gpu_check.py", "--out", out, "--carry", tmp_path / "carry", "--dry")
    assert again.returncode == 0, again.stderr[-2000:]
    continuation = json.loads((out / "gpu_check.json").read_text())["continuation"]
    assert continuation["resumed"] and continuation["exit_code"] == 0, (
        continuation
    )  # its saved recipe, no refusal
    assert "stopping at iteration 2" in (out / "gpu_run/train.log").read_text()
