"""The team number is one constant: the model file and the bundled checkpoint are named after it."""

from __future__ import annotations

from pathlib import Path

import models

ROOT = Path(__file__).resolve().parents[1]


def test_model_name_follows_the_team_number():
    assert f"team{models.TEAM_NUMBER:02d}_LKDN" == models.MODEL_NAME


def test_model_file_and_bundled_checkpoint_are_named_after_it():
    assert (ROOT / "models" / f"{models.MODEL_NAME}.py").is_file()
    assert ROOT / "model_zoo" / f"{models.MODEL_NAME}.pth" == models.BUNDLED_CHECKPOINT
    others = [p.name for p in (ROOT / "models").glob("team*_LKDN.py") if p.stem != models.MODEL_NAME]
    others += [p.name for p in (ROOT / "model_zoo").glob("team*_LKDN.*") if p.stem != models.MODEL_NAME]
    assert not others, f"files named after another team number: {others}"
