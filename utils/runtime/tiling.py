"""Seamless tiled inference: large images in pieces, with exactly the whole-image output.

Each core tile of `tile` x `tile` LR pixels is run with `overlap` pixels of real image context on every side
(fewer at the image border, where the whole-image pass zero-pads too) and only its core is kept. A pixel's
output depends on the input within the network's receptive-field radius, so with `overlap` >= that radius
every kept pixel sees exactly what it sees in the whole-image pass: no blending, no seams. The radius is the
network's own fact: `LKDN.receptive_radius()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
