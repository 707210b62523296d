"""GELU on channels-last activations through their NHWC view, used while training on a CPU.

PyTorch's CPU GELU is slower on a channels-last NCHW tensor than on the same memory seen as a contiguous NHWC
tensor (`python benchmarks/bench_train_ops.py` measures both directions). The same function on the same
numbers; only the loop differs (the two round within float32 tolerance of each other, tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import replace_modules


class NHWCGELU(nn.GELU):
    """nn.GELU that runs a channels-last 4-D input through its contiguous NHWC view."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return super().forward(x)


def use_nhwc_gelu(model: nn.Module) -> int:
    """Replace every nn.GELU in `model` by an NHWCGELU (GELU has no state). Returns how many."""
    return replace_modules(model, lambda m: NHWCGELU(m.approximate) if type(m) is nn.GELU else None)
