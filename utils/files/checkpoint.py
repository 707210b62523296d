"""The one checkpoint loader: every entry point reads weights through `load_checkpoint`.

Accepts a plain state dict, a BasicSR-style dict (`params_ema` preferred over `params`) and the `module.`
prefix that distributed training leaves, in a `.pth` (read with `weights_only=True`: a .pth is untrusted
input) or a `.safetensors` file (no pickle at all: what ComfyUI, chaiNNer and the Hugging Face tools read);
fuses a training-form checkpoint into a fused model; and turns every mismatch into one `UserError` that names
the checkpoint, the first offending key and the configuration that would fit. `save_weights` writes either
format, atomically.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

import models
from models import LKDN, config_from_state_dict, fuse_model
from utils.errors import UserError
from utils.files.atomic_write import save_atomic, write_bytes_atomic

PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")
NAMED_CONFIGS = {(42, 5): "LKDN-S", (56, 8): "LKDN"}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The network weights stored in `path`, whatever the wrapping; raises UserError if it is no checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the checkpoint file in it (.pth or .safetensors)")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the path of a .pth file (--model_path)")
    if path.suffix == ".safetensors":
        try:
            obj = safetensors.torch.load_file(path)
        except Exception:  # SafetensorError, or an OSError of a file that vanished: both mean "unreadable"
            raise UserError(
                f"{path}: not a readable safetensors file (truncated or corrupt); download or export it again"
            ) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # the unpickler of an untrusted file can fail in many ways; all mean "unreadable"
            raise UserError(
                f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or not a .pth file); "
                "download or export it again"
            ) from None
    if isinstance(obj, dict):
        for key in PREFERRED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds no state dict of tensors; pass an LKDN checkpoint (.pth)")
    for key, value in obj.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(
                f"{path}: tensor {key!r} holds NaN or Inf values: these weights would give a black or "
                "garbage image; use a checkpoint saved before training diverged"
            )
    return {key.removeprefix("module."): value for key, value in obj.items()}


def save_weights(state: dict[str, Tensor], path: str | Path) -> Path:
    """Write a plain state dict atomically: `.safetensors` by its suffix, else a `.pth` (torch.save)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
        return write_bytes_atomic(path, safetensors.torch.save(tensors))
    return save_atomic(state, path)


def config_name(num_feat: int, num_blocks: int) -> str:
    return NAMED_CONFIGS.get(
        (num_feat, num_blocks), f"an LKDN with {num_feat} channels and {num_blocks} blocks"
    )


def _mismatch(path: Path, state: dict[str, Tensor], model: LKDN, detail: str) -> UserError:
    wanted = config_name(model.num_feat, model.num_blocks)
    try:
        found = config_from_state_dict(state)
    except (KeyError, IndexError, ValueError):
        return UserError(f"{path}: not an LKDN checkpoint ({detail}); pass a checkpoint of {wanted}")
    name = config_name(found["num_feat"], found["num_blocks"])
    form = "fused" if found["fused"] else "training"
    return UserError(
        f"{path}: {detail}; the checkpoint has {found['num_feat']} channels and {found['num_blocks']} blocks, "
        f"x{found['scale']}, {form} form: this is {name}, not {wanted} x{model.scale}; "
        "build the model that fits (or use build_model_from_checkpoint)"
    )


def _first_mismatch(state: dict[str, Tensor], model: LKDN) -> str | None:
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"key {key!r} (shape {tuple(value.shape)}) is missing"
        if state[key].shape != value.shape:
            return f"key {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(value.shape)}"
    for key in state:
        if key not in expected:
            return f"unexpected key {key!r} (shape {tuple(state[key].shape)})"
    return None


def load_checkpoint(path: str | Path, model: LKDN) -> LKDN:
    """Load `path` into `model` in place (strict) and return it.

    A training-form checkpoint loads into a fused model by fusing it first; a fused checkpoint cannot be
    un-fused into a training-form model.
    """
    return load_state(model, read_state_dict(path), Path(path))


def load_state(model: LKDN, state: dict[str, Tensor], path: Path) -> LKDN:
    """`load_checkpoint` for a state dict already read from `path` (named in errors)."""
    if model.fused and "upsampler.0.weight" not in state and "upsampler.conv3.weight" in state:
        training = LKDN(**model.config(), fused=False)
        problem = _first_mismatch(state, training)
        if problem:
            raise _mismatch(path, state, model, problem)
        training.load_state_dict(state)
        state = fuse_model(training).state_dict()
    elif not model.fused and "upsampler.0.weight" in state:
        raise UserError(
            f"{path}: a fused (inference-form) checkpoint cannot be loaded into a training-form model; "
            "load it with fused=True, or train from a training-form checkpoint"
        )
    problem = _first_mismatch(state, model)
    if problem:
        raise _mismatch(path, state, model, problem)
    model.load_state_dict(state)
    return model


def build_model_from_checkpoint(path: str | Path, fused: bool = True) -> LKDN:
    """An LKDN of the configuration stored in `path`, with its weights (fused unless asked otherwise)."""
    path = Path(path)
    state = read_state_dict(path)
    try:
        found = config_from_state_dict(state)
    except KeyError as err:
        raise UserError(f"{path}: not an LKDN checkpoint (no {err}); pass an LKDN .pth") from None
    except (IndexError, ValueError):
        raise UserError(
            f"{path}: not an LKDN checkpoint (tensors of impossible shapes); pass an LKDN .pth"
        ) from None
    found.pop("fused")
    return load_state(LKDN(**found, fused=fused), state, path)


def checkpoint_or_bundled(given: str | Path | None, how_to_pass: str = "--model_path <file.pth>") -> Path:
    """`given`, or the bundled model_zoo/ checkpoint; a missing bundled one is a UserError saying how to pass one."""
    if given is not None:
        return Path(given)
    bundled = models.BUNDLED_CHECKPOINT  # looked up at call time: tests point it elsewhere
    if not bundled.is_file():
        raise UserError(
            f"{bundled}: the bundled checkpoint is missing; pass a checkpoint with {how_to_pass}, "
            "e.g. the authors' LKDN-S_x4.pth (python -m utils.files.pretrained LKDN-S_x4)"
        )
    return bundled
