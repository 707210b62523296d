"""ONNX export of the fused LKDN through PyTorch's exporter, verified with onnxruntime before anything is
written; and its command.

    python -m utils.runtime.onnx_export --model_path CKPT -o model.onnx [--atol 1e-4]     (or: lkdn-export-onnx)

`torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript) exports the fused model with symbolic batch,
height and width. What is exported is the fused network with its first conv folded (`LKDN.folded_first_conv`:
the 4x input repetition and the bias-free pointwise conv become one 3x3 conv): the same function, without a
12-channel copy of the input in the graph. Opset 18.

`export_onnx` returns the serialized model after checking it against the PyTorch module on two input sizes
(max abs difference <= `atol`); `save_onnx` writes it atomically. Any checkpoint `utils.files.checkpoint`
reads works (a training-form one is fused first). Input `lr`: float32 RGB in [0, 1], NCHW; output `sr`,
unclamped. If verification fails nothing is written and the command exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models import BUNDLED_CHECKPOINT, LKDN
from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_bytes_atomic
from utils.files.checkpoint import CONFIG_KEY, build_model_from_checkpoint

OPSET = 18
INPUT, OUTPUT = "lr", "sr"
VERIFY_SHAPES = ((1, 3, 23, 40), (2, 3, 37, 19))  # two sizes, odd, batch > 1: what the export is checked on
VERIFY_ATOL = 1e-4


class OnnxVerificationError(ValueError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance: the graph is not this model."""


class _ExportForm(nn.Module):
    """The fused LKDN with its first conv folded: what is exported."""

    def __init__(self, model: LKDN) -> None:
        super().__init__()
        self.first = model.folded_first_conv()
        self.model = model

    def forward(self, lr: Tensor) -> Tensor:
        return self.model.reconstruct(self.first(lr))


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines, deprecation warnings and its note that torchvision is absent are not
    the user's business: the verification says whether the export worked."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def build_onnx(model: LKDN):
    """The ONNX model (onnx.ModelProto) of the fused `model`, with symbolic batch, height and width."""
    if not model.fused:
        raise ValueError("ONNX export needs a fused LKDN (models.fuse_model)")
    form = _ExportForm(_cpu_float32(model)).eval()
    any_size = torch.export.Dim.DYNAMIC
    example = torch.rand(1, model.in_ch, 32, 32)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            form,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"lr": {0: any_size, 2: any_size, 3: any_size}},
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    onnx_model = program.model_proto
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ("batch", None, "height", "width"), strict=True):
        if name is not None:
            dim.dim_param = name
    onnx_model.doc_string = (
        f"LKDN x{model.scale}, {model.num_feat} channels, {model.num_blocks} blocks (fused form). "
        "Input: RGB in [0, 1], float32 NCHW; output unclamped."
    )
    entry = onnx_model.metadata_props.add()  # the network's identity, as every weights file declares it
    entry.key, entry.value = CONFIG_KEY, json.dumps(model.config())
    return onnx_model


def ort_session(model: bytes | str | Path, device: torch.device | str = "cpu"):
    """An onnxruntime session for a serialized model or an .onnx path (CUDA provider when asked and present)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(source, options, providers=providers)


def _cpu_float32(model: LKDN) -> LKDN:
    """`model` itself if it is on the CPU in float32, else a copy that is (the caller's model is not moved)."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def verify_onnx(
    session, model: LKDN, shapes: tuple[tuple[int, ...], ...] = VERIFY_SHAPES, atol: float = VERIFY_ATOL
) -> float:
    """Max abs difference between onnxruntime and the PyTorch module on seeded inputs of `shapes`; raises
    OnnxVerificationError if it exceeds `atol` (or if the output shapes differ)."""
    reference = _cpu_float32(model)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected = reference(x).numpy()
        got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        if got.shape != expected.shape:
            raise OnnxVerificationError(
                f"onnxruntime output shape {got.shape} != PyTorch {expected.shape} for input {shape}"
            )
        diff = float(np.abs(got - expected).max())
        if not diff <= atol:  # also catches NaN
            raise OnnxVerificationError(
                f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol:g}) on an input of shape {shape}"
            )
        worst = max(worst, diff)
    return worst


def export_onnx(model: LKDN, atol: float = VERIFY_ATOL) -> tuple[bytes, float]:
    """(serialized ONNX model of the fused `model`, max abs difference found by the verification)."""
    reference = _cpu_float32(model)
    data = build_onnx(reference).SerializeToString()
    return data, verify_onnx(ort_session(data), reference, atol=atol)


def weights_digest(model: LKDN) -> str:
    """SHA-256 of what the exported graph depends on: the network's identity, every tensor's name, dtype, shape
    and bytes, the opset and the exporter's (torch's) version."""
    digest = hashlib.sha256(json.dumps([model.config(), OPSET, torch.__version__], sort_keys=True).encode())
    for name, tensor in _cpu_float32(model).state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_onnx(model: LKDN, cache: Path | None = None) -> Path:
    """The verified .onnx of the fused `model`, exported (about 10 s) once per weights and then reused from
    `cache` (default ~/.cache/lkdn/onnx, or $LKDN_KERNEL_CACHE/onnx), keyed by `weights_digest`."""
    from utils.native.build import cache_dir

    path = (cache or cache_dir() / "onnx") / f"{weights_digest(model)[:32]}.onnx"
    if not path.is_file():
        print(
            f"exporting and verifying the ONNX graph of these weights (once; cached as {path})",
            file=sys.stderr,
        )
        save_onnx(export_onnx(model)[0], path)
    return path


def save_onnx(data: bytes, path: str | Path) -> Path:
    """Write serialized ONNX bytes to `path` atomically (temporary file in the same folder, then rename)."""
    return write_bytes_atomic(path, data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model_path", default=str(BUNDLED_CHECKPOINT), help="checkpoint (.pth); default: bundled"
    )
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument(
        "--atol", type=float, default=VERIFY_ATOL, help="max abs difference allowed in verification"
    )
    args = p.parse_args(argv)
    output = Path(args.output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"{output}: the output should be an .onnx file; pass e.g. -o model.onnx")
    model = build_model_from_checkpoint(args.model_path, fused=True)
    try:
        data, diff = export_onnx(model, atol=args.atol)
    except OnnxVerificationError as err:
        raise UserError(f"{output}: not written, the exported graph failed verification: {err}") from None
    save_onnx(data, output)
    sizes = " and ".join("x".join(map(str, s)) for s in VERIFY_SHAPES)
    print(
        f"wrote {output} ({len(data) / 1024:.0f} KiB, opset {OPSET}, dynamic batch/height/width); "
        f"onnxruntime vs PyTorch on {sizes}: max abs diff {diff:.2e}"
    )
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
