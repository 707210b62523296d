"""The CPU training speed-up for depthwise convs changes no number: outputs and every gradient as nn.Conv2d's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import lkdn_s
from train.depthwise_backward import FlippedGradDepthwiseConv2d, use_flipped_input_gradient


def _grads(module: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
    return (y.detach(), x.grad, *(p.grad for p in module.parameters()))


@pytest.mark.parametrize("kernel, dilation", [(5, 1), (5, 3), (3, 1), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_equal_the_plain_conv(kernel, dilation, channels_last):
    torch.manual_seed(kernel + dilation)
    conv = nn.Conv2d(6, 6, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=6)
    fast = copy.deepcopy(conv)
    assert use_flipped_input_gradient(fast) == 1 and type(fast) is FlippedGradDepthwiseConv2d
    x = torch.randn(2, 6, 19, 14)  # odd sizes, batch 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for ours, theirs in zip(_grads(fast, x), _grads(conv, x), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_only_stride_one_same_depthwise_convs_change():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # changes
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped, not depthwise
        nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=2),  # strided
        nn.Conv2d(4, 4, 5, padding=1, groups=4),  # not "same"
        nn.Conv2d(4, 4, 1, groups=4),  # 1x1: nothing to gain
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
    )
    assert use_flipped_input_gradient(model) == 1
    assert [type(m) is FlippedGradDepthwiseConv2d for m in model] == [True] + [False] * 5


def test_lkdn_s_trains_the_same_and_keeps_its_state_dict():
    torch.manual_seed(0)
    plain = lkdn_s().train()
    fast = copy.deepcopy(plain)
    # fea_conv.dw and c2.dw; in each block the three RBSB dw, c4.dw and LKA's two
    assert use_flipped_input_gradient(fast) == 1 + 5 * (3 + 1 + 2) + 1
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 3, 12, 10).contiguous(memory_format=torch.channels_last)
    for ours, theirs in zip(_grads(fast, x), _grads(plain, x), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_falls_back_to_the_plain_conv_under_autocast_and_without_gradients():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    use_flipped_input_gradient(conv)
    x = torch.rand(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    with torch.no_grad():
        assert conv(x).grad_fn is None
    assert type(conv(x).grad_fn).__name__ == "_FlippedInputGradientBackward"
