"""Seamless tiled inference: large images in pieces, with exactly the whole-image output.

Each core tile of `tile` x `tile` LR pixels is run with `overlap` pixels of real image context on every side
(fewer at the image border, where the whole-image pass zero-pads too) and only its core is kept. A pixel's
output depends on the input within the network's receptive-field radius, so with `overlap` >= that radius
every kept pixel sees exactly what it sees in the whole-image pass: no blending, no seams.

The LR receptive-field radius of a (fused or training-form) LKDN with LKA attention, along its longest path:
fea_conv.dw 3x3 (1), then per block c1_r, c2_r, c3_r, c4 3x3 depthwise (4 x 1) and LKA's 5x5 depthwise (2) and
5x5 depthwise with dilation 3 (6), i.e. 12 per block; then c2.dw 3x3 (1) and the upsampler's 3x3 (1). LKDN-S
(5 blocks): 1 + 5 * 12 + 1 + 1 = 63 LR pixels (a 127 x 127 field); LKDN (8 blocks): 99. 1x1 convs, GELU and the
per-pixel LayerNorm do not widen it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _conv_radius(conv: nn.Conv2d) -> int:
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2


def receptive_radius(model: nn.Module) -> int | None:
    """LR receptive-field radius of an LKDN (see the module docstring), or None when an attention with global
    pooling (the ESA + CCA ablation) makes every output depend on the whole image."""
    if getattr(model, "attention", None) == "esa_cca":
        return None
    radius = _conv_radius(model.fea_conv.dw) + _conv_radius(model.c2.dw)
    up = model.upsampler
    up_conv = (
        up[0] if isinstance(up, nn.Sequential) else up.conv3
    )  # fused form, or the training form's 3x3 branch
    radius += _conv_radius(up_conv)
    for block in model.blocks:
        radius += sum(_conv_radius(getattr(block, name).dw) for name in ("c1_r", "c2_r", "c3_r", "c4"))
        if model.attention == "lka":
            radius += _conv_radius(block.atten.depthwise) + _conv_radius(block.atten.depthwise_dilated)
    return radius


def tiled_forward(
    forward: Callable[[Tensor], Tensor], lr: Tensor, tile: int, overlap: int, scale: int
) -> Tensor:
    """`forward(lr)` computed tile by tile (LR core tiles of `tile` pixels, `overlap` pixels of context)."""
    if tile < 1 or overlap < 0:
        raise ValueError(
            f"tiled_forward: need tile >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}"
        )
    height, width = lr.shape[-2:]
    out: Tensor | None = None
    for top in range(0, height, tile):
        bottom = min(top + tile, height)
        win_top, win_bottom = max(top - overlap, 0), min(bottom + overlap, height)
        for left in range(0, width, tile):
            right = min(left + tile, width)
            win_left, win_right = max(left - overlap, 0), min(right + overlap, width)
            sr = forward(lr[..., win_top:win_bottom, win_left:win_right])
            if out is None:
                out = torch.empty(
                    (*lr.shape[:-3], sr.shape[-3], height * scale, width * scale),
                    dtype=sr.dtype,
                    device=sr.device,
                )
            dy, dx = (top - win_top) * scale, (left - win_left) * scale
            out[..., top * scale : bottom * scale, left * scale : right * scale] = sr[
                ..., dy : dy + (bottom - top) * scale, dx : dx + (right - left) * scale
            ]
    return out
