"""The complexity figures of the NTIRE efficient-SR challenge, computed one way for the whole repository.

The 2023 convention: FLOPs are the multiply-accumulates of the conv layers on a 1x3x256x256 input, counted
by fvcore per operator ('conv'); activations are the summed output sizes of every Conv2d on that input; the conv
count is the number of Conv2d calls in one forward. fvcore's total (which adds LayerNorm) and thop's figure are
reported beside it, labelled, because both appear in other papers' tables. Every count runs on a copy of the
model, so the model that serves inference is never touched (thop leaves buffers and hooks behind). Counts that
only need shapes (activations, thop) run on the `meta` device, which computes nothing; fvcore traces with a real
CPU forward.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch
from torch import nn

CHALLENGE_INPUT = (1, 3, 256, 256)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelSummary:
    num_parameters: int
    conv_macs: int  # fvcore, operator 'conv': the challenge's "FLOPs"
    fvcore_total_flops: int  # fvcore, all operators it counts (adds layer_norm for LKDN)
    thop_macs: int  # thop.profile, the figure many SR papers print
    activations: int  # summed numel of every Conv2d output
    num_conv: int  # Conv2d calls in one forward
    input_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def _shape_only_run(
    count: Callable[[nn.Module, torch.Tensor], T], model: nn.Module, shape: tuple[int, ...]
) -> T:
    """`count(copy of model, input)` on the meta device (no arithmetic); on the CPU if an op has no meta kernel."""
    try:
        meta = copy.deepcopy(model).to("meta").eval()
        return count(meta, torch.empty(shape, device="meta"))
    except (NotImplementedError, RuntimeError, TypeError):
        return count(_cpu_copy(model), _input(shape))


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """The pinned fvcore and thop use deprecated torch.jit.script and distutils versions: not our warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fvcore_flops_by_operator(
    model: nn.Module, input_shape: tuple[int, ...] = CHALLENGE_INPUT
) -> dict[str, int]:
    """fvcore's multiply-accumulate counts per operator ('conv', 'layer_norm', ...) for one forward."""
    with _quiet_third_party():
        from fvcore.nn import FlopCountAnalysis  # imported here: slow to import, needed only for this
    with torch.no_grad(), _quiet_third_party():
        analysis = FlopCountAnalysis(_cpu_copy(model), _input(input_shape))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return {op: int(n) for op, n in analysis.by_operator().items()}


def count_conv_macs(model: nn.Module, input_shape: tuple[int, ...] = CHALLENGE_INPUT) -> int:
    """The challenge's FLOPs: conv multiply-accumulates, fvcore's 'conv' operator count."""
    return fvcore_flops_by_operator(model, input_shape).get("conv", 0)


def thop_macs(model: nn.Module, input_shape: tuple[int, ...] = CHALLENGE_INPUT) -> int:
    """thop.profile's MAC count (on a copy: thop adds `total_ops` buffers and hooks to every module)."""
    with _quiet_third_party():
        import thop

    def count(copy_: nn.Module, x: torch.Tensor) -> int:
        with torch.no_grad(), _quiet_third_party():
            return int(thop.profile(copy_, inputs=(x,), verbose=False)[0])

    return _shape_only_run(count, model, input_shape)


def conv_activations(model: nn.Module, input_shape: tuple[int, ...] = CHALLENGE_INPUT) -> tuple[int, int]:
    """(summed output numel of every Conv2d call, number of Conv2d calls) in one forward."""

    def count(copy_: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        sizes: list[int] = []
        for m in copy_.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
        with torch.no_grad():
            copy_(x)
        return sum(sizes), len(sizes)

    return _shape_only_run(count, model, input_shape)


def summarize(model: nn.Module, input_shape: tuple[int, ...] = CHALLENGE_INPUT) -> ModelSummary:
    """Every figure of the challenge table for `model` (measure the form that runs, i.e. the fused one)."""
    by_operator = fvcore_flops_by_operator(model, input_shape)
    activations, num_conv = conv_activations(model, input_shape)
    return ModelSummary(
        num_parameters=count_parameters(model),
        conv_macs=by_operator.get("conv", 0),
        fvcore_total_flops=sum(by_operator.values()),
        thop_macs=thop_macs(model, input_shape),
        activations=activations,
        num_conv=num_conv,
        input_shape=tuple(input_shape),
    )
