"""Exponential moving average of the weights, released as `params_ema` (decay 0.999 in the recipe).

With warm-up (the default) the decay at update t (0-based) is min(decay, (1 + t) / (10 + t)), as common EMA
implementations do: 0.1 at the first update, 0.5 at the 8th, 0.9 at the 80th, the full 0.999 from about the
9,000th. Without it, 0.999 from the start keeps a short run's EMA close to the initial weights (after 2,000 steps,
13% of the initial weights remain), and what is validated, exported and fine-tuned from is nearly untrained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of the model whose parameters follow ema = decay * ema + (1 - decay) * param each step;
    buffers are copied. Starts equal to the model, as BasicSR's does."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of update `step` (0-based: the update after the first training step is 0)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """One update after training step `step` (0-based; a resumed run passes the global step, so that the
        warm-up continues where it was)."""
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - self.decay_at(step))
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
