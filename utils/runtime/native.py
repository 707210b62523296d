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

from models import LKDB, LKDN
from utils.native.build import KernelUnavailable, NativeLibrary  # noqa: F401  (KernelUnavailable: re-exported)
from utils.runtime.fast import FastLKDN, conv_matrix

SOURCE = Path(__file__).with_name("kernels") / "lkdn_cpu.cpp"


def _round_up(n: int, lib: ctypes.CDLL | None = None) -> int:
    """n padded to whole vectors of the kernel's width (16 floats with AVX-512, else 8)."""
    lanes = (lib or load_kernel()).lkdn_lanes()
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
    lib.lkdn_barrier_wait_ns.restype = ctypes.c_long
    lib.lkdn_barrier_wait_ns.argtypes = [i32]
    lib.lkdn_forward.restype = i32
    lib.lkdn_forward.argtypes = [ptr, ptr, ptr, ptr, *[i32] * 5, ptr, ptr, ptr, ptr, i32]


KERNEL = NativeLibrary(SOURCE, openmp=True, declare=_declare)
_BUILDS: dict[tuple[str, ...], NativeLibrary] = {(): KERNEL}
_BUILDS_LOCK = threading.Lock()


def kernel_build(flags: tuple[str, ...] = ()) -> NativeLibrary:
    """The kernel built with `flags` added (a tuning candidate's; none: the default build), one per process."""
    with _BUILDS_LOCK:
        if flags not in _BUILDS:
            _BUILDS[flags] = NativeLibrary(SOURCE, openmp=True, declare=_declare, extra_flags=flags)
        return _BUILDS[flags]


