"""`--device auto|cpu|cuda[:N]` for every entry point, float32's meaning on a CUDA GPU, and the CPU's name
(every CPU speed figure is printed beside it: speeds differ between CPU families)."""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path

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


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def vector_isa() -> str:
    """The widest x86 vector extension the CPU has: 'AVX-512', 'AVX2' or 'no AVX2' (Linux; '?' elsewhere)."""
    info = _cpuinfo()
    if not info:
        return "?"
    flags = next((line for line in info if line.startswith("flags")), "") + " "
    return "AVX-512" if " avx512f " in flags else "AVX2" if " avx2 " in flags else "no AVX2"


def cpu_description() -> str:
    """'Intel(R) Xeon(R) Processor (x86_64, AVX-512)': the CPU model, architecture and vector width."""
    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    return f"{name or platform.processor() or '?'} ({platform.machine()}, {vector_isa()})"
