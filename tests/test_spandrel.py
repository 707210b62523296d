"""spandrel (chaiNNer's and ComfyUI's loader) loads every LKDN checkpoint this repository loads, after one import,
and runs it to the repository's own output.

spandrel runs in a subprocess whose path holds tests/stubs first: spandrel imports torchvision (for two other
architectures), which cannot be installed beside the CPU torch pinned here; the stand-in raises if used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import BUNDLED_CHECKPOINT, LKDN, fuse_model
from utils.files.checkpoint import save_weights

ROOT = Path(__file__).resolve().parents[1]
AUTHORS = ("LKDN-S_x4", "LKDN-S_del_rep_x4", "LKDN_x2", "LKDN_x3", "LKDN_x4")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("spandrel") is None,
    reason="spandrel is not installed (pip install --no-deps spandrel==0.4.2 einops; .ci/run does)",
)

SCRIPT = r"""
import json, sys
import spandrel, torch
from utils.files.checkpoint import build_model_from_checkpoint

paths = sys.argv[1:]
before = []
for path in paths:  # without the registration, no architecture of spandrel's own claims these files
    try:
        spandrel.ModelLoader().load_from_file(path)
        before.append(path)
    except spandrel.UnsupportedModelError:
        pass
import integrations.spandrel_arch  # noqa: F401  (the one import a user adds)
rows = []
for path in paths:
    descriptor = spandrel.ModelLoader().load_from_file(path)
    x = torch.rand(1, 3, 23, 31, generator=torch.Generator().manual_seed(0))
    ours = build_model_from_checkpoint(path, fused=True).eval()
    with torch.no_grad():  # the descriptor's call clamps to [0, 1], as an image viewer needs; its model does not
        expected = ours(x)
        diff = max((descriptor(x) - expected.clamp(0, 1)).abs().max().item(),
                   (descriptor.model(x) - expected).abs().max().item())
    rows.append({"path": path, "arch": descriptor.architecture.id, "scale": descriptor.scale, "diff": diff,
                 "minimum": descriptor.size_requirements.minimum, "tiling": descriptor.tiling.name,
                 "expected_scale": ours.scale, "expected_minimum": ours.min_input_size()})
print(json.dumps({"claimed_before": before, "rows": rows}))
"""


def _load_in_spandrel(paths: list[Path]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "stubs"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, paths)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory) -> list[Path]:
    """This repository's own kinds of file: training and fused forms, and ablation variants, as .pth and
    .safetensors."""
    folder = tmp_path_factory.mktemp("spandrel")
    files = []
    for name, kwargs in {"train_lka": {}, "esa_cca": {"attention": "esa_cca"}, "shortcut": {"shallow": "bsconv_shortcut"}}.items():  # fmt: skip
        model = LKDN(num_feat=12, num_blocks=2, **kwargs)
        for form, net in (("train", model), ("fused", fuse_model(model))):
            for suffix in (".pth", ".safetensors"):
                files.append(save_weights(net.state_dict(), folder / f"{name}_{form}{suffix}", net.config()))
    return files


def test_spandrel_loads_every_kind_of_checkpoint_to_the_same_output(reference_dir, variant_files):
    authors = [reference_dir / f"{name}.pth" for name in AUTHORS]
    bundled = [BUNDLED_CHECKPOINT, BUNDLED_CHECKPOINT.with_suffix(".safetensors")]
    found = _load_in_spandrel([*bundled, *authors, *variant_files])
    assert found["claimed_before"] == []
    assert len(found["rows"]) == 2 + len(AUTHORS) + len(variant_files)
    for row in found["rows"]:
        assert row["arch"] == "LKDN" and row["diff"] <= 1e-5, row
        assert row["scale"] == row["expected_scale"] and row["minimum"] == row["expected_minimum"], row
        assert row["tiling"] == ("DISCOURAGED" if "esa_cca" in row["path"] else "SUPPORTED"), row
    scales = {Path(row["path"]).stem: row["scale"] for row in found["rows"]}
    assert (scales["LKDN_x2"], scales["LKDN_x3"], scales["LKDN_x4"]) == (2, 3, 4)
