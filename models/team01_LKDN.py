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
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attention = Literal["lka", "esa_cca", "none"]
ShallowBlock = Literal["rbsb", "bsconv_shortcut", "bsconv"]
ATTENTIONS: tuple[str, ...] = get_args(Attention)
SHALLOW_BLOCKS: tuple[str, ...] = get_args(ShallowBlock)


def conv_radius(conv: nn.Conv2d) -> int:
    """How many pixels on each side of an output pixel a (square, odd) conv reads."""
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2


class BSConv(nn.Module):
    """Blueprint-separable conv: 1x1 pointwise (no bias), then 3x3 depthwise (bias)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.dw = nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(x))


class BSConvShortcut(BSConv):
    """Ablation: BSConv with an identity shortcut around both convs (not fusable into one BSConv)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.dw(self.pw(x)) + x


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
    """Ablation: enhanced spatial attention (RFANet / RFDN)."""

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

    def forward(self, x: Tensor) -> Tensor:
        r1 = self.act(self.c1_r(x))
        r2 = self.act(self.c2_r(r1))
        r3 = self.act(self.c3_r(r2))
        return self.merge([self.c1_d(x), self.c2_d(r1), self.c3_d(r2), self.c4(r3)], x)

    def receptive_radius(self) -> int | None:
        """The block's LR radius along its longest path (three refine steps, c4, attention); None when the
        attention pools globally (ESA + CCA: every output depends on the whole image). 1x1 convs, GELU and
        the per-pixel LayerNorm do not widen it."""
        if isinstance(self.atten, ESACCA):
            return None
        attention = self.atten.receptive_radius() if isinstance(self.atten, LKA) else 0
        return sum(conv_radius(getattr(self, name).dw) for name in ("c1_r", "c2_r", "c3_r", "c4")) + attention

    def merge(self, distilled: list[Tensor], x: Tensor) -> Tensor:
        """The block after its distillation steps: c5 over the distilled features, attention, c6, pixel norm,
        and the residual `x`."""
        # GELU(concat) == concat(GELU): one activation over the distilled features instead of four on slices
        activated = self.act(torch.cat(distilled, dim=1))
        return self.pixel_norm(self.c6(self.atten(self.c5(activated)))) + x


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
        """Constructor arguments that rebuild this network (fused or not)."""
        return {
            "num_feat": self.num_feat,
            "num_blocks": self.num_blocks,
            "scale": self.scale,
            "in_ch": self.in_ch,
            "out_ch": self.out_ch,
            "attention": self.attention,
            "shallow": self.shallow,
        }

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
        for module in self.modules():
            if hasattr(module, "online_fusion"):
                module.online_fusion = enabled
        return self


def config_from_state_dict(state: Mapping[str, Tensor]) -> dict:
    """The constructor arguments of the LKDN a state dict was saved from, and whether it is the fused form:
    {num_feat, num_blocks, scale, in_ch, out_ch, attention, fused}. Raises KeyError naming a key that every
    LKDN state dict has when `state` has not got it.

    The shallow block is not stored in the keys (RBSB's fused form and the BSConv ablations share them): an
    RBSB (training-form keys) or a fused RBSB is assumed."""
    for key in ("fea_conv.pw.weight", "c1.weight", "B1.c5.weight"):
        if key not in state:
            raise KeyError(key)
    num_feat, in_ch4 = state["fea_conv.pw.weight"].shape[:2]
    if num_feat < 1 or in_ch4 < 4:
        raise ValueError(f"fea_conv.pw.weight of shape {tuple(state['fea_conv.pw.weight'].shape)}")
    fused = "upsampler.0.weight" in state
    up = state["upsampler.0.weight" if fused else "upsampler.conv3.weight"]
    in_ch = in_ch4 // 4
    out_ch = in_ch  # the network's output has its input's channels in every released configuration
    scale = round((up.shape[0] / out_ch) ** 0.5)
    if "B1.atten.pointwise.weight" in state:
        attention = "lka"
    elif "B1.atten.esa.conv1.weight" in state:
        attention = "esa_cca"
    else:
        attention = "none"
    num_blocks = len({int(m.group(1)) for key in state if (m := re.match(r"B(\d+)\.", key))})
    return {
        "num_feat": int(num_feat), "num_blocks": num_blocks, "scale": scale, "in_ch": int(in_ch),
        "out_ch": int(out_ch), "attention": attention, "fused": fused,
    }  # fmt: skip


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


def lkdn_s(scale: int = 4, fused: bool = False, **kwargs) -> LKDN:
    """LKDN-S, the NTIRE 2023 challenge entry: 42 channels, 5 blocks."""
    return LKDN(num_feat=42, num_blocks=5, scale=scale, fused=fused, **kwargs)


def lkdn(scale: int = 4, fused: bool = False, **kwargs) -> LKDN:
    """LKDN, the CVPRW 2023 paper's model: 56 channels, 8 blocks."""
    return LKDN(num_feat=56, num_blocks=8, scale=scale, fused=fused, **kwargs)
