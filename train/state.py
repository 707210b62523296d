"""What a run writes and how a killed run finds its way back.

Layout of a run folder (BasicSR's conventions, which users know):
    config.yml                     the resolved configuration
    train.log                      the plain-text log
    models/net_<iter>.pth          {'params', 'params_ema'}: the authors' checkpoint format, plus `lkdn_config`
    models/best.pth, last.pth      the best (validation PSNR of the EMA weights) and the last weights
    models/fused.pth, .safetensors the fused inference form of the EMA weights
    training_states/<iter>.state   optimizer, scheduler, EMA-free training state, RNG states, config
Every weights file and state declares the network it holds (`lkdn_config`, utils.files.checkpoint).
Every file is written to a temporary name and renamed, so a kill leaves either the old file or the new one.
A state is only ever written after the weights of the same iteration, so the newest state always has weights.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from models import LKDN, fuse_model
from utils.errors import UserError
from utils.files.atomic_write import save_atomic
from utils.files.checkpoint import save_weights

_ITER_FILE = re.compile(r"^(?:net_)?(\d+)\.(?:pth|state)$")


def rng_states() -> dict:
    """Every random generator's state (python, numpy, torch CPU and CUDA)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),  # no numpy pickles
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def weights_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "models" / f"net_{iteration:08d}.pth"


def state_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "training_states" / f"{iteration:08d}.state"


def _iterations(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _ITER_FILE.match(p.name)))


def latest_resumable(run_dir: Path) -> int | None:
    """The newest iteration with both weights and a training state, or None."""
    weights = set(_iterations(run_dir / "models"))
    states = [i for i in _iterations(run_dir / "training_states") if i in weights]
    return states[-1] if states else None


def save_iteration(run_dir: Path, iteration: int, weights: dict, state: dict, keep_last: int) -> None:
    """Weights, then state (so the newest state always has its weights), then drop all but the last K. The
    weights declare the network `state['lkdn_config']` describes."""
    config = state["lkdn_config"]
    save_weights(weights, weights_path(run_dir, iteration), config)
    save_atomic(state, state_path(run_dir, iteration))
    save_weights(weights, run_dir / "models" / "last.pth", config)
    for old in _iterations(run_dir / "training_states")[:-keep_last]:
        state_path(run_dir, old).unlink(missing_ok=True)
    for old in _iterations(run_dir / "models")[:-keep_last]:
        weights_path(run_dir, old).unlink(missing_ok=True)


def load_iteration(run_dir: Path, iteration: int) -> tuple[dict, dict]:
    """(weights, training state) saved at `iteration`."""
    return _load(weights_path(run_dir, iteration)), _load(state_path(run_dir, iteration))


def saved_config(run_dir: Path, iteration: int) -> dict:
    """The configuration a run saved with its state at `iteration` (the reference a resume is checked against)."""
    state = _load(state_path(run_dir, iteration))
    if not isinstance(state.get("config"), dict):
        raise UserError(
            f"{state_path(run_dir, iteration)}: holds no configuration; resume is not possible from it"
        )
    return state["config"]


def saved_rng(run_dir: Path, iteration: int) -> dict:
    """The random generators' states saved with the training state at `iteration`."""
    return _load(state_path(run_dir, iteration))["rng"]


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an untrusted or damaged file can fail in many ways
        raise UserError(
            f"{path}: unreadable training state or checkpoint; delete it to resume from the one before"
        ) from None


def export_fused(model: LKDN, run_dir: Path, stem: str = "fused") -> list[Path]:
    """The fused inference form of `model`, in the format of model_zoo/: models/<stem>.pth and
    models/<stem>.safetensors, each declaring the network."""
    fused = fuse_model(model)
    return [
        save_weights(fused, run_dir / "models" / f"{stem}{suffix}") for suffix in (".pth", ".safetensors")
    ]
