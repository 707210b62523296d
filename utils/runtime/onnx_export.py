"""ONNX export of the fused LKDN, verified with onnxruntime before anything is written.

The graph is built node by node from the fused model's weights (onnx.helper), not traced: no dependence on
torch's deprecated TorchScript exporter or on onnxscript, and height, width and batch are symbolic by
construction. Two exact rewrites keep it small: the 4x input repetition is folded into the first pointwise
weights, and that bias-free pointwise conv into the depthwise conv after it (one 3x3 conv 3 -> C); the rest
mirrors the module form op for op. GELU is written as x * 0.5 * (1 + erf(x / sqrt 2)), the exact form,
which onnxruntime fuses into one kernel; the per-pixel LayerNorm is a LayerNormalization over the last axis
of an NHWC transpose. Opset 17 (LayerNormalization's first), so most runtimes of 2022 on can load it.

`export_onnx` returns the serialized model after checking it against the PyTorch module on two input
sizes (max abs difference <= `atol`); `save_onnx` writes it atomically.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models import LKDN
from utils.files.atomic_write import write_bytes_atomic

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17 (onnx 1.12): the newest onnx writes one older runtimes refuse
INPUT, OUTPUT = "lr", "sr"
VERIFY_SHAPES = ((1, 3, 23, 40), (2, 3, 37, 19))  # two sizes, odd, batch > 1: what the export is checked on
VERIFY_ATOL = 1e-4


class OnnxVerificationError(ValueError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance: the graph is not this model."""


class _Graph:
    """Accumulates nodes and initializers; every value gets a fresh name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: torch.Tensor | np.ndarray | float, hint: str) -> str:
        array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else value
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(
        self,
        x: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        hint: str,
        dilation: int = 1,
        groups: int = 1,
    ) -> str:
        k = weight.shape[-1]
        pad = dilation * (k // 2)
        inputs = [x, self.const(weight, f"{hint}.weight")]
        if bias is not None:
            inputs.append(self.const(bias, f"{hint}.bias"))
        return self.op(
            "Conv",
            inputs,
            hint,
            kernel_shape=[k, k],
            pads=[pad, pad, pad, pad],
            dilations=[dilation, dilation],
            group=groups,
        )

    def conv_module(self, x: str, conv: nn.Conv2d, hint: str) -> str:
        return self.conv(x, conv.weight, conv.bias, hint, conv.dilation[0], conv.groups)

    def bsconv(self, x: str, block: nn.Module, hint: str) -> str:
        return self.conv_module(self.conv_module(x, block.pw, f"{hint}.pw"), block.dw, f"{hint}.dw")

    def gelu(self, x: str) -> str:
        """Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))), the pattern onnxruntime fuses."""
        scaled = self.op("Div", [x, self.const(np.array(math.sqrt(2.0)), "sqrt2")])
        erf = self.op("Erf", [scaled])
        one_plus = self.op("Add", [erf, self.const(np.array(1.0), "one")])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const(np.array(0.5), "half")], "gelu")

    def channel_layer_norm(self, x: str, norm: nn.LayerNorm, hint: str) -> str:
        nhwc = self.op("Transpose", [x], perm=[0, 2, 3, 1])
        scale, bias = self.const(norm.weight, f"{hint}.weight"), self.const(norm.bias, f"{hint}.bias")
        normed = self.op("LayerNormalization", [nhwc, scale, bias], hint, axis=-1, epsilon=norm.eps)
        return self.op("Transpose", [normed], perm=[0, 3, 1, 2])


def _block(g: _Graph, x: str, block: nn.Module, hint: str) -> str:
    distilled, r = [], x
    for step in (1, 2, 3):
        distill, refine = getattr(block, f"c{step}_d"), getattr(block, f"c{step}_r")
        distilled.append(g.gelu(g.conv_module(r, distill, f"{hint}.c{step}_d")))
        r = g.gelu(g.bsconv(r, refine, f"{hint}.c{step}_r"))
    distilled.append(g.gelu(g.bsconv(r, block.c4, f"{hint}.c4")))
    u = g.conv_module(g.op("Concat", distilled, axis=1), block.c5, f"{hint}.c5")
    lka = block.atten
    a = g.conv_module(u, lka.pointwise, f"{hint}.atten.pointwise")
    a = g.conv_module(a, lka.depthwise, f"{hint}.atten.depthwise")
    a = g.conv_module(a, lka.depthwise_dilated, f"{hint}.atten.depthwise_dilated")
    y = g.conv_module(g.op("Mul", [u, a]), block.c6, f"{hint}.c6")
    return g.op("Add", [g.channel_layer_norm(y, block.pixel_norm, f"{hint}.pixel_norm"), x])


def build_onnx(model: LKDN) -> onnx.ModelProto:
    """The ONNX graph of the fused `model` (LKA attention, BSConv shallow blocks), with symbolic N, H, W."""
    if not model.fused or model.attention != "lka" or model.shallow not in ("rbsb", "bsconv"):
        raise ValueError("ONNX export needs a fused LKDN with LKA attention and plain BSConv shallow blocks")
    g = _Graph()
    with torch.no_grad():
        c = model.num_feat
        pointwise = model.fea_conv.pw.weight[:, :, 0, 0].view(c, 4, -1).sum(1)  # folds x.repeat(1, 4, 1, 1)
        fea_weight = model.fea_conv.dw.weight * pointwise[:, :, None, None]
        feat = g.conv(INPUT, fea_weight, model.fea_conv.dw.bias, "fea_conv")
        outputs, h = [], feat
        for i, block in enumerate(model.blocks, 1):
            h = _block(g, h, block, f"B{i}")
            outputs.append(h)
        trunk = g.gelu(g.conv_module(g.op("Concat", outputs, axis=1), model.c1, "c1"))
        trunk = g.op("Add", [g.bsconv(trunk, model.c2, "c2"), feat])
        up = g.conv_module(trunk, model.upsampler[0], "upsampler.0")
        g.nodes.append(helper.make_node("DepthToSpace", [up], [OUTPUT], blocksize=model.scale, mode="CRD"))
    in_ch = model.fea_conv.pw.weight.shape[1] // 4
    out_ch = model.upsampler[0].weight.shape[0] // model.scale**2
    graph = helper.make_graph(
        g.nodes,
        "LKDN",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", in_ch, "height", "width"])],
        [
            helper.make_tensor_value_info(
                OUTPUT, TensorProto.FLOAT, ["batch", out_ch, "out_height", "out_width"]
            )
        ],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lkdn", ir_version=IR_VERSION
    )
    onnx_model.doc_string = (
        f"LKDN x{model.scale}, {model.num_feat} channels, {model.num_blocks} blocks (fused form). "
        "Input: RGB in [0, 1], float32 NCHW; output unclamped."
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def ort_session(model: bytes | str | Path, device: torch.device | str = "cpu"):
    """An onnxruntime session for a serialized model or an .onnx path (CUDA provider when asked and present)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(source, options, providers=providers)


