"""test_demo.py, the organizers' entry point: the paper's table, the kit's files and figures, and its errors.

The heavy runs happen once per module (fixtures) and several tests read their output: the authors' fused
checkpoint on the full benchmark (Set5, Set14, B100: the slow one), and the kit mode on a small stand-in.
"""

from __future__ import annotations

import json
import mmap
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import models
import test_demo
import utils.measure.timing
from models import BUNDLED_CHECKPOINT, LKDN, MODEL_NAME
from utils.errors import UserError
from utils.files.atomic_write import save_atomic
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_rgb, to_tensor
from utils.measure.metrics import crop_to_multiple, psnr_rgb
from utils.measure.timing import PeakMemory, timed_ms
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]
# results are keyed by what ran: the entry's name for the bundled weights, <entry>@<file stem> for others
AUTHORS_KEY, KIT_KEY, TINY_KEY = (f"{MODEL_NAME}@{stem}" for stem in ("LKDN-S_del_rep_x4", "LKDN-S_x4", "t"))
KIT_FIELDS = ("runtime", "psnr", "ave_runtime", "ave_psnr", "memory", "ssim", "ave_ssim")
COMPLEXITY_FIELDS = ("activations", "num_conv", "flops", "num_parameters")


def run_demo(*args: str | Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "test_demo.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"test_demo failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def _table_rows(stdout: str) -> dict[str, tuple[str, ...]]:
    """{dataset: (images, PSNR_Y, SSIM_Y)} as printed in the benchmark summary table."""
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+\.\d{2})\s+(\d\.\d{4})\s+\d+\.\d{2}$", stdout, flags=re.M)
    return {row[0]: tuple(row[1:]) for row in rows}


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight fused LKDN (8 channels, 1 block: receptive radius 15), saved like any checkpoint."""
    torch.manual_seed(0)
    return save_atomic(
        LKDN(num_feat=8, num_blocks=1, fused=True).state_dict(), tmp_path_factory.mktemp("ckpt") / "t.pth"
    )


# ------------------------------------------------------------------------------ the paper's table (benchmark)


@pytest.fixture(scope="module")
def authors_benchmark(reference_dir, benchmark_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("bench")
    proc = _ok(
        run_demo(
            "--benchmark_dir",
            benchmark_dir,
            "--model_path",
            reference_dir / "LKDN-S_del_rep_x4.pth",
            "--save_dir",
            save_dir,
        )
    )
    return proc, json.loads((save_dir / "results.json").read_text())[AUTHORS_KEY], save_dir


@pytest.mark.slow
def test_benchmark_reproduces_the_paper_table(authors_benchmark):
    proc, _, _ = authors_benchmark
    rows = _table_rows(proc.stdout)
    assert rows["Set5"] == ("5", "32.11", "0.8938")
    assert rows["Set14"] == ("14", "28.62", "0.7821")
    assert rows["B100"] == ("100", "27.60", "0.7370")


@pytest.mark.slow
def test_benchmark_numbers_are_in_results_json(authors_benchmark):
    proc, entry, save_dir = authors_benchmark
    for name, row in _table_rows(proc.stdout).items():
        r = entry["benchmark"][name]
        assert (str(r["num_images"]), f"{r['psnr_y']:.2f}", f"{r['ssim_y']:.4f}") == row
        assert (
            len(r["psnr_y_per_image"])
            == r["num_images"]
            == len(list((save_dir / AUTHORS_KEY / name).glob("*.png")))
        )
        assert r["psnr_y"] == pytest.approx(np.mean(r["psnr_y_per_image"]), abs=1e-12)
    assert entry["benchmark_info"]["border"] == 4
    assert f"{entry['flops']:.2f}" == "8.29"


@pytest.fixture(scope="module")
def bicubic_benchmark(benchmark_dir, tmp_path_factory):
    proc = _ok(
        run_demo(
            "--benchmark_dir",
            benchmark_dir,
            "--model_id",
            "bicubic",
            "--save_dir",
            tmp_path_factory.mktemp("bicubic"),
        )
    )
    return _table_rows(proc.stdout)


def test_bicubic_baseline_row(bicubic_benchmark):
    """README's bicubic row, PSNR and SSIM (Y): the LR images are MATLAB's, so the row is MATLAB's bicubic."""
    rows = {name: row[1:] for name, row in bicubic_benchmark.items()}
    assert rows == {"Set5": ("28.43", "0.8111"), "Set14": ("26.09", "0.7048"), "B100": ("25.96", "0.6681")}


