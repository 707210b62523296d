"""The factsheet's inputs as declared in measurements/manifest.yml, checked once so the rest can trust them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError
from utils.files.yaml_file import read_yaml_mapping

ROOT = Path(__file__).resolve().parents[1]
FACTSHEET_DIR = ROOT / "factsheet"
DEFAULT_MANIFEST = FACTSHEET_DIR / "measurements" / "manifest.yml"
REFRESH_COMMAND = "python factsheet/build.py --refresh {id}"


@dataclass
class Row:
    """One measured input: a test_demo run whose results.json lives in measurements/<id>/."""

    id: str
    label: str
    entry: str  # the key of results.json holding this row (test_demo keys it by model name)
    command: str  # run from the repository root; {save_dir} and {data_dir} are filled in by --refresh
    folder: Path  # measurements/<id>/
    checkpoint: Path | None = None
    trained_by: list[Path] = field(default_factory=list)
    lr_image: Path | None = None  # challenge row: the DIV2K valid LR image its timing run uses
    not_measured: dict[str, str] = field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.folder / "results.json"

    @property
    def provenance_path(self) -> Path:
        return self.folder / "measured.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "test_demo.log"

    @property
    def refresh_command(self) -> str:
        return REFRESH_COMMAND.format(id=self.id)


@dataclass
class Manifest:
    path: Path
    root: Path  # commands and input paths are relative to it
    sets: list[str]
    sets_not_measured: dict[str, str]
    rows: list[Row]
    challenge: Row
    reported_source: str
    reported_benchmark: dict[str, tuple[float, float]]
    reported_challenge: dict[str, float]
    recipe: list[Path]

    def all_rows(self) -> list[Row]:
        return [*self.rows, self.challenge]

    def row(self, row_id: str) -> Row:
        for row in self.all_rows():
            if row.id == row_id:
                return row
        known = ", ".join(r.id for r in self.all_rows())
        raise UserError(f"{self.path}: no row {row_id!r}; the rows are {known}")

    def rel(self, path: Path) -> str:
        """`path` as the factsheet prints it: relative to the repository root where possible."""
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))).as_posix()


def _need(mapping: dict, key: str, where: str, path: Path) -> object:
    if not isinstance(mapping, dict) or key not in mapping:
        raise UserError(f"{path}: {where} has no `{key}`; add it (see the comments at the top of the file)")
    return mapping[key]


def _row(raw: dict, where: str, manifest_path: Path, root: Path, model_name: str) -> Row:
    def fill(text: str) -> str:
        return str(text).replace("{model_name}", model_name)

    row_id = str(_need(raw, "id", where, manifest_path))
    checkpoint = raw.get("checkpoint")
    lr_image = raw.get("lr_image")
    return Row(
        id=row_id,
        label=str(raw.get("label", row_id)),
        entry=fill(_need(raw, "entry", f"{where} {row_id}", manifest_path)),
        command=" ".join(fill(_need(raw, "command", f"{where} {row_id}", manifest_path)).split()),
        folder=manifest_path.parent / row_id,
        checkpoint=root / fill(checkpoint) if checkpoint else None,
        trained_by=[root / fill(p) for p in raw.get("trained_by", [])],
        lr_image=root / fill(lr_image) if lr_image else None,
        not_measured={str(k): " ".join(str(v).split()) for k, v in (raw.get("not_measured") or {}).items()},
    )


def load_manifest(
    path: Path = DEFAULT_MANIFEST, root: Path = ROOT, model_name: str | None = None
) -> Manifest:
    """The manifest at `path`; paths in it are taken relative to `root` (the repository root)."""
    if model_name is None:
        from models import MODEL_NAME

        model_name = MODEL_NAME
    raw = read_yaml_mapping(path, "pass an existing --manifest")
    bench = _need(raw, "benchmark", "the manifest", path)
    rows = [_row(r, "benchmark row", path, root, model_name) for r in _need(bench, "rows", "benchmark", path)]
    challenge = _row(_need(raw, "challenge", "the manifest", path), "challenge", path, root, model_name)
    ids = [r.id for r in [*rows, challenge]]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: row ids must be unique, got {', '.join(ids)}; rename the duplicates")
    reported = _need(raw, "reported", "the manifest", path)
    reported_benchmark = {
        str(name): (float(value[0]), float(value[1]))
        for name, value in _need(reported, "benchmark", "reported", path).items()
    }
    return Manifest(
        path=path,
        root=root,
        sets=[str(s) for s in _need(bench, "sets", "benchmark", path)],
        sets_not_measured={
            str(k): " ".join(str(v).split()) for k, v in (bench.get("not_measured") or {}).items()
        },
        rows=rows,
        challenge=challenge,
        reported_source=" ".join(str(_need(reported, "source", "reported", path)).split()),
        reported_benchmark=reported_benchmark,
        reported_challenge={
            str(k): float(v) for k, v in _need(reported, "challenge", "reported", path).items()
        },
        recipe=[root / p for p in raw.get("recipe", [])],
    )
