"""The `native` CPU backend: the fused LKDN-S run by C++ kernels compiled on first use.

The kernels (utils/runtime/kernels/lkdn_cpu.cpp) compute the shallow features, then stream each distillation
block, and then the tail (c1, c2, the upsampler and the pixel shuffle), row by row through all of their steps
while the rows are in cache, instead of writing ~20 whole-image intermediates per block; the threads of one
image (torch's OpenMP threads) share its rows. Built on first use by utils/native/build.py, with OpenMP where
the compiler has it. `native_available()` says why it cannot run, if it cannot (no compiler,
not float32 on a CPU); `make_runner("auto")` then falls back to `fast`.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from models import LKDN
from utils.native.build import KernelUnavailable, NativeLibrary
from utils.runtime.fast import FastLKDN

SOURCE = Path(__file__).with_name("kernels") / "lkdn_cpu.cpp"


def _round_up(n: int) -> int:
    """n padded to whole vectors of the kernel's width (16 floats with AVX-512, else 8)."""
    lanes = load_kernel().lkdn_lanes()
    return -(-n // lanes) * lanes


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.lkdb_params_size.restype = ctypes.c_long
    lib.lkdb_params_size.argtypes = [i32]
    lib.lkdn_tail_params_size.restype = ctypes.c_long
    lib.lkdn_tail_params_size.argtypes = [i32, i32]
    lib.lkdb_forward.restype = i32
    lib.lkdb_forward.argtypes = [ptr, ptr, i32, i32, i32, i32, ptr, ctypes.c_float, i32]
    lib.lkdn_lanes.restype = i32
    lib.lkdn_lanes.argtypes = []
    lib.lkdn_gelu.restype = None
    lib.lkdn_gelu.argtypes = [ptr, ptr, ctypes.c_long]
    lib.lkdn_features_params_size.restype = ctypes.c_long
    lib.lkdn_features_params_size.argtypes = [i32]
    lib.lkdn_tail.restype = i32
    lib.lkdn_tail.argtypes = [ptr, i32, ptr, ptr, i32, i32, i32, i32, ptr, i32]
    lib.lkdn_forward.restype = i32
    lib.lkdn_forward.argtypes = [ptr, ptr, ptr, ptr, *[i32] * 5, ptr, ptr, ptr, ptr, i32]


KERNEL = NativeLibrary(SOURCE, openmp=True, declare=_declare)


def load_kernel() -> ctypes.CDLL:
    """The compiled kernel, built on first use; raises KernelUnavailable with the reason."""
    return KERNEL.load()


def native_available() -> str | None:
    """None when the native kernel runs here, else the reason it does not (kept for the process)."""
    return KERNEL.unavailable_reason()


def _matmul_weights(weight: Tensor, bias: Tensor | None, width: int) -> list[Tensor]:
    """A 1x1 conv's (out, in) weight as the kernel's (in, width) matrix, and its bias, zero-padded."""
    packed = F.pad(weight.t(), (0, width - weight.shape[0]))
    b = torch.zeros(width) if bias is None else F.pad(bias, (0, width - bias.shape[0]))
    return [packed, b]


def _depthwise_weights(weight: Tensor, bias: Tensor, width: int) -> list[Tensor]:
    """A depthwise conv's (ch, 1, k, k) weight as (k*k, width) taps, and its bias, zero-padded."""
    taps = weight.reshape(weight.shape[0], -1).t()
    return [F.pad(taps, (0, width - taps.shape[1])), F.pad(bias, (0, width - bias.shape[0]))]


def pack_block(block: torch.nn.Module) -> Tensor:
    """One FastLKDN block's weights in the order and padding of lkdn_cpu.cpp's `Params`."""
    c = block.c6_w.shape[0]
    d = c // 2
    cp, g1p, dp = _round_up(c), _round_up(c + d), _round_up(d)
    parts: list[Tensor] = []
    for i in (1, 2, 3):
        # refine's pointwise (no bias) in lanes [0, c), the distillation conv in [c, c + d)
        weight = torch.cat([getattr(block, f"r{i}_w"), getattr(block, f"d{i}_w")])
        bias = torch.cat([torch.zeros(c), getattr(block, f"d{i}_b")])
        parts += _matmul_weights(weight, bias, g1p)
        parts += _depthwise_weights(getattr(block, f"r{i}_dw"), getattr(block, f"r{i}_db"), cp)
    parts += _matmul_weights(block.c4_w, None, dp)[:1]
    parts += _depthwise_weights(block.c4_dw, block.c4_db, dp)
    parts += _matmul_weights(block.c5_w, block.c5_b, cp)
    parts += _matmul_weights(block.lka_w, block.lka_b, cp)
    parts += _depthwise_weights(block.lka_dw, block.lka_db, cp)
    parts += _depthwise_weights(block.lka_ddw, block.lka_ddb, cp)
    parts += _matmul_weights(block.c6_w, block.c6_b, cp)
    parts += [F.pad(block.ln_w, (0, cp - c)), F.pad(block.ln_b, (0, cp - c))]
    return _concat(parts, load_kernel().lkdb_params_size(c), f"a {c}-channel block")


def pack_tail(model: FastLKDN) -> Tensor:
    """FastLKDN's c1, c2 and upsampler weights in the order and padding of lkdn_cpu.cpp's `TailParams`."""
    c = model.c2_w.shape[0]
    cp = _round_up(c)
    parts = [_matmul_weights(part, None, cp)[0] for part in model.c1_w.split(c, dim=1)]
    parts += [F.pad(model.c1_b, (0, cp - c)), _matmul_weights(model.c2_w, None, cp)[0]]
    parts += _depthwise_weights(model.c2_dw, model.c2_db, cp)
    parts += [model.up_w.permute(2, 3, 1, 0).reshape(-1, model.up_w.shape[0]), model.up_b]  # (tap, in, out)
    blocks = len(model.blocks)
    return _concat(parts, load_kernel().lkdn_tail_params_size(c, blocks), f"the tail of {blocks} blocks")


def pack_features(model: FastLKDN) -> Tensor:
    """The shallow features' 3x3 conv (3 -> C, the input repetition folded in) as lkdn_cpu.cpp's (27, C) taps
    in (channel, ky, kx) order and its bias, zero-padded."""
    c = model.fea_w.shape[0]
    parts = _matmul_weights(model.fea_w.reshape(c, -1), model.fea_b, _round_up(c))
    return _concat(parts, load_kernel().lkdn_features_params_size(c), "the shallow features")


def _concat(parts: list[Tensor], expected: int, what: str) -> Tensor:
    packed = torch.cat([p.detach().float().reshape(-1).cpu() for p in parts])
    if packed.numel() != expected:
        raise RuntimeError(f"packed {packed.numel()} floats for {what}; the kernel expects {expected}")
    return packed


def _threads(threads: int | None) -> int:
    return torch.get_num_threads() if threads is None else threads


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    """The tensors' data pointers as a C array, for a kernel argument that takes one per block."""
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _check_tensors(*tensors: Tensor, shape: torch.Size) -> None:
    """The kernels read raw memory: anything but contiguous float32 CPU tensors of `shape` is refused."""
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() or t.shape != shape:
            raise ValueError(
                f"the native kernels take contiguous float32 CPU tensors of shape {tuple(shape)}"
            )


def lkdb_forward(
    x: Tensor, params: Tensor, eps: float, threads: int | None = None, out: Tensor | None = None
) -> Tensor:
    """One block on NHWC float32 `x` (contiguous, on the CPU) with `pack_block`'s weights, into `out`."""
    n, h, w, c = x.shape
    out = torch.empty_like(x) if out is None else out
    lib = load_kernel()
    _check_tensors(x, out, shape=x.shape)
    _check_tensors(params, shape=torch.Size([lib.lkdb_params_size(c)]))
    if lib.lkdb_forward(x.data_ptr(), out.data_ptr(), n, h, w, c, params.data_ptr(), eps, _threads(threads)):
        raise ValueError(f"the native kernel does not support {c} channels")
    return out


def lkdn_tail(hidden: list[Tensor], feat: Tensor, params: Tensor, threads: int | None = None) -> Tensor:
    """c1 over the blocks' outputs, c2, the x4 upsampler and pixel shuffle: NHWC in, NCHW 3-channel out."""
    n, h, w, c = feat.shape
    _check_tensors(feat, *hidden, shape=feat.shape)
    _check_tensors(params, shape=torch.Size([load_kernel().lkdn_tail_params_size(c, len(hidden))]))
    out = torch.empty(n, 3, 4 * h, 4 * w)
    status = load_kernel().lkdn_tail(
        _pointers(hidden),
        len(hidden),
        feat.data_ptr(),
        out.data_ptr(),
        n,
        h,
        w,
        c,
        params.data_ptr(),
        _threads(threads),
    )
    if status:
        raise ValueError(f"the native kernel does not support {c} channels")
    return out


class NativeLKDN(FastLKDN):
    """FastLKDN run by the native kernels for float32 on a CPU (elsewhere it is FastLKDN).

    The shallow features and the blocks' outputs go to a workspace kept between calls (per thread, grown to
    the largest input seen, at most WORKSPACE_BYTES; `release_workspace()` frees it): fresh memory for them on
    every call costs more in page faults than a block takes to run. One kernel call runs the whole network.
    Raises KernelUnavailable when the kernels cannot be built here, and ValueError for a model they were not
    written for (42 or 56 channels, LKA dilation 3, x4 RGB output).
    """

    WORKSPACE_BYTES = 1 << 30

    def __init__(self, model: LKDN) -> None:
        super().__init__(model)
        reason = native_available()
        if reason is not None:
            raise KernelUnavailable(reason)
        if load_kernel().lkdb_params_size(model.num_feat) == 0:
            raise ValueError(f"the native kernels are built for 42 or 56 channels, not {model.num_feat}")
        if any(block.dilation != 3 for block in self.blocks) or self.up_w.shape[0] != 48:
            raise ValueError("the native kernels are written for LKA dilation 3 and x4 RGB output")
        with torch.no_grad():
            for i, block in enumerate(self.blocks):
                self.register_buffer(f"packed{i}", pack_block(block))
            self.register_buffer("packed_tail", pack_tail(self))
            self.register_buffer("packed_features", pack_features(self))
        self._eps = (ctypes.c_float * len(self.blocks))(*(block.eps for block in self.blocks))
        self._workspace: dict[int, Tensor] = {}  # thread id -> flat float32 buffer

    def release_workspace(self) -> None:
        self._workspace.clear()

    def _stage_outputs(self, shape: torch.Size) -> list[Tensor]:
        """NHWC buffers for the shallow features and each block's output, from this thread's workspace."""
        count, size = len(self.blocks) + 1, shape.numel()
        thread = threading.get_ident()
        flat = self._workspace.get(thread)
        if flat is None or flat.numel() < count * size:
            flat = torch.empty(count * size)
            if flat.numel() * flat.element_size() <= self.WORKSPACE_BYTES:
                self._workspace[thread] = flat
            else:
                self._workspace.pop(thread, None)
        return [flat[i * size : (i + 1) * size].view(shape) for i in range(count)]

    def forward(self, x: Tensor) -> Tensor:
        packed = self.packed_tail
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or packed.device.type != "cpu"
            or packed.dtype != x.dtype
        ):
            return super().forward(x)
        x = x.contiguous()
        n, _, h, w = x.shape
        _check_tensors(x, shape=torch.Size([n, 3, h, w]))  # 3 colour channels, as the features' conv needs
        c = self.fea_w.shape[0]
        feat, *hidden = self._stage_outputs(torch.Size([n, h, w, c]))
        out = torch.empty(n, 3, 4 * h, 4 * w)
        blocks = len(hidden)
        params = [getattr(self, f"packed{i}") for i in range(blocks)]
        status = load_kernel().lkdn_forward(
            x.data_ptr(),
            feat.data_ptr(),
            _pointers(hidden),
            out.data_ptr(),
            n,
            h,
            w,
            c,
            blocks,
            self.packed_features.data_ptr(),
            _pointers(params),
            self._eps,
            self.packed_tail.data_ptr(),
            torch.get_num_threads(),
        )
        if status:
            raise ValueError(f"the native kernel does not support {c} channels")
        return out
