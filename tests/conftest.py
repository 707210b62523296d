"""Shared fixtures. Tests that need ../shared (research data, the authors' checkpoints) skip without it."""

from __future__ import annotations

import os
from pathlib import Path

# One thread per test process (and its subprocesses): the inputs here are tiny, and two OpenMP threads on a
# busy 2-core machine spend more time waiting for each other than computing. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The default build of the native kernels everywhere, without tuning: a test's timings would be noise, and the
# tuner has its own tests (tests/test_native_tune.py).
os.environ.setdefault("LKDN_NATIVE_TUNE", "0")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"
BENCHMARK = SHARED / "data" / "benchmark"
TRAIN_DATA = SHARED / "data" / "train"


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
