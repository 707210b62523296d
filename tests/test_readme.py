"""README.md opens with the commands that matter, and CI runs exactly the test command it shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _opening_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no opening bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_main_job_and_the_test_command():
    main_job, tests = _opening_commands()
    assert "pip install -r requirements.txt" in main_job and "python test_demo.py" in main_job
    assert "python -m data.download_div2k" in main_job
    assert "python -m pytest" in tests


def test_ci_runs_the_readme_test_command():
    _main_job, tests = _opening_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_every_script_the_readme_runs_exists():
    text = (ROOT / "README.md").read_text()
    scripts = set(re.findall(r"python ([\w/]+\.py)", text))
    modules = set(re.findall(r"python -m ([\w.]+)", text)) - {"pytest"}
    assert scripts and modules
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    missing += [m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file()]
    assert not missing, f"README.md runs files that do not exist: {missing}"


INTERNAL = ("the issue", "issue's", "this machine", "the slides", "session", "../shared", "when published")


def test_readme_speaks_to_a_stranger():
    text = (ROOT / "README.md").read_text().lower()
    found = [word for word in INTERNAL if word in text]
    assert not found, f"README.md speaks to its builders: {found}"


def test_readme_commands_name_only_what_a_user_has_or_creates():
    """Every path a README command names is in the repository, or a place the commands create or the user
    brings (data/, benchmark/, model_zoo/authors/, experiments/, photos, outputs)."""
    text = (ROOT / "README.md").read_text()
    brought = ("data/", "benchmark", "model_zoo/authors/", "experiments/", "photo", "upscaled/", "runs/", "train_data/",
               "my_", "scans/", "path/to/", "results", "CHECKPOINT", "weights.", "lkdn_s.onnx", "docs/", "div2k_sample", "out.png")  # fmt: skip
    for command in re.findall(r"^python [^\n#]*", text, flags=re.M):
        for token in command.split():
            if "/" in token and not token.startswith(("-", "http")):
                path = token.strip("`'\",;()")
                assert (ROOT / path).exists() or path.startswith(brought), f"{command}: {path}"


def test_licence_is_there():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
