"""Download the first N LSDIR training images (the factsheet's recipe uses 2,000) and write the list it reads.

    python -m data.download_lsdir --data_dir data/ --first 2000 [--token HF_TOKEN] [--keep_archives]

LSDIR (Li et al., CVPR 2023) is published on Hugging Face (`ofsoundof/LSDIR`, gated: an account must accept its
terms; pass its token with --token or the HF_TOKEN variable). Its 84,991 training images are numbered from
0000001.png in folders of 1,000 (0001000/0000001.png .. 0001000.png, 0002000/0001001.png, ...) and shipped in
tar.gz shards, shard-00.tar.gz first, in that order. Only the shards that hold the wanted images are fetched
(the first, for 2,000 images), in order until every wanted image is found.

Result: data_dir/LSDIR/0001000/0000001.png .. and data_dir/LSDIR_first2000.txt, one path a line relative to
data_dir (what `train_sources` names). Verification: LSDIR publishes no checksums, so a shard is checked by
gzip's CRC as it is read, each image by its declared size (capped by the largest PNG an LSDIR image can be) and
by decoding it, the shard's download and the images extracted by caps on their total size, and the set by its
names. Each folder of 1,000 appears complete or not at all (extracted to a temporary folder, then renamed); a
complete folder is skipped and a broken download resumes when the command is re-run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_text_atomic
from utils.files.download import decode_all, download_file, download_session, png_bound, tar_files

OFFICIAL_BASE_URL = "https://huggingface.co/ofsoundof/LSDIR/resolve/main"
TOTAL_IMAGES = 84_991
FOLDER_SIZE = 1_000
SHARDS = 17  # shard-00.tar.gz .. shard-16.tar.gz
MAX_SIDE = 4096  # LSDIR's images are about 2K on the longer side; twice that is the margin
MAX_IMAGE_BYTES = png_bound(MAX_SIDE, MAX_SIDE)  # a larger member is not an image of the set
IMAGES_PER_SHARD = -(-TOTAL_IMAGES // SHARDS)
MAX_SHARD_BYTES = IMAGES_PER_SHARD * (MAX_IMAGE_BYTES + 1024)  # every image at the cap, plus its tar header
_MEMBER = re.compile(r"(?:.*/)?(\d{7})/(\d{7})\.png")


def image_path(index: int) -> str:
    """The path of training image `index` (1-based) inside LSDIR/."""
    folder = -(-index // FOLDER_SIZE) * FOLDER_SIZE
    return f"{folder:07d}/{index:07d}.png"


def list_name(first: int) -> str:
    return f"LSDIR_first{first}.txt"


def _folders(first: int) -> dict[str, list[str]]:
    """{folder: the wanted image names in it} for images 1..first."""
    wanted: dict[str, list[str]] = {}
    for index in range(1, first + 1):
        folder, name = image_path(index).split("/")
        wanted.setdefault(folder, []).append(name)
    return wanted


def _complete(folder: Path, names: list[str]) -> bool:
    return folder.is_dir() and {p.name for p in folder.glob("*.png")} >= set(names)


def _extract_wanted(archive: Path, lsdir: Path, wanted: dict[str, list[str]]) -> set[str]:
    """Extract the wanted images of `archive` folder by folder (temporary folder, then rename); returns the
    folders completed. Raises UserError for a corrupt archive or an image of the wrong size."""
    fix = f"delete {archive} and re-run to download it again"
    staging = Path(tempfile.mkdtemp(prefix=".LSDIR.extracting.", dir=lsdir.parent))
    found: dict[str, set[str]] = {}

    def want(member: str) -> bool:
        match = _MEMBER.fullmatch(member)
        return match is not None and f"{match.group(2)}.png" in wanted.get(match.group(1), ())

    try:
        files = tar_files(
            archive, want, max_member_bytes=MAX_IMAGE_BYTES,
            max_total_bytes=sum(map(len, wanted.values())) * MAX_IMAGE_BYTES,  # what the wanted images can take
            dataset="LSDIR", image="an LSDIR image", fix=fix,
        )  # fmt: skip
        for member, data in files:
            match = _MEMBER.fullmatch(member)
            folder, name = match.group(1), f"{match.group(2)}.png"
            target = staging / folder / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
            found.setdefault(folder, set()).add(name)
        decode_all(sorted(staging.glob("*/*.png")), fix)  # a zero-filled or truncated image is refused here
        done = set()
        for folder, names in found.items():
            if names >= set(wanted[folder]) and not _complete(lsdir / folder, wanted[folder]):
                lsdir.mkdir(exist_ok=True)
                shutil.rmtree(lsdir / folder, ignore_errors=True)  # an incomplete folder of an earlier try
                os.replace(staging / folder, lsdir / folder)
                done.add(folder)
        return done
    except OSError as err:
        raise UserError(
            f"{lsdir}: cannot write the images ({err.strerror or err}); free disk space and re-run"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_lsdir(
    data_dir: Path,
    first: int = 2000,
    *,
    base_url: str = OFFICIAL_BASE_URL,
    token: str | None = None,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch LSDIR training images 1..first into data_dir/LSDIR and write their list; returns the list's path."""
    if not 1 <= first <= TOTAL_IMAGES:
        raise UserError(f"--first {first}: LSDIR has training images 1 to {TOTAL_IMAGES}")
    data_dir = Path(data_dir)
    offline = "the trainer reads any folders of HR images (--train_sources DIR [DIR ...])"
    with download_session(data_dir, "--data_dir", offline, data_dir / "LSDIR", data_dir / "LSDIR_archives"):
        return _download(data_dir, first, base_url, token, keep_archives, progress)


