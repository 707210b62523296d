"""Shared fixtures. Tests that need ../shared (research data, the authors' checkpoints) skip without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"
BENCHMARK = SHARED / "data" / "benchmark"
TRAIN_DATA = SHARED / "data" / "train"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"needs {path} (the shared research data and reference checkpoints beside the repository)"
        )
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _require(REFERENCE)


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    return _require(BENCHMARK)


@pytest.fixture(scope="session")
def train_data_dir() -> Path:
    return _require(TRAIN_DATA)