def _cubic(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t <= 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0)
    )


def _bicubic_x4(img: np.ndarray) -> np.ndarray:
    """MATLAB's imresize(img, 4, 'bicubic') on uint8, written out independently of utils/image/imresize.py (Keys
    kernel a = -0.5, 4 taps, border replicated, rounded half up after each pass): the tests' own oracle."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        x = (np.arange(4 * n) + 0.5) / 4 - 0.5
        taps = np.floor(x)[:, None] - 1 + np.arange(4)
        weights = _cubic(x[:, None] - taps)
        weights /= weights.sum(axis=1, keepdims=True)
        gathered = np.moveaxis(out, axis, 0)[np.clip(taps.astype(int), 0, n - 1)]
        out = np.moveaxis(np.einsum("ok,ok...->o...", weights, gathered), 0, axis)
        out = np.floor(np.clip(out, 0, 255) + 0.5)
    return out.astype(np.uint8)


# ------------------------------------------------------------------------------ the kit's mode on a stand-in


@pytest.fixture(scope="module")
def standin_data(benchmark_dir, tmp_path_factory) -> Path:
    """A STAND-IN for the DIV2K layout (not DIV2K): three Set5 images named 0801-0803 as DIV2K valid and one as
    DIV2K test 0901 (the kit's names), so the kit mode runs on small images; --allow_partial because 4 of 200."""
    data = tmp_path_factory.mktemp("div2k_standin")
    set5 = benchmark_dir / "Set5"
    for number, name in zip((801, 802, 803), ("butterfly", "bird", "head"), strict=True):
        (data / "DIV2K_valid_HR").mkdir(exist_ok=True)
        (data / "DIV2K_valid_LR").mkdir(exist_ok=True)
        shutil.copy(set5 / "HR" / f"{name}.png", data / "DIV2K_valid_HR" / f"{number:04d}.png")
        shutil.copy(set5 / "LR_bicubic_x4" / f"{name}.png", data / "DIV2K_valid_LR" / f"{number:04d}x4.png")
    for folder in ("DIV2K_test_HR", "DIV2K_test_LR"):
        (data / folder).mkdir()
    shutil.copy(set5 / "HR" / "woman.png", data / "DIV2K_test_HR" / "0901.png")
    shutil.copy(set5 / "LR_bicubic_x4" / "woman.png", data / "DIV2K_test_LR" / "0901.png")
    return data


@pytest.fixture(scope="module")
def kit_run(standin_data, reference_dir, tmp_path_factory):
    """test_demo on the stand-in with the fused LKDN-S, then the bicubic baseline into the same save_dir."""
    save_dir = tmp_path_factory.mktemp("kit")
    common = (
        "--data_dir",
        standin_data,
        "--save_dir",
        save_dir,
        "--include_test",
        "--ssim",
        "--allow_partial",
    )
    lkdn = _ok(run_demo(*common, "--model_path", reference_dir / "LKDN-S_x4.pth"))
    bicubic = _ok(run_demo(*common, "--model_id", "bicubic"))
    return lkdn, bicubic, save_dir, json.loads((save_dir / "results.json").read_text())


def test_complexity_figures_of_the_fused_model_that_ran(kit_run):
    """The training-form checkpoint was passed: the figures must be those of the fused form that runs."""
    lkdn, _, save_dir, results = kit_run
    entry = results[KIT_KEY]
    assert f"{entry['num_parameters']:.3f}" == "0.129"
    assert f"{entry['flops']:.2f}" == "8.29"
    assert f"{entry['activations']:.2f}" == "202.70"
    assert entry["num_conv"] == 86
    assert f"{entry['fvcore_total_flops']:.2f}" == "8.36" and f"{entry['thop_flops']:.2f}" == "8.29"
    assert re.search(r"FLOPs \[G\] : 8\.29 .*conv multiply-accumulates on 1x3x256x256", lkdn.stdout)
    assert re.search(r"Acts \[M\] : 202\.70", lkdn.stdout) and re.search(r"Conv : 86$", lkdn.stdout, re.M)
    row = next(
        line for line in (save_dir / "results.txt").read_text().splitlines() if line.startswith(KIT_KEY)
    )
    cells = [cell.strip() for cell in row.split("\t")]  # ..., Params [M], FLOPs [G], Acts [M], Mem [M], Conv
    assert (cells[6], cells[7], cells[8], cells[10]) == ("0.129", "8.29", "202.70", "86")


def test_results_json_has_the_kit_fields(kit_run):
    _, _, _, results = kit_run
    assert set(results) == {KIT_KEY, "bicubic"}
    for name in results:
        entry = results[name]
        for mode, count in (("valid", 3), ("test", 1)):
            for field in KIT_FIELDS:
                assert f"{mode}_{field}" in entry, f"{name}: {mode}_{field}"
            assert (
                len(entry[f"{mode}_psnr"])
                == len(entry[f"{mode}_runtime"])
                == len(entry[f"{mode}_ssim"])
                == count
            )
            assert entry[f"{mode}_ave_psnr"] == pytest.approx(np.mean(entry[f"{mode}_psnr"]), abs=1e-12)
            assert entry[f"{mode}_ave_runtime"] > 0 and entry[f"{mode}_memory"] > 0
        assert all(field in entry for field in COMPLEXITY_FIELDS)
    assert results["bicubic"]["flops"] is None  # no complexity figures for the baseline


def test_results_txt_has_the_kit_columns(kit_run):
    _, _, save_dir, results = kit_run
    header, *rows = (save_dir / "results.txt").read_text().splitlines()
    assert [cell.strip() for cell in header.split("\t")] == [
        "Model", "Val PSNR", "Test PSNR", "Val Time [ms]", "Test Time [ms]", "Ave Time [ms]",
        "Params [M]", "FLOPs [G]", "Acts [M]", "Mem [M]", "Conv",
    ]  # fmt: skip
    cells = {row.split("\t")[0].strip(): [c.strip() for c in row.split("\t")] for row in rows}
    assert set(cells) == {KIT_KEY, "bicubic"}
    entry = results[KIT_KEY]
    assert cells[KIT_KEY][1:3] == [f"{entry['valid_ave_psnr']:.2f}", f"{entry['test_ave_psnr']:.2f}"]
    assert cells["bicubic"][6:9] == ["n/a", "n/a", "n/a"]


def test_psnr_is_the_kit_psnr_of_the_saved_images_and_beats_bicubic(kit_run, standin_data):
    """Recomputed from the saved uint8 SR images (RGB, HR cropped to x4, border 4); the network beats bicubic."""
    _, _, save_dir, results = kit_run
    for mode, lr_dir, hr_dir, names in (
        ("valid", "DIV2K_valid_LR", "DIV2K_valid_HR", ("0801", "0802", "0803")),
        ("test", "DIV2K_test_LR", "DIV2K_test_HR", ("0901",)),
    ):
        for i, name in enumerate(names):
            lr_name = f"{name}x4.png" if mode == "valid" else f"{name}.png"
            hr = crop_to_multiple(read_rgb(standin_data / hr_dir / f"{name}.png"), 4)
            sr = read_rgb(save_dir / KIT_KEY / mode / lr_name)
            assert psnr_rgb(sr, hr, border=4) == pytest.approx(results[KIT_KEY][f"{mode}_psnr"][i], abs=1e-9)
            bicubic = _bicubic_x4(read_rgb(standin_data / lr_dir / lr_name))
            assert psnr_rgb(bicubic, hr, border=4) == pytest.approx(
                results["bicubic"][f"{mode}_psnr"][i], abs=1e-9
            )
            assert results[KIT_KEY][f"{mode}_psnr"][i] > results["bicubic"][f"{mode}_psnr"][i] + 0.5


def test_output_says_how_it_measured_and_logs_it(kit_run):
    lkdn, _, save_dir, results = kit_run
    assert "not comparable to the challenge's GPU times" in lkdn.stdout
    assert "peak resident memory of the whole process during inference" in lkdn.stdout
    assert "backend " + results[KIT_KEY]["backend"] in lkdn.stdout
    log = (save_dir / f"{KIT_KEY}.log").read_text()
    assert "Val PSNR" in log and "FLOPs [G] : 8.29" in log
    assert "valid" in lkdn.stderr and "img" in lkdn.stderr  # the progress bar


# ------------------------------------------------------------------------------ tiling through the entry point


def test_tiled_forward_of_the_authors_model_equals_whole(reference_dir):
    model = build_model_from_checkpoint(reference_dir / "LKDN-S_del_rep_x4.pth")
    runner = make_runner(model, "cpu", "reference")
    x = torch.rand(1, 3, 20, 150, generator=torch.Generator().manual_seed(0))
    radius = model.receptive_radius()
    whole = test_demo.forward(runner, x, tile=None, overlap=0)
    torch.testing.assert_close(
        test_demo.forward(runner, x, tile=24, overlap=radius), whole, atol=1e-5, rtol=0
    )


def test_tile_option_gives_the_whole_image_results(tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (160, 176, 3), dtype=np.uint8)
    _write_png(data / "DIV2K_valid_HR" / "0801.png", hr)
    _write_png(data / "DIV2K_valid_LR" / "0801x4.png", cv2.resize(hr, (44, 40), interpolation=cv2.INTER_AREA))
    common = ["--data_dir", str(data), "--model_path", str(tiny_checkpoint), "--allow_partial"]
    assert test_demo.main([*common, "--save_dir", str(tmp_path / "whole")]) == 0
    assert test_demo.main([*common, "--save_dir", str(tmp_path / "tiled"), "--tile", "12"]) == 0
    whole = read_rgb(tmp_path / "whole" / TINY_KEY / "valid" / "0801x4.png").astype(int)
    tiled = read_rgb(tmp_path / "tiled" / TINY_KEY / "valid" / "0801x4.png").astype(int)
    assert np.abs(whole - tiled).max() <= 1  # float differences below 1e-5 can flip a rounding, nothing more
    assert np.mean(whole != tiled) < 1e-3
    log = (tmp_path / "tiled" / f"{TINY_KEY}.log").read_text()
    assert "tile 12 (overlap 15 LR pixels)" in log


# ------------------------------------------------------------------------------ user errors


def _tiny_pair(data: Path, lr_size: tuple[int, int] = (8, 10), hr_size: tuple[int, int] = (32, 40)) -> None:
    rng = np.random.default_rng(1)
    _write_png(data / "DIV2K_valid_HR" / "0801.png", rng.integers(0, 256, (*hr_size, 3), dtype=np.uint8))
    _write_png(data / "DIV2K_valid_LR" / "0801x4.png", rng.integers(0, 256, (*lr_size, 3), dtype=np.uint8))


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_missing_dataset_names_the_download_command(tiny_checkpoint, tmp_path):
    line = _error_line(run_demo("--data_dir", tmp_path / "nothing", "--model_path", tiny_checkpoint))
    assert str(tmp_path / "nothing" / "DIV2K_valid_HR") in line
    assert f"python -m data.download_div2k --data_dir {tmp_path / 'nothing'}" in line


def test_incomplete_dataset_names_the_first_missing_file(tiny_checkpoint, tmp_path):
    _tiny_pair(tmp_path)
    line = _error_line(run_demo("--data_dir", tmp_path, "--model_path", tiny_checkpoint))
    assert str(tmp_path / "DIV2K_valid_HR" / "0802.png") in line and "99 of 100" in line
    assert "python -m data.download_div2k" in line and "--allow_partial" in line


def test_lr_hr_size_mismatch(tiny_checkpoint, tmp_path):
    _tiny_pair(tmp_path, lr_size=(8, 9))
    line = _error_line(run_demo("--data_dir", tmp_path, "--model_path", tiny_checkpoint, "--allow_partial"))
    assert str(tmp_path / "DIV2K_valid_LR" / "0801x4.png") in line and "does not match" in line


def test_unreadable_image(tiny_checkpoint, tmp_path):
    _tiny_pair(tmp_path)
    (tmp_path / "DIV2K_valid_HR" / "0801.png").write_bytes(b"not an image at all, truncated")
    line = _error_line(run_demo("--data_dir", tmp_path, "--model_path", tiny_checkpoint, "--allow_partial"))
    assert str(tmp_path / "DIV2K_valid_HR" / "0801.png") in line and "not a readable image" in line


def test_missing_checkpoint(tmp_path):
    line = _error_line(run_demo("--data_dir", tmp_path, "--model_path", tmp_path / "no.pth"))
    assert str(tmp_path / "no.pth") in line and "--model_path" in line


def test_missing_bundled_checkpoint_says_how_to_pass_one(tmp_path, monkeypatch):
    missing = tmp_path / "model_zoo" / BUNDLED_CHECKPOINT.name  # the bundled one exists: point elsewhere
    monkeypatch.setattr(models, "BUNDLED_CHECKPOINT", missing)
    with pytest.raises(UserError) as err:
        test_demo.main(["--data_dir", str(tmp_path)])
    assert str(missing) in str(err.value) and "--model_path" in str(err.value)


def test_missing_benchmark_folder(tmp_path):
    line = _error_line(run_demo("--benchmark_dir", tmp_path / "bench", "--model_id", "bicubic"))
    assert str(tmp_path / "bench") in line and "Set5" in line


def test_no_output_files_after_an_error(tiny_checkpoint, tmp_path):
    _error_line(run_demo("--data_dir", tmp_path / "nothing", "--model_path", tiny_checkpoint,
                         "--save_dir", tmp_path / "out"))  # fmt: skip
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ data selection and measurement


def test_dataset_file_lists_follow_the_kit(tmp_path):
    _write_png(tmp_path / "DIV2K_test_HR" / "0901.png", np.zeros((16, 16, 3), np.uint8))
    _write_png(
        tmp_path / "DIV2K_test_LR" / "0901x4.png", np.zeros((4, 4, 3), np.uint8)
    )  # public test LR name
    _write_png(tmp_path / "DIV2K_test_HR" / "0902.png", np.zeros((16, 16, 3), np.uint8))
    _write_png(tmp_path / "DIV2K_test_LR" / "0902.png", np.zeros((4, 4, 3), np.uint8))  # the kit's name
    _write_png(tmp_path / "LSDIR_DIV2K_test_HR" / "0000123.png", np.zeros((16, 20, 3), np.uint8))
    _write_png(tmp_path / "LSDIR_DIV2K_test_LR" / "0000123x4.png", np.zeros((4, 5, 3), np.uint8))
    assert test_demo.select_dataset(tmp_path, "test", allow_partial=True) == [
        (tmp_path / "DIV2K_test_LR" / "0901x4.png", tmp_path / "DIV2K_test_HR" / "0901.png"),
        (tmp_path / "DIV2K_test_LR" / "0902.png", tmp_path / "DIV2K_test_HR" / "0902.png"),
    ]
    assert test_demo.select_dataset(tmp_path, "hybrid_test") == [
        (tmp_path / "LSDIR_DIV2K_test_LR" / "0000123x4.png", tmp_path / "LSDIR_DIV2K_test_HR" / "0000123.png")
    ]
    expected = test_demo._expected_pairs(tmp_path, "valid")
    assert [hr.name for _, hr in expected] == [f"{i:04d}.png" for i in range(801, 901)]
    assert expected[0][0] == tmp_path / "DIV2K_valid_LR" / "0801x4.png"


def test_hr_not_a_multiple_of_four_is_cropped_as_the_kit_does(tmp_path):
    _tiny_pair(tmp_path, lr_size=(8, 10), hr_size=(35, 42))
    assert len(test_demo.select_dataset(tmp_path, "valid", allow_partial=True)) == 1


def test_bicubic_runner_is_matlab_bicubic():
    img = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    sr = test_demo.BicubicRunner()(to_tensor(img))
    np.testing.assert_array_equal(test_demo.to_uint8(sr), _bicubic_x4(img))  # the independent oracle


def test_timed_ms_is_in_milliseconds():
    _, ms = timed_ms(lambda: time.sleep(0.05), torch.device("cpu"))
    assert 50 <= ms < 1000  # milliseconds: not seconds (0.05), not microseconds (50000)


def _touch_fresh_pages(size: int) -> None:
    """Grow the resident size by `size` bytes, then unmap them: a new anonymous mapping, not malloc, which in a
    long-lived process (the whole suite's) may hand out memory that is already resident."""
    with mmap.mmap(-1, size) as block:
        pages = np.frombuffer(block, dtype=np.uint8)
        pages[::4096] = 1
        del pages


def test_an_ignored_high_water_mark_reset_is_noticed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        utils.measure.timing, "_CLEAR_REFS", tmp_path / "clear_refs"
    )  # the write succeeds, resets nothing
    sizes = {"VmHWM": 964 * 1024**2, "VmRSS": 700 * 1024**2}
    monkeypatch.setattr(utils.measure.timing, "_status_bytes", sizes.get)
    assert not utils.measure.timing.reset_high_water_mark()
    sizes["VmHWM"] = sizes["VmRSS"]
    assert utils.measure.timing.reset_high_water_mark()


