"""torch.hub entry points: the fused LKDN-S with this repository's weights, and the paper's LKDN.

    model = torch.hub.load("path/to/this/repo", "lkdn_s", source="local")             # bundled x4 weights
    model = torch.hub.load("path/to/this/repo", "lkdn", source="local", weights="LKDN_x4.pth")
    model = torch.hub.load("path/to/this/repo", "from_checkpoint", source="local", weights="any_lkdn.pth")

Both return the inference (fused) form in eval mode, taking (B, 3, H, W) RGB in [0, 1] and returning
(B, 3, sH, sW) unclamped (clamp before saving). `weights` is any checkpoint the loader accepts (training or fused
form, a plain or BasicSR-style state dict); a training-form checkpoint is fused on loading, a fused one
unfused for `fused=False`. Given `weights`, the ablation variant is the one the file holds (declared in files
this repository writes, else read from the keys); its width, depth and scale must be the entry point's.
`from_checkpoint` loads any LKDN.

This file imports the repository's `models` and `utils` packages by those names: in a process that has already
imported other modules called `models` or `utils` (another hub repository's), load this one in a fresh process.
"""

from __future__ import annotations

import os
import pathlib as _pathlib

import models as _models
from utils import errors as _errors
from utils.files import checkpoint as _checkpoint

# Every public callable here is an entry point (torch.hub.list): imports stay private, under modules' names.
dependencies = ["torch"]  # what importing this file and building the models needs


def _bundled_path(name: str, pretrained: bool, scale: int) -> _pathlib.Path | None:
    if not pretrained:
        return None
    if name != "lkdn_s":
        raise _errors.UserError(
            f"{name}: this repository bundles no weights for it; pass weights=<path of a checkpoint>, e.g. the "
            "authors' LKDN_x4.pth"
        )
    if scale != 4:
        raise _errors.UserError(
            f"lkdn_s: the bundled checkpoint is x4, not x{scale}; pass weights=<x{scale} checkpoint>"
        )
    return _checkpoint.checkpoint_or_bundled(None, how_to_pass="weights=<path of a checkpoint>")


def _from_file(weights: str | os.PathLike, fused: bool) -> _models.LKDN:
    return _checkpoint.build_model_from_checkpoint(_pathlib.Path(weights), fused=fused).eval()


def _build(
    name: str, model: _models.LKDN, pretrained: bool, weights: str | os.PathLike | None
) -> _models.LKDN:
    if weights is not None:  # the file's network, its ablation variant included; width, depth, scale checked
        loaded = _from_file(weights, model.fused)
        held = (loaded.num_feat, loaded.num_blocks, loaded.scale)
        if held != (model.num_feat, model.num_blocks, model.scale):
            this, wanted = (_checkpoint.config_name(m.num_feat, m.num_blocks) for m in (loaded, model))
            raise _errors.UserError(
                f"{weights}: this is {this} x{loaded.scale}, not {wanted} x{model.scale}; load it with the "
                "entry point of its network, or with 'from_checkpoint'"
            )
        return loaded
    path = _bundled_path(name, pretrained, model.scale)
    if path is None:
        return model
    return _checkpoint.load_checkpoint(path, model).eval()


def lkdn_s(
    pretrained: bool = True, weights: str | os.PathLike | None = None, scale: int = 4, fused: bool = True
) -> _models.LKDN:
    """LKDN-S, the NTIRE 2023 Efficient SR entry (42 channels, 5 blocks).

    pretrained: load the bundled x4 checkpoint (model_zoo/); weights: load this checkpoint instead; neither:
    random initialization. fused=False builds the training form (for fine-tuning; takes training-form weights).
    """
    return _build("lkdn_s", _models.lkdn_s(scale=scale, fused=fused), pretrained, weights)


def lkdn(
    scale: int = 4, pretrained: bool = False, weights: str | os.PathLike | None = None, fused: bool = True
) -> _models.LKDN:
    """LKDN, the CVPRW 2023 paper's configuration (56 channels, 8 blocks), x2, x3 or x4.

    No weights are bundled for it: pass weights=<checkpoint path> (e.g. the authors' LKDN_x4.pth) for a trained
    model; without them the model is randomly initialized.
    """
    return _build("lkdn", _models.lkdn(scale=scale, fused=fused), pretrained, weights)


def from_checkpoint(weights: str | os.PathLike, fused: bool = True) -> _models.LKDN:
    """Any LKDN a checkpoint holds (any width, depth, scale and ablation variant): the network its file declares,
    or, for files that declare none, the one its keys identify exactly."""
    return _from_file(weights, fused)
