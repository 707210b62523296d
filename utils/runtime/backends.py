"""Inference backends: how a fused LKDN is run. Every entry point gets its runner from `make_runner`.

- `reference`: the readable module form (the target of the golden tests); on any device.
- `fast`: `utils.runtime.fast.FastLKDN`, the same network with fewer passes over memory (NHWC matrix products,
  folded first conv, no concatenations, oneDNN-fused bias/GELU/product on a CPU); on any device, fastest on
  a CPU (benchmarks/bench_inference.py).
- `native`: `utils.runtime.native.NativeLKDN`, the blocks and the tail run by C++ kernels compiled on first
  use for this CPU (g++ or clang++); float32 on a CPU only, LKDN-S / LKDN widths.
- `cuda_graph`: `utils.runtime.cuda_graph.CudaGraphRunner`, the module form captured as one CUDA graph per input
  shape and replayed; CUDA only, float32 (fp32 or tf32).
- `onnxruntime`: the exported ONNX graph (utils.runtime.onnx_export), exported and verified on first use, or an
  existing .onnx file (`onnx_path`); float32 only.
- `auto`: on a CPU `native` (float32, where the kernels build and fit the model), else `fast`; `reference`
  elsewhere, so a GPU never gets a path that was only measured on a CPU. When `native` cannot run, the
  runner's name says why.

Precision: `fp32` is true float32 on every device (on a CUDA GPU the runner turns TensorFloat-32 off for its
calls, so "exact" means exact there too); `tf32` (CUDA only) lets cuDNN's convolutions and cuBLAS's products round
their inputs to TF32 on tensor cores, PyTorch's own default for convolutions and so what the NTIRE kit's script,
which sets nothing, ran under; `bf16` / `fp16` (opt-in; reference and fast) run weights and activations in
bfloat16 / float16 and return float32 (their PSNR cost: benchmarks/bf16_psnr.py on a CPU,
benchmarks/gpu_check.py on a GPU). Every runner is a callable on a Bx3xHxW tensor in [0, 1] on the runner's
device, returning Bx3x(sH)x(sW) float32, and says in `.name` what ran.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from models import LKDN
from utils.device import cuda_float32

BACKENDS = ("auto", "reference", "fast", "native", "cuda_graph", "onnxruntime")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_HELP = (
    "auto: PyTorch's default (float32; TF32 convolutions on a CUDA GPU, as the NTIRE kit ran); fp32: IEEE float32 "
    "on a GPU too; bf16 / fp16: half-width weights and activations, faster on GPUs (default: auto)"
)  # the entry points' --precision


class Runner(Protocol):
    name: str

    def __call__(self, lr: Tensor) -> Tensor: ...


@dataclass
class ModuleRunner:
    """Runs a module under inference_mode in `dtype` (float32 on CUDA: IEEE, or TF32 with `tf32`); returns
    float32."""

    module: torch.nn.Module
    name: str
    dtype: torch.dtype = torch.float32
    tf32: bool = False

    def __call__(self, lr: Tensor) -> Tensor:
        mode = cuda_float32(self.tf32) if lr.is_cuda else contextlib.nullcontext()
        with torch.inference_mode(), mode:
            return self.module(lr.to(self.dtype)).float()


@dataclass
class OnnxRunner:
    """Runs an onnxruntime session; tensors go through host memory (numpy) and come back on `device`."""

    session: object
    device: torch.device
    name: str = "onnxruntime"

    def __call__(self, lr: Tensor) -> Tensor:
        x = lr.detach().to("cpu", torch.float32).contiguous().numpy()
        (y,) = self.session.run(None, {self.session.get_inputs()[0].name: x})
        return torch.from_numpy(y).to(self.device)


def default_precision(device: torch.device | str) -> str:
    """PyTorch's own default arithmetic on `device`: TF32 convolutions on a CUDA GPU, float32 elsewhere."""
    return "tf32" if torch.device(device).type == "cuda" else "fp32"


