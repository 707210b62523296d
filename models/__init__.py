"""The network. The organizers assign the team number; it lives in this one constant.

Everything imports the network from here (`from models import lkdn_s, fuse_model, MODEL_NAME`), so changing
the team number means changing TEAM_NUMBER and renaming `models/teamNN_LKDN.py` and `model_zoo/teamNN_LKDN.pth`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

TEAM_NUMBER = 1
MODEL_NAME = f"team{TEAM_NUMBER:02d}_LKDN"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[1] / "model_zoo" / f"{MODEL_NAME}.pth"

_network = importlib.import_module(f"{__name__}.{MODEL_NAME}")
LKDN = _network.LKDN
LKDB = _network.LKDB
RBSB = _network.RBSB
RepUpsampler = _network.RepUpsampler
fuse_model = _network.fuse_model
lkdn_s = _network.lkdn_s
lkdn = _network.lkdn

__all__ = [
    "BUNDLED_CHECKPOINT",
    "LKDB",
    "LKDN",
    "MODEL_NAME",
    "RBSB",
    "RepUpsampler",
    "TEAM_NUMBER",
    "fuse_model",
    "lkdn",
    "lkdn_s",
]
