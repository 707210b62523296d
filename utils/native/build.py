"""Build a C++ kernel source into a shared library on first use, and load it.

Built for the machine it runs on (`-march=native`, else a portable `-O3` build) with the system's C++
compiler, cached under `~/.cache/lkdn` (or `$LKDN_KERNEL_CACHE`) keyed by the source and the headers beside
it, the compiler, the flags and the CPU, and loaded with ctypes: no Python headers, no torch build.

A cached library is named after the SHA-256 of its own bytes and checked against it before it is loaded: a
truncated or overwritten file (which would crash the process when mapped) is rebuilt instead. A build is
written to a temporary file, fsynced and renamed; temporary files a killed build left are removed.
`NativeLibrary` loads a source once per process and keeps the outcome, success or the reason for failure. Used by
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

INCLUDE = Path(__file__).parent  # vector.h, the vector helpers every kernel source includes
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second for compilers without -march=native


class KernelUnavailable(RuntimeError):
    """A native kernel cannot be built or loaded here (the message says why)."""


def cpu_key() -> str:
    """What a `-march=native` binary depends on: the CPU's instruction-set flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def find_compiler() -> str | None:
    """The C++ compiler the kernels are built with: $CXX, else c++, g++ or clang++ on the PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def cache_dir() -> Path:
    return Path(os.environ.get("LKDN_KERNEL_CACHE") or Path.home() / ".cache" / "lkdn")


STALE_TMP_SECONDS = 900  # older than any build may take (the compiler's timeout is 300 s)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _verified(cache: Path, stem: str) -> Path | None:
    """The cached library `stem.<digest>.so` whose bytes match its digest; any other file of `stem` (torn,
    overwritten, half-written) is deleted."""
    found = None
    for path in cache.glob(f"{stem}.*.so"):
        if found is None and path.name == f"{stem}.{_digest(path)}.so":
            found = path
        else:
            path.unlink(missing_ok=True)
    return found


def _remove_stale_temporaries(cache: Path) -> None:
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in cache.glob("*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass  # another process's build finished or removed it


def compile_library(source: Path, compiler: str, flags: list[str], cache: Path, stem: str) -> Path:
    """Compile to a temporary file in `cache`, fsync it, rename it to `stem.<digest>.so`: never a torn file."""
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=cache)
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
        with open(tmp, "rb") as built:
            os.fsync(built.fileno())
        target = cache / f"{stem}.{_digest(Path(tmp))}.so"
        os.replace(tmp, target)
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_and_load(source: Path, openmp: bool = False, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The library built from `source` (from the cache when it is there and intact); raises KernelUnavailable.

    `openmp` tries `-fopenmp` builds first: loaded after torch, such a library runs on torch's own OpenMP
    runtime and threads (the same soname, libgomp.so.1, is already loaded). Without it the source's
    `#pragma omp` lines are ignored and it runs on one thread. `extra_flags` (a tuning candidate's `-D` settings
    or vector width) are added to the `-march=native` builds only: they choose among what this CPU runs."""
    compiler = find_compiler()
    if compiler is None:
        raise KernelUnavailable("no C++ compiler found (install g++ or clang++, or set CXX)")
    # what the library depends on besides the flags: the source, the headers it can include, the compiler, the CPU
    headers = sorted({*source.parent.glob("*.h"), *INCLUDE.glob("*.h")})
    try:
        texts = [path.read_text() for path in [source, *headers]]
    except OSError as err:
        raise KernelUnavailable(
            f"{source}: kernel source unreadable ({err.strerror}); reinstall the repository"
        ) from None
    depends = [*texts, compiler, cpu_key()]
    errors = []
    flag_sets = [[*flags, "-fopenmp"] for flags in FLAG_SETS] if openmp else []
    flag_sets = [*flag_sets, *FLAG_SETS]
    if extra_flags:
        flag_sets = [[*flags, *extra_flags] for flags in flag_sets if "-march=native" in flags]
        if not flag_sets:
            raise KernelUnavailable(f"{' '.join(extra_flags)}: a tuning build needs -march=native")
    for flags in flag_sets:
        key = hashlib.sha256("\n".join([*depends, " ".join(flags)]).encode()).hexdigest()[:16]
        stem = f"{source.stem}_{key}"
        try:
            target = _verified(cache_dir(), stem) or compile_library(
                source, compiler, flags, cache_dir(), stem
            )
            return ctypes.CDLL(str(target))
        except (KernelUnavailable, OSError, subprocess.SubprocessError) as err:
            errors.append(str(err))
    raise KernelUnavailable(errors[0])


class NativeLibrary:
    """A kernel source's library, built or loaded once per process: success, or the reason for failure, is
    kept (a failed build is not retried on every call; `forget()` starts over)."""

    def __init__(
        self,
        source: Path,
        openmp: bool = False,
        declare: Callable[[ctypes.CDLL], None] | None = None,
        extra_flags: tuple[str, ...] = (),
    ) -> None:
        self.source, self.openmp, self.declare, self.extra_flags = source, openmp, declare, extra_flags
        self._lock = threading.Lock()
        self._outcome: ctypes.CDLL | KernelUnavailable | None = None

    def load(self) -> ctypes.CDLL:
        """The library; raises KernelUnavailable (the same one on every call) when it cannot be had here."""
        with self._lock:
            if self._outcome is None:
                try:
                    lib = build_and_load(self.source, self.openmp, self.extra_flags)
                    if self.declare is not None:
                        self.declare(lib)
                    self._outcome = lib
                except KernelUnavailable as err:
                    self._outcome = err
                except (AttributeError, OSError) as err:  # loaded, but not the library the caller declared
                    self._outcome = KernelUnavailable(f"{self.source.name}: built library unusable ({err})")
            if isinstance(self._outcome, KernelUnavailable):
                raise self._outcome
            return self._outcome

    def unavailable_reason(self) -> str | None:
        """None when the library loads here, else why it does not."""
        try:
            self.load()
        except KernelUnavailable as err:
            return str(err)
        return None

    def forget(self) -> None:
        """Drop the kept outcome: the next `load` builds or loads again (after the cache or compiler changed)."""
        with self._lock:
            self._outcome = None
