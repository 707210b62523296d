"""Build a C++ kernel with a test harness under sanitizers (AddressSanitizer and UBSan by default, or
ThreadSanitizer), run it, and fail on any report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from utils.native.build import INCLUDE

HARNESSES = Path(__file__).resolve().parent / "native"


def run_sanitized(
    harness: str,
    kernel: Path,
    tmp_path: Path,
    flags: tuple[str, ...] = (),
    sanitizers: str = "address,undefined",
) -> None:
    """Compile tests/native/<harness> with `kernel`, run it; skips where no compiler has the sanitizers."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path / Path(harness).stem
    cmd = [compiler, "-O1", "-std=c++17", "-march=native", f"-fsanitize={sanitizers}", f"-I{INCLUDE}", *flags,
           str(HARNESSES / harness), str(kernel), "-o", str(binary)]  # fmt: skip
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip(f"{compiler} cannot build with -fsanitize={sanitizers} here")
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