def load_kernel(flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The compiled kernel, built on first use; raises KernelUnavailable with the reason."""
    return kernel_build(flags).load()


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


KERNEL_WIDTHS = (42, 56)  # the channel counts lkdn_cpu.cpp is instantiated for (LKDN-S, LKDN)


def _block_reason(block: LKDB) -> str | None:
    """Why the kernels cannot run this block, read off the block's own description (its steps' bsconv_weights
    and its attention), or None."""
    if not hasattr(block.atten, "depthwise_dilated"):
        kind = {"ESACCA": "esa_cca", "Identity": "none"}.get(type(block.atten).__name__, "another")
        return f"the C++ kernels compute LKA attention only (this model: {kind})"
    lka = block.atten
    if lka.depthwise.kernel_size != (5, 5) or lka.depthwise_dilated.kernel_size != (5, 5):
        return "the C++ kernels compute LKA with 5x5 depthwise convs only"
    if lka.depthwise_dilated.dilation != (3, 3):
        return "the C++ kernels compute LKA with dilation 3 only"
    if any(refine.bsconv_weights().shortcut for _, refine in block.steps()):
        return "the C++ kernels compute refine blocks without a shortcut only (this model: bsconv_shortcut)"
    return None


def supports(model: LKDN) -> str | None:
    """None when the native kernels are written for `model` (whether they build here is `native_available`),
    else why not."""
    if not model.fused:
        return "needs the fused model (models.fuse_model)"
    if model.num_feat not in KERNEL_WIDTHS:
        return f"the C++ kernels are built for 42 or 56 channels, not {model.num_feat}"
    if (model.scale, model.in_ch, model.out_ch) != (4, 3, 3):
        return f"the C++ kernels are written for x4 RGB, not x{model.scale} with {model.in_ch} channels"
    return next(filter(None, (_block_reason(block) for block in model.blocks)), None)


def pack_block(block: LKDB, lib: ctypes.CDLL | None = None) -> Tensor:
    """One fused LKDB's weights in the order and padding of lkdn_cpu.cpp's `Params`, read off the block's
    description: its distillation steps (distillation conv, refine block's bsconv_weights), c4, c5, LKA, c6
    and the LayerNorm. `lib`: the build it is for (default: the default build); builds differ in vector width."""
    lib = lib or load_kernel()
    c = block.c6.weight.shape[0]
    d = c // 2
    cp, g1p, dp = _round_up(c, lib), _round_up(c + d, lib), _round_up(d, lib)
    parts: list[Tensor] = []
    for distill, refine in block.steps():
        # refine's pointwise (no bias) in lanes [0, c), the distillation conv in [c, c + d)
        w = refine.bsconv_weights()
        weight = torch.cat([conv_matrix(w.pw), conv_matrix(distill.weight)])
        bias = torch.cat([torch.zeros(c), distill.bias])
        parts += _matmul_weights(weight, bias, g1p)
        parts += _depthwise_weights(w.dw, w.bias, cp)
    c4 = block.c4.bsconv_weights()
    parts += _matmul_weights(conv_matrix(c4.pw), None, dp)[:1]
    parts += _depthwise_weights(c4.dw, c4.bias, dp)
    parts += _matmul_weights(conv_matrix(block.c5.weight), block.c5.bias, cp)
    lka = block.atten
    parts += _matmul_weights(conv_matrix(lka.pointwise.weight), lka.pointwise.bias, cp)
    parts += _depthwise_weights(lka.depthwise.weight, lka.depthwise.bias, cp)
    parts += _depthwise_weights(lka.depthwise_dilated.weight, lka.depthwise_dilated.bias, cp)
    parts += _matmul_weights(conv_matrix(block.c6.weight), block.c6.bias, cp)
    norm = block.pixel_norm
    parts += [F.pad(norm.weight, (0, cp - c)), F.pad(norm.bias, (0, cp - c))]
    return _concat(parts, lib.lkdb_params_size(c), f"a {c}-channel block")


def pack_tail(model: FastLKDN, lib: ctypes.CDLL | None = None) -> Tensor:
    """FastLKDN's c1, c2 and upsampler weights in the order and padding of lkdn_cpu.cpp's `TailParams`."""
    lib = lib or load_kernel()
    c = model.c2_w.shape[0]
    cp = _round_up(c, lib)
    parts = [_matmul_weights(part, None, cp)[0] for part in model.c1_w.split(c, dim=1)]
    parts += [F.pad(model.c1_b, (0, cp - c)), _matmul_weights(model.c2_w, None, cp)[0]]
    parts += _depthwise_weights(model.c2_dw, model.c2_db, cp)
    parts += [model.up_w.permute(2, 3, 1, 0).reshape(-1, model.up_w.shape[0]), model.up_b]  # (tap, in, out)
    blocks = len(model.blocks)
    return _concat(parts, lib.lkdn_tail_params_size(c, blocks), f"the tail of {blocks} blocks")


def pack_features(model: FastLKDN, lib: ctypes.CDLL | None = None) -> Tensor:
    """The shallow features' 3x3 conv (3 -> C, the input repetition folded in) as lkdn_cpu.cpp's (27, C) taps
    in (channel, ky, kx) order and its bias, zero-padded."""
    lib = lib or load_kernel()
    c = model.fea_w.shape[0]
    parts = _matmul_weights(model.fea_w.reshape(c, -1), model.fea_b, _round_up(c, lib))
    return _concat(parts, lib.lkdn_features_params_size(c), "the shallow features")


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

    def __init__(self, model: LKDN, build: tuple[str, ...] = ()) -> None:
        reason = supports(model)
        if reason is not None:
            raise ValueError(reason)
        super().__init__(model)
        self.build = build  # the kernel build's extra flags (utils/runtime/native_tune.py chooses them)
        lib = load_kernel(build)
        with torch.no_grad():
            for i, block in enumerate(self.blocks):
                self.register_buffer(f"packed{i}", pack_block(block, lib))
            self.register_buffer("packed_tail", pack_tail(self, lib))
            self.register_buffer("packed_features", pack_features(self, lib))
        self._eps = (ctypes.c_float * len(self.blocks))(*(block.pixel_norm.eps for block in self.blocks))
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
        status = load_kernel(self.build).lkdn_forward(
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
