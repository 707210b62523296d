"""The layout's promises: imports run one way between the packages, and the team number is one constant."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import models

ROOT = Path(__file__).resolve().parents[1]

# what each part of the repository may import of the repository (besides itself); utils/__init__.py says why
ALLOWED = {
    "models": set(),
    "utils.errors": set(),
    "utils.device": {"utils.errors"},
    "utils.native": set(),
    "utils.image": {"utils.errors"},
    "utils.files": {"models", "utils.errors"},
    "utils.measure": {"utils.files", "utils.image", "utils.errors"},
    "utils.runtime": {"models", "utils.files", "utils.native", "utils.errors", "utils.device"},
    "data": {"utils.files", "utils.image", "utils.errors"},
    "train": {
        "models",
        "data",
        "utils.files",
        "utils.image",
        "utils.native",
        "utils.measure",
        "utils.errors",
        "utils.device",
    },  # fmt: skip
}
ENTRY_POINTS = {
    "inference",
    "test_demo",
    "hubconf",
    "factsheet",
    "benchmarks",
    "scripts",
    "web",
    "integrations",
}
REPOSITORY = {"models", "utils", "data", "train", *ENTRY_POINTS}


def _unit(module: str) -> str:
    """The ALLOWED key (or entry point) a dotted module name belongs to."""
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return module.split(".")[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every repository module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in REPOSITORY}
    return found


def _sources() -> list[Path]:
    skip = {"tests", "build"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_imports_run_one_way():
    wrong = []
    for path in _sources():
        unit = _unit(_module_name(path))
        if unit not in ALLOWED:
            continue  # an entry point may import anything but another entry point (below)
        for name in _imports(path):
            target = _unit(name)
            # `from utils.files import checkpoint` names the package utils.files too: judged by its unit
            if target != unit and target not in ALLOWED[unit] and target not in ("utils",):
                wrong.append(f"{path.relative_to(ROOT)} imports {name} ({unit} -> {target})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_an_entry_point():
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources()
        if _unit(_module_name(path)) in ALLOWED
        for name in _imports(path)
        if name.split(".")[0] in ENTRY_POINTS
    ]
    assert not wrong, "\n".join(wrong)


def test_every_package_imports_and_says_what_lives_there():
    import importlib

    for package in ["models", "data", "train", "factsheet", "utils", *[k for k in ALLOWED if "." in k]]:
        module = importlib.import_module(package)
        assert module.__doc__ and len(module.__doc__) > 40, f"{package}: no docstring in __init__"


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in _sources() if "sys.path" in p.read_text()]
    assert not offenders


@pytest.mark.slow
def test_a_new_team_number_needs_only_the_constant_and_two_file_names(tmp_path):
    """A copy of the repository renumbered to team 42 (the constant, the model file, the bundled checkpoint)
    builds, loads its checkpoint and names itself team42_LKDN everywhere an entry point reports it."""
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__", "*.pdf", "build")
    )
    init = copy / "models" / "__init__.py"
    init.write_text(init.read_text().replace(f"TEAM_NUMBER = {models.TEAM_NUMBER}\n", "TEAM_NUMBER = 42\n"))
    (copy / "models" / f"{models.MODEL_NAME}.py").rename(copy / "models" / "team42_LKDN.py")
    (copy / "model_zoo" / f"{models.MODEL_NAME}.pth").rename(copy / "model_zoo" / "team42_LKDN.pth")
    (copy / "model_zoo" / f"{models.MODEL_NAME}.safetensors").unlink()  # the same weights, another format
    code = (
        # an editable install of the original checkout serves its modules after the copy's: not here
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import models, train.conv_backward, utils.runtime.backends, hubconf\n"
        "from utils.files.checkpoint import build_model_from_checkpoint\n"
        "m = build_model_from_checkpoint(models.BUNDLED_CHECKPOINT)\n"
        "assert models.LKDN.__module__ == 'models.team42_LKDN', models.LKDN.__module__\n"
        "print(models.MODEL_NAME, m.num_feat, hubconf.lkdn_s().num_blocks)\n"
    )
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["team42_LKDN", "42", "5"]
