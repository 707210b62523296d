"""LKDN: Large Kernel Distillation Network (NTIRE 2023 Efficient SR), training and fused forms.

Module names equal the authors' state-dict keys, so their released checkpoints load with `strict=True`.
Building blocks come first, then the distillation block, the network, and the named configurations.

Re-parameterization lives next to the block it fuses: every multi-branch block has `fused_params()`
(differentiable fused weights, used for online fusion while training) and `fused_module()` (the plain module
of the inference form). `fuse_model` is a walk over those blocks.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCH = "LKDN"
Attention = Literal["lka", "esa_cca", "none"]
ShallowBlock = Literal["rbsb", "bsconv_shortcut", "bsconv"]
ATTENTIONS: tuple[str, ...] = get_args(Attention)
SHALLOW_BLOCKS: tuple[str, ...] = get_args(ShallowBlock)
CONFIG_FIELDS = ("arch", "num_feat", "num_blocks", "scale", "in_ch", "out_ch", "attention", "shallow", "fused",
                 "upsampler", "online_fusion")  # fmt: skip  # LKDN.config(), in order
DERIVED_FIELDS = ("arch", "upsampler")  # implied by the others; checked, not passed to the constructor


def upsampler_kind(fused: bool) -> str:
    """The upsampler of a form: one 3x3 conv (fused), or the training form's three branches."""
    return "conv3x3" if fused else "rep3"


def conv_radius(conv: nn.Conv2d) -> int:
    """How many pixels on each side of an output pixel a (square, odd) conv reads."""
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2


class BSConvWeights(NamedTuple):
    """A blueprint-separable step as weights: dw(pw(x)) + bias, plus x when `shortcut`. What every refine block
    of a distillation step is, in its fused form: the fast path and the native kernels' packing read this."""

    pw: Tensor  # (out, in, 1, 1)
    dw: Tensor  # (out, 1, 3, 3)
    bias: Tensor  # (out,)
    shortcut: bool


