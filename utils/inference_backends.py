"""Inference backends: how a fused LKDN is run. Every entry point gets its runner from `make_runner`.

`reference` runs the readable module form (the target of the golden tests); faster paths are derived from it
and checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from models import LKDN

BACKENDS = ("auto", "reference")


class Runner(Protocol):
    name: str

    def __call__(self, lr: Tensor) -> Tensor: ...


@dataclass
class ModuleRunner:
    """Runs a module under inference_mode on the module's device."""

    module: torch.nn.Module
    name: str

    def __call__(self, lr: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(lr)


def make_runner(model: LKDN, device: torch.device | str = "cpu", backend: str = "auto") -> Runner:
    """A callable running the fused `model` on `device` with `backend` ("auto" picks the fastest exact one)."""
    if not model.fused:
        raise ValueError("make_runner expects the fused model (models.fuse_model)")
    model = model.to(device).eval()
    if backend in ("auto", "reference"):
        return ModuleRunner(model, "reference")
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
