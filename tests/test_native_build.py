"""Building and caching the C++ kernels: one outcome per process, and a damaged cache is rebuilt, never loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from utils.native import build as native_build
from utils.native.build import KernelUnavailable, NativeLibrary

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    """A one-function kernel source (compiles in a fraction of a second) and an empty cache."""
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.cpp"
    source.write_text('extern "C" int answer() { return 42; }\n')
    return source


def _cached(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


@needs_compiler
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 3], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: os.urandom(len(b)), id="garbage"),
    ],
)
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tiny_source, tmp_path, damage):
    assert native_build.build_and_load(tiny_source).answer() == 42
    (library,) = (tmp_path / "cache").glob("tiny_*.so")
    good = library.read_bytes()
    library.unlink()  # a new file, not the mapped one rewritten in place (that would SIGBUS this process)
    library.write_bytes(damage(good))
    # in a fresh process: loading a truncated library there would end it with SIGBUS, not an exception
    code = f"from pathlib import Path; from utils.native.build import build_and_load; print(build_and_load(Path({str(tiny_source)!r})).answer())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr[-1000:]
    assert _cached(tmp_path) == [library.name]  # rebuilt under its digest, the damaged file gone
    assert library.read_bytes() == good or native_build._digest(library) in library.name


@needs_compiler
def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(tiny_source, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, fresh = cache / "tmpabc.so.tmp", cache / "tmpdef.so.tmp"  # fresh: maybe another build running now
    stale.write_bytes(b"half a library")
    fresh.write_bytes(b"being written")
    old = time.time() - native_build.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    native_build.build_and_load(tiny_source)
    assert not stale.exists() and fresh.exists()


def test_a_failed_build_is_kept_for_the_process_not_retried(tiny_source, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise KernelUnavailable("c++ failed on tiny.cpp: error: (test)")

    monkeypatch.setattr(native_build, "build_and_load", failing)
    library = NativeLibrary(tiny_source)
    for _ in range(3):
        assert library.unavailable_reason() == "c++ failed on tiny.cpp: error: (test)"
    with pytest.raises(KernelUnavailable, match="error: \\(test\\)"):
        library.load()
    assert len(calls) == 1
    library.forget()
    library.unavailable_reason()
    assert len(calls) == 2


@needs_compiler
def test_a_library_that_does_not_load_is_a_reason_not_a_crash(tiny_source, monkeypatch):
    """A library that verifies but the loader refuses (here: a missing symbol the declaration asks for)."""
    library = NativeLibrary(tiny_source, declare=lambda lib: lib.no_such_function)
    assert "tiny.cpp: built library unusable" in library.unavailable_reason()
    with pytest.raises(KernelUnavailable, match="no_such_function"):
        library.load()
    missing = NativeLibrary(tiny_source.with_name("missing.cpp"))
    assert "missing.cpp: kernel source unreadable" in missing.unavailable_reason()
