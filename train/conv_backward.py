"""Faster CPU backward passes for LKDN's depthwise and 1x1 convs, used while training.

oneDNN's conv gradients on a CPU cost several times the forward conv (`python benchmarks/bench_train_ops.py`
measures each against what runs here instead):

- the input gradient of a depthwise conv: for a stride-1 conv with "same" padding it *is* a depthwise conv of
  the output gradient with the kernel flipped in space, so the backward runs that;
- the weight gradient of the 5x5 and dilated 5x5 depthwise convs: a C++ kernel takes it
  (train/native_conv_grad.py), and the 3x3's too;
- the three gradients of a 1x1 conv, in separate passes: the C++ kernel computes them in one pass over tiles of
  pixels, and SharedInputLKDB runs each distillation step's two 1x1 convs of one input (the refine branch's
  and the distillation conv) through one such pass.

The numbers are the same up to float rounding (tested). On a GPU, under autocast, without gradients, or when
the C++ kernels cannot be built, the plain conv or oneDNN's gradients run: cuDNN needs no help, and autocast
keeps its own casting rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import LKDB, RBSB, replace_modules
from train.native_conv_grad import (
    depthwise_weight_grad,
    is_channels_last_float,
    native_conv_grad_available,
    pointwise_backward,
)


def _speeds_up(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def _native(*tensors: Tensor) -> bool:
    """Whether the C++ kernels take these tensors: channels-last float32 on the CPU, kernels built here."""
    return all(is_channels_last_float(t) for t in tensors) and native_conv_grad_available() is None


class _FastDepthwise(torch.autograd.Function):
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
        if is_channels_last_float(x):  # the layout the kernels and oneDNN's fast paths read
            grad = grad.contiguous(memory_format=torch.channels_last)
        channels = x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, ctx.padding, ctx.dilation, channels)
        mask = [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        if (mask[1] or mask[2]) and _native(grad, x):
            grad_w, grad_b = depthwise_weight_grad(
                grad, x, tuple(weight.shape[2:]), ctx.dilation, ctx.padding, with_bias=mask[2]
            )
            grad_w = grad_w if mask[1] else None
        elif mask[1] or mask[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [channels] if ctx.has_bias else None, [1, 1], list(ctx.padding),
                list(ctx.dilation), False, [0, 0], channels, mask,
            )  # fmt: skip
        return grad_x, grad_w, grad_b, None, None


def _onednn_pointwise_backward(grad: Tensor, x: Tensor, weight: Tensor, mask: list[bool]) -> tuple:
    out = weight.shape[0]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [out], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
    )


class _FastPointwise(torch.autograd.Function):
    """1x1 convs of one input x, (x, weight_1, bias_1, weight_2, bias_2, ...) -> (y_1, y_2, ...): forward by
    oneDNN, backward by the C++ kernel in one pass over x, the input gradient summed over the convs."""

    @staticmethod
    def forward(ctx, x: Tensor, *weights_and_biases: Tensor | None) -> tuple[Tensor, ...]:
        weights, biases = weights_and_biases[0::2], weights_and_biases[1::2]
        ctx.save_for_backward(x, *weights)
        ctx.has_bias = [b is not None for b in biases]
        return tuple(F.conv2d(x, w, b) for w, b in zip(weights, biases, strict=True))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x, *weights = ctx.saved_tensors
        wants_input, wants_weight = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1::2])
        wants_bias = any(n and b for n, b in zip(ctx.needs_input_grad[2::2], ctx.has_bias, strict=True))
        grads = [g.contiguous(memory_format=torch.channels_last) for g in grads]
        if _native(x, *grads):
            grad_x, grad_w, grad_b = pointwise_backward(
                grads, x, weights, (wants_input, wants_weight, wants_bias)
            )
        else:
            mask = [wants_input, wants_weight, wants_bias]
            parts = [_onednn_pointwise_backward(g, x, w, mask) for g, w in zip(grads, weights, strict=True)]
            grad_x = sum(p[0] for p in parts) if wants_input else None
            grad_w, grad_b = [p[1] for p in parts], [p[2] for p in parts]
        result: list[Tensor | None] = [grad_x]
        for i, has_bias in enumerate(ctx.has_bias):
            result.append(grad_w[i] if ctx.needs_input_grad[1 + 2 * i] else None)
            result.append(grad_b[i] if has_bias and ctx.needs_input_grad[2 + 2 * i] else None)
        return tuple(result)


def pointwise_convs(x: Tensor, *weights_and_biases: Tensor | None) -> tuple[Tensor, ...]:
    """1x1 convs of `x` (weight, bias pairs; a bias may be None) whose gradients the C++ kernel computes in one
    pass on a CPU for channels-last float32 tensors; elsewhere plain convs."""
    if _speeds_up(x) and is_channels_last_float(x):
        return _FastPointwise.apply(x, *weights_and_biases)
    pairs = zip(weights_and_biases[0::2], weights_and_biases[1::2], strict=True)
    return tuple(F.conv2d(x, w, b) for w, b in pairs)


def depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
) -> Tensor:
    """A stride-1 "same" depthwise conv whose gradients run fast on a CPU; elsewhere the plain conv."""
    if _speeds_up(x):
        return _FastDepthwise.apply(x, weight, bias, padding, dilation)
    return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])


class FastGradDepthwiseConv2d(nn.Conv2d):
    """A stride-1 "same" depthwise nn.Conv2d whose gradients run fast on a CPU (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv(x, self.weight, self.bias, self.padding, self.dilation)


class FastGradPointwiseConv2d(nn.Conv2d):
    """A 1x1 nn.Conv2d whose three gradients the C++ kernel computes in one pass on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_convs(x, self.weight, self.bias)[0]


class SharedInputLKDB(LKDB):
    """An LKDB whose distillation steps each run their two 1x1 convs of one input, the refine block's (its
    fused weights, `bsconv_weights()`) and the distillation conv, as one `pointwise_convs` call: one backward
    pass over the input instead of two, and no separate sum of their input gradients. LKDB.forward's dataflow,
    with this one step computed differently; a multi-branch RBSB (online fusion off) runs as itself."""

    def distill_step(self, h: Tensor, distill: nn.Conv2d, refine: nn.Module) -> tuple[Tensor, Tensor]:
        if isinstance(refine, RBSB) and not refine.online_fusion:
            return super().distill_step(h, distill, refine)
        weights = refine.bsconv_weights()
        before_dw, d = pointwise_convs(h, weights.pw, None, distill.weight, distill.bias)
        pad = weights.dw.shape[-1] // 2
        r = depthwise_conv(before_dw, weights.dw, weights.bias, (pad, pad), (1, 1))
        return d, self.act(r + h if weights.shortcut else r)

    @classmethod
    def adopting(cls, block: LKDB) -> SharedInputLKDB:
        """A SharedInputLKDB made of `block`'s own submodules (an LKDB holds nothing else): built empty rather
        than through LKDB.__init__, which would make convs only to drop them."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        return _adopt(new, block)


