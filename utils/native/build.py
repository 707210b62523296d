"""Build a C++ kernel source into a shared library on first use, and load it.

Built for the machine it runs on (`-march=native`, else a portable `-O3` build) with the system's C++
compiler, cached under `~/.cache/lkdn` (or `$LKDN_KERNEL_CACHE`) keyed by the source and the headers beside
it, the compiler, the flags and the CPU, and loaded with ctypes: no Python headers, no torch build. Used by
the `native` inference backend (utils/runtime/native.py) and by training's conv gradients
(train/native_conv_grad.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

INCLUDE = Path(__file__).parent  # vector.h, the vector helpers every kernel source includes
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second for compilers without -march=native


class KernelUnavailable(RuntimeError):
    """A native kernel cannot be built or loaded here (the message says why)."""


def _cpu_key() -> str:
    """What a `-march=native` binary depends on: the CPU's instruction-set flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("LKDN_KERNEL_CACHE") or Path.home() / ".cache" / "lkdn")


def _compile(source: Path, compiler: str, flags: list[str], target: Path) -> None:
    """Compile to a temporary file beside `target`, then rename: never a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    cmd = [
        compiler,
        *flags,
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-pthread",
        f"-I{INCLUDE}",
        str(source),
        "-o",
        tmp,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no message"]
            first_error = next((line for line in lines if "error" in line), lines[0])
            raise KernelUnavailable(f"{compiler} failed on {source.name}: {first_error[:200]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_and_load(source: Path, openmp: bool = False) -> ctypes.CDLL:
    """The library built from `source` (from the cache when it is there); raises KernelUnavailable.

    `openmp` tries `-fopenmp` builds first: loaded after torch, such a library runs on torch's own OpenMP
    runtime and threads (the same soname, libgomp.so.1, is already loaded). Without it the source's
    `#pragma omp` lines are ignored and it runs on one thread."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise KernelUnavailable("no C++ compiler found (install g++ or clang++, or set CXX)")
    # what the library depends on besides the flags: the source, the headers it can include, the compiler, the CPU
    headers = sorted({*source.parent.glob("*.h"), *INCLUDE.glob("*.h")})
    texts = [path.read_text() for path in [source, *headers]]
    depends = [*texts, compiler, _cpu_key()]
    errors = []
    flag_sets = [[*flags, "-fopenmp"] for flags in FLAG_SETS] if openmp else []
    for flags in [*flag_sets, *FLAG_SETS]:
        key = hashlib.sha256("\n".join([*depends, " ".join(flags)]).encode()).hexdigest()[:16]
        target = cache_dir() / f"{source.stem}_{key}.so"
        try:
            if not target.exists():
                _compile(source, compiler, flags, target)
            return ctypes.CDLL(str(target))
        except (KernelUnavailable, OSError, subprocess.SubprocessError) as err:
            errors.append(str(err))
    raise KernelUnavailable(errors[0])


def unavailable_reason(load: Callable[[], ctypes.CDLL]) -> str | None:
    """None when `load` gives its library, else why it cannot (the KernelUnavailable message)."""
    try:
        load()
    except KernelUnavailable as err:
        return str(err)
    return None
