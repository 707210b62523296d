"""`--device auto|cpu|cuda[:N]` for every entry point, and float32's meaning on a CUDA GPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from utils.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a --device value: auto picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: this machine has no CUDA GPU (or torch is a CPU build); use --device cpu"
        )
    return device


@contextlib.contextmanager
def cuda_float32(tf32: bool) -> Iterator[None]:
    """Float32 convolutions and matrix products on CUDA in IEEE float32, or (`tf32`) with inputs rounded to
    TensorFloat-32 on tensor cores, PyTorch's default for convolutions. Set through the `fp32_precision` flags
    only: PyTorch >= 2.9 raises when they are mixed with the older `allow_tf32` ones."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