def _plain_conv(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.stride == (1, 1)
    )


def _same_depthwise(conv: nn.Conv2d) -> bool:
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    same = all(
        p * 2 == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)
    )
    return depthwise and same and conv.kernel_size != (1, 1)


def _pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """`new` holding `old`'s very parameters, buffers and children (shared, not copied: an optimizer or EMA
    built before keeps working) and its training flag."""
    for name, child in old.named_children():
        setattr(new, name, child)
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buffer in old.named_buffers(recurse=False):
        new.register_buffer(name, buffer)
    return new.train(old.training)


def _fast_conv(conv: nn.Module) -> nn.Module | None:
    if not _plain_conv(conv) or not (_same_depthwise(conv) or _pointwise(conv)):
        return None
    kind = FastGradDepthwiseConv2d if _same_depthwise(conv) else FastGradPointwiseConv2d
    new = kind(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, device="meta",
    )  # fmt: skip
    return _adopt(new, conv)


def _shared_input_block(block: nn.Module) -> nn.Module | None:
    return SharedInputLKDB.adopting(block) if type(block) is LKDB else None


def use_fast_conv_backward(model: nn.Module) -> int:
    """Replace, in `model`, every stride-1 "same" depthwise conv by a FastGradDepthwiseConv2d, every 1x1 conv
    by a FastGradPointwiseConv2d and every LKDB by a SharedInputLKDB, holding the same parameters: the
    state-dict keys and outputs stay as they are. Returns how many convs were replaced."""
    replace_modules(model, _shared_input_block)
    return replace_modules(model, _fast_conv)
