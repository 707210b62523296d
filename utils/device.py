"""`--device auto|cpu|cuda[:N]` for every entry point."""

from __future__ import annotations

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
