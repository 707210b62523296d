"""A faster forward pass of the fused LKDN: the same function, computed with fewer passes over memory.

The readable module form (models.LKDN, fused) stays the reference; `FastLKDN(model)` copies its weights
into the layout this path wants and computes the same network (max abs difference ~1e-5 in float32):

- activations are NHWC, so each 1x1 conv is one matrix product over all pixels, and the depthwise convs
  run channels-last, the layout oneDNN's depthwise kernels are fast in;
- the 4x input repetition is folded into the first pointwise weights (12 -> 3 input channels), and that
  bias-free pointwise conv into the depthwise conv after it: one full 3x3 conv 3 -> C;
- the concatenations before `c5` and `c1` are never built: those 1x1 convs are sums of partial products
  over their input slices, accumulated in place (the trunk's as each block finishes);
- the per-pixel channel LayerNorm runs on NHWC rows, without the two transposing copies;
- on a CPU, oneDNN's fused post-ops (bias + GELU after a 1x1 or depthwise conv, the attention product
  after the dilated conv) save a pass each; elsewhere the same steps run as plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import LKDN


def _cpu_fusions_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()
            and ops is not None
            and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_convolution_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


CPU_FUSIONS = _cpu_fusions_available()


def _copy(t: Tensor) -> Tensor:
    return t.detach().clone().contiguous()


def _pointwise(conv: nn.Conv2d) -> Tensor:
    """A 1x1 conv's weight as an (out, in) matrix."""
    return _copy(conv.weight[:, :, 0, 0])


class _Ops:
    """The few primitives of the fast path on NHWC tensors, fused by oneDNN when `fused`."""

    def __init__(self, fused: bool) -> None:
        self.fused = fused

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, gelu: bool = False) -> Tensor:
        """1x1 conv (weight (out, in)) on NHWC `x`, plus bias, then GELU if asked."""
        rows = x.reshape(-1, weight.shape[1])
        if self.fused and (bias is not None or gelu):
            y = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "gelu" if gelu else "none", [], "none")
        else:
            y = rows @ weight.t()
            if bias is not None:
                y += bias
            if gelu:
                y = F.gelu(y)
        return y.view(*x.shape[:-1], weight.shape[0])

    def accumulate(self, out: Tensor | None, x: Tensor, weight: Tensor) -> Tensor:
        """out + x @ weight.T over NHWC rows (out is updated in place; None starts the sum)."""
        rows = x.reshape(-1, weight.shape[1])
        if out is None:
            return (rows @ weight.t()).view(*x.shape[:-1], weight.shape[0])
        out.view(-1, weight.shape[0]).addmm_(rows, weight.t())
        return out

    def depthwise(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        dilation: int = 1,
        gelu: bool = False,
        times: Tensor | None = None,
    ) -> Tensor:
        """Size-preserving depthwise conv on NHWC `x`, then GELU or a product with `times` if asked."""
        pad = dilation * (weight.shape[-1] // 2)
        xc = x.permute(0, 3, 1, 2)  # a channels-last NCHW view: no copy
        common = ([pad, pad], [1, 1], [dilation, dilation], weight.shape[0])
        if self.fused and gelu:
            y = torch.ops.mkldnn._convolution_pointwise(xc, weight, bias, *common, "gelu", [], "none")
        elif self.fused and times is not None:
            other = times.permute(0, 3, 1, 2)
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                xc, other, weight, bias, *common, "mul", None, None, [], None
            )
        else:
            y = F.conv2d(xc, weight, bias, padding=pad, dilation=dilation, groups=weight.shape[0])
            if gelu:
                y = F.gelu(y)
            if times is not None:
                y = y * times.permute(0, 3, 1, 2)
        return y.permute(0, 2, 3, 1).contiguous()


