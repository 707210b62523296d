"""`--device auto|cpu|cuda[:N]` for every entry point, and float32's meaning on a CUDA GPU."""

from __future__ import annotations

import contextlib
import warnings
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
    TensorFloat-32 on tensor cores, PyTorch's default for convolutions; the caller's setting is back afterwards.

    Set through the `allow_tf32` flags, which PyTorch keeps consistent with its newer `fp32_precision` ones:
    setting only the newer ones to IEEE makes every later read of the older ones (torch.compile reads them)
    raise in PyTorch 2.9-2.13. The older flags' deprecation warning is silenced here."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32.*", category=UserWarning)
        cudnn.allow_tf32 = matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = before
