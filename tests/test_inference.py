"""inference.py on every input kind it promises, seamless automatic tiling, and a batch that survives bad files.

Fixtures are small crops of the benchmark LR images written in tmp_path; the network is the authors' fused
LKDN-S (the reference backend, so outputs can be compared exactly with the module's own forward pass).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from exif_files import encode_with_orientation

import inference
import models
from models import LKDN
from utils.errors import FatalError, UserError
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import image_to_tensor, read_rgb, to_tensor, to_uint8
from utils.image.imresize import matlab_imresize
from utils.runtime.native import native_available

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "LKDN-S_del_rep_x4.pth"
WHOLE_TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(reference_dir) -> Path:
    return reference_dir / CHECKPOINT


@pytest.fixture(scope="module")
def model(checkpoint) -> LKDN:
    return build_model_from_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def crop(benchmark_dir) -> np.ndarray:
    """A 32x40 RGB crop of Set5 baby (LR)."""
    return np.ascontiguousarray(read_rgb(benchmark_dir / "Set5" / "LR_bicubic_x4" / "baby.png")[40:72, 30:70])


def sr_float(model: LKDN, lr: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(lr)


def expected_rgb(model: LKDN, rgb: np.ndarray) -> np.ndarray:
    """The module's own forward pass on an 8-bit RGB image, quantised as the NTIRE kit does."""
    return to_uint8(sr_float(model, to_tensor(rgb)))


def run(checkpoint: Path, *args: str | Path) -> int:
    argv = [str(a) for a in args] + [
        "--model_path",
        str(checkpoint),
        "--backend",
        "reference",
        "--device",
        "cpu",
    ]
    return inference.main(argv)


def write(path: Path, bgr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), bgr)
    return path


# ----------------------------------------------------------------------------------------------------- input kinds


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_give_the_network_output_in_the_same_format(
    tmp_path, checkpoint, model, crop, suffix
):
    src = write(tmp_path / f"crop{suffix}", crop[..., ::-1])
    assert run(checkpoint, "-i", src, "-o", tmp_path / "out") == 0
    out = tmp_path / "out" / f"crop_x4{suffix}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [out.name]  # no temporary file left
    np.testing.assert_array_equal(read_rgb(out), expected_rgb(model, crop))


