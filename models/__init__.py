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
ARCH = _network.ARCH
Attention = _network.Attention
BSConvWeights = _network.BSConvWeights
CONFIG_FIELDS = _network.CONFIG_FIELDS
ShallowBlock = _network.ShallowBlock
ATTENTIONS = _network.ATTENTIONS
SHALLOW_BLOCKS = _network.SHALLOW_BLOCKS
LKDN = _network.LKDN
LKDB = _network.LKDB
RBSB = _network.RBSB
RepUpsampler = _network.RepUpsampler
config_from_state_dict = _network.config_from_state_dict
fuse_model = _network.fuse_model
replace_modules = _network.replace_modules
same_network = _network.same_network
unfuse_model = _network.unfuse_model
lkdn_s = _network.lkdn_s
lkdn = _network.lkdn

__all__ = [
    "ARCH",
    "ATTENTIONS",
    "Attention",
    "BSConvWeights",
    "CONFIG_FIELDS",
    "ShallowBlock",
    "BUNDLED_CHECKPOINT",
    "LKDB",
    "LKDN",
    "MODEL_NAME",
    "RBSB",
    "SHALLOW_BLOCKS",
    "RepUpsampler",
    "TEAM_NUMBER",
    "config_from_state_dict",
    "fuse_model",
    "lkdn",
    "lkdn_s",
    "replace_modules",
    "same_network",
    "unfuse_model",
]
