"""The C++ conv-gradient kernels against PyTorch's gradients computed in float64."""

from __future__ import annotations

import pytest
import torch
from sanitized import run_sanitized

from train import native_conv_grad
from train.native_conv_grad import depthwise_weight_grad, native_conv_grad_available, pointwise_backward
from utils.native import build as native_build

pytestmark = pytest.mark.skipif(
    native_conv_grad_available() is not None,
    reason=f"conv gradient kernels unavailable: {native_conv_grad_available()}",
)


def _channels_last(*shape: int, seed: int) -> torch.Tensor:
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return t.contiguous(memory_format=torch.channels_last)


def _exact(grad, x, weight, padding=(0, 0), dilation=(1, 1), groups=1, mask=(True, True, True)):
    """PyTorch's conv gradients in float64, as float32."""
    grads = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), [weight.shape[0]], [1, 1], list(padding), list(dilation),
        False, [0, 0], groups, list(mask),
    )  # fmt: skip
    return [None if g is None else g.float() for g in grads]


@pytest.mark.parametrize("channels", [1, 7, 16, 21, 42, 56])
@pytest.mark.parametrize(
    "kernel, dilation, padding",
    [((5, 5), (1, 1), (2, 2)), ((5, 5), (3, 3), (6, 6)), ((3, 3), (1, 1), (1, 1)), ((1, 5), (1, 2), (0, 4)),
     ((5, 5), (1, 1), (0, 0)), ((3, 3), (2, 2), (1, 3))],
)  # fmt: skip
def test_depthwise_weight_grad(channels, kernel, dilation, padding):
    x = _channels_last(2, channels, 13, 37, seed=channels)
    ho = 13 + 2 * padding[0] - dilation[0] * (kernel[0] - 1)
    wo = 37 + 2 * padding[1] - dilation[1] * (kernel[1] - 1)
    grad = _channels_last(2, channels, ho, wo, seed=1)
    weight = torch.zeros(channels, 1, *kernel)
    _, want_w, want_b = _exact(grad, x, weight, padding, dilation, channels)
    got_w, got_b = depthwise_weight_grad(grad, x, kernel, dilation, padding, with_bias=True)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_b, want_b, rtol=1e-5, atol=1e-4)
    assert depthwise_weight_grad(grad, x, kernel, dilation, padding, with_bias=False)[1] is None


