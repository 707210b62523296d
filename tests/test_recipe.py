"""The factsheet's recipe end to end on its default paths: stage 1, stage 2 from stage 1's output, the fused
export and test_demo.py on it, with stand-in data laid out exactly where the download commands put it.

Only size flags change (iterations, batch, patch, validation interval; workers and threads for this machine).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.download_lsdir import image_path, list_name
from utils.image.imresize import matlab_imresize

ROOT = Path(__file__).resolve().parents[1]
SIZE_FLAGS = ["--batch_size", "2", "--lr_patch", "8", "--val_every", "2", "--save_every", "2"]
MACHINE_FLAGS = ["--num_workers", "0", "--threads", "1"]


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    small = rng.random((size // 8, size // 8, 3))
    return (cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A STAND-IN for data/ after the three download commands (not the real data): DIV2K train (4 images, with
    the official-style LR), LSDIR (3 images and the list named as the recipe's), DIV2K valid (2 pairs)."""
    root = tmp_path_factory.mktemp("recipe")
    data, rng = root / "data", np.random.default_rng(0)
    for i in range(1, 5):
        hr = _image(rng, 48)
        _write(data / "DIV2K_train_HR" / f"{i:04d}.png", hr)
        _write(data / "DIV2K_train_LR_bicubic" / "X4" / f"{i:04d}x4.png", matlab_imresize(hr, 1 / 4))
    for i in range(1, 4):
        _write(data / "LSDIR" / image_path(i), _image(rng, 40))
    (data / list_name(2000)).write_text("".join(f"LSDIR/{image_path(i)}\n" for i in range(1, 4)))
    for i in (801, 802):
        hr = _image(rng, 32)
        _write(data / "DIV2K_valid_HR" / f"{i:04d}.png", hr)
        _write(data / "DIV2K_valid_LR" / f"{i:04d}x4.png", matlab_imresize(hr, 1 / 4))
    return root


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


@pytest.mark.slow
def test_both_stages_export_and_measure_on_the_default_paths(workdir):
    train = str(ROOT / "train" / "train_lkdn.py")
    _run(workdir, train, "--stage", "scratch", "--total_iters", "4", *SIZE_FLAGS, *MACHINE_FLAGS)
    stage1 = workdir / "experiments" / "LKDN-S_x4_scratch"
    assert (stage1 / "models" / "last.pth").is_file()  # stage 2's default init_from
    log = (stage1 / "train.log").read_text()
    assert "training images: 7" in log and re.search(
        r"validation at 4, PSNR_Y of the EMA weights \(decay 0\.3077\): data ", log
    )
    curves = cv2.imread(str(stage1 / "curves.png"))
    assert curves is not None and curves.shape[0] > 300  # a picture, readable

    _run(workdir, train, "--stage", "finetune", "--total_iters", "2", *SIZE_FLAGS, *MACHINE_FLAGS)
    stage2 = workdir / "experiments" / "LKDN-S_x4_finetune"
    assert (
        "initialised from experiments/LKDN-S_x4_scratch/models/last.pth" in (stage2 / "train.log").read_text()
    )
    fused = stage2 / "models" / "fused.pth"
    assert fused.is_file() and fused.with_suffix(".safetensors").is_file()

    demo = [str(ROOT / "test_demo.py"), "--data_dir", "data", "--model_path", str(fused), "--allow_partial"]
    done = _run(workdir, *demo, "--save_dir", "results")
    assert "valid ran on 2 of 100 images" in done.stdout + done.stderr
    assert (workdir / "results" / "results.json").is_file()


def test_stage_2_defaults_without_stage_1_say_what_to_run_first(workdir, tmp_path):
    (tmp_path / "data").symlink_to(workdir / "data")  # the data, but no stage 1 run
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--stage", "finetune", "--run_dir", str(tmp_path / "r"),
         "--total_iters", "1", *MACHINE_FLAGS],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the init_from checkpoint does not exist; finish stage 1 first" in done.stderr


def test_a_patch_too_large_for_the_data_names_the_flag_and_what_fits(workdir, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--stage", "scratch", "--run_dir",
         str(tmp_path / "r"), "--total_iters", "1", *MACHINE_FLAGS],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        "smaller than 256 pixels on a side; the largest allows 48 (for training: --lr_patch 12 or less"
        in done.stderr
    )


def test_no_validation_data_says_how_to_get_it(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--run_dir", str(tmp_path / "r"), *MACHINE_FLAGS],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data: no such validation folder; python -m data.download_div2k --data_dir data/" in done.stderr
