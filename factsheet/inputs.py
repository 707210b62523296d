"""Reading and validating the factsheet's inputs: a row's results.json entry, one figure in it, a training
config's field. Each failure is a `MissingFigure` naming the file, the field and the command that measures it.
"""

from __future__ import annotations

import json
from pathlib import Path

from factsheet.manifest import Manifest, Row
from factsheet.measure import stale_reason
from utils.errors import UserError


class MissingFigure(UserError):
    """A figure the factsheet needs is not in its input: measure it, or declare why it cannot be."""


def load_entry(row: Row, manifest: Manifest) -> dict:
    """The row's entry of its results.json; stops when it is missing or older than the row's checkpoint."""
    reason = stale_reason(row, manifest)
    if reason is not None:
        missing_checkpoint = row.checkpoint is not None and not row.checkpoint.is_file()
        then = (
            f"{manifest.rel(row.checkpoint)} does not exist yet: put the checkpoint there, then run "
            if missing_checkpoint
            else "measure it with "
        )
        raise MissingFigure(
            f"{reason} (row {row.id!r}, {row.label}); {then}`{row.refresh_command}` (it runs `{row.command}`)"
        )
    try:
        results = json.loads(row.results_path.read_text())
    except ValueError:
        raise UserError(
            f"{manifest.rel(row.results_path)}: not valid JSON; re-measure with `{row.refresh_command}`"
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get(row.entry), dict):
        raise MissingFigure(
            f"{manifest.rel(row.results_path)}: no entry {row.entry!r}; re-measure with `{row.refresh_command}`"
        )
    return results[row.entry]


def figure(entry: dict, keys: tuple[str, ...], row: Row, manifest: Manifest) -> float:
    """entry[k1][k2]...; MissingFigure naming the field and the command that measures it otherwise."""
    value: object = entry
    for key in keys:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise MissingFigure(
                f"{manifest.rel(row.results_path)}: no {'.'.join(keys)} for {row.label}; measure it with "
                f"`{row.refresh_command}` (it runs `{row.command}`)"
            )
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MissingFigure(
            f"{manifest.rel(row.results_path)}: {'.'.join(keys)} is {value!r}, not a number; "
            f"re-measure with `{row.refresh_command}`"
        )
    return float(value)


def need(config: dict, key: str, path: Path) -> object:
    """config[key]; MissingFigure naming the file when a training config lacks it."""
    if key not in config:
        raise MissingFigure(f"{path}: no `{key}`; the training configs of train/config.py all have it")
    return config[key]
