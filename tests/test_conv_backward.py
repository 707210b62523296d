"""The CPU training speed-ups for convs and GELU change no number: outputs and every gradient as plain PyTorch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import LKDN, lkdn_s
from train import conv_backward
from train.conv_backward import (
    FastGradDepthwiseConv2d,
    FastGradPointwiseConv2d,
    SharedInputLKDB,
    use_fast_conv_backward,
)
from train.native_conv_grad import native_conv_grad_available
from train.nhwc_gelu import NHWCGELU, use_nhwc_gelu

needs_kernels = pytest.mark.skipif(
    native_conv_grad_available() is not None,
    reason=f"conv gradient kernels unavailable: {native_conv_grad_available()}",
)


def _grads(module: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
    return (y.detach(), x.grad, *(p.grad for p in module.parameters()))


def _assert_same_grads(fast: nn.Module, plain: nn.Module, x: torch.Tensor, atol: float = 5e-5) -> None:
    """Against the plain module in float64: both sides' float32 rounding differs, the exact value does not."""
    exact = _grads(copy.deepcopy(plain).double(), x.double())
    for ours, theirs in zip(_grads(fast, x), exact, strict=True):
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=atol)


def _input(channels: int, channels_last: bool, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, channels, 19, 14, generator=torch.Generator().manual_seed(seed))  # odd sizes, batch 2
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("kernel, dilation", [(5, 1), (5, 3), (3, 1), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_gradients_equal_the_plain_conv(kernel, dilation, channels_last):
    torch.manual_seed(kernel + dilation)
    conv = nn.Conv2d(6, 6, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=6)
    fast = nn.Sequential(copy.deepcopy(conv))
    assert use_fast_conv_backward(fast) == 1 and type(fast[0]) is FastGradDepthwiseConv2d
    _assert_same_grads(fast, conv, _input(6, channels_last))


@pytest.mark.parametrize("in_ch, out_ch", [(42, 42), (42, 21), (84, 42), (5, 3), (17, 33), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_gradients_equal_the_plain_conv(in_ch, out_ch, bias, channels_last):
    torch.manual_seed(in_ch + out_ch)
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
    fast = nn.Sequential(copy.deepcopy(conv))
    assert use_fast_conv_backward(fast) == 1 and type(fast[0]) is FastGradPointwiseConv2d
    _assert_same_grads(fast, conv, _input(in_ch, channels_last))


@needs_kernels
def test_the_kernels_run_where_they_should(monkeypatch):
    """Channels-last tensors go to the C++ kernels (depthwise weight gradients, all of a 1x1 conv's)."""
    calls = []
    for name in ("depthwise_weight_grad", "pointwise_backward"):
        original = getattr(conv_backward, name)
        monkeypatch.setattr(
            conv_backward, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    model = nn.Sequential(
        nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    )
    use_fast_conv_backward(model)
    _grads(model, _input(6, channels_last=True))
    assert sorted(calls) == ["depthwise_weight_grad"] * 2 + ["pointwise_backward"]
    calls.clear()
    _grads(model, _input(6, channels_last=False))
    assert calls == []


def test_without_the_kernels_onednn_computes_the_same(monkeypatch):
    monkeypatch.setattr(conv_backward, "native_conv_grad_available", lambda: "no compiler (test)")
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(6, 5, 1), nn.Conv2d(5, 5, 5, padding=6, dilation=3, groups=5))
    fast = copy.deepcopy(plain)
    use_fast_conv_backward(fast)
    _assert_same_grads(fast, plain, _input(6, channels_last=True))


def test_only_the_convs_the_kernels_were_written_for_change():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise "same": changes
        nn.Conv2d(4, 4, 1),  # 1x1: changes
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped, not depthwise
        nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=2),  # strided
        nn.Conv2d(4, 4, 5, padding=1, groups=4),  # not "same"
        nn.Conv2d(4, 4, 1, groups=4),  # a depthwise 1x1
        nn.Conv2d(4, 4, 1, groups=2),  # a grouped 1x1
        nn.Conv2d(4, 4, 1, stride=2),  # a strided 1x1
        nn.Conv2d(4, 4, 1, padding=1),  # a padded 1x1
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
    )
    assert use_fast_conv_backward(model) == 2
    assert [type(m).__name__ for m in model[:3]] == [
        "FastGradDepthwiseConv2d",
        "FastGradPointwiseConv2d",
        "Conv2d",
    ]
    assert all(type(m) is nn.Conv2d for m in model[2:])


@pytest.mark.parametrize("channels_last", [False, True])
def test_lkdn_s_trains_the_same_and_keeps_its_state_dict(channels_last):
    torch.manual_seed(0)
    plain = lkdn_s().train()
    fast = copy.deepcopy(plain)
    # depthwise: fea_conv.dw and c2.dw, in each block the three RBSB dw, c4.dw and LKA's two; 1x1: fea_conv.pw,
    # c1, c2.pw, the upsampler's conv1 and conv1x1, in each block 3 RBSB pw, 3 distillation convs, c4.pw, c5,
    # LKA's pointwise and c6
    assert use_fast_conv_backward(fast) == (1 + 5 * 6 + 1) + (5 + 5 * 10)
    assert use_nhwc_gelu(fast) == 5 + 1
    assert all(type(block) is SharedInputLKDB for block in fast.blocks)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 3, 12, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_same_grads(fast, plain, x, atol=1e-4)


def test_online_fusion_runs_the_rbsb_convs_through_the_fast_modules():
    model = lkdn_s(online_fusion=True).train().to(memory_format=torch.channels_last)
    use_fast_conv_backward(model)
    y = model(torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    names, stack, seen = [], [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    assert names.count("_FastDepthwiseBackward") == 1 + 5 * 6 + 1
    # c1 and c2.pw; in each block the three refine + distillation pairs (one node each), c4.pw, c5, LKA's
    # pointwise and c6; not fea_conv.pw (its input, the repeated image, is not channels-last) nor the
    # upsampler's (fused online)
    assert names.count("_FastPointwiseBackward") == 2 + 5 * (3 + 4)


def test_falls_back_to_the_plain_conv_under_autocast_and_without_gradients():
    convs = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 4, 1))
    use_fast_conv_backward(convs)
    x = torch.rand(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    for conv, node in zip(convs, ["_FastDepthwiseBackward", "_FastPointwiseBackward"], strict=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == torch.bfloat16
        with torch.no_grad():
            assert conv(x).grad_fn is None
        assert type(conv(x).grad_fn).__name__ == node


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_nhwc_gelu_equals_gelu(approximate):
    plain = nn.GELU(approximate)
    fast = nn.Sequential(copy.deepcopy(plain))
    assert use_nhwc_gelu(fast) == 1 and type(fast[0]) is NHWCGELU
    for channels_last in (True, False):
        x = _input(42, channels_last)
        ours, theirs = _grads(fast, x), _grads(plain, x)
        assert ours[0].is_contiguous(memory_format=torch.channels_last) == channels_last
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)  # float32 tolerances: the vectorized loop rounds differently


@pytest.mark.parametrize("kwargs", [{"online_fusion": False}, {"shallow": "bsconv"}])
def test_blocks_without_online_fused_rbsb_run_the_plain_block_forward(kwargs):
    torch.manual_seed(0)
    plain = lkdn_s(**kwargs).train()
    fast = copy.deepcopy(plain)
    use_fast_conv_backward(fast)
    assert all(type(block) is SharedInputLKDB for block in fast.blocks)
    _assert_same_grads(
        fast, plain, torch.rand(1, 3, 9, 7).contiguous(memory_format=torch.channels_last), 1e-4
    )


def test_the_ablation_attentions_train_the_same():
    """ESA + CCA: strided and full 3x3 convs stay as they are, 1x1 convs on 1x1 maps take the fast path."""
    torch.manual_seed(0)
    plain = LKDN(num_feat=16, num_blocks=2, attention="esa_cca").train()
    fast = copy.deepcopy(plain)
    use_fast_conv_backward(fast)
    _assert_same_grads(
        fast, plain, torch.rand(1, 3, 24, 24).contiguous(memory_format=torch.channels_last), 1e-4
    )