@pytest.mark.parametrize("path", ["kernel high-water mark", "sampling thread"])
def test_peak_memory_sees_an_allocation_and_keeps_the_maximum(path, monkeypatch):
    if path == "sampling thread":  # what runs where clear_refs is missing or ignored
        monkeypatch.setattr(utils.measure.timing, "reset_high_water_mark", lambda: False)
    elif not utils.measure.timing.reset_high_water_mark():
        pytest.skip("this kernel ignores /proc/self/clear_refs, so the high-water mark cannot be reset")
    memory = PeakMemory(torch.device("cpu"))
    with memory:
        _touch_fresh_pages(256 * 1024**2)
    with memory:
        pass
    with PeakMemory(torch.device("cpu")) as baseline:
        pass
    assert memory.peak_mb >= baseline.peak_mb + 200
    assert "(CPU)" in memory.label


def test_two_checkpoints_keep_their_own_rows(tiny_checkpoint, tmp_path):
    """Measuring another checkpoint never overwrites the entry's row: results are keyed by what ran."""
    data = tmp_path / "data"
    _tiny_pair(data)
    other = save_atomic(torch.load(tiny_checkpoint, weights_only=True), tmp_path / "other.pth")
    save = ["--save_dir", str(tmp_path / "out"), "--data_dir", str(data), "--allow_partial"]
    assert test_demo.main([*save, "--model_path", str(tiny_checkpoint)]) == 0
    assert test_demo.main([*save, "--model_path", str(other)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {TINY_KEY, f"{MODEL_NAME}@other"}
    assert test_demo.result_name(BUNDLED_CHECKPOINT) == MODEL_NAME
    assert test_demo.result_name(BUNDLED_CHECKPOINT.with_suffix(".safetensors")) == MODEL_NAME
    rows = (tmp_path / "out" / "results.txt").read_text()
    assert TINY_KEY in rows and f"{MODEL_NAME}@other" in rows


@pytest.mark.parametrize("with_ssim", [False, True])
def test_an_image_too_small_to_measure_is_one_line(tiny_checkpoint, tmp_path, with_ssim):
    size = 16 if with_ssim else 8  # PSNR needs 9 pixels a side after cropping, SSIM 19
    _tiny_pair(tmp_path, lr_size=(size // 4, size // 4), hr_size=(size, size))
    args = [
        "--data_dir",
        tmp_path,
        "--model_path",
        tiny_checkpoint,
        "--allow_partial",
        "--save_dir",
        tmp_path / "o",
    ]
    line = _error_line(run_demo(*args, *(["--ssim"] if with_ssim else [])))
    assert "0801.png" in line and f"for {'SSIM' if with_ssim else 'PSNR'}; it needs" in line


def test_a_results_json_of_another_shape_is_refused_before_anything_is_written(tiny_checkpoint, tmp_path):
    _tiny_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"team01_LKDN": [1, 2, 3]}')
    line = _error_line(run_demo("--data_dir", tmp_path / "data", "--model_path", tiny_checkpoint, "--allow_partial",
                                "--save_dir", out))  # fmt: skip
    assert "results.json: not a results.json of this script" in line
    assert (out / "results.json").read_text() == '{"team01_LKDN": [1, 2, 3]}' and not (
        out / "results.txt"
    ).exists()


def test_help_lists_the_backends_and_devices():
    text = run_demo("--help").stdout
    assert all(name in text for name in ("reference", "fast", "native", "onnxruntime", "cuda"))
