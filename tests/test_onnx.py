"""ONNX export round trip: the exported graph, run by onnxruntime, is the PyTorch fused model's function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import LKDN, lkdn_s
from utils.errors import UserError
from utils.files.checkpoint import build_model_from_checkpoint
from utils.runtime import onnx_export
from utils.runtime import onnx_export as export_cli
from utils.runtime.backends import make_runner
from utils.runtime.onnx_export import OnnxVerificationError, build_onnx, export_onnx, save_onnx, verify_onnx

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4


def perturbed(model: LKDN, seed: int) -> LKDN:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2 * (p.abs().mean() + 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def small_model() -> LKDN:
    torch.manual_seed(0)
    return perturbed(LKDN(num_feat=12, num_blocks=2, scale=4, fused=True), seed=1)


@pytest.fixture(scope="module")
def exported(small_model) -> bytes:
    data, diff = export_onnx(small_model)
    assert diff <= ATOL
    return data


def run_onnx(source, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["sr"], {"lr": x.numpy()})[0]


def test_round_trip_through_a_file_at_other_sizes(small_model, exported, tmp_path):
    path = save_onnx(exported, tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left
    for shape in [(1, 3, 7, 31), (3, 3, 16, 9)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.inference_mode():
            expected = small_model(x).numpy()
        got = run_onnx(str(path), x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_graph_has_symbolic_batch_height_width(small_model):
    graph = build_onnx(small_model).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    onnx.checker.check_model(build_onnx(small_model))


def test_verification_fails_loudly_on_a_wrong_graph(small_model, exported):
    """A graph of other weights is caught: the check compares against the model, not against itself."""
    other = perturbed(LKDN(num_feat=12, num_blocks=2, scale=4, fused=True), seed=9)
    session = onnx_export.ort_session(exported)
    with pytest.raises(OnnxVerificationError, match="differs from PyTorch"):
        verify_onnx(session, other)


def test_export_refuses_a_training_form_model():
    with pytest.raises(ValueError, match="fused LKDN"):
        build_onnx(lkdn_s(fused=False))


def test_onnxruntime_backend_agrees_with_reference(small_model, exported, tmp_path):
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = small_model(x)
    runner = make_runner(small_model, "cpu", "onnxruntime")
    assert runner.name == "onnxruntime"
    torch.testing.assert_close(runner(x), expected, atol=ATOL, rtol=0)
    path = save_onnx(exported, tmp_path / "given.onnx")
    from_file = make_runner(small_model, "cpu", "onnxruntime", onnx_path=path)
    assert from_file.name == "onnxruntime (given.onnx)"
    torch.testing.assert_close(from_file(x), expected, atol=ATOL, rtol=0)


def test_onnxruntime_backend_refuses_an_onnx_file_of_other_weights(exported, tmp_path):
    path = save_onnx(exported, tmp_path / "other.onnx")
    other = perturbed(LKDN(num_feat=12, num_blocks=2, scale=4, fused=True), seed=5)
    with pytest.raises(OnnxVerificationError):
        make_runner(other, "cpu", "onnxruntime", onnx_path=path)


def test_onnxruntime_backend_refuses_a_file_that_is_no_onnx_model(small_model, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="broken.onnx: not a loadable ONNX model"):
        make_runner(small_model, "cpu", "onnxruntime", onnx_path=path)
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        make_runner(small_model, "cpu", "onnxruntime", onnx_path=tmp_path / "missing.onnx")


def test_cli_exports_the_authors_checkpoint(reference_dir, tmp_path):
    out = tmp_path / "lkdn_s.onnx"
    cmd = [
        sys.executable,
        "-m",
        "utils.runtime.onnx_export",
        "--model_path",
        str(reference_dir / "LKDN-S_del_rep_x4.pth"),
    ]
    done = subprocess.run([*cmd, "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "max abs diff" in done.stdout
    model = build_model_from_checkpoint(reference_dir / "LKDN-S_del_rep_x4.pth")
    golden_input = torch.from_numpy(np.load(reference_dir / "golden_input_1x3x37x53.npy"))
    golden = np.load(reference_dir / "golden_LKDN-S_x4_deploy.npy")
    got = run_onnx(str(out), golden_input)
    np.testing.assert_allclose(got, golden, atol=ATOL, rtol=0)
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(golden_input).numpy(), atol=ATOL, rtol=0)


def test_cli_missing_checkpoint_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "utils.runtime.onnx_export", "--model_path", str(tmp_path / "missing.pth")]
    done = subprocess.run([*cmd, "-o", str(tmp_path / "m.onnx")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "missing.pth" in done.stderr and not (tmp_path / "m.onnx").exists()


def test_cli_writes_nothing_when_verification_fails(small_model, tmp_path, monkeypatch):
    checkpoint = tmp_path / "small.pth"
    torch.save(small_model.state_dict(), checkpoint)

    def failing(model, atol):
        raise OnnxVerificationError("onnxruntime differs from PyTorch by 1 (> 0.0001)")

    monkeypatch.setattr(export_cli, "export_onnx", failing)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="not written"):
        export_cli.main(["--model_path", str(checkpoint), "-o", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pth"]


def test_cli_in_process_writes_a_verified_file(small_model, tmp_path, capsys):
    checkpoint = tmp_path / "small.pth"
    torch.save(small_model.state_dict(), checkpoint)
    out = tmp_path / "sub" / "m.onnx"
    assert export_cli.main(["--model_path", str(checkpoint), "-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        np.testing.assert_allclose(run_onnx(str(out), x), small_model(x).numpy(), atol=ATOL, rtol=0)


def test_the_backend_exports_once_per_weights_and_reuses_the_cache(
    small_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path))
    make_runner(small_model, "cpu", "onnxruntime")
    (cached,) = (tmp_path / "onnx").glob("*.onnx")
    assert "exporting and verifying the ONNX graph" in capsys.readouterr().err
    stamp = cached.stat().st_mtime_ns
    make_runner(small_model, "cpu", "onnxruntime")  # the cache: no second export
    assert cached.stat().st_mtime_ns == stamp and "exporting" not in capsys.readouterr().err
    other = perturbed(LKDN(num_feat=12, num_blocks=2, scale=4, fused=True), seed=6)
    assert onnx_export.weights_digest(other) != onnx_export.weights_digest(small_model)
    cached.write_bytes(b"damaged")  # a damaged cache file is exported again, not an error
    x = torch.rand(1, 3, 9, 10)
    with torch.inference_mode():
        torch.testing.assert_close(
            make_runner(small_model, "cpu", "onnxruntime")(x), small_model(x), atol=ATOL, rtol=0
        )


def test_the_command_lines_run_an_exported_file(exported, small_model, tmp_path):
    import cv2

    from utils.files.checkpoint import save_weights

    weights = tmp_path / "small.pth"
    save_weights(small_model.state_dict(), weights, small_model.config())
    onnx_file = save_onnx(exported, tmp_path / "small.onnx")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((12, 14, 3), np.uint8))
    done = subprocess.run(
        [sys.executable, "inference.py", "-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model_path",
         str(weights), "--backend", "onnxruntime", "--onnx_path", str(onnx_file)], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backend onnxruntime (small.onnx)" in done.stdout