def test_jpeg_in_jpeg_out(tmp_path, checkpoint, model, crop):
    src = write(tmp_path / "crop.jpg", crop[..., ::-1])
    assert run(checkpoint, "-i", src, "-o", tmp_path) == 0
    out = read_rgb(tmp_path / "crop_x4.jpg")
    expected = expected_rgb(model, read_rgb(src))  # the decoded JPEG goes through the network
    assert out.shape == expected.shape
    mse = np.mean((out.astype(np.float64) - expected) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38  # only the output's own JPEG encoding differs


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_run_on_their_16_bit_values(tmp_path, checkpoint, model, crop, suffix):
    deep = crop.astype(np.uint16) * 257 + np.random.default_rng(0).integers(
        0, 257, crop.shape, dtype=np.uint16
    )
    src = write(tmp_path / f"deep{suffix}", deep[..., ::-1])
    assert run(checkpoint, "-i", src, "-o", tmp_path / "out") == 0
    out = cv2.imread(str(tmp_path / "out" / f"deep_x4{suffix}"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (128, 160, 3)
    expected = sr_float(model, image_to_tensor(deep)).clamp(0, 1)[0].permute(1, 2, 0)
    # within the 16-bit quantization step: an 8-bit detour would be off by up to ~1/255
    torch.testing.assert_close(
        torch.from_numpy(out[..., ::-1] / 65535.0).float(), expected, atol=1e-5, rtol=0
    )


def test_grayscale_goes_through_the_network_as_rgb_and_comes_back_gray(
    tmp_path, checkpoint, model, benchmark_dir
):
    gray = cv2.imread(str(benchmark_dir / "Set14" / "LR_bicubic_x4" / "bridge.png"), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    gray = np.ascontiguousarray(gray[:30, :36])
    src = write(tmp_path / "bridge.png", gray)
    assert run(checkpoint, "-i", src, "-o", tmp_path) == 0
    out = cv2.imread(str(tmp_path / "bridge_x4.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (120, 144)
    sr = sr_float(model, to_tensor(np.dstack([gray] * 3)))
    np.testing.assert_array_equal(out, to_uint8(sr.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1))[..., 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgba_colour_through_the_network_alpha_bicubic(tmp_path, checkpoint, model, crop, dtype):
    yy, xx = np.mgrid[:32, :40]
    alpha = np.clip(255 - 12 * np.hypot(yy - 16, xx - 20), 0, 255).astype(np.uint8)  # a soft disc
    rgba = np.dstack([crop, alpha]).astype(dtype) * (257 if dtype == np.uint16 else 1)
    src = write(tmp_path / "rgba.png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert run(checkpoint, "-i", src, "-o", tmp_path) == 0
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "rgba_x4.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert out.dtype == dtype and out.shape == (128, 160, 4)
    np.testing.assert_array_equal(out[..., 3], matlab_imresize(rgba[..., 3], 4))
    if dtype == np.uint8:
        np.testing.assert_array_equal(out[..., :3], expected_rgb(model, crop))


def test_exif_orientation_is_applied_before_upscaling(tmp_path, checkpoint, model, crop):
    # orientation 6: stored sideways, displayed rotated 90 degrees clockwise
    (tmp_path / "photo.png").write_bytes(encode_with_orientation(".png", crop[..., ::-1], 6))
    (tmp_path / "photo.jpg").write_bytes(encode_with_orientation(".jpg", crop[..., ::-1], 6))
    assert run(checkpoint, "-i", tmp_path, "-o", tmp_path / "out") == 0
    upright = np.ascontiguousarray(np.rot90(crop, -1))
    np.testing.assert_array_equal(read_rgb(tmp_path / "out" / "photo_x4.png"), expected_rgb(model, upright))
    assert read_rgb(tmp_path / "out" / "photo_x4.jpg").shape == (160, 128, 3)


# ----------------------------------------------------------------------------------------------------- tiling


def test_tiled_equals_whole_with_the_receptive_radius_as_overlap(model, benchmark_dir):
    lr = to_tensor(read_rgb(benchmark_dir / "Set14" / "LR_bicubic_x4" / "barbara.png")[:40, :176].copy())
    radius = model.receptive_radius()
    upscaler = inference.Upscaler(model, torch.device("cpu"), 4, radius, 1, 1)
    # width 176 > 24 + 2 * 63: inner tiles take their context from the overlap on both sides
    torch.testing.assert_close(upscaler.run(lr, tile=24), upscaler.run(lr, tile=176), atol=WHOLE_TOL, rtol=0)
    torch.testing.assert_close(upscaler.run(lr, tile=176), sr_float(model, lr), atol=0, rtol=0)


def test_tiled_alpha_equals_whole():
    alpha = np.random.default_rng(0).integers(0, 65536, (23, 57), dtype=np.uint16)
    np.testing.assert_array_equal(inference.upscale_alpha(alpha, 4, tile=7), matlab_imresize(alpha, 4))


def test_plan_tile_fits_the_budget():
    per_pixel, radius = 1000, 63
    assert inference.plan_tile(300, 400, radius, per_pixel, 300 * 400 * per_pixel) == 400  # fits: whole
    budget = 300 * 400 * per_pixel - 1
    tile = inference.plan_tile(300, 400, radius, per_pixel, budget)
    assert (tile + 2 * radius) ** 2 * per_pixel <= budget < (tile + 1 + 2 * radius) ** 2 * per_pixel
    with pytest.raises(UserError, match="too small"):
        inference.plan_tile(1000, 1000, radius, per_pixel, (15 + 2 * radius) ** 2 * per_pixel)
    with pytest.raises(UserError, match="cannot be tiled"):
        inference.plan_tile(1000, 1000, None, per_pixel, 10**6)


def test_large_images_are_tiled_automatically_and_seamlessly(tmp_path, benchmark_dir, capsys):
    """A narrow random LKDN-S (LKDN-S's receptive field, cheap) on a 24x1360 strip: whole with 1G, in tiles with
    a budget just under the whole image's estimate."""
    torch.manual_seed(0)
    narrow = LKDN(num_feat=8, num_blocks=5, fused=True)
    weights = tmp_path / "narrow.pth"
    torch.save(narrow.state_dict(), weights)
    lr_dir = benchmark_dir / "B100" / "LR_bicubic_x4"
    strip = np.hstack([read_rgb(lr_dir / f"img_{i:03d}.png")[:24, :80] for i in range(1, 18)])
    assert strip.shape == (24, 1360, 3)
    src = write(tmp_path / "strip.png", strip[..., ::-1])
    budget = 24 * 1360 * inference.bytes_per_lr_pixel(narrow) - 1
    assert run(weights, "-i", src, "-o", tmp_path / "whole", "--max-memory", "1G") == 0
    assert "tiles" not in capsys.readouterr().out
    assert run(weights, "-i", src, "-o", tmp_path / "tiled", "--max-memory", f"{budget / 1024**2}M") == 0
    assert "strip.png: 1360x24 in " in capsys.readouterr().out
    whole, tiled = (read_rgb(tmp_path / d / "strip_x4.png").astype(int) for d in ("whole", "tiled"))
    assert np.abs(whole - tiled).max() <= 1  # float differences of ~1e-6 may cross a rounding boundary
    assert np.mean(whole != tiled) < 1e-3


# ----------------------------------------------------------------------------------------------------- batches


def _zero_size_png() -> bytes:
    """A well-formed PNG whose header says 0x0 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_a_batch_reports_bad_files_by_name_and_goes_on(tmp_path, checkpoint, crop):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "a_good.png", crop[..., ::-1])
    (src / "b_empty.png").write_bytes(b"")
    (src / "c_garbage.jpg").write_bytes(b"this is not a JPEG")
    (src / "d_zero_size.png").write_bytes(_zero_size_png())
    write(src / "e_unwritable.png", crop[..., ::-1])
    write(src / "f_good.webp", crop[..., ::-1])
    out = tmp_path / "out"
    (out / "e_unwritable_x4.png").mkdir(parents=True)  # a folder where the output file should go
    cmd = [sys.executable, "inference.py", "-i", str(src), "-o", str(out), "--model_path", str(checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 4, result.stderr
    for name, reason in [
        ("b_empty.png", "empty file"),
        ("c_garbage.jpg", "not a readable image"),
        ("d_zero_size.png", "not a readable image"),
        ("e_unwritable_x4.png", "cannot write"),
    ]:
        assert any(name in line and reason in line for line in failures), (name, failures)
    assert sorted(p.name for p in out.iterdir()) == ["a_good_x4.png", "e_unwritable_x4.png", "f_good_x4.webp"]
    assert "backend " in result.stdout and "2 of 6 upscaled x4" in result.stdout


def test_an_input_is_never_overwritten(tmp_path, checkpoint, crop):
    write(tmp_path / "a.png", crop[..., ::-1])
    write(tmp_path / "a_x4.png", crop[::-1, :, ::-1])  # an input that a.png's output would replace
    before = (tmp_path / "a_x4.png").read_bytes()
    assert run(checkpoint, "-i", tmp_path, "-o", tmp_path) == 2
    assert (tmp_path / "a_x4.png").read_bytes() == before
    assert (tmp_path / "a_x4_x4.png").is_file()


def test_two_inputs_with_one_output_name_do_not_overwrite_each_other(
    tmp_path, checkpoint, model, crop, capsys
):
    for folder, img in (("one", crop), ("two", crop[::-1])):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "a.png", np.ascontiguousarray(img[..., ::-1]))
    assert run(checkpoint, "-i", tmp_path / "one" / "a.png", tmp_path / "two" / "a.png", "-o", tmp_path) == 2
    assert "two/a.png: its output" in capsys.readouterr().err
    np.testing.assert_array_equal(read_rgb(tmp_path / "a_x4.png"), expected_rgb(model, crop))  # the first one


def test_collect_inputs(tmp_path, crop):
    for name in ("b.png", "a.JPG", "notes.txt", "c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.webp").write_bytes(b"x")
    names = [p.name for p in inference.collect_inputs([str(tmp_path)])]
    assert names == ["a.JPG", "b.png", "c.tiff"]  # a folder: its images, sorted, not recursive
    assert [p.name for p in inference.collect_inputs([str(tmp_path / "**" / "*.webp")])] == ["d.webp"]
    assert [p.name for p in inference.collect_inputs([str(tmp_path / "notes.txt")])] == [
        "notes.txt"
    ]  # as named
    assert len(inference.collect_inputs([str(tmp_path), str(tmp_path / "b.png")])) == 3  # named twice: once
    with pytest.raises(UserError, match="no such file"):
        inference.collect_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(UserError, match="no image file matches"):
        inference.collect_inputs([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        inference.collect_inputs([str(tmp_path / "empty")])


@pytest.mark.parametrize(
    "text, size",
    [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2), ("800", 800 * 1024**2)],
)
def test_parse_memory(text, size):
    assert inference.parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "2X"])
def test_parse_memory_rejects_nonsense(text):
    with pytest.raises(UserError, match="--max-memory"):
        inference.parse_memory(text)


def test_missing_bundled_checkpoint_says_how_to_pass_one(tmp_path, monkeypatch, crop):
    monkeypatch.setattr(models, "BUNDLED_CHECKPOINT", tmp_path / "team01_LKDN.pth")
    write(tmp_path / "a.png", crop[..., ::-1])
    with pytest.raises(UserError, match="team01_LKDN.pth: the bundled checkpoint is missing.*--model_path"):
        inference.main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")])


def test_the_backend_that_ran_is_printed_and_a_wrong_one_refused(tmp_path, checkpoint, crop, capsys):
    write(tmp_path / "a.png", crop[..., ::-1])
    assert run(checkpoint, "-i", tmp_path / "a.png", "-o", tmp_path / "out") == 0
    assert "backend reference" in capsys.readouterr().out
    with pytest.raises(UserError, match="--backend nonsense"):
        inference.main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path), "--model_path", str(checkpoint),
                        "--backend", "nonsense"])  # fmt: skip
    with pytest.raises(UserError, match="too small for one tile"):
        inference.main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path), "--model_path", str(checkpoint),
                        "--max-memory", "10M"])  # fmt: skip


# ----------------------------------------------------------------------------------------------------- --jobs


def _native_or_reference() -> str:
    return "native" if native_available() is None else "reference"


def test_jobs_write_what_one_at_a_time_writes(tmp_path, checkpoint, crop, capsys):
    """Four images, two at once on one thread each (the native kernels from two threads at once, where they
    build): the same files as one at a time on every thread; the thread count is restored afterwards."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write(src / f"{i}.png", np.ascontiguousarray(np.roll(crop, 7 * i, axis=1)[..., ::-1]))
    threads = torch.get_num_threads()
    backend = _native_or_reference()
    common = ["--model_path", str(checkpoint), "--device", "cpu", "--backend", backend]
    assert inference.main(["-i", str(src), "-o", str(tmp_path / "one"), *common]) == 0
    assert inference.main(["-i", str(src), "-o", str(tmp_path / "two"), "--jobs", "2", *common]) == 0
    assert torch.get_num_threads() == threads
    assert "2 images at once on" in capsys.readouterr().out
    for i in range(4):
        one, two = ((tmp_path / d / f"{i}_x4.png").read_bytes() for d in ("one", "two"))
        assert one == two, i


def test_jobs_report_bad_files_and_refused_outputs_and_go_on(tmp_path, checkpoint, crop, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "a.png", crop[..., ::-1])
    (src / "b.png").write_bytes(b"not a PNG")
    write(src / "c.png", crop[::-1, :, ::-1])
    write(src / "c_x4.png", crop[..., ::-1])  # an input that c.png's output would replace
    assert run(checkpoint, "-i", src, "-o", src, "--jobs", "3") == 2
    err = capsys.readouterr().err
    assert "b.png: not a readable image" in err and "its output" in err and "is an input image" in err
    assert (
        (src / "a_x4.png").is_file() and (src / "c_x4_x4.png").is_file() and not (src / "b_x4.png").exists()
    )


def test_a_fatal_error_in_one_job_starts_no_new_image(tmp_path, monkeypatch):
    started = []

    def fake(job, upscaler, checkpoint):
        started.append(job.src.name)
        if job.src.name == "0.png":
            raise FatalError("weights diverged")
        time.sleep(0.2)

    monkeypatch.setattr(inference, "upscale_job", fake)
    jobs = [inference.Job(tmp_path / f"{i}.png", tmp_path / f"{i}_x4.png") for i in range(8)]
    with pytest.raises(FatalError, match="weights diverged"):
        inference.upscale_jobs(jobs, None, tmp_path / "w.pth", workers=2, progress=False)
    assert len(started) < len(jobs)


def test_jobs_are_for_a_cpu_and_at_most_one_per_image():
    assert inference.resolve_jobs(None, torch.device("cpu"), 5) == 1
    assert inference.resolve_jobs(4, torch.device("cpu"), 2) == 2
    with pytest.raises(UserError, match="--jobs 2: images run one at a time on cuda"):
        inference.resolve_jobs(2, torch.device("cuda"), 3)
    assert inference.resolve_jobs(1, torch.device("cuda"), 3) == 1
