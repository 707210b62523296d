"""Build the factsheet from measured figures: its tables, the PDF (when pdflatex is installed), the zip of sources.

    python factsheet/build.py                         # from the committed measurements
    python factsheet/build.py --refresh               # first re-measure rows that are missing or whose checkpoint changed
    python factsheet/build.py --refresh bundled       # first re-measure the named rows (ids in the manifest)

Inputs: factsheet/measurements/manifest.yml and the files it names. Outputs (each written atomically, and only
once every table could be filled): factsheet/generated/*.tex, factsheet/factsheet_sources.zip (the .tex sources
the organizers ask for) and factsheet/factsheet.pdf (pdflatex, run twice for the references).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import zipfile
from calendar import timegm
from dataclasses import dataclass
from pathlib import Path
from time import strptime

from factsheet.manifest import DEFAULT_MANIFEST, FACTSHEET_DIR, Manifest, load_manifest
from factsheet.measure import read_provenance, refresh
from factsheet.tables import Generated, generate
from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_bytes_atomic

MAIN_TEX = "factsheet.tex"
PDF_NAME = "factsheet.pdf"
ZIP_NAME = "factsheet_sources.zip"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same sources give the same zip
INSTALL_TEX = (
    "apt-get install -y --no-install-recommends texlive-latex-base texlive-latex-recommended "
    "texlive-fonts-recommended"
)


@dataclass
class Built:
    generated: Generated
    tex_files: list[Path]
    zip_path: Path
    pdf_path: Path | None  # None: pdflatex is not installed


def sources_zip(files: dict[str, bytes]) -> bytes:
    """A zip of `files` (archive name -> content) that depends on nothing else (order, dates, permissions)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()


def source_date_epoch(manifest: Manifest) -> int | None:
    """The newest measurement's date, so a rebuild from the same inputs gives the same PDF."""
    stamps = [p.get("measured_at") for r in manifest.all_rows() if (p := read_provenance(r))]
    stamps = [s for s in stamps if s]
    return timegm(strptime(max(stamps), "%Y-%m-%dT%H:%M:%SZ")) if stamps else None


def compile_pdf(files: dict[str, bytes], work_dir: Path, epoch: int | None) -> bytes:
    """pdflatex twice (references) in a clean `work_dir`; UserError with the first LaTeX error otherwise."""
    shutil.rmtree(work_dir, ignore_errors=True)
    for name, content in files.items():
        (work_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (work_dir / name).write_bytes(content)
    env = dict(os.environ)
    if epoch is not None:
        env.update(SOURCE_DATE_EPOCH=str(epoch), FORCE_SOURCE_DATE="1")
    command = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", MAIN_TEX]
    for _ in range(2):
        proc = subprocess.run(command, cwd=work_dir, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            errors = [line for line in proc.stdout.splitlines() if line.startswith("!")]
            raise UserError(
                f"{work_dir / MAIN_TEX.replace('.tex', '.log')}: pdflatex failed "
                f"({errors[0] if errors else f'exit code {proc.returncode}'}); fix the .tex sources"
            )
    return (work_dir / PDF_NAME).read_bytes()


def build(
    manifest: Manifest,
    out_dir: Path = FACTSHEET_DIR,
    main_tex: Path = FACTSHEET_DIR / MAIN_TEX,
    with_pdf: bool | None = None,
) -> Built:
    """Fill the tables from `manifest`'s inputs and write the .tex files, the zip and (pdflatex found) the PDF.

    with_pdf None compiles when pdflatex is on the PATH; nothing is written unless every table could be filled.
    """
    from models import MODEL_NAME, TEAM_NUMBER

    generated = generate(manifest, TEAM_NUMBER, MODEL_NAME)  # raises before anything is written
    files = {MAIN_TEX: main_tex.read_bytes()}
    files.update({f"generated/{name}": text.encode() for name, text in generated.files.items()})
    if with_pdf is None:
        with_pdf = shutil.which("pdflatex") is not None
    pdf = compile_pdf(files, out_dir / "build" / "latex", source_date_epoch(manifest)) if with_pdf else None
    tex_files = []
    for name, content in files.items():
        path = out_dir / name
        if path.resolve() != main_tex.resolve():
            write_bytes_atomic(path, content)
        tex_files.append(path)
    zip_path = write_bytes_atomic(out_dir / ZIP_NAME, sources_zip(files))
    pdf_path = write_bytes_atomic(out_dir / PDF_NAME, pdf) if pdf is not None else None
    return Built(generated, tex_files, zip_path, pdf_path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--refresh",
        nargs="*",
        metavar="ID",
        help="re-measure these rows first (test_demo.py); no ids: the rows missing or with a changed checkpoint",
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="the inputs (manifest.yml)")
    parser.add_argument("--no_pdf", action="store_true", help="write the .tex files and the zip only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = load_manifest(args.manifest)
    if args.refresh is not None:
        refresh(manifest, args.refresh)
    built = build(manifest, with_pdf=False if args.no_pdf else None)
    for path in [*built.tex_files, built.zip_path]:
        print(f"wrote {manifest.rel(path)}")
    if built.pdf_path is not None:
        print(f"wrote {manifest.rel(built.pdf_path)}")
    elif args.no_pdf:
        print(f"no PDF (--no_pdf): {manifest.rel(FACTSHEET_DIR / PDF_NAME)} was left as it was")
    else:
        print(
            f"pdflatex is not on the PATH: wrote the .tex sources and the zip, not the PDF "
            f"({manifest.rel(FACTSHEET_DIR / PDF_NAME)} was left as it was); install it with `{INSTALL_TEX}`"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
