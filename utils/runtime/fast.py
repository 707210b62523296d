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

The blocks are `FastLKDB`s: the network's own LKDB dataflow (models/), with each step computed as above, so
every variant of the block (attention, shortcut) runs here without a second description of it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import LKDB, LKDN


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


def conv_matrix(weight: Tensor) -> Tensor:
    """A 1x1 conv's (out, in, 1, 1) weight as an (out, in) matrix (a view)."""
    return weight[:, :, 0, 0]


def _pointwise(conv: nn.Conv2d) -> Tensor:
    """A 1x1 conv's weight as an (out, in) matrix, copied."""
    return _copy(conv_matrix(conv.weight))


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


class FastLKDB(LKDB):
    """An LKDB on NHWC tensors: LKDB.forward's dataflow (written once, in models/), each step computed with
    `_Ops` from the block's own fused weights. Built by `adopting` a fused block's submodules (shared, not
    copied). Attention other than LKA runs its module on the NCHW view; a shortcut refine block adds its input
    before GELU."""

    ops = _Ops(False)  # set by FastLKDN.forward for the call's device and dtype

    @classmethod
    def adopting(cls, block: LKDB) -> FastLKDB:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, child in block.named_children():
            setattr(new, name, child)
        return new.eval()

    def distill_step(self, h: Tensor, distill: nn.Module, refine: nn.Module) -> tuple[Tensor, Tensor]:
        d = self.ops.linear(h, conv_matrix(distill.weight), distill.bias, gelu=True)
        w = refine.bsconv_weights()
        pre = self.ops.linear(h, conv_matrix(w.pw))
        if w.shortcut:
            return d, F.gelu(self.ops.depthwise(pre, w.dw, w.bias).add_(h))
        return d, self.ops.depthwise(pre, w.dw, w.bias, gelu=True)

    def last_step(self, h: Tensor) -> Tensor:
        w = self.c4.bsconv_weights()
        return self.ops.depthwise(self.ops.linear(h, conv_matrix(w.pw)), w.dw, w.bias, gelu=True)

    def fuse_distilled(self, distilled: list[Tensor]) -> Tensor:
        """c5 as a sum of partial products over the (already activated) distilled parts: no concatenation."""
        weight, u = conv_matrix(self.c5.weight), None
        parts = weight.split([d.shape[-1] for d in distilled], dim=1)
        for d, part in zip(distilled, parts, strict=True):
            u = self.ops.accumulate(u, d, part)
        return u.add_(self.c5.bias)

    def attend(self, u: Tensor) -> Tensor:
        atten = self.atten
        if isinstance(atten, nn.Identity):
            return u
        if not hasattr(atten, "depthwise_dilated"):  # ESA + CCA: the module itself, on the NCHW view
            return atten(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        a = self.ops.linear(u, conv_matrix(atten.pointwise.weight), atten.pointwise.bias)
        a = self.ops.depthwise(a, atten.depthwise.weight, atten.depthwise.bias)
        dilated = atten.depthwise_dilated
        return self.ops.depthwise(a, dilated.weight, dilated.bias, dilated.dilation[0], times=u)

    def finish(self, attended: Tensor, x: Tensor) -> Tensor:
        y = self.ops.linear(attended, conv_matrix(self.c6.weight), self.c6.bias)
        norm = self.pixel_norm
        return F.layer_norm(y, y.shape[-1:], norm.weight, norm.bias, norm.eps).add_(x)


class FastLKDN(nn.Module):
    """The fused LKDN's function in a faster form, for inference (no autograd through the oneDNN ops); every
    variant of the network (`supports`). Weights are copied from `model` at construction (later changes to
    `model` are not seen); `.to(device, dtype)` moves them.

    `cpu_fusions` (default: when oneDNN's fused ops exist) applies only to float32 tensors on a CPU.
    """

    def __init__(self, model: LKDN, cpu_fusions: bool | None = None) -> None:
        super().__init__()
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"FastLKDN: {reason}")
        self.scale = model.scale
        self.cpu_fusions = CPU_FUSIONS if cpu_fusions is None else cpu_fusions and CPU_FUSIONS
        with torch.no_grad():
            first = model.folded_first_conv()  # the 4x repetition and fea_conv as one 3x3 conv
            self.register_buffer("fea_w", first.weight.contiguous(memory_format=torch.channels_last))
            self.register_buffer("fea_b", first.bias)
            self.blocks = nn.ModuleList(FastLKDB.adopting(copy.deepcopy(block)) for block in model.blocks)
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
            block.ops = ops
            hidden = block(hidden)
            trunk = ops.accumulate(trunk, hidden, c1_part)
        trunk = F.gelu(trunk.add_(self.c1_b))
        trunk = ops.depthwise(ops.linear(trunk, self.c2_w), self.c2_dw, self.c2_db).add_(feat)
        y = F.conv2d(trunk.permute(0, 3, 1, 2), self.up_w, self.up_b, padding=1)  # channels-last
        s = self.scale
        y = y.permute(0, 2, 3, 1).reshape(n, h, w, -1, s, s)  # pixel shuffle from NHWC: one copy
        return y.permute(0, 3, 1, 4, 2, 5).reshape(n, -1, h * s, w * s)


def supports(model: LKDN) -> str | None:
    """None when the fast path runs `model`, else why not: any fused LKDN, of every variant."""
    return None if model.fused else "needs the fused model (models.fuse_model)"
