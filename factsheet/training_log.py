"""What a training run did, read off its run folder (config.yml and the train.log that train/trainer.py writes).

A run may span several sessions (each resumes where the last saved state left off); its time is the sum of the
sessions' spans, each from its "training ... from iteration" line to its last step, save or validation line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from train.curves import STEP_LINE, VALIDATION_LINE
from utils.errors import UserError
from utils.files.yaml_file import read_yaml_mapping

_STAMP = r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,\d+)? "
_START = re.compile(
    _STAMP + r"training (?P<name>\S+) from iteration (?P<start>\d+) to (?P<total>\d+) on (?P<device>\S+) "
    r"x(?P<procs>\d+) process\(es\), precision (?P<precision>\S+), online fusion (?P<fusion>\S+)"
)
_IMAGES = re.compile(_STAMP + r"training images: (?P<used>\d+) \((?P<skipped>\d+) skipped")
_RESUMED = re.compile(_STAMP + r"resumed from ")
_STEP = re.compile(_STAMP + STEP_LINE)
_SAVED = re.compile(_STAMP + r"(?:saved iteration|stopping at iteration) (?P<iter>\d+)")
_VALID = re.compile(_STAMP + VALIDATION_LINE)
_EXPORTED = re.compile(_STAMP + r"exported the fused EMA weights")


@dataclass
class Session:
    start: datetime
    end: datetime
    first_iteration: int


@dataclass
class RunSummary:
    run_dir: Path
    config: dict
    sessions: list[Session] = field(default_factory=list)
    images_used: int | None = None
    images_skipped: int | None = None
    processes: int | None = None
    device: str | None = None
    last_iteration: int = 0
    last_loss: float | None = None
    last_loss_iteration: int | None = None
    last_validation: str | None = None
    last_validation_iteration: int | None = None
    exported: bool = False

    @property
    def wall_hours(self) -> float:
        return sum((s.end - s.start).total_seconds() for s in self.sessions) / 3600

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "train.log"


def read_yaml(path: Path) -> dict:
    return read_yaml_mapping(path, "check the path in the manifest")


def _time(match: re.Match) -> datetime:
    return datetime.strptime(match["stamp"], "%Y-%m-%d %H:%M:%S")


def summarize_run(run_dir: Path) -> RunSummary:
    """The run's config and what its train.log says it did; UserError when either file is missing."""
    summary = RunSummary(run_dir=run_dir, config=read_yaml(run_dir / "config.yml"))
    try:
        lines = (run_dir / "train.log").read_text().splitlines()
    except OSError as err:
        raise UserError(
            f"{run_dir / 'train.log'}: cannot read the training log ({err.strerror}); "
            "train with `python train/train_lkdn.py --config <the run's config>` or fix `trained_by`"
        ) from None
    current: Session | None = None
    for line in lines:
        if m := _START.match(line):
            current = Session(_time(m), _time(m), int(m["start"]))
            summary.sessions.append(current)
            summary.processes, summary.device = int(m["procs"]), m["device"]
            continue
        if m := _IMAGES.match(line):
            summary.images_used, summary.images_skipped = int(m["used"]), int(m["skipped"])
            current = None  # a new session is starting: its set-up time is not training
            continue
        if _RESUMED.match(line):
            current = None
            continue
        m = _STEP.match(line) or _SAVED.match(line) or _VALID.match(line) or _EXPORTED.match(line)
        if m is None:
            continue
        if current is not None:
            current.end = _time(m)
        if "iter" in m.groupdict():
            summary.last_iteration = max(summary.last_iteration, int(m["iter"]))
        if m.re is _STEP:
            summary.last_loss, summary.last_loss_iteration = float(m["loss"]), int(m["iter"])
        elif m.re is _VALID:
            summary.last_validation = m["scores"].replace(" (best)", "")
            summary.last_validation_iteration = int(m["iter"])
        elif m.re is _EXPORTED:
            summary.exported = True
    if not summary.sessions:
        raise UserError(
            f'{run_dir / "train.log"}: no "training ... from iteration" line, so no training to report; '
            "point `trained_by` in the manifest at the run folder that made the checkpoint"
        )
    return summary