def default_backend(device: torch.device | str) -> str:
    """What `auto` starts from: the native kernels on a CPU (`fast` if they cannot run), else the module form."""
    return "native" if torch.device(device).type == "cpu" else "reference"


def _native_runner(model: LKDN, device: torch.device, fallback: bool) -> ModuleRunner:
    """The native kernels, or (with `fallback`) the fast path named with the reason native did not run."""
    from utils.runtime.fast import FastLKDN
    from utils.runtime.native import KernelUnavailable, NativeLKDN

    reason = None
    if device.type != "cpu":
        reason = "the native kernels run on a CPU only"
    else:
        try:
            return ModuleRunner(NativeLKDN(model).eval(), "native")
        except (KernelUnavailable, ValueError) as err:
            reason = str(err)
    if not fallback:
        raise ValueError(f"backend 'native': {reason}")
    return ModuleRunner(FastLKDN(model).to(device).eval(), f"fast (native unavailable: {reason})")


def _onnx_runner(model: LKDN, device: torch.device, onnx_path: str | Path | None) -> OnnxRunner:
    from utils.runtime.onnx_export import export_onnx, ort_session, verify_onnx

    if onnx_path is None:
        data, _ = export_onnx(model)
        return OnnxRunner(ort_session(data, device), device)
    try:
        session = ort_session(onnx_path, device)
    except Exception as err:  # onnxruntime's errors have no common base class
        raise ValueError(f"{onnx_path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None
    verify_onnx(session, model, shapes=((1, 3, 16, 24),))  # an .onnx of other weights fails here
    return OnnxRunner(session, device, f"onnxruntime ({Path(onnx_path).name})")


def make_runner(
    model: LKDN,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    precision: str = "fp32",
    onnx_path: str | Path | None = None,
) -> Runner:
    """A callable running the fused `model` on `device` with `backend` ("auto" picks the fastest exact one) in
    `precision` ("auto": `default_precision`, what PyTorch does unasked on that device).

    The reference and cuda_graph backends move `model` itself to `device`; the others leave it where it is. Raises
    ValueError for an unknown backend or precision, and for an `onnx_path` that does not load or is not
    this model (its output is checked on one small input).
    """
    if not model.fused:
        raise ValueError("make_runner expects the fused model (models.fuse_model)")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if precision == "auto":  # onnxruntime computes on the host: float32 there
        precision = "fp32" if backend == "onnxruntime" else default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError("precision 'tf32' is a mode of NVIDIA GPUs' tensor cores; on a CPU use fp32")
    chosen = default_backend(device) if backend == "auto" else backend
    if chosen == "native" and backend == "auto" and precision != "fp32":
        chosen = "fast"  # native is float32 only
    dtype = _DTYPES[precision]
    suffix = "" if precision == "fp32" else f"+{precision}"
    if chosen == "onnxruntime":
        if precision != "fp32":
            raise ValueError("the onnxruntime backend runs float32 only (on the host); use precision='fp32'")
        return _onnx_runner(model, device, onnx_path)
    if onnx_path is not None:
        raise ValueError("onnx_path is for the onnxruntime backend")
    if chosen == "native":
        if precision != "fp32":
            raise ValueError("the native backend runs float32 only; use precision='fp32'")
        return _native_runner(model, device, fallback=backend == "auto")
    if chosen == "cuda_graph":
        from utils.runtime.cuda_graph import CudaGraphRunner

        if device.type != "cuda" or dtype != torch.float32:
            raise ValueError("the cuda_graph backend runs float32 (fp32 or tf32) on a CUDA GPU only")
        return CudaGraphRunner(model.to(device).eval(), precision == "tf32", "cuda_graph" + suffix)
    if chosen == "fast":
        from utils.runtime.fast import FastLKDN

        return ModuleRunner(
            FastLKDN(model).to(device, dtype).eval(), "fast" + suffix, dtype, precision == "tf32"
        )
    module = (
        model.to(device).eval() if dtype == torch.float32 else copy.deepcopy(model).to(device, dtype).eval()
    )
    return ModuleRunner(module, "reference" + suffix, dtype, precision == "tf32")
