"""Convert a checkpoint between `.pth` and `.safetensors`, optionally fusing it first.

    python -m utils.files.convert --model_path CKPT -o weights.safetensors [--fused]     (or: lkdn-convert)

Reads anything the loader reads (plain or BasicSR-style, training or fused form; the EMA weights when both are
there) and writes the plain state dict the output's suffix names, atomically, with the network's identity declared. `--fused` writes the inference
form (a training-form checkpoint is fused first). The written file is read back and compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models import BUNDLED_CHECKPOINT
from utils.errors import UserError, run_cli
from utils.files.checkpoint import build_model_from_checkpoint, identify, read_checkpoint, save_weights

SUFFIXES = (".pth", ".safetensors")


def convert(source: Path, output: Path, fused: bool = False) -> Path:
    """Write `source`'s weights to `output` (format by suffix), fused first if asked; verified by reading back."""
    if output.suffix not in SUFFIXES:
        raise UserError(f"{output}: the output should end in .safetensors or .pth")
    if fused:
        model = build_model_from_checkpoint(source, fused=True)
        state, config = model.state_dict(), model.config()
    else:  # the tensors as they are, with the identity they are checked to hold
        checkpoint = read_checkpoint(source)
        state, config = checkpoint.state, identify(checkpoint)
    save_weights(state, output, config)
    back = read_checkpoint(output)
    same = back.state.keys() == state.keys() and all(torch.equal(back.state[k], state[k]) for k in state)
    if not same or back.config != config:
        raise UserError(f"{output}: read back different from what was written; check the disk")
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", type=Path, default=BUNDLED_CHECKPOINT, help="checkpoint; default: bundled")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors or .pth file to write")
    p.add_argument("--fused", action="store_true", help="write the fused (inference) form")
    args = p.parse_args(argv)
    path = convert(args.model_path, args.output, args.fused)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) from {args.model_path}")
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
