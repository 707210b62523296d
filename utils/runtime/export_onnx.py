"""Export a checkpoint's fused LKDN to ONNX, verified with onnxruntime before the file is written.

    python -m utils.runtime.export_onnx --model_path CKPT -o model.onnx [--atol 1e-4]

Any checkpoint `utils.files.checkpoint` reads (fused or training form; training form is fused first). The graph has
symbolic batch, height and width (input `lr`: float32 RGB in [0, 1], NCHW; output `sr`, unclamped). Before
writing, onnxruntime runs it on two input sizes and its output must match PyTorch's within `--atol`; if not,
nothing is written and the exit code is 2. The file is written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models import BUNDLED_CHECKPOINT
from utils.errors import UserError, run_cli
from utils.files.checkpoint import build_model_from_checkpoint
from utils.runtime.onnx_export import (
    OPSET,
    VERIFY_ATOL,
    VERIFY_SHAPES,
    OnnxVerificationError,
    export_onnx,
    save_onnx,
)


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