class _FastBlock(nn.Module):
    """One LKDB's weights, laid out for the fast path."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        steps = ((block.c1_d, block.c1_r), (block.c2_d, block.c2_r), (block.c3_d, block.c3_r))
        for i, (distill, refine) in enumerate(steps, 1):
            self.register_buffer(f"d{i}_w", _pointwise(distill))
            self.register_buffer(f"d{i}_b", _copy(distill.bias))
            self.register_buffer(f"r{i}_w", _pointwise(refine.pw))
            self.register_buffer(f"r{i}_dw", _copy(refine.dw.weight))
            self.register_buffer(f"r{i}_db", _copy(refine.dw.bias))
        self.register_buffer("c4_w", _pointwise(block.c4.pw))
        self.register_buffer("c4_dw", _copy(block.c4.dw.weight))
        self.register_buffer("c4_db", _copy(block.c4.dw.bias))
        c5 = _pointwise(block.c5)
        self.split = [c5.shape[1] // 4] * 4  # input slices of c5: the three distilled features and r4
        self.register_buffer("c5_w", c5)
        self.register_buffer("c5_b", _copy(block.c5.bias))
        lka = block.atten
        self.register_buffer("lka_w", _pointwise(lka.pointwise))
        self.register_buffer("lka_b", _copy(lka.pointwise.bias))
        self.register_buffer("lka_dw", _copy(lka.depthwise.weight))
        self.register_buffer("lka_db", _copy(lka.depthwise.bias))
        self.register_buffer("lka_ddw", _copy(lka.depthwise_dilated.weight))
        self.register_buffer("lka_ddb", _copy(lka.depthwise_dilated.bias))
        self.dilation = lka.depthwise_dilated.dilation[0]
        self.register_buffer("c6_w", _pointwise(block.c6))
        self.register_buffer("c6_b", _copy(block.c6.bias))
        self.register_buffer("ln_w", _copy(block.pixel_norm.weight))
        self.register_buffer("ln_b", _copy(block.pixel_norm.bias))
        self.eps = block.pixel_norm.eps

    def forward(self, x: Tensor, ops: _Ops) -> Tensor:
        c5 = self.c5_w.split(self.split, dim=1)
        u, r = None, x
        for i in (1, 2, 3):
            d = ops.linear(r, getattr(self, f"d{i}_w"), getattr(self, f"d{i}_b"), gelu=True)
            u = ops.accumulate(u, d, c5[i - 1])
            r = ops.depthwise(
                ops.linear(r, getattr(self, f"r{i}_w")),
                getattr(self, f"r{i}_dw"),
                getattr(self, f"r{i}_db"),
                gelu=True,
            )
        r4 = ops.depthwise(ops.linear(r, self.c4_w), self.c4_dw, self.c4_db, gelu=True)
        u = ops.accumulate(u, r4, c5[3]).add_(self.c5_b)
        a = ops.depthwise(ops.linear(u, self.lka_w, self.lka_b), self.lka_dw, self.lka_db)
        attended = ops.depthwise(a, self.lka_ddw, self.lka_ddb, self.dilation, times=u)
        y = ops.linear(attended, self.c6_w, self.c6_b)
        return F.layer_norm(y, y.shape[-1:], self.ln_w, self.ln_b, self.eps).add_(x)


class FastLKDN(nn.Module):
    """The fused LKDN's function in a faster form, for inference (no autograd through the oneDNN ops).
    Weights are buffers copied from `model` at construction (later changes to `model` are not seen);
    `.to(device, dtype)` moves them.

    `cpu_fusions` (default: when oneDNN's fused ops exist) applies only to float32 tensors on a CPU.
    """

    def __init__(self, model: LKDN, cpu_fusions: bool | None = None) -> None:
        super().__init__()
        if not model.fused or model.attention != "lka" or model.shallow not in ("rbsb", "bsconv"):
            raise ValueError("FastLKDN needs a fused LKDN with LKA attention and plain BSConv shallow blocks")
        self.scale = model.scale
        self.cpu_fusions = CPU_FUSIONS if cpu_fusions is None else cpu_fusions and CPU_FUSIONS
        with torch.no_grad():
            first = model.folded_first_conv()  # the 4x repetition and fea_conv as one 3x3 conv
            self.register_buffer("fea_w", first.weight.contiguous(memory_format=torch.channels_last))
            self.register_buffer("fea_b", first.bias)
            self.blocks = nn.ModuleList(_FastBlock(block) for block in model.blocks)
            c1 = _pointwise(model.c1)
            self.register_buffer("c1_w", c1)
            self.register_buffer("c1_b", _copy(model.c1.bias))
            self.register_buffer("c2_w", _pointwise(model.c2.pw))
            self.register_buffer("c2_dw", _copy(model.c2.dw.weight))
            self.register_buffer("c2_db", _copy(model.c2.dw.bias))
            up = model.upsampler[0]
            self.register_buffer(
                "up_w", up.weight.detach().clone().contiguous(memory_format=torch.channels_last)
            )
            self.register_buffer("up_b", _copy(up.bias))

    def features(self, x: Tensor) -> Tensor:
        """The shallow features (fea_conv), NHWC."""
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, self.fea_w, self.fea_b, padding=1).permute(0, 2, 3, 1).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        ops = _Ops(self.cpu_fusions and x.device.type == "cpu" and x.dtype == torch.float32)
        n, _, h, w = x.shape
        feat = self.features(x)
        c1 = self.c1_w.split(feat.shape[-1], dim=1)
        trunk, hidden = None, feat
        for block, c1_part in zip(self.blocks, c1, strict=True):
            hidden = block(hidden, ops)
            trunk = ops.accumulate(trunk, hidden, c1_part)
        trunk = F.gelu(trunk.add_(self.c1_b))
        trunk = ops.depthwise(ops.linear(trunk, self.c2_w), self.c2_dw, self.c2_db).add_(feat)
        y = F.conv2d(trunk.permute(0, 3, 1, 2), self.up_w, self.up_b, padding=1)  # channels-last
        s = self.scale
        y = y.permute(0, 2, 3, 1).reshape(n, h, w, -1, s, s)  # pixel shuffle from NHWC: one copy
        return y.permute(0, 3, 1, 4, 2, 5).reshape(n, -1, h * s, w * s)
