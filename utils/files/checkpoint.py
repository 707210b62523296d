"""The one checkpoint loader and writer: every entry point reads and writes weights here.

A weights file says which network it holds. Every file this repository writes carries the network's identity
(`LKDN.config()`: form, width, depth, scale, attention, shallow block, upsampler, online fusion) beside the
tensors: a top-level `lkdn_config` entry in a `.pth` (next to `params` / `params_ema`, BasicSR's keys), a
metadata entry of the same name in a `.safetensors`. The loader reads the declaration first and checks it
against the tensors; a file without one (the authors' releases, other tools' files) is identified from its
keys, which is exact (`models.config_from_state_dict`). A file whose network is not the one asked for is
refused in one line, never loaded as another network.

Accepted wrappings: a plain state dict, BasicSR's `{'params', 'params_ema'}` (`params_ema` preferred) and the
`module.` prefix distributed training leaves. A `.pth` is read with `weights_only=True` (it is untrusted input);
a `.safetensors` holds no pickle at all. Tensors must be floating point and finite: anything else would run to
a garbage image. A training-form checkpoint loads into a fused model by fusing; a fused one into a training-form
model by the exact inverse (`models.unfuse_model`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

import models
from models import CONFIG_FIELDS, LKDN, config_from_state_dict, fuse_model, same_network, unfuse_model
from utils.errors import UserError
from utils.files.atomic_write import save_atomic, write_bytes_atomic

CONFIG_KEY = (
    "lkdn_config"  # where a file declares its network (.pth: top-level entry; .safetensors: metadata)
)
PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")
NAMED_CONFIGS = {(42, 5): "LKDN-S", (56, 8): "LKDN"}


@dataclass(frozen=True)
class Checkpoint:
    """What a weights file holds: the network's tensors (EMA ones preferred) and the identity it declares
    (None for files that declare none, such as the authors' releases)."""

    path: Path
    state: dict[str, Tensor]
    config: dict | None
    group: str | None = (
        None  # the wrapping key the tensors came from (params_ema, params, ...), None if plain
    )


def _read_object(path: Path) -> tuple[object, dict | None]:
    """(the file's object, its safetensors metadata declaration or None); UserError when unreadable."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the checkpoint file in it (.pth or .safetensors)")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the path of a .pth file (--model_path)")
    if path.suffix == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = safetensors.torch.load_file(path)
            declared = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else None
        except Exception:  # SafetensorError, a vanished file, bad JSON in the metadata: all mean "unreadable"
            raise UserError(
                f"{path}: not a readable safetensors file (truncated or corrupt); download or export it again"
            ) from None
        return tensors, declared
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception:  # the unpickler of an untrusted file can fail in many ways; all mean "unreadable"
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or not a .pth file); "
            "download or export it again"
        ) from None


def _declaration(path: Path, declared: object) -> dict | None:
    """A declared identity as a dict of known fields with plain values; UserError when it is malformed."""
    if declared is None:
        return None
    plain = (str, int, bool)
    if (
        not isinstance(declared, dict)
        or not set(declared) <= set(CONFIG_FIELDS)
        or not all(isinstance(v, plain) for v in declared.values())
    ):
        raise UserError(
            f"{path}: its {CONFIG_KEY!r} entry is not an LKDN configuration; export the file again"
        )
    return dict(declared)


def read_checkpoint(path: str | Path, group: str | None = None) -> Checkpoint:
    """The network weights stored in `path`, whatever the wrapping, and its declared identity; UserError if it
    is no checkpoint or holds tensors no network should run with (non-floating, NaN, Inf)."""
    path = Path(path)
    obj, declared = _read_object(path)
    if isinstance(obj, dict) and CONFIG_KEY in obj:
        declared = obj[CONFIG_KEY]
        obj = {key: value for key, value in obj.items() if key != CONFIG_KEY}
    found = None
    if group is not None and not (isinstance(obj, dict) and isinstance(obj.get(group), dict)):
        raise UserError(f"{path}: holds no {group!r} weights; pass a BasicSR-style checkpoint that has them")
    if isinstance(obj, dict):
        for key in (group,) if group else PREFERRED_KEYS:
            if isinstance(obj.get(key), dict):
                obj, found = obj[key], key
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds no state dict of tensors; pass an LKDN checkpoint (.pth)")
    for key, value in obj.items():
        if not value.is_floating_point():
            dtype = str(value.dtype).removeprefix("torch.")
            raise UserError(
                f"{path}: tensor {key!r} is {dtype}, not a floating-point type: network weights are floats, "
                "so this file is damaged or not weights; export it again"
            )
        if not torch.isfinite(value).all():
            raise UserError(
                f"{path}: tensor {key!r} holds NaN or Inf values: these weights would give a black or "
                "garbage image; use a checkpoint saved before training diverged"
            )
    state = {key.removeprefix("module."): value for key, value in obj.items()}
    return Checkpoint(path, state, _declaration(path, declared), found)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The network weights stored in `path` (read_checkpoint without the declaration)."""
    return read_checkpoint(path).state


def describe(config: Mapping[str, object]) -> str:
    """A network in words: 'LKDN-S x4, fused form' or 'an LKDN with 8 channels and 2 blocks x4 (attention none,
    shallow bsconv), training form'."""
    name = config_name(int(config["num_feat"]), int(config["num_blocks"]))
    variant = [
        f"{k} {config[k]}"
        for k, default in (("attention", "lka"), ("shallow", "rbsb"))
        if config[k] != default
    ]
    form = "fused" if config["fused"] else "training"
    details = f" ({', '.join(variant)})" if variant else ""
    return f"{name} x{config['scale']}{details}, {form} form"


def identify(checkpoint: Checkpoint) -> dict:
    """The identity of the network in `checkpoint`: its tensors' (exact, see config_from_state_dict), with the
    declared shallow-block name and online fusion; UserError when the declaration does not fit the tensors."""
    path = checkpoint.path
    try:
        found = config_from_state_dict(checkpoint.state)
    except KeyError as err:
        raise UserError(f"{path}: not an LKDN checkpoint (no {err}); pass an LKDN .pth") from None
    except (IndexError, ValueError):
        raise UserError(
            f"{path}: not an LKDN checkpoint (tensors of impossible shapes); pass an LKDN .pth"
        ) from None
    declared = checkpoint.config
    if declared is None:
        return found
    differ = same_network(declared, found) + (["fused"] if declared.get("fused") != found["fused"] else [])
    if differ:
        listed = ", ".join(f"{k} {declared.get(k)!r} (its tensors: {found[k]!r})" for k in differ)
        raise UserError(
            f"{path}: declares another network than its tensors hold: {listed}; the file was damaged or edited, "
            "export it again"
        )
    return {**found, **{k: declared[k] for k in ("shallow", "online_fusion") if k in declared}}


def _payload_state(weights: LKDN | Mapping[str, object]) -> tuple[dict, dict | None]:
    """(the groups to write, the model's config if `weights` is a model)."""
    if isinstance(weights, LKDN):
        return {"params": weights.state_dict()}, weights.config()
    if weights and all(isinstance(v, Tensor) for v in weights.values()):
        return {"params": dict(weights)}, None
    return {key: dict(value) for key, value in weights.items()}, None


def save_weights(
    weights: LKDN | Mapping[str, object], path: str | Path, config: Mapping[str, object] | None = None
) -> Path:
    """Write weights atomically, with the network's identity: a model, a state dict, or groups such as
    `{'params': ..., 'params_ema': ...}`. `config` defaults to the model's, else to what the keys say.
    `.safetensors` by its suffix (one group: `params_ema` if there, else `params`; the identity as metadata),
    else a `.pth` holding the groups and `lkdn_config`."""
    path = Path(path)
    groups, model_config = _payload_state(weights)
    first = groups.get("params_ema") or groups["params"]
    config = dict(config or model_config or config_from_state_dict(first))
    if path.suffix == ".safetensors":
        tensors = {key: value.detach().contiguous().cpu() for key, value in first.items()}
        metadata = {CONFIG_KEY: json.dumps(config), "format": "pt"}
        return write_bytes_atomic(path, safetensors.torch.save(tensors, metadata=metadata))
    return save_atomic({**groups, CONFIG_KEY: config}, path)


def config_name(num_feat: int, num_blocks: int) -> str:
    return NAMED_CONFIGS.get(
        (num_feat, num_blocks), f"an LKDN with {num_feat} channels and {num_blocks} blocks"
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


def load_checkpoint(path: str | Path, model: LKDN, group: str | None = None) -> LKDN:
    """Load `path` into `model` in place (strict) and return it. The file's network must be `model`'s (the
    form aside): a training-form file loads into a fused model by fusing, a fused one into a training-form
    model by the exact inverse. `group`: which weights of a BasicSR-style file (default params_ema, else
    params)."""
    return load_read(model, read_checkpoint(path, group))


def load_read(model: LKDN, checkpoint: Checkpoint) -> LKDN:
    """`load_checkpoint` for a file already read (whose `group` or declaration the caller wants too)."""
    return _load(model, checkpoint, identify(checkpoint))


def _load(model: LKDN, checkpoint: Checkpoint, found: dict) -> LKDN:
    path, wanted = checkpoint.path, model.config()
    differ = same_network(found, wanted)
    if differ:
        listed = ", ".join(f"{k} {found[k]!r} (wanted {wanted[k]!r})" for k in differ)
        raise UserError(
            f"{path}: holds {describe(found)}, not {describe(wanted)}: {listed}; build the model that fits "
            "(or use build_model_from_checkpoint)"
        )
    source = LKDN.from_config(found)
    problem = _first_mismatch(checkpoint.state, source)
    if problem:
        raise UserError(f"{path}: {problem}; the file is not the {describe(found)} its keys suggest")
    source.load_state_dict(checkpoint.state)
    if found["fused"] != model.fused:
        source = fuse_model(source) if model.fused else unfuse_model(source, model.online_fusion)
    model.load_state_dict(source.state_dict())
    return model


def load_state(model: LKDN, state: dict[str, Tensor], path: Path) -> LKDN:
    """`load_checkpoint` for a state dict already read from `path` (named in errors)."""
    checkpoint = Checkpoint(Path(path), state, None)
    return _load(model, checkpoint, identify(checkpoint))


def build_model_from_checkpoint(path: str | Path, fused: bool = True) -> LKDN:
    """The network stored in `path`, with its weights: fused unless asked otherwise (a training-form model of
    the file's online-fusion setting)."""
    checkpoint = read_checkpoint(path)
    found = identify(checkpoint)
    return _load(LKDN.from_config({**found, "fused": fused, "upsampler": None}), checkpoint, found)


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
