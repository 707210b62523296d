"""What bad input and faults get on the inference and measurement paths: the work done correctly, or one line
naming the file, the cause and the fix (exit code 2), the rest of a batch still processed, nothing half-written.

README's "What bad input gets" table is this file's summary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
from models import LKDN
from utils.errors import UserError
from utils.files.atomic_write import STALE_SECONDS, save_atomic, write_bytes_atomic
from utils.files.checkpoint import build_model_from_checkpoint
from utils.files.image_io import read_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_atomic(
        LKDN(num_feat=8, num_blocks=1, fused=True).state_dict(), tmp_path_factory.mktemp("w") / "t.pth"
    )


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        assert cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    return folder


def _cli(script: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _nan_checkpoint(tiny: Path, tmp_path: Path, value: float) -> Path:
    state = torch.load(tiny, weights_only=True)
    state["B1.c6.weight"][0, 0, 0, 0] = value
    return save_atomic(state, tmp_path / "bad.pth")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_inference_and_test_demo(tiny, photos, tmp_path, value):
    bad = _nan_checkpoint(tiny, tmp_path, value)
    line = _one_line_error(_cli("inference.py", "-i", photos, "-o", tmp_path / "out", "--model_path", bad))
    assert "bad.pth: tensor 'B1.c6.weight' holds NaN or Inf" in line
    assert not (tmp_path / "out").exists()  # no black image
    line = _one_line_error(
        _cli("test_demo.py", "--data_dir", tmp_path, "--model_path", bad, "--save_dir", tmp_path / "r")
    )
    assert "holds NaN or Inf" in line and not (tmp_path / "r" / "results.json").exists()


def test_a_folder_as_model_path_says_so(photos, tmp_path):
    line = _one_line_error(
        _cli("inference.py", "-i", photos, "-o", tmp_path / "out", "--model_path", tmp_path)
    )
    assert "is a folder; pass the checkpoint file in it" in line


def test_a_gpu_only_precision_or_backend_on_a_cpu_says_so(tiny, photos, tmp_path):
    line = _one_line_error(
        _cli("inference.py", "-i", photos, "-o", tmp_path / "o", "--model_path", tiny, "--device", "cpu",
             "--precision", "tf32")
    )  # fmt: skip
    assert (
        "--precision tf32: precision 'tf32' is a mode of NVIDIA GPUs' tensor cores; on a CPU use fp32" in line
    )
    line = _one_line_error(
        _cli("test_demo.py", "--data_dir", tmp_path, "--model_path", tiny, "--device", "cpu",
             "--backend", "cuda_graph", "--save_dir", tmp_path / "r")
    )  # fmt: skip
    assert "--backend cuda_graph" in line and "on a CUDA GPU only" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "r" / "results.json").exists()


def test_output_naming_a_file_says_so(tiny, photos, tmp_path):
    (tmp_path / "out.png").write_bytes(b"")
    line = _one_line_error(
        _cli("inference.py", "-i", photos, "-o", tmp_path / "out.png", "--model_path", tiny)
    )
    assert "-o " in line and "out.png: is a file, not a folder" in line


def test_a_tiny_memory_budget_is_echoed_as_given(tiny, photos, tmp_path):
    line = _one_line_error(
        _cli("inference.py", "-i", photos, "-o", tmp_path / "o", "--model_path", tiny, "--max-memory", "1K")
    )
    assert "--max-memory 1 KiB: too small" in line


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: {**s, "fea_conv.pw.weight": torch.tensor(1.0)}, "not an LKDN checkpoint"),
        (lambda s: {**s, "fea_conv.pw.weight": torch.zeros(0, 12, 1, 1)}, "t.pth"),
        (
            lambda s: {k: v for k, v in s.items() if not k.startswith("c1.")},
            "not an LKDN checkpoint (no 'c1.weight')",
        ),
    ],
    ids=["0-d tensor", "0 channels", "missing key"],
)
def test_checkpoints_of_impossible_shapes_are_one_error(tiny, tmp_path, damage, message):
    path = save_atomic(damage(torch.load(tiny, weights_only=True)), tmp_path / "t.pth")
    with pytest.raises(UserError, match=message.replace("(", "\\(").replace(")", "\\)")):
        build_model_from_checkpoint(path)


def test_out_of_memory_on_one_image_fails_it_and_the_batch_goes_on(
    tiny, photos, tmp_path, monkeypatch, capsys
):
    real = inference.upscale_image

    def allocator_fails_on_b(image, upscaler):
        if image.rgb.shape == (12, 10, 3) and allocator_fails_on_b.calls == 1:
            allocator_fails_on_b.calls += 1
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )
        allocator_fails_on_b.calls += 1
        return real(image, upscaler)

    allocator_fails_on_b.calls = 0
    monkeypatch.setattr(inference, "upscale_image", allocator_fails_on_b)
    code = inference.main(["-i", str(photos), "-o", str(tmp_path / "out"), "--model_path", str(tiny)])
    assert code == 2
    err = capsys.readouterr().err
    assert "b.png: out of memory" in err and "--max-memory" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "c_x4.png"]


def test_the_memory_budget_counts_the_output_image(tiny, tmp_path, capsys):
    src = tmp_path / "big.png"
    cv2.imwrite(str(src), np.zeros((300, 300, 3), np.uint8))  # output 1200 x 1200 x 3 bytes, twice: 8.2 MiB
    code = inference.main(
        ["-i", str(src), "-o", str(tmp_path / "out"), "--model_path", str(tiny), "--max-memory", "8M"]
    )
    assert code == 2
    assert "the 1200x1200 output alone needs 8 MiB; raise --max-memory" in capsys.readouterr().err


def test_an_animated_or_multi_page_image_is_refused_not_cut_to_one_frame(tmp_path):
    frames = [np.full((8, 8, 3), value, np.uint8) for value in (0, 255)]
    path = tmp_path / "two_pages.tiff"
    assert cv2.imwritemulti(str(path), frames)
    with pytest.raises(UserError, match="two_pages.tiff: an animated or multi-page image \\(2 frames\\)"):
        read_image(path)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    old, fresh = tmp_path / ".out.png.abc123.tmp", tmp_path / ".out.png.def456.tmp"
    old.write_bytes(b"half an image")
    fresh.write_bytes(b"another writer, still running")
    then = time.time() - STALE_SECONDS - 10
    os.utime(old, (then, then))
    write_bytes_atomic(tmp_path / "out.png", b"the image")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.png.def456.tmp", "out.png"]


def test_a_fresh_temporary_file_of_a_dead_writer_is_removed_and_a_live_ones_kept(tmp_path):
    """SIGKILL then the same command at once: the dead writer's file (its PID in the name) goes at the next
    write, whatever its age; a live writer's stays."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    killed = tmp_path / f".out.png.{int(dead.stdout)}-abc123.tmp"
    live = tmp_path / f".out.png.{os.getppid()}-def456.tmp"
    killed.write_bytes(b"half an image")
    live.write_bytes(b"a writer still running")
    write_bytes_atomic(tmp_path / "out.png", b"the image")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.png"]


def test_save_dir_naming_a_file_says_so(tiny, tmp_path):
    (tmp_path / "results").write_text("")
    line = _one_line_error(
        _cli("test_demo.py", "--data_dir", tmp_path, "--model_path", tiny, "--save_dir", tmp_path / "results")
    )
    assert "--save_dir" in line and "results: is a file, not a folder" in line