def _download(
    data_dir: Path, first: int, base_url: str, token: str | None, keep_archives: bool, progress: bool
) -> Path:
    lsdir = data_dir / "LSDIR"
    wanted = _folders(first)
    missing = {folder for folder, names in wanted.items() if not _complete(lsdir / folder, names)}
    headers = {"Authorization": f"Bearer {token}"} if token else None
    for shard in range(SHARDS):
        if not missing:
            break
        name = f"shard-{shard:02d}.tar.gz"
        archive = data_dir / "LSDIR_archives" / name
        if not archive.exists():
            print(f"downloading {base_url.rstrip('/')}/{name}")
            download_file(
                f"{base_url.rstrip('/')}/{name}",
                archive,
                progress=progress,
                headers=headers,
                max_bytes=MAX_SHARD_BYTES,
            )
        print(f"extracting the wanted images of {archive}")
        missing -= _extract_wanted(archive, lsdir, {f: wanted[f] for f in missing})
        if not keep_archives:
            archive.unlink()
            if not any(archive.parent.iterdir()):
                archive.parent.rmdir()
    if missing:
        raise UserError(f"{lsdir}: folders {', '.join(sorted(missing))} were in no shard; check --base_url")
    lines = [f"LSDIR/{image_path(i)}" for i in range(1, first + 1)]
    listed = write_text_atomic(data_dir / list_name(first), "\n".join(lines) + "\n")
    print(f"{listed}: {first} LSDIR training images listed")
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=Path("data"), help="where LSDIR/ and the list go")
    parser.add_argument(
        "--first", type=int, default=2000, help="how many images, from the first (default 2000)"
    )
    parser.add_argument(
        "--token", default=os.environ.get("HF_TOKEN"), help="Hugging Face token (default: $HF_TOKEN)"
    )
    parser.add_argument("--base_url", default=OFFICIAL_BASE_URL, help="where the shards are served")
    parser.add_argument(
        "--keep_archives", action="store_true", help="keep the shards in data_dir/LSDIR_archives/"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    download_lsdir(
        args.data_dir, args.first, base_url=args.base_url, token=args.token, keep_archives=args.keep_archives,
        progress=not args.no_progress,
    )  # fmt: skip
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