class BSConv(nn.Module):
    """Blueprint-separable conv: 1x1 pointwise (no bias), then 3x3 depthwise (bias)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.dw = nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(x))

    def bsconv_weights(self) -> BSConvWeights:
        return BSConvWeights(self.pw.weight, self.dw.weight, self.dw.bias, False)


class BSConvShortcut(nn.Module):
    """Ablation: BSConv with an identity shortcut around both convs (not fusable into one BSConv). Its convs sit
    under `body.`, so that its state-dict keys differ from a plain BSConv's: a file of one never loads as the
    other (their outputs differ)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = BSConv(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x

    def bsconv_weights(self) -> BSConvWeights:
        return self.body.bsconv_weights()._replace(shortcut=True)


class RBSB(nn.Module):
    """Re-parameterizable blueprint shallow block.

    Y = pw(X) + X; out = dw(Y) + Y + rep1x1(Y). Every branch is linear, so the block equals one BSConv whose
    pointwise weight gains the identity and whose depthwise centre tap gains 1 + rep1x1.
    """

    def __init__(self, channels: int, online_fusion: bool = True) -> None:
        super().__init__()
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.rep1x1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.online_fusion = online_fusion

    def fused_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """(pointwise weight, depthwise weight, depthwise bias) of the equivalent BSConv; differentiable."""
        channels = self.pw.weight.shape[0]
        eye = torch.eye(channels, dtype=self.pw.weight.dtype, device=self.pw.weight.device)
        pw = self.pw.weight + eye[:, :, None, None]
        dw = self.dw.weight + F.pad(self.rep1x1.weight + 1.0, (1, 1, 1, 1))
        return pw, dw, self.dw.bias + self.rep1x1.bias

    def bsconv_weights(self) -> BSConvWeights:
        return BSConvWeights(*self.fused_params(), False)

    @classmethod
    @torch.no_grad()
    def from_bsconv(cls, fused: BSConv, online_fusion: bool = True) -> RBSB:
        """An RBSB computing exactly what `fused` computes (the inverse of fusing): the identities taken back
        out of the weights, the 1x1 depthwise branch zero. A training-form network can so start from fused
        weights."""
        channels = fused.pw.weight.shape[0]
        block = cls(channels, online_fusion).to(fused.pw.weight)
        block.pw.weight.copy_(fused.pw.weight - torch.eye(channels).to(fused.pw.weight)[:, :, None, None])
        block.dw.weight.copy_(fused.dw.weight)
        block.dw.weight[:, :, 1, 1] -= 1.0
        block.dw.bias.copy_(fused.dw.bias)
        block.rep1x1.weight.zero_()
        block.rep1x1.bias.zero_()
        return block

    def forward(self, x: Tensor) -> Tensor:
        if self.online_fusion:
            pw, dw, bias = self.fused_params()
            return F.conv2d(F.conv2d(x, pw), dw, bias, padding=1, groups=dw.shape[0])
        y = self.pw(x) + x
        return self.dw(y) + y + self.rep1x1(y)

    @torch.no_grad()
    def fused_module(self) -> BSConv:
        channels = self.pw.weight.shape[0]
        fused = BSConv(channels, channels).to(self.pw.weight)
        pw, dw, bias = self.fused_params()
        fused.pw.weight.copy_(pw)
        fused.dw.weight.copy_(dw)
        fused.dw.bias.copy_(bias)
        return fused


class RepUpsampler(nn.Module):
    """Training-form upsampler: three branches (1x1, 3x3, 1x1 -> 3x3) summed, then pixel shuffle.

    The 1x1 output is padded with its own bias values (not zeros), which makes the 1x1 -> 3x3 chain equal to
    one 3x3 conv on a zero-padded input; so all three branches fuse into a single 3x3 conv.
    """

    def __init__(self, channels: int, out_ch: int, scale: int, online_fusion: bool = True) -> None:
        super().__init__()
        out = out_ch * scale * scale
        self.conv1 = nn.Conv2d(channels, out, 1)
        self.conv3 = nn.Conv2d(channels, out, 3, padding=1)
        self.conv1x1 = nn.Conv2d(channels, 2 * channels, 1)
        self.conv3x3 = nn.Conv2d(2 * channels, out, 3)
        self.scale = scale
        self.online_fusion = online_fusion

    def fused_params(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the single equivalent 3x3 conv; differentiable."""
        chain = torch.einsum("omhw,mi->oihw", self.conv3x3.weight, self.conv1x1.weight[:, :, 0, 0])
        weight = self.conv3.weight + F.pad(self.conv1.weight, (1, 1, 1, 1)) + chain
        chain_bias = torch.einsum("omhw,m->o", self.conv3x3.weight, self.conv1x1.bias)
        bias = self.conv1.bias + self.conv3.bias + self.conv3x3.bias + chain_bias
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        if self.online_fusion:
            weight, bias = self.fused_params()
            return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), self.scale)
        mid = self.conv1x1(x)
        border = self.conv1x1.bias.view(1, -1, 1, 1)
        mid = F.pad(mid - border, (1, 1, 1, 1)) + border
        y = self.conv1(x) + self.conv3(x) + self.conv3x3(mid)
        return F.pixel_shuffle(y, self.scale)

    @torch.no_grad()
    def fused_module(self) -> nn.Sequential:
        weight, bias = self.fused_params()
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return nn.Sequential(conv, nn.PixelShuffle(self.scale))

    @classmethod
    @torch.no_grad()
    def from_fused(cls, fused: nn.Sequential, online_fusion: bool = True) -> RepUpsampler:
        """A RepUpsampler computing exactly what the fused upsampler computes: its 3x3 conv as `conv3`, the
        other branches zero."""
        conv, shuffle = fused[0], fused[1]
        out = conv.weight.shape[0]
        up = cls(
            conv.weight.shape[1], out // shuffle.upscale_factor**2, shuffle.upscale_factor, online_fusion
        )
        up = up.to(conv.weight)
        for branch in (up.conv1, up.conv1x1, up.conv3x3):
            branch.weight.zero_()
            branch.bias.zero_()
        up.conv3.weight.copy_(conv.weight)
        up.conv3.bias.copy_(conv.bias)
        return up


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension at every pixel of an NCHW tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LKA(nn.Module):
    """Large kernel attention: 1x1 -> 5x5 depthwise -> 5x5 depthwise dilated 3 (a 17x17 field); output U * A."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.depthwise = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.depthwise_dilated = nn.Conv2d(channels, channels, 5, padding=6, dilation=3, groups=channels)

    def forward(self, u: Tensor) -> Tensor:
        return u * self.depthwise_dilated(self.depthwise(self.pointwise(u)))

    def receptive_radius(self) -> int:
        return conv_radius(self.depthwise) + conv_radius(self.depthwise_dilated)


class ESA(nn.Module):
    """Ablation: enhanced spatial attention (RFANet / RFDN). Its strided 3x3 and 7x7 max-pool need inputs of at
    least MIN_SIZE pixels on a side."""

    MIN_SIZE = 15  # (15 - 3) // 2 + 1 = 7 pixels after the stride-2 conv: one 7x7 pooling window

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(1, channels // 4)
        self.conv1 = nn.Conv2d(channels, reduced, 1)
        self.conv_f = nn.Conv2d(reduced, reduced, 1)
        self.conv2 = nn.Conv2d(reduced, reduced, 3, stride=2)
        self.conv_max = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv3 = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv3_ = nn.Conv2d(reduced, reduced, 3, padding=1)
        self.conv4 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.conv1(x)
        pooled = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        y = F.relu(self.conv_max(pooled))
        y = self.conv3_(F.relu(self.conv3(y)))
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(y + self.conv_f(reduced)))


class CCA(nn.Module):
    """Ablation: contrast-aware channel attention (IMDN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(1, channels // 16)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class ESACCA(nn.Module):
    """Ablation: the attention LKA replaced (ESA, then CCA)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.esa = ESA(channels)
        self.cca = CCA(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.cca(self.esa(x))


def _attention(kind: Attention, channels: int) -> nn.Module:
    if kind == "lka":
        return LKA(channels)
    if kind == "esa_cca":
        return ESACCA(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"attention must be 'lka', 'esa_cca' or 'none', not {kind!r}")


def _shallow_block(kind: ShallowBlock, channels: int, fused: bool, online_fusion: bool) -> nn.Module:
    if kind == "rbsb":
        return BSConv(channels, channels) if fused else RBSB(channels, online_fusion)
    if kind == "bsconv_shortcut":
        return BSConvShortcut(channels, channels)
    if kind == "bsconv":
        return BSConv(channels, channels)
    raise ValueError(f"shallow block must be 'rbsb', 'bsconv_shortcut' or 'bsconv', not {kind!r}")


class LKDB(nn.Module):
    """Large kernel distillation block: three distillation steps, BSConv refinement, LKA, pixel norm, residual."""

    def __init__(
        self,
        channels: int,
        attention: Attention = "lka",
        shallow: ShallowBlock = "rbsb",
        fused: bool = False,
        online_fusion: bool = True,
    ) -> None:
        super().__init__()
        distilled = channels // 2
        self.c1_d = nn.Conv2d(channels, distilled, 1)
        self.c1_r = _shallow_block(shallow, channels, fused, online_fusion)
        self.c2_d = nn.Conv2d(channels, distilled, 1)
        self.c2_r = _shallow_block(shallow, channels, fused, online_fusion)
        self.c3_d = nn.Conv2d(channels, distilled, 1)
        self.c3_r = _shallow_block(shallow, channels, fused, online_fusion)
        self.c4 = BSConv(channels, distilled)
        self.act = nn.GELU()
        self.c5 = nn.Conv2d(4 * distilled, channels, 1)
        self.atten = _attention(attention, channels)
        self.c6 = nn.Conv2d(channels, channels, 1)
        self.pixel_norm = ChannelLayerNorm(channels)

    def steps(self) -> tuple[tuple[nn.Conv2d, nn.Module], ...]:
        """The three distillation steps, each (distillation 1x1 conv, refine block) of one input."""
        return ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r))

    def forward(self, x: Tensor) -> Tensor:
        """The block's dataflow, written once. Training's shared-input block and the fast path's NHWC block
        (train/conv_backward.py, utils/runtime/fast.py) are subclasses that change how a step is computed,
        never which steps there are; the native kernels' packing reads `steps()` and `bsconv_weights()`."""
        distilled, h = [], x
        for distill, refine in self.steps():
            d, h = self.distill_step(h, distill, refine)
            distilled.append(d)
        distilled.append(self.last_step(h))
        return self.finish(self.attend(self.fuse_distilled(distilled)), x)

    def distill_step(self, h: Tensor, distill: nn.Conv2d, refine: nn.Module) -> tuple[Tensor, Tensor]:
        """(distilled features, GELU of the refined features); the distilled ones get GELU in fuse_distilled."""
        return distill(h), self.act(refine(h))

    def last_step(self, h: Tensor) -> Tensor:
        """c4 on the last refined features: the fourth distilled part (GELU in fuse_distilled)."""
        return self.c4(h)

    def fuse_distilled(self, distilled: list[Tensor]) -> Tensor:
        """c5 over the distilled features. GELU(concat) == concat(GELU): one activation instead of four."""
        return self.c5(self.act(torch.cat(distilled, dim=1)))

    def attend(self, u: Tensor) -> Tensor:
        return self.atten(u)

    def finish(self, attended: Tensor, x: Tensor) -> Tensor:
        """c6, the per-pixel LayerNorm and the block's residual."""
        return self.pixel_norm(self.c6(attended)) + x

    def receptive_radius(self) -> int | None:
        """The block's LR radius along its longest path (three refine steps, c4, attention); None when the
        attention pools globally (ESA + CCA: every output depends on the whole image). 1x1 convs, GELU and
        the per-pixel LayerNorm do not widen it."""
        if isinstance(self.atten, ESACCA):
            return None
        attention = self.atten.receptive_radius() if isinstance(self.atten, LKA) else 0
        refine = [getattr(self, name).bsconv_weights().dw for name in ("c1_r", "c2_r", "c3_r", "c4")]
        return sum((w.shape[-1] - 1) // 2 for w in refine) + attention


class LKDN(nn.Module):
    """Large Kernel Distillation Network. Input RGB in [0, 1], (B, 3, H, W); output (B, 3, sH, sW), unclamped.

    `fused=False` builds the training form (RBSB shallow blocks, three-branch upsampler); `fused=True` the
    inference form of the same network. `online_fusion` makes the training form compute its fused weights on
    every step and run one conv per block (same outputs and gradients, much less work).
    """

    def __init__(
        self,
        num_feat: int = 42,
        num_blocks: int = 5,
        scale: int = 4,
        in_ch: int = 3,
        out_ch: int = 3,
        attention: Attention = "lka",
        shallow: ShallowBlock = "rbsb",
        fused: bool = False,
        online_fusion: bool = True,
    ) -> None:
        super().__init__()
        self.num_feat, self.num_blocks, self.scale = num_feat, num_blocks, scale
        self.in_ch, self.out_ch = in_ch, out_ch
        self.attention, self.shallow, self.fused = attention, shallow, fused
        self.online_fusion = online_fusion
        self.fea_conv = BSConv(in_ch * 4, num_feat)
        for i in range(1, num_blocks + 1):
            self.add_module(f"B{i}", LKDB(num_feat, attention, shallow, fused, online_fusion))
        self.c1 = nn.Conv2d(num_feat * num_blocks, num_feat, 1)
        self.act = nn.GELU()
        self.c2 = BSConv(num_feat, num_feat)
        if fused:
            self.upsampler: nn.Module = nn.Sequential(
                nn.Conv2d(num_feat, out_ch * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
            )
        else:
            self.upsampler = RepUpsampler(num_feat, out_ch, scale, online_fusion)

    @property
    def blocks(self) -> list[LKDB]:
        return [getattr(self, f"B{i}") for i in range(1, self.num_blocks + 1)]

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(self.fea_conv(x.repeat(1, 4, 1, 1)))

    def reconstruct(self, features: Tensor) -> Tensor:
        """Everything after the shallow features: the blocks, c1 over all their outputs, c2, the long
        residual and the upsampler."""
        outputs, h = [], features
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        trunk = self.c2(self.act(self.c1(torch.cat(outputs, dim=1))))
        return self.upsampler(trunk + features)

    @torch.no_grad()
    def folded_first_conv(self) -> nn.Conv2d:
        """fea_conv applied to the input repeated 4x, as one 3x3 conv of the input: the repetition folds into
        the bias-free pointwise weights, and those into the depthwise taps (a zero-padded pointwise output is
        the pointwise conv of a zero-padded input)."""
        c, in_ch = self.num_feat, self.in_ch
        pointwise = self.fea_conv.pw.weight[:, :, 0, 0].reshape(c, 4, in_ch).sum(1)
        conv = nn.Conv2d(in_ch, c, 3, padding=1).to(self.fea_conv.dw.weight)
        conv.weight.copy_(self.fea_conv.dw.weight * pointwise[:, :, None, None])
        conv.bias.copy_(self.fea_conv.dw.bias)
        return conv

    def config(self) -> dict:
        """The network's identity: every constructor argument, the form included, plus the upsampler kind it
        implies. Every file the project writes carries it (utils.files.checkpoint); `from_config` rebuilds the
        network from it."""
        return {
            "arch": ARCH,
            "num_feat": self.num_feat,
            "num_blocks": self.num_blocks,
            "scale": self.scale,
            "in_ch": self.in_ch,
            "out_ch": self.out_ch,
            "attention": self.attention,
            "shallow": self.shallow,
            "fused": self.fused,
            "upsampler": upsampler_kind(self.fused),
            "online_fusion": self.online_fusion,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> LKDN:
        """The network `config` describes (LKDN.config()'s fields; `arch` and `upsampler` are checked, the rest
        built; an `upsampler` of None is left to the form)."""
        unknown = set(config) - set(CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        if config.get("arch", ARCH) != ARCH:
            raise ValueError(f"arch is {config['arch']!r}, not {ARCH!r}")
        args = {key: config[key] for key in CONFIG_FIELDS if key in config and key not in DERIVED_FIELDS}
        model = cls(**args)
        if config.get("upsampler") not in (None, upsampler_kind(model.fused)):
            raise ValueError(
                f"upsampler {config['upsampler']!r} does not fit the {'fused' if model.fused else 'training'} form"
            )
        return model

    def min_input_size(self) -> int:
        """The smallest LR side the network takes: ESA's strided conv and pooling need 15 pixels."""
        return ESA.MIN_SIZE if self.attention == "esa_cca" else 1

    def receptive_radius(self) -> int | None:
        """The LR receptive-field radius: an output pixel depends on the input within this many LR pixels
        (fea_conv's 3x3, the blocks, c2's 3x3, the upsampler's 3x3: 63 for LKDN-S, 99 for LKDN); None for the
        ESA + CCA ablation, whose global pooling reads the whole image."""
        blocks = [block.receptive_radius() for block in self.blocks]
        if None in blocks:
            return None
        up = self.upsampler[0] if isinstance(self.upsampler, nn.Sequential) else self.upsampler.conv3
        return conv_radius(self.fea_conv.dw) + sum(blocks) + conv_radius(self.c2.dw) + conv_radius(up)

    def set_online_fusion(self, enabled: bool) -> LKDN:
        self.online_fusion = enabled
        for module in self.modules():
            if hasattr(module, "online_fusion"):
                module.online_fusion = enabled
        return self


def config_from_state_dict(state: Mapping[str, Tensor]) -> dict:
    """The identity (LKDN.config()) of the network a state dict was saved from, read off its keys and shapes.

    Exact: every form and variant has keys of its own (the training form's RBSB: `rep1x1`; the shortcut
    ablation: `body.`; the fused form: `upsampler.0`; the attentions: `atten.pointwise` or `atten.esa`), except
    where two variants compute the same function: a fused RBSB and the plain BSConv ablation in fused form, read
    as `rbsb`. `online_fusion` does not change what a network computes and is not in the keys: True. Raises
    KeyError naming a key that every LKDN state dict has when `state` has not got it, ValueError for shapes no
    LKDN has."""
    for key in ("fea_conv.pw.weight", "c1.weight", "B1.c5.weight"):
        if key not in state:
            raise KeyError(key)
    num_feat, in_ch4 = state["fea_conv.pw.weight"].shape[:2]
    if num_feat < 1 or in_ch4 < 4 or in_ch4 % 4:
        raise ValueError(f"fea_conv.pw.weight of shape {tuple(state['fea_conv.pw.weight'].shape)}")
    fused = "upsampler.0.weight" in state
    up = state["upsampler.0.weight" if fused else "upsampler.conv3.weight"]
    in_ch = in_ch4 // 4
    out_ch = in_ch  # the network's output has its input's channels in every released configuration
    scale = round((up.shape[0] / out_ch) ** 0.5)
    if scale < 1 or scale * scale * out_ch != up.shape[0]:
        raise ValueError(f"an upsampler of {up.shape[0]} outputs for {out_ch} channels")
    if "B1.atten.pointwise.weight" in state:
        attention = "lka"
    elif "B1.atten.esa.conv1.weight" in state:
        attention = "esa_cca"
    else:
        attention = "none"
    if "B1.c1_r.rep1x1.weight" in state:
        shallow = "rbsb"
    elif "B1.c1_r.body.pw.weight" in state:
        shallow = "bsconv_shortcut"
    else:
        shallow = "rbsb" if fused else "bsconv"
    num_blocks = len({int(m.group(1)) for key in state if (m := re.match(r"B(\d+)\.", key))})
    return {
        "arch": ARCH, "num_feat": int(num_feat), "num_blocks": num_blocks, "scale": scale, "in_ch": int(in_ch),
        "out_ch": int(out_ch), "attention": attention, "shallow": shallow, "fused": fused,
        "upsampler": upsampler_kind(fused), "online_fusion": True,
    }  # fmt: skip


def same_network(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    """The fields in which two identities describe networks of different function or different weights (the
    form aside, which fusing converts; `online_fusion` aside, which changes how, not what, a network computes).
    RBSB and the plain BSConv ablation are the same network once one side is fused: its fused form is the
    other's, or fuses from it."""
    differ = []
    for field in ("num_feat", "num_blocks", "scale", "in_ch", "out_ch", "attention", "shallow"):
        if a.get(field) == b.get(field):
            continue
        plain = {"rbsb", "bsconv"}
        if (
            field == "shallow"
            and (a.get("fused") or b.get("fused"))
            and {a.get(field), b.get(field)} <= plain
        ):
            continue
        differ.append(field)
    return differ


def replace_modules(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace, in place, every submodule for which `replacement` returns a module (children of a replaced
    module are visited too, under the same names). Returns how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        new = replacement(module)
        if new is None or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced += 1
    return replaced


def fuse_model(model: LKDN) -> LKDN:
    """The inference form of a training-form model: every multi-branch block replaced by its fused conv.

    Returns a new model (the input is left as it is); a model that is already fused is returned as a copy.
    """
    fused = copy.deepcopy(model)
    replace_modules(fused, lambda m: m.fused_module() if hasattr(m, "fused_module") else None)
    fused.fused = True
    return fused


def unfuse_model(model: LKDN, online_fusion: bool = True) -> LKDN:
    """The training form of a fused `model`, computing exactly what it computes: each fused RBSB becomes an
    RBSB with zero 1x1 depthwise branch (`RBSB.from_bsconv`), the upsampler a three-branch one whose only
    non-zero branch is the fused 3x3 conv. Fine-tuning can so start from fused weights. A training-form model
    is returned as a copy."""
    training = copy.deepcopy(model)
    if not model.fused:
        return training
    if model.shallow == "rbsb":
        for block in training.blocks:
            for name in ("c1_r", "c2_r", "c3_r"):
                setattr(block, name, RBSB.from_bsconv(getattr(block, name), online_fusion))
    training.upsampler = RepUpsampler.from_fused(training.upsampler, online_fusion)
    training.fused = False
    return training.set_online_fusion(online_fusion)


def lkdn_s(scale: int = 4, fused: bool = False, **kwargs) -> LKDN:
    """LKDN-S, the NTIRE 2023 challenge entry: 42 channels, 5 blocks."""
    return LKDN(num_feat=42, num_blocks=5, scale=scale, fused=fused, **kwargs)


def lkdn(scale: int = 4, fused: bool = False, **kwargs) -> LKDN:
    """LKDN, the CVPRW 2023 paper's model: 56 channels, 8 blocks."""
    return LKDN(num_feat=56, num_blocks=8, scale=scale, fused=fused, **kwargs)
