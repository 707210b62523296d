"""benchmarks/gpu_check.py runs end to end in its dry mode (tiny sizes, CPU), so the GPU session it is prepared
for does not find a broken script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_dry_and_writes_its_summary(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path), "--dry"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry"] and summary["environment"]["torch"]
    assert {"reference", "fast", "reference+bf16", "fast+bf16"} <= set(summary["inference"])
    assert summary["inference"]["fast"]["max_abs_diff"] < 1e-4
    assert summary["training"]["fp32"]["iterations_per_s"] > 0
    assert (tmp_path / "gpu_check.log").is_file()
