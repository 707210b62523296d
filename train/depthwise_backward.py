"""A faster CPU backward pass for LKDN's depthwise convs, used while training.

oneDNN computes the input gradient of a depthwise conv several times slower than the forward conv it equals
(one thread, batch 16 of 42 x 64 x 64, channels-last: the 5x5 dilation-3 conv of LKA 16.6 ms against 2.8 ms; the
5x5 3.2 against 1.9; benchmarks/bench_depthwise.py). For a stride-1 conv with "same" padding that gradient *is*
a depthwise conv of the output gradient with the kernel flipped in space, so the backward runs that; the weight
and bias gradients stay oneDNN's. The numbers are the same up to float rounding (tested). On a GPU, or under
autocast, or without gradients, the plain conv runs: cuDNN needs no help, and autocast keeps its own casting
rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _FlippedInputGradient(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, dilation: tuple
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        channels = x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, ctx.padding, ctx.dilation, channels)
        mask = [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        if mask[1] or mask[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [channels] if ctx.has_bias else None, [1, 1], list(ctx.padding),
                list(ctx.dilation), False, [0, 0], channels, mask,
            )  # fmt: skip
        return grad_x, grad_w, grad_b, None, None


class FlippedGradDepthwiseConv2d(nn.Conv2d):
    """A stride-1 "same" depthwise nn.Conv2d whose input gradient runs as a forward conv on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            return _FlippedInputGradient.apply(x, self.weight, self.bias, self.padding, self.dilation)
        return super().forward(x)


def _qualifies(conv: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    same = all(
        p * 2 == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)
    )
    return depthwise and same and conv.stride == (1, 1) and conv.kernel_size != (1, 1)


def use_flipped_input_gradient(model: nn.Module) -> int:
    """Turn every stride-1 "same" depthwise conv of `model` into a FlippedGradDepthwiseConv2d, in place; the
    parameters, state-dict keys and outputs stay as they are. Returns how many convs changed."""
    convs = [module for module in model.modules() if _qualifies(module)]
    for conv in convs:
        conv.__class__ = FlippedGradDepthwiseConv2d  # a subclass that adds no state: only forward differs
    return len(convs)