def test_depthwise_weight_grad_wide_rows_and_threads():
    """Rows much wider than the kernel's accumulation period; any thread count gives the same sums."""
    x, grad = _channels_last(3, 42, 9, 300, seed=2), _channels_last(3, 42, 9, 300, seed=3)
    results = [depthwise_weight_grad(grad, x, (5, 5), (3, 3), (6, 6), True, threads=t) for t in (1, 2, 3)]
    _, want_w, want_b = _exact(grad, x, torch.zeros(42, 1, 5, 5), (6, 6), (3, 3), 42)
    for got_w, got_b in results:
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=2e-4)
        torch.testing.assert_close(got_b, want_b, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize(
    "in_ch, out_ch, size",
    [(42, 42, (2, 11, 13)), (42, 21, (1, 16, 16)), (84, 42, (2, 5, 7)), (210, 42, (1, 9, 9)), (17, 33, (3, 4, 5)),
     (1, 1, (1, 1, 1)), (12, 42, (1, 1, 131))],
)  # fmt: skip
@pytest.mark.parametrize("threads", [1, 2])
def test_pointwise_backward(in_ch, out_ch, size, threads):
    n, h, w = size
    x, grad = _channels_last(n, in_ch, h, w, seed=in_ch), _channels_last(n, out_ch, h, w, seed=out_ch + 1)
    weight = torch.randn(out_ch, in_ch, 1, 1, generator=torch.Generator().manual_seed(5))
    grad_x, (grad_w,), (grad_b,) = pointwise_backward(
        [grad], x, [weight], (True, True, True), threads=threads
    )
    for ours, theirs in zip((grad_x, grad_w, grad_b), _exact(grad, x, weight), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    assert grad_x.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_backward_of_convs_sharing_their_input():
    """Three convs of one input in one pass: the input gradient is the sum of theirs."""
    x = _channels_last(2, 42, 9, 11, seed=0)
    outs = [42, 21, 5]
    grads = [_channels_last(2, co, 9, 11, seed=co) for co in outs]
    weights = [torch.randn(co, 42, 1, 1, generator=torch.Generator().manual_seed(co)) for co in outs]
    grad_x, grad_w, grad_b = pointwise_backward(grads, x, weights, (True, True, True), threads=2)
    exact = [_exact(g, x, w) for g, w in zip(grads, weights, strict=True)]
    torch.testing.assert_close(grad_x, sum(e[0] for e in exact), rtol=1e-5, atol=1e-4)
    for i, e in enumerate(exact):
        torch.testing.assert_close(grad_w[i], e[1], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(grad_b[i], e[2], rtol=1e-5, atol=1e-4)


def test_pointwise_backward_computes_only_what_is_asked():
    x, grad = _channels_last(1, 6, 4, 4, seed=0), _channels_last(1, 5, 4, 4, seed=1)
    weight = torch.randn(5, 6, 1, 1)
    for mask in [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]:
        got = pointwise_backward([grad], x, [weight], mask)
        assert [g is not None for g in got] == list(mask)


def test_the_kernels_refuse_what_they_cannot_read():
    x = _channels_last(1, 6, 4, 4, seed=0)
    with pytest.raises(ValueError, match="channels-last"):
        depthwise_weight_grad(x.contiguous(), x, (3, 3), (1, 1), (1, 1), True)
    with pytest.raises(ValueError, match="channels-last"):
        pointwise_backward([x.double()], x, [torch.zeros(6, 6, 1, 1)], (True, True, True))
    with pytest.raises(ValueError, match="does not match"):
        depthwise_weight_grad(_channels_last(1, 3, 4, 4, seed=1), x, (3, 3), (1, 1), (1, 1), True)
    with pytest.raises(ValueError, match="do not match"):
        pointwise_backward([x], x, [torch.zeros(6, 5, 1, 1)], (True, True, True))
    with pytest.raises(ValueError, match="do not match"):
        pointwise_backward([x] * 5, x, [torch.zeros(6, 6, 1, 1)] * 5, (True, True, True))
    with pytest.raises(ValueError, match="channels-last"):
        pointwise_backward([x], x[0], [torch.zeros(6, 6, 1, 1)], (True, True, True))  # not 4-D


@pytest.mark.parametrize("flags, use_openmp", [((["-O3"],), True), (native_build.FLAG_SETS, False)])
def test_portable_and_single_threaded_builds_compute_the_same(tmp_path, monkeypatch, flags, use_openmp):
    """Without -march=native (generic vector code) and without OpenMP (pragmas ignored, one thread)."""
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(native_build, "FLAG_SETS", flags)
    monkeypatch.setattr(native_conv_grad.KERNEL, "openmp", use_openmp)
    native_conv_grad.KERNEL.forget()
    try:
        x, grad = _channels_last(2, 21, 7, 9, seed=0), _channels_last(2, 21, 7, 9, seed=1)
        got_w, got_b = depthwise_weight_grad(grad, x, (5, 5), (3, 3), (6, 6), True, threads=2)
        _, want_w, want_b = _exact(grad, x, torch.zeros(21, 1, 5, 5), (6, 6), (3, 3), 21)
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-4)
        weight = torch.randn(13, 21, 1, 1)
        grad_x, (grad_w,), (grad_b,) = pointwise_backward(
            [grad[:, :13].contiguous(memory_format=torch.channels_last)], x, [weight], (True,) * 3
        )
        want = _exact(grad[:, :13], x, weight)
        for ours, theirs in zip((grad_x, grad_w, grad_b), want, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
        assert len(list(tmp_path.glob("conv_grad_*.so"))) == 1
    finally:
        native_conv_grad.KERNEL.forget()


def test_the_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """Both kernels on many odd shapes (1 to 84 channels, 1 to 300 pixels, 1-3 threads), built with ASan and
    UBSan: they read and write raw memory, and a vector load past a tensor's end would go unnoticed otherwise."""
    run_sanitized("conv_grad_bounds.cpp", native_conv_grad.SOURCE, tmp_path, ("-fopenmp",))
