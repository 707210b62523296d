"""The LKDN authors' released checkpoints, fetched from their public repository and checked by SHA-256.

    python -m utils.files.pretrained LKDN-S_del_rep_x4 [--dest model_zoo/authors]
    python -m utils.files.pretrained all

The weights are the authors' work, released under the MIT licence (Copyright (c) 2023 StellaXx) in
github.com/stella-von/LKDN, experiments/pretrained_models/LKDN/. They are downloaded, never redistributed:
model_zoo/authors/ is not part of this repository. LKDN_WEIGHTS_BASE_URL overrides where they come from.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from utils.errors import UserError, run_cli
from utils.files.download import download_file, download_session, sha256_of

AUTHORS_BASE_URL = "https://raw.githubusercontent.com/stella-von/LKDN/main/experiments/pretrained_models/LKDN"
BASE_URL_ENV = "LKDN_WEIGHTS_BASE_URL"
DEFAULT_DEST = Path(__file__).resolve().parents[2] / "model_zoo" / "authors"
MAX_BYTES = 16 << 20  # the authors' files are under 3 MB; a transfer past this is not one of them
LICENCE = "MIT licence, Copyright (c) 2023 StellaXx (github.com/stella-von/LKDN)"

AUTHORS_WEIGHTS_SHA256 = {
    "LKDN-S_x4.pth": "39ff2c69cdeb40f842c9f93368caee3323a4309c350373edeb2dc9ef3cc05851",
    "LKDN-S_del_rep_x4.pth": "b802a3945d7d4f22f836668a78448b37fe5da90d7b08afc564fbddfa594a8cf1",
    "LKDN_x2.pth": "02b429e795ad0863fdf21c6924c79344e30a39d637c44442d13124193b012e6b",
    "LKDN_x3.pth": "52835d49d402683ea2085c13e4afc3aca49f6b806ea29d6ed29b2238cd7874c5",
    "LKDN_x4.pth": "f534422583c99dad994fd7df897f6f872637218430cfedf6c2d2a072ea86dbd7",
}


def _file_name(name: str) -> str:
    file_name = name if name.endswith(".pth") else f"{name}.pth"
    if file_name not in AUTHORS_WEIGHTS_SHA256:
        known = ", ".join(n.removesuffix(".pth") for n in AUTHORS_WEIGHTS_SHA256)
        raise UserError(f"{name}: not one of the authors' checkpoints; choose one of {known}")
    return file_name


def fetch_authors_weights(
    name: str,
    dest_dir: Path = DEFAULT_DEST,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Path to the authors' checkpoint `name` (e.g. "LKDN-S_del_rep_x4"), downloading it if not yet there.

    A file already in `dest_dir` with the right SHA-256 is used as is; one with another hash is an error
    rather than silently replaced. Source: `base_url`, else $LKDN_WEIGHTS_BASE_URL, else the authors' GitHub.
    """
    file_name = _file_name(name)
    expected = AUTHORS_WEIGHTS_SHA256[file_name]
    dest = Path(dest_dir) / file_name
    offline = f"copy {file_name} into {dest.parent} (its SHA-256 is checked)"
    with download_session(dest.parent, "--dest", offline, wait=None):  # a second process waits for the first
        return _fetch_verified(dest, file_name, expected, base_url, progress)


def _fetch_verified(dest: Path, file_name: str, expected: str, base_url: str | None, progress: bool) -> Path:
    if dest.exists():
        actual = sha256_of(dest)
        if actual != expected:
            raise UserError(
                f"{dest}: SHA-256 is {actual}, expected {expected} (not the authors' file); "
                "delete it and re-run"
            )
        return dest
    base_url = base_url or os.environ.get(BASE_URL_ENV) or AUTHORS_BASE_URL
    return download_file(
        f"{base_url.rstrip('/')}/{file_name}", dest, sha256=expected, progress=progress, max_bytes=MAX_BYTES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [n.removesuffix(".pth") for n in AUTHORS_WEIGHTS_SHA256]
    parser.add_argument("name", choices=[*names, "all"], help="which checkpoint (or all)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder to put it in")
    parser.add_argument(
        "--base_url", default=None, help=f"where to fetch from (default: ${BASE_URL_ENV} or GitHub)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in names if args.name == "all" else [args.name]:
        path = fetch_authors_weights(name, args.dest, base_url=args.base_url, progress=not args.no_progress)
        print(f"{path}  (sha256 ok; {LICENCE})")
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
