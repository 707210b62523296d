"""Reading the YAML files users edit (training configs, the factsheet manifest): one message per mistake."""

from __future__ import annotations

from pathlib import Path

import yaml

from utils.errors import UserError


def read_yaml_mapping(path: Path, missing_fix: str) -> dict:
    """The mapping in `path` (an empty file is an empty mapping); UserError for a missing or malformed file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror}); {missing_fix}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of field: value; fix the file")
    return data


def yaml_text(data: object) -> str:
    """`data` as YAML in its own key order (what a person reads first comes first)."""
    return yaml.safe_dump(data, sort_keys=False)
