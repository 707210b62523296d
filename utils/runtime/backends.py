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
- `auto`: the first backend of AUTO_ORDER that serves the model and builds here: on a CPU `native` (float32,
  LKA and no shortcut, 42 or 56 channels, where the kernels build), else `fast` (every variant); `reference`
  elsewhere, so a GPU never gets a path that was only measured on a CPU. The runner's name says why the
  first choice did not run.

Every backend says what it serves (`backend_support`); an explicit backend that cannot serve the model is a
ValueError naming the reason. Every runner checks its input's size (`LKDN.min_input_size`) and its output
(`check_output`: finite, within +-1e4) before anything can clamp, write or score it.

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
from utils.errors import UserError

ONNX_PATH_HELP = (
    "with --backend onnxruntime: an exported .onnx of these weights (checked against them); default: the graph "
    "exported once per weights and cached"
)
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


class OutputError(ValueError):
    """A network's output that no image is: NaN, Inf, or values far outside [0, 1] (damaged or diverged
    weights). Raised before the output can be clamped, written or scored."""


class InputTooSmall(ValueError):
    """An input smaller than the network takes (the ESA attention's pooling needs 15 LR pixels a side)."""


PLAUSIBLE_OUTPUT = 1e4  # |value| of an output pixel beyond which no weights worth running produced it


def check_output(sr: Tensor) -> Tensor:
    """`sr` itself, if every value is finite and within +-PLAUSIBLE_OUTPUT; else OutputError."""
    if sr.numel() == 0:
        return sr
    low, high = torch.aminmax(sr.detach())  # one pass, no temporary (abs().amax() took 7x as long)
    peak = torch.maximum(-low, high)
    if not peak <= PLAUSIBLE_OUTPUT:  # NaN propagates through aminmax and fails the comparison too
        if not torch.isfinite(peak):
            raise OutputError("the network's output holds NaN or Inf values")
        raise OutputError(f"the network's output reaches {float(peak):.3g}, far outside an image's [0, 1]")
    return sr


@dataclass
class CheckedRunner:
    """A backend's runner whose inputs are checked against the network's minimum size and whose outputs go
    through `check_output`: what `make_runner` returns. `raw` is the backend's runner alone (what a benchmark
    times, as the NTIRE kit times the network alone)."""

    raw: Runner
    min_size: int = 1

    @property
    def name(self) -> str:
        return self.raw.name

    def check_input(self, lr: Tensor) -> None:
        height, width = lr.shape[-2:]
        if min(height, width) < self.min_size:
            raise InputTooSmall(
                f"an input of {width}x{height} pixels; this network's attention (ESA) needs at least "
                f"{self.min_size}x{self.min_size}"
            )

    def __call__(self, lr: Tensor) -> Tensor:
        self.check_input(lr)
        return check_output(self.raw(lr))


def default_precision(device: torch.device | str) -> str:
    """PyTorch's own default arithmetic on `device`: TF32 convolutions on a CUDA GPU, float32 elsewhere."""
    return "tf32" if torch.device(device).type == "cuda" else "fp32"


# What `auto` tries on a device, fastest first (benchmarks/bench_inference.py on CPUs; on CUDA the module form
# until a measured run shows another path faster and exact, benchmarks/gpu_check.py).
AUTO_ORDER = {"cpu": ("native", "fast", "reference"), "cuda": ("reference",)}


def default_backend(device: torch.device | str) -> str:
    """What `auto` starts from on `device`."""
    return AUTO_ORDER.get(torch.device(device).type, ("reference",))[0]


def _reason(backend: str, model: LKDN, device: torch.device, precision: str) -> str | None:
    """Why `backend` cannot run `model` on `device` in `precision`, or None (whether native's kernels build
    here is found out when it is built)."""
    from utils.runtime import fast, native

    if backend == "fast":
        return fast.supports(model)
    if backend == "native":
        if device.type != "cpu":
            return "the native kernels run on a CPU only"
        if precision != "fp32":
            return "the native kernels run float32 only; use precision fp32"
        return native.supports(model)
    if backend == "cuda_graph" and (device.type != "cuda" or precision not in ("fp32", "tf32")):
        return "the cuda_graph backend runs float32 (fp32 or tf32) on a CUDA GPU only"
    if backend == "onnxruntime" and precision != "fp32":
        return "the onnxruntime backend runs float32 only (on the host); use precision fp32"
    return None


def backend_support(
    model: LKDN, device: torch.device | str = "cpu", precision: str = "fp32"
) -> dict[str, str | None]:
    """Every backend, with None where it serves `model` on `device` in `precision`, else the reason it does
    not (for `native`: whether its kernels build here, too)."""
    from utils.runtime.native import native_available

    device = torch.device(device)
    support = {name: _reason(name, model, device, precision) for name in BACKENDS if name != "auto"}
    if support["native"] is None:
        support["native"] = native_available()
    return support


