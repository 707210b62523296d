"""`--refresh`: re-run test_demo.py for the factsheet's rows and keep what it wrote, with its provenance.

A row's measurements are only as good as the checkpoint they were made with, so each refresh records the
checkpoint's SHA-256; the build refuses results whose checkpoint has changed since (`stale_reason`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from factsheet.manifest import FACTSHEET_DIR, Manifest, Row
from utils.device import cpu_description
from utils.errors import UserError
from utils.files.atomic_write import write_bytes_atomic, write_text_atomic

SCRATCH = FACTSHEET_DIR / "build" / "refresh"  # git-ignored: SR images and stand-in data live here


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_provenance(row: Row) -> dict | None:
    if not row.provenance_path.is_file():
        return None
    try:
        return json.loads(row.provenance_path.read_text())
    except ValueError:
        raise UserError(
            f"{row.provenance_path}: not valid JSON; re-measure with `{row.refresh_command}`"
        ) from None


def stale_reason(row: Row, manifest: Manifest) -> str | None:
    """Why the row's results cannot be used as they are (None: they can)."""
    if not row.results_path.is_file():
        return f"{manifest.rel(row.results_path)} does not exist"
    if row.checkpoint is None or not row.checkpoint.is_file():
        return None  # nothing to compare against (e.g. ../shared absent): the committed results stand
    provenance = read_provenance(row)
    if provenance is None:
        return f"{manifest.rel(row.provenance_path)} (the checkpoint's SHA-256) does not exist"
    if provenance.get("checkpoint_sha256") != sha256(row.checkpoint):
        return f"{manifest.rel(row.checkpoint)} changed since {manifest.rel(row.results_path)} was measured"
    return None


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def make_timing_data(lr_image: Path, data_dir: Path) -> Path:
    """A DIV2K-layout folder holding one real DIV2K valid LR image and a stand-in HR (its bicubic x4)."""
    from utils.files.image_io import read_rgb, write_rgb
    from utils.image.imresize import matlab_imresize

    if not lr_image.is_file():
        raise UserError(
            f"{lr_image}: the DIV2K valid LR image for the timing run is missing; put it there or point "
            "`lr_image` in factsheet/measurements/manifest.yml at one (named like 0853x4.png)"
        )
    stem = lr_image.stem.split("x")[0]
    lr_dir, hr_dir = data_dir / "DIV2K_valid_LR", data_dir / "DIV2K_valid_HR"
    lr_dir.mkdir(parents=True, exist_ok=True)
    hr_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lr_image, lr_dir / lr_image.name)
    write_rgb(hr_dir / f"{stem}.png", matlab_imresize(read_rgb(lr_image), 4))
    return data_dir


def measure(row: Row, manifest: Manifest) -> None:
    """Run the row's command and keep results.json, the test_demo log and measured.json in measurements/<id>/."""
    if row.checkpoint is not None and not row.checkpoint.is_file():
        raise UserError(
            f"{row.checkpoint}: missing, so row {row.id!r} ({row.label}) cannot be measured; put the "
            f"checkpoint there, then run `{row.refresh_command}`"
        )
    scratch = SCRATCH / row.id
    shutil.rmtree(scratch, ignore_errors=True)
    save_dir, data_dir = scratch / "out", scratch / "data"
    if row.lr_image is not None:
        make_timing_data(row.lr_image, data_dir)
    argv = shlex.split(row.command.format(save_dir=save_dir, data_dir=data_dir))
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    print(f"[{row.id}] {row.command}", flush=True)
    load = os.getloadavg()
    proc = subprocess.run(argv, cwd=manifest.root)
    if proc.returncode != 0:
        raise UserError(
            f"row {row.id!r}: `{row.command}` failed (exit code {proc.returncode}, its message is above); "
            f"fix that, then run `{row.refresh_command}`"
        )
    results = json.loads((save_dir / "results.json").read_text())
    if row.entry not in results:
        raise UserError(
            f"{save_dir / 'results.json'}: no entry {row.entry!r}; set `entry` of row {row.id!r} in "
            f"{manifest.rel(manifest.path)} to one of {', '.join(results)}"
        )
    provenance = {
        "row": row.id,
        "command": row.command,
        "refreshed_by": row.refresh_command,
        "checkpoint": manifest.rel(row.checkpoint) if row.checkpoint else None,
        "checkpoint_sha256": sha256(row.checkpoint) if row.checkpoint else None,
        "lr_image": manifest.rel(row.lr_image) if row.lr_image else None,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git_commit(manifest.root),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_description(),
        "load_average_at_start": [round(x, 2) for x in load],
    }
    write_text_atomic(row.results_path, json.dumps({row.entry: results[row.entry]}, indent=2) + "\n")
    log = save_dir / f"{row.entry}.log"
    if log.is_file():
        write_bytes_atomic(row.log_path, log.read_bytes())
    write_text_atomic(row.provenance_path, json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"[{row.id}] wrote {manifest.rel(row.results_path)}", flush=True)


def refresh(manifest: Manifest, ids: list[str]) -> list[str]:
    """Measure the rows named in `ids`, or (no ids) every row whose results are missing or stale."""
    if ids:
        rows = [manifest.row(i) for i in ids]
    else:
        rows = [r for r in manifest.all_rows() if stale_reason(r, manifest) is not None]
        for r in rows:
            print(f"[{r.id}] to measure: {stale_reason(r, manifest)}", flush=True)
        if not rows:
            print("every row is up to date with its checkpoint", flush=True)
    for row in rows:
        measure(row, manifest)
    return [r.id for r in rows]
