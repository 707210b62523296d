"""README's examples, run in a fresh clone on small fixtures, leave `git status` empty: everything they write
inside the repository is covered by .gitignore."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.image.imresize import matlab_imresize

ROOT = Path(__file__).resolve().parents[1]


def _run(clone: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(clone)}  # the clone's packages, not an installed checkout's
    done = subprocess.run(
        [sys.executable, *args], cwd=clone, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, f"{args}: {done.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_readme_examples_leave_a_fresh_clone_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"  # the user's own images live where the user keeps them
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    hr = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)  # where `python -m data.download_div2k` puts DIV2K
    for folder, name, img in (
        ("DIV2K_valid_HR", "0801.png", hr),
        ("DIV2K_valid_LR", "0801x4.png", matlab_imresize(hr, 0.25)),
    ):
        (clone / "data" / folder).mkdir(parents=True)
        cv2.imwrite(str(clone / "data" / folder / name), img)

    sets = tmp_path / "my_sets" / "T91"  # a set the user has: laid out in benchmark/ and train_data/
    sets.mkdir(parents=True)
    cv2.imwrite(str(sets / "t1.png"), hr)
    _run(clone, "-m", "data.download_benchmarks", "--from_dir", str(sets), "--name", "Set5")
    _run(clone, "-m", "data.download_benchmarks", "--from_dir", str(sets), "--name", "T91", "--train")
    _run(clone, "test_demo.py", "--benchmark_dir", "benchmark", "--save_dir", "results/")
    assert (clone / "train_data" / "T91" / "t1.png").is_file()
    _run(clone, "inference.py", "-i", str(photos), "-o", "upscaled/")
    _run(clone, "test_demo.py", "--data_dir", "data/", "--allow_partial")
    _run(
        clone,
        "-m",
        "utils.files.convert",
        "--model_path",
        "model_zoo/team01_LKDN.pth",
        "-o",
        "weights.safetensors",
    )
    _run(
        clone,
        "-m",
        "utils.runtime.onnx_export",
        "--model_path",
        "model_zoo/team01_LKDN.pth",
        "-o",
        "lkdn_s.onnx",
    )
    _run(clone, "train/train_lkdn.py", "--stage", "scratch", "--train_sources", "data/DIV2K_valid_HR", "--lr_patch", "8",
         "--batch_size", "2", "--total_iters", "2", "--val_every", "2", "--num_workers", "0", "--threads", "1")  # fmt: skip
    assert (clone / "upscaled" / "a_x4.png").is_file() and (clone / "results" / "results.json").is_file()
    assert (clone / "experiments" / "LKDN-S_x4_scratch" / "models" / "fused.pth").is_file()
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    )
    assert status.stdout == "", f"README's commands leave files git would commit:\n{status.stdout}"
