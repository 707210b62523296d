"""torch.hub.load(<repo dir>, ..., source='local'): the fused LKDN-S and the paper's LKDN, with given or bundled
weights (no network)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import torch

from models import BUNDLED_CHECKPOINT, LKDN
from utils.errors import UserError
from utils.files.checkpoint import build_model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def hub_load(model: str, **kwargs) -> LKDN:
    return torch.hub.load(str(ROOT), model, source="local", **kwargs)


def same_function(a: LKDN, b: LKDN) -> None:
    x = torch.rand(1, 3, 12, 15, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_entry_points_are_the_two_models_and_any_checkpoint():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    # what torch.hub.list reports: every public callable of hubconf.py
    assert sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_")) == [
        "from_checkpoint",
        "lkdn",
        "lkdn_s",
    ]
    assert hub.dependencies == ["torch"]


@pytest.mark.parametrize("name", ["LKDN-S_x4.pth", "LKDN-S_del_rep_x4.pth"])  # training form, fused form
def test_lkdn_s_with_given_weights_is_the_fused_model_in_eval_mode(reference_dir, name):
    model = hub_load("lkdn_s", pretrained=True, weights=reference_dir / name)
    assert model.fused and not model.training
    assert (model.num_feat, model.num_blocks, model.scale) == (42, 5, 4)
    same_function(model, build_model_from_checkpoint(reference_dir / name).eval())


@pytest.mark.skipif(
    not BUNDLED_CHECKPOINT.is_file(),
    reason=f"{BUNDLED_CHECKPOINT.relative_to(ROOT)} is not there yet (the trained weights are being made)",
)
def test_lkdn_s_pretrained_loads_the_bundled_checkpoint():
    model = hub_load("lkdn_s", pretrained=True)
    assert model.fused and not model.training
    same_function(model, build_model_from_checkpoint(BUNDLED_CHECKPOINT).eval())
    same_function(hub_load("lkdn_s"), model)  # pretrained is the default


def test_lkdn_s_loads_whatever_the_bundled_path_holds_by_default(tmp_path, monkeypatch):
    """The default path logic, with random weights standing in for model_zoo's file."""
    import models

    torch.manual_seed(0)
    stand_in = models.lkdn_s(fused=True)
    torch.save({"params": stand_in.state_dict()}, tmp_path / "team01_LKDN.pth")
    monkeypatch.setattr(models, "BUNDLED_CHECKPOINT", tmp_path / "team01_LKDN.pth")
    same_function(hub_load("lkdn_s"), stand_in.eval())


def test_lkdn_s_without_the_bundled_checkpoint_says_how_to_pass_weights(tmp_path, monkeypatch):
    import models

    monkeypatch.setattr(models, "BUNDLED_CHECKPOINT", tmp_path / "team01_LKDN.pth")
    with pytest.raises(UserError, match="team01_LKDN.pth: the bundled checkpoint is missing.*weights="):
        hub_load("lkdn_s", pretrained=True)


@pytest.mark.parametrize("scale", [2, 4])
def test_lkdn_with_the_authors_weights(reference_dir, scale):
    path = reference_dir / f"LKDN_x{scale}.pth"
    model = hub_load("lkdn", scale=scale, weights=path)
    assert model.fused and not model.training
    assert (model.num_feat, model.num_blocks, model.scale) == (56, 8, scale)
    same_function(model, build_model_from_checkpoint(path).eval())


def test_wrong_or_missing_weights_are_user_errors(reference_dir):
    with pytest.raises(UserError, match="bundles no weights.*weights="):
        hub_load("lkdn", pretrained=True)
    with pytest.raises(UserError, match="LKDN_x4.pth: this is LKDN x4, not LKDN-S x4"):
        hub_load("lkdn_s", weights=reference_dir / "LKDN_x4.pth")
    with pytest.raises(UserError, match="bundled checkpoint is x4, not x2"):
        hub_load("lkdn_s", scale=2)


def test_without_weights_the_models_are_randomly_initialized():
    model = hub_load("lkdn_s", pretrained=False, scale=3)
    assert model.fused and model.scale == 3
    training = hub_load("lkdn", fused=False)
    assert not training.fused and (training.num_feat, training.num_blocks) == (56, 8)


def test_readme_hub_calls_run_as_written(reference_dir, tmp_path, monkeypatch):
    """Every torch.hub.load call in README, with the repository's path and the files it names put in place."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### torch.hub", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    prose = readme.split("### torch.hub", 1)[1].split("```", 2)[2].split("\n## ", 1)[0]
    inline = [f"model = {call}" for call in re.findall(r"`(torch\.hub\.load\([^`]*\))`", prose)]
    inline += [f'model = torch.hub.load("path/to/LKDN", "lkdn_s", source="local", {flag})'
               for flag in re.findall(r"`(\w+=\w+)`", prose)]  # fmt: skip
    shutil.copy(reference_dir / "LKDN_x4.pth", tmp_path / "LKDN_x4.pth")
    shutil.copy(BUNDLED_CHECKPOINT, tmp_path / "my_checkpoint.pth")
    shutil.copy(BUNDLED_CHECKPOINT, tmp_path / "any.pth")
    monkeypatch.chdir(tmp_path)
    code = (block + "\n" + "\n".join(inline)).replace("path/to/LKDN", str(ROOT))
    namespace = {"lr": torch.rand(1, 3, 16, 16)}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (README's own example code)
    assert "fused=False" in code and "pretrained=False" in code and "from_checkpoint" in code
    assert namespace["sr"].shape == (1, 3, 64, 64)
