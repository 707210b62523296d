"""The CUDA code paths (marker `cuda`): run by benchmarks/gpu_check.py on a machine with a GPU, skipped elsewhere.

Each backend that claims CUDA against the float32 module on the CPU, the bf16 and fp16 paths, training steps
with autocast on CUDA and an exact resume there, and test_demo.py on CUDA with the kit's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import LKDN, lkdn_s
from utils.files.atomic_write import save_atomic
from utils.runtime.backends import make_runner

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these)"
    ),
]


@pytest.fixture(scope="module")
def model() -> LKDN:
    torch.manual_seed(0)
    return lkdn_s(fused=True).eval()


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["auto", "reference", "fast", "cuda_graph", "onnxruntime"])
def test_every_backend_on_cuda_agrees_with_the_cpu_module(model, lr, backend):
    with torch.inference_mode():
        expected = model(lr)
    runner = make_runner(model.to("cpu"), "cuda", backend)
    got = runner(lr.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=f"{backend} ({runner.name})")
    model.to("cpu")


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_reduced_precisions_on_cuda_stay_close(model, lr, backend, precision):
    with torch.inference_mode():
        expected = model(lr)
    runner = make_runner(model, "cuda", backend, precision=precision)
    got = runner(lr.cuda()).cpu()
    assert runner.name == f"{backend}+{precision}"
    assert got.dtype == torch.float32 and (got - expected).abs().max() < 0.05
    model.to("cpu")


def test_fp32_on_cuda_is_ieee_even_where_pytorch_defaults_to_tf32(model, lr):
    """The process keeps PyTorch's default (TF32 convolutions); the fp32 runner's calls alone run in IEEE float32,
    so it agrees with the CPU, and the default is back afterwards."""
    with torch.inference_mode():
        expected = model(lr)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    got = make_runner(model, "cuda", "reference", precision="fp32")(lr.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    model.to("cpu")


def test_cuda_graph_replays_the_module_and_captures_each_new_shape(model):
    """The eager module's output (the same kernels, replayed), for repeated calls and after a change of shape."""
    runner = make_runner(model, "cuda", "cuda_graph")
    eager = make_runner(model, "cuda", "reference")
    for shape in ((1, 3, 20, 30), (1, 3, 20, 30), (2, 3, 11, 7), (1, 3, 20, 30)):
        x = torch.rand(shape, device="cuda")
        torch.testing.assert_close(runner(x), eager(x), atol=1e-5, rtol=0)
    assert runner.captures == 3  # 20x30, 11x7, 20x30 again (one graph is kept)
    model.to("cpu")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_resumes_exactly(tmp_path, precision):
    from train.config import TrainConfig
    from train.state import latest_resumable
    from train.trainer import Trainer

    rng = np.random.default_rng(0)
    for folder in ("hr", "val/HR", "val/LR_bicubic_x4"):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(tmp_path / "hr" / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "val/HR/a.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "val/LR_bicubic_x4/a.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))

    def config(run: str, total: int) -> TrainConfig:
        return TrainConfig(train_sources=[str(tmp_path / "hr")], cache_dir=str(tmp_path / "cache"),
                           val_dirs=[str(tmp_path / "val")], run_dir=str(tmp_path / run), lr_patch=8, batch_size=4,
                           num_feat=8, num_blocks=2, num_workers=0, in_memory=True, total_iters=total, save_every=2,
                           val_every=100, device="cuda", precision=precision)  # fmt: skip

    Trainer(config("whole", 4)).run()
    Trainer(config("resumed", 2)).run()
    resumed = Trainer(config("resumed", 4))
    assert resumed.start == 2 and latest_resumable(tmp_path / "resumed") == 2
    resumed.run()
    whole = torch.load(tmp_path / "whole/models/last.pth", weights_only=True)["params"]
    again = torch.load(tmp_path / "resumed/models/last.pth", weights_only=True)["params"]
    for key in whole:
        assert torch.equal(whole[key], again[key]), key


def test_test_demo_on_cuda_reports_the_kits_figures(model, tmp_path):
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    for folder, name, img in (
        ("DIV2K_valid_HR", "0801.png", hr),
        ("DIV2K_valid_LR", "0801x4.png", hr[::4, ::4]),
    ):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / name), img)
    checkpoint = save_atomic(model.state_dict(), tmp_path / "m.pth")
    done = subprocess.run(
        [sys.executable, "test_demo.py", "--data_dir", str(tmp_path), "--allow_partial", "--device", "cuda",
         "--model_path", str(checkpoint), "--save_dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (entry,) = json.loads((tmp_path / "out" / "results.json").read_text()).values()
    assert entry["device"].startswith("cuda") and entry["valid_ave_runtime"] > 0 and entry["valid_memory"] > 0
    assert entry["memory_measure"].startswith("torch.cuda.max_memory_allocated")
    assert entry["backend"] == "reference+tf32"  # the kit's conditions: PyTorch's default TF32 convolutions
    assert make_runner(model, "cuda", "onnxruntime", "auto").name == "onnxruntime"  # computed on the host
    model.to("cpu")
