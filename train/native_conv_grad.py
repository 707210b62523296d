"""Gradients of stride-1 depthwise convs and of 1x1 convs on channels-last tensors, by C++ kernels.

oneDNN's weight gradient of LKA's 5x5 and dilated 5x5 convs takes several times the forward conv on a training
batch, and it reads the output gradient and the input of a 1x1 conv in separate passes for its three
gradients (`python benchmarks/bench_train_ops.py` measures both against these kernels). The kernels
(train/kernels/conv_grad.cpp) are built on first use by utils/native/build.py, with OpenMP so that they run on
torch's threads; train/conv_backward.py calls them when they are available and falls back to oneDNN when not.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from utils.native.build import NativeLibrary

SOURCE = Path(__file__).with_name("kernels") / "conv_grad.cpp"


def _declare(lib: ctypes.CDLL) -> None:
    i32, ptr = ctypes.c_int, ctypes.c_void_p
    lib.depthwise_weight_grad.restype = i32
    lib.depthwise_weight_grad.argtypes = [ptr, ptr] + [i32] * 12 + [ptr, ptr, i32]
    lib.pointwise_backward.restype = i32
    lib.pointwise_backward.argtypes = [ptr, ptr, i32, ptr, ptr, ctypes.c_long, i32, ptr, ptr, ptr, i32]


KERNEL = NativeLibrary(SOURCE, openmp=True, declare=_declare)


def load_kernel() -> ctypes.CDLL:
    """The compiled kernel, built on first use; raises KernelUnavailable with the reason."""
    return KERNEL.load()


def native_conv_grad_available() -> str | None:
    """None when the kernels run here, else the reason they do not (asked on every backward pass: the outcome
    is kept for the process)."""
    return KERNEL.unavailable_reason()


def is_channels_last_float(t: Tensor) -> bool:
    """What the kernel reads: a float32 CPU NCHW tensor whose memory is NHWC without gaps."""
    return (
        t.dim() == 4
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.permute(0, 2, 3, 1).is_contiguous()
    )


def depthwise_weight_grad(
    grad: Tensor,
    x: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    with_bias: bool,
    threads: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(grad_weight (C, 1, kh, kw), grad_bias (C) or None) of a stride-1 depthwise conv of `x` whose output
    gradient is `grad`; both channels-last float32 CPU tensors (N, C, H, W)."""
    if not (is_channels_last_float(grad) and is_channels_last_float(x)):
        raise ValueError("depthwise_weight_grad takes channels-last float32 CPU tensors")
    n, c, h, w = x.shape
    ho, wo = grad.shape[2:]
    if grad.shape[:2] != x.shape[:2]:
        raise ValueError(f"gradient {tuple(grad.shape)} does not match input {tuple(x.shape)}")
    grad_w = torch.empty(c, 1, *kernel_size)
    grad_b = torch.empty(c) if with_bias else None
    status = load_kernel().depthwise_weight_grad(
        grad.data_ptr(), x.data_ptr(), n, h, w, c, ho, wo, *kernel_size, *dilation, *padding,
        grad_w.data_ptr(), None if grad_b is None else grad_b.data_ptr(),
        torch.get_num_threads() if threads is None else threads,
    )  # fmt: skip
    if status:
        raise ValueError(
            f"the depthwise kernel cannot take input {tuple(x.shape)}, gradient {tuple(grad.shape)}"
        )
    return grad_w, grad_b


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def pointwise_backward(
    grads: list[Tensor],
    x: Tensor,
    weights: list[Tensor],
    mask: tuple[bool, bool, bool],
    threads: int | None = None,
) -> tuple[Tensor | None, list[Tensor] | None, list[Tensor] | None]:
    """The gradients of 1x1 convs (stride 1, one group, no padding) of one input `x`, conv i with weight
    `weights[i]` (Co_i, Ci, 1, 1) and output gradient `grads[i]`, in one pass over `x`: (grad_input, summed
    over the convs; [grad_weight_i]; [grad_bias_i]), each as `mask` asks. `grads` and `x` are channels-last
    float32 CPU tensors; grad_input comes back channels-last."""
    if not all(is_channels_last_float(t) for t in (x, *grads)):
        raise ValueError("pointwise_backward takes channels-last float32 CPU tensors")
    n, ci, h, w = x.shape
    if not 1 <= len(grads) == len(weights) <= 4 or any(
        g.shape != (n, wt.shape[0], h, w) or wt.shape != (wt.shape[0], ci, 1, 1)
        for g, wt in zip(grads, weights, strict=True)
    ):
        shapes = [tuple(g.shape) for g in grads], [tuple(wt.shape) for wt in weights]
        raise ValueError(f"gradients and weights {shapes} do not match input {tuple(x.shape)}")
    weight = torch.cat([wt.detach().float().reshape(wt.shape[0], ci) for wt in weights])
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if mask[0] else None
    grad_w = torch.empty_like(weight) if mask[1] else None
    grad_b = torch.empty(weight.shape[0]) if mask[2] else None
    outs = [wt.shape[0] for wt in weights]
    status = load_kernel().pointwise_backward(
        (ctypes.c_void_p * len(grads))(*(g.data_ptr() for g in grads)), (ctypes.c_int * len(outs))(*outs),
        len(grads), x.data_ptr(), weight.data_ptr(), n * h * w, ci,
        _pointer(grad_x), _pointer(grad_w), _pointer(grad_b),
        torch.get_num_threads() if threads is None else threads,
    )  # fmt: skip
    if status:
        raise ValueError(f"the pointwise kernel cannot take input {tuple(x.shape)}")
    split_w = None if grad_w is None else [t.view(-1, ci, 1, 1) for t in grad_w.split(outs)]
    return grad_x, split_w, None if grad_b is None else list(grad_b.split(outs))