def _cpu_float32(model: LKDN) -> LKDN:
    """`model` itself if it is on the CPU in float32, else a copy that is (the caller's model is not moved)."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def verify_onnx(
    session, model: LKDN, shapes: tuple[tuple[int, ...], ...] = VERIFY_SHAPES, atol: float = VERIFY_ATOL
) -> float:
    """Max abs difference between onnxruntime and the PyTorch module on seeded inputs of `shapes`; raises
    OnnxVerificationError if it exceeds `atol` (or if the output shapes differ)."""
    reference = _cpu_float32(model)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(shape, generator=generator)
        with torch.inference_mode():
            expected = reference(x).numpy()
        got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        if got.shape != expected.shape:
            raise OnnxVerificationError(
                f"onnxruntime output shape {got.shape} != PyTorch {expected.shape} for input {shape}"
            )
        diff = float(np.abs(got - expected).max())
        if not diff <= atol:  # also catches NaN
            raise OnnxVerificationError(
                f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol:g}) on an input of shape {shape}"
            )
        worst = max(worst, diff)
    return worst


def export_onnx(model: LKDN, atol: float = VERIFY_ATOL) -> tuple[bytes, float]:
    """(serialized ONNX model of the fused `model`, max abs difference found by the verification)."""
    reference = _cpu_float32(model)
    data = build_onnx(reference).SerializeToString()
    return data, verify_onnx(ort_session(data), reference, atol=atol)


def save_onnx(data: bytes, path: str | Path) -> Path:
    """Write serialized ONNX bytes to `path` atomically (temporary file in the same folder, then rename)."""
    return write_bytes_atomic(path, data)
