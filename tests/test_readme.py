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