def _build(backend: str, model: LKDN, device: torch.device, precision: str, onnx_path) -> Runner:
    """The runner of a backend that serves the model (see _reason); KernelUnavailable if native cannot build."""
    dtype = _DTYPES[precision]
    suffix = "" if precision == "fp32" else f"+{precision}"
    if backend == "onnxruntime":
        return _onnx_runner(model, device, onnx_path)
    if backend == "native":
        from utils.runtime.native import NativeLKDN
        from utils.runtime.native_tune import chosen_build, flags_of, name_of

        choice = chosen_build(model)
        label = "native" if not choice else f"native:{name_of(choice)}"
        return ModuleRunner(NativeLKDN(model, flags_of(choice)).eval(), label)
    if backend == "cuda_graph":
        from utils.runtime.cuda_graph import CudaGraphRunner

        return CudaGraphRunner(model.to(device).eval(), precision == "tf32", "cuda_graph" + suffix)
    if backend == "fast":
        from utils.runtime.fast import FastLKDN

        return ModuleRunner(
            FastLKDN(model).to(device, dtype).eval(), "fast" + suffix, dtype, precision == "tf32"
        )
    module = (
        model.to(device).eval() if dtype == torch.float32 else copy.deepcopy(model).to(device, dtype).eval()
    )
    return ModuleRunner(module, "reference" + suffix, dtype, precision == "tf32")


def _onnx_runner(model: LKDN, device: torch.device, onnx_path: str | Path | None) -> OnnxRunner:
    """An exported file (`onnx_path`), or this model's graph from the cache (exported and verified once per
    weights: `onnx_export.cached_onnx`); either is checked against the model on one small input."""
    from utils.runtime.onnx_export import cached_onnx, ort_session, verify_onnx

    if onnx_path is None:
        cached = cached_onnx(model)
        try:
            session = ort_session(cached, device)
            verify_onnx(session, model, shapes=((1, 3, 16, 24),))
        except Exception:  # noqa: BLE001 (a damaged cache file, whatever the error: export it again)
            cached.unlink(missing_ok=True)
            session = ort_session(cached_onnx(model), device)
        return OnnxRunner(session, device)
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
) -> CheckedRunner:
    """A callable running the fused `model` on `device` with `backend` in `precision` ("auto": what PyTorch
    does unasked on that device, `default_precision`).

    `auto` takes the first backend of AUTO_ORDER that serves the model and builds here, and its name gives the
    reason the first one did not (`fast (native unavailable: ...)`). An explicit backend that cannot serve the
    model is a ValueError saying why. The reference and cuda_graph backends move `model` itself to `device`;
    the others leave it where it is. Also a ValueError: an unknown backend or precision, an `onnx_path` that
    does not load or is not this model (its output is checked on one small input).
    """
    from utils.native.build import KernelUnavailable

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
    if onnx_path is not None and backend != "onnxruntime":
        raise ValueError("onnx_path is for the onnxruntime backend")
    if backend != "auto":
        reason = _reason(backend, model, device, precision)
        if reason is not None:
            raise ValueError(f"backend {backend!r}: {reason}")
        try:
            return CheckedRunner(_build(backend, model, device, precision, onnx_path), model.min_input_size())
        except KernelUnavailable as err:
            raise ValueError(f"backend {backend!r}: {err}") from None
    skipped = []
    for name in AUTO_ORDER.get(device.type, ("reference",)):
        reason = _reason(name, model, device, precision)
        if reason is None:
            try:
                runner = _build(name, model, device, precision, None)
            except KernelUnavailable as err:
                reason = str(err)
            else:
                if skipped:
                    runner.name = f"{runner.name} ({skipped[0]})"
                return CheckedRunner(runner, model.min_input_size())
        if precision == "fp32" or name != "native":  # that native is float32 only needs no saying
            skipped.append(f"{name} unavailable: {reason}")
    raise AssertionError("unreachable: the reference backend serves every fused model")


def probe_runner(runner: Runner, device: torch.device | str, channels: int = 3) -> None:
    """Run `runner` once on a small seeded input, so that weights whose output is no image (OutputError) are
    refused before any real input is read or any output written."""
    side = max(16, getattr(runner, "min_size", 1))
    x = torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(0))
    runner(x.to(device))


def runner_for_cli(
    model: LKDN, checkpoint: Path, device: torch.device, backend: str, precision: str, onnx_path: Path | None
) -> CheckedRunner:
    """make_runner + probe_runner for a command line: what they refuse becomes one line naming the flags, or the
    weights whose output is no image."""
    try:
        runner = make_runner(model, device, backend, precision, onnx_path)
    except ValueError as err:
        raise UserError(f"--backend {backend} --precision {precision}: {err}") from None
    try:
        probe_runner(runner, device)
    except OutputError as err:
        raise UserError(
            f"{checkpoint}: {err}; the weights are damaged or diverged: use another checkpoint"
        ) from None
    return runner
