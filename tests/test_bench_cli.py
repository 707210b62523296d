"""The benchmark scripts refuse a bad number with argparse's usage line and exit code 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("bench_train_ops.py", ["--threads", "0"], "argument --threads: expected 1 or more, got 0"),
        ("bench_train.py", ["--batch", "-3"], "argument --batch: expected 1 or more, got -3"),
        (
            "bench_inference.py",
            ["--threads", "two"],
            "argument --threads: expected a whole number, got 'two'",
        ),
    ],
)
def test_a_bad_number_is_one_line_and_exit_2(script, flags, message):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *flags], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].endswith(message)
