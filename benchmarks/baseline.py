"""The `native` backend as an earlier commit built it, for A/B timing in one process.

`load_native(rev)` writes that commit's utils/runtime/native.py, its kernel source and the vector header the
kernel includes into a scratch folder, imports that copy of the module under a name of its own (its kernel is
built and cached like today's, keyed by its own source) and returns a runner for a fused model. Its
`utils.runtime.fast` (which native.py builds on) is that commit's too; the copies keep importing today's
`models` and `utils.native.build`, so a revision works when those still offer what it used; a revision that
does not is reported as unavailable, not guessed at. With build flags (a revision that has kernel build settings,
utils/runtime/native_tune.py's), that commit's kernel is built with them: a kernel change timed against the one
before with the same settings.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "utils/runtime/native.py": "native.py",
    "utils/runtime/fast.py": "fast.py",  # what native.py builds on, as of the same revision
    "utils/runtime/kernels/lkdn_cpu.cpp": "kernels/lkdn_cpu.cpp",
    "utils/native/vector.h": "kernels/vector.h",  # the kernel includes it from its own folder first
}


class BaselineUnavailable(RuntimeError):
    """The revision's native backend cannot be had here (no git, unknown revision, a module that no longer
    imports); the message says which."""


def _git_show(rev: str, path: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise BaselineUnavailable(f"git show {rev}:{path}: {err}") from None
    if done.returncode != 0:
        raise BaselineUnavailable(f"git show {rev}:{path}: {done.stderr.strip().splitlines()[0]}")
    return done.stdout


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_native(
    rev: str, model: torch.nn.Module, flags: tuple[str, ...] = ()
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A runner of `model` (fused) by revision `rev`'s native backend, its kernel built with `flags` (none: that
    revision's default build); raises BaselineUnavailable."""
    folder = Path(tempfile.mkdtemp(prefix=f"lkdn-native-{rev}-"))
    for path, target in FILES.items():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        (folder / target).write_text(_git_show(rev, path))
    try:
        fast = _import(f"_lkdn_fast_{rev}", folder / "fast.py")
        today = sys.modules.get("utils.runtime.fast")
        sys.modules["utils.runtime.fast"] = (
            fast  # native.py's `from utils.runtime.fast import ...` gets rev's
        )
        try:
            module = _import(f"_lkdn_native_{rev}", folder / "native.py")
        finally:
            if today is None:
                del sys.modules["utils.runtime.fast"]
            else:
                sys.modules["utils.runtime.fast"] = today
        net = (module.NativeLKDN(model, flags) if flags else module.NativeLKDN(model)).eval()
    except Exception as err:  # an old module against today's packages, or its kernel failing to build
        raise BaselineUnavailable(f"native at {rev}: {type(err).__name__}: {err}") from None

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    return run
