"""Download the SR benchmark sets, or lay out a copy you have, in the folders test_demo and the trainer read.

    python -m data.download_benchmarks [--sets Set5 Set14 B100] [--benchmark_dir benchmark]
    python -m data.download_benchmarks --sets Urban100 --sha256 Urban100=<hex from the page it names>
    python -m data.download_benchmarks --from_dir ~/Downloads/Manga109 --name Manga109
    python -m data.download_benchmarks --from_dir ~/Downloads/T91 --name T91 --train

Result: benchmark_dir/<set>/HR/<image>.png (cropped to a multiple of 4, as the SR literature evaluates) and
benchmark_dir/<set>/LR_bicubic_x4/<image>.png, made from the HR by `utils.image.imresize` (MATLAB's bicubic
`imresize`, bit for bit): the layout `test_demo.py --benchmark_dir` and `--val_dirs` read. A training set
(--train) goes to train_dir/<set>/<image>.png, HR only (data/prepare.py makes its LR).

Sources: Set5, Set14, B100 (BSD100) and Urban100 from the Hugging Face datasets eugenesiow/<set> at a pinned
revision (the HR archive only). Each archive is checked by its SHA-256 where the repository knows it (Set5 and
BSD100: the value Hugging Face shows for the Git LFS object) or where you pass it (--sha256 SET=HEX, copied from
the page the error names). The HR pixels of Set5, Set14, B100, T91 and BSD200 are also checked against the copy
this repository's figures were measured on (one SHA-256 over the sorted per-image digests, names aside): for
Set14 that is its check. Manga109 (free for academic use by request at manga109.org) and T91 / BSD200 (no
stable source) are laid out from a folder you have with --from_dir, and checked the same way when the
repository knows them. A complete set is skipped; each set appears complete or not at all.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError, run_cli
from utils.files.download import download_file, download_session, png_bound, tar_files
from utils.files.image_io import write_image
from utils.image.imresize import matlab_imresize

HUB_URL = "https://huggingface.co"
SCALE = 4
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
OFFLINE = "lay out a copy you have with --from_dir FOLDER --name SET (any folder of HR images)"
# SHA-256 over the sorted digests of each HR image as this tool writes it (see `content_digest`), measured on
# the copies README's Set5 / Set14 / B100 figures and the T91 / BSD200 pilot were measured on.
CONTENT_SHA256 = {
    "Set5": "c9577e1d37f5a79735af513aae93d46bd6eef526f0a1d8a0e9315ad7526e7b5f",
    "Set14": "8e4f4a462366d243d4c8f6f50c78c3356fe3bc44fbd9cb982d723852330940ef",
    "B100": "ec73d25a34286c749af479475e96d0e8bb2a8f76cfb04eee34e06327dd87a739",
    "T91": "bf86dd11e36ab571d867ffba0c28e8b2d2741306c32589b2756041998ff60d52",
    "BSD200": "5515184239050174d6d65e3de78846581270a1cd9813cf80a19ffb8514464a54",
}


@dataclass(frozen=True)
class Source:
    """One benchmark set on the Hugging Face hub: its HR archive at a pinned revision."""

    name: str  # the folder it becomes under benchmark_dir
    repo: str
    revision: str
    archive: str  # path of the HR archive inside the repository
    count: int  # images it holds
    max_side: int  # the longest side of its images
    sha256: str | None = None  # of the archive, when known

    def url(self, base_url: str = HUB_URL) -> str:
        return f"{base_url.rstrip('/')}/datasets/{self.repo}/resolve/{self.revision}/{self.archive}"

    @property
    def page(self) -> str:
        """Where Hugging Face shows the archive's SHA-256 (under "Git LFS Details")."""
        return f"{HUB_URL}/datasets/{self.repo}/blob/{self.revision}/{self.archive}"

    @property
    def max_image_bytes(self) -> int:
        return png_bound(self.max_side, self.max_side)

    @property
    def max_bytes(self) -> int:
        return self.count * (self.max_image_bytes + 1024)


SOURCES = {
    source.name: source
    for source in (
        Source(
            "Set5", "eugenesiow/Set5", "bcb97ac28c8a5f9113825f8d163564e16513f3ed", "data/Set5_HR.tar.gz", 5, 512,
            "260fc447296333f6c2716bcd65513968c33b666f21a905537ee3330c51a1945b",
        ),
        Source("Set14", "eugenesiow/Set14", "5afcf80d267dba61cdfa9a32b1a6fe4cca57b6d7", "data/Set14_HR.tar.gz", 14, 720),
        Source(
            "B100", "eugenesiow/BSD100", "8fbc3a31603eba947ea6eba928d31fee0f0c31bb", "data/BSD100_HR.tar.gz", 100,
            481, "333495ccded04a0db52b33361140821ea7e0d8af8dfb54b58df79a00010858d6",
        ),
        Source(
            "Urban100", "eugenesiow/Urban100", "57309de03db02ac12ee09ad6127e7b815c211328",
            "data/Urban100_HR.tar.gz", 100, 1024,
        ),
    )
}  # fmt: skip
DEFAULT_SETS = ("Set5", "Set14", "B100")
NO_SOURCE = {
    "Manga109": "free for academic use by request at http://www.manga109.org",
    "T91": "no stable public source",
    "BSD200": "no stable public source",
}


def image_digest(rgb: np.ndarray) -> str:
    """SHA-256 of a uint8 HxWx3 RGB image's size and pixels (what PSNR sees; file format and name aside)."""
    header = f"{rgb.shape[0]}x{rgb.shape[1]}:".encode()
    return hashlib.sha256(header + np.ascontiguousarray(rgb).tobytes()).hexdigest()


def content_digest(image_digests: Iterable[str]) -> str:
    """One SHA-256 for a set: over its images' digests, sorted, so names and order do not matter."""
    return hashlib.sha256("\n".join(sorted(image_digests)).encode()).hexdigest()


def _decode(data: bytes, origin: str, fix: str) -> np.ndarray:
    """An 8-bit image (grayscale or RGB, alpha dropped) from encoded bytes; UserError naming `origin`."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None or img.size == 0:
        raise UserError(f"{origin}: not a decodable image (truncated, zero-filled or not an image); {fix}")
    if img.dtype != np.uint8:
        raise UserError(f"{origin}: a {img.dtype} image; the benchmarks are 8-bit, {fix}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if min(img.shape[:2]) < SCALE:
        raise UserError(f"{origin}: {img.shape[1]}x{img.shape[0]} is smaller than the scale {SCALE}; {fix}")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _rgb(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img


class _Staging:
    """A set being written into a temporary sibling of its final folder, renamed into place when complete."""

    def __init__(self, final: Path, *, train: bool) -> None:
        self.final, self.train = final, train
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(
            f".{final.name}.extracting.*"
        ):  # a killed run's (the caller holds the lock)
            shutil.rmtree(stale, ignore_errors=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{final.name}.extracting.", dir=final.parent))
        self.hr_dir = self.root if train else self.root / "HR"
        self.lr_dir = self.root / f"LR_bicubic_x{SCALE}"
        self.hr_dir.mkdir(exist_ok=True)
        if not train:
            self.lr_dir.mkdir()
        self.digests: list[str] = []
        self.names: set[str] = set()

    def add(self, name: str, img: np.ndarray, origin: str, fix: str) -> None:
        """Crop `img` to a multiple of the scale, write it (and its LR), and record its digest."""
        stem = Path(name).stem
        if stem in self.names:
            raise UserError(f"{origin}: a second image named {stem}; {fix}")
        self.names.add(stem)
        height, width = img.shape[:2]
        img = img[: height // SCALE * SCALE, : width // SCALE * SCALE]
        # written fsynced (write_image): the folder is renamed into place as a whole once every image is
        write_image(self.hr_dir / f"{stem}.png", img)
        if not self.train:
            write_image(self.lr_dir / f"{stem}.png", matlab_imresize(img, 1 / SCALE))
        self.digests.append(image_digest(_rgb(img)))

    def commit(self) -> None:
        if self.final.exists():
            shutil.rmtree(self.final)  # an incomplete folder of an earlier try (a complete one was skipped)
        os.replace(self.root, self.final)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def is_complete(folder: Path, count: int | None = None, *, train: bool = False) -> bool:
    """True when `folder` holds a laid-out set: `count` HR images (any number when None), each with its LR."""
    hr_dir = folder if train else folder / "HR"
    if not hr_dir.is_dir():
        return False
    names = sorted(p.name for p in hr_dir.glob("*.png"))
    if not names or (count is not None and len(names) != count):
        return False
    return train or sorted(p.name for p in (folder / f"LR_bicubic_x{SCALE}").glob("*.png")) == names


def _check_content(name: str, digests: list[str], *, required: bool, fix: str) -> str:
    """Compare a set's pixels with the copy the repository knows: an error when that is the set's only check,
    else a line saying whether they match."""
    known = CONTENT_SHA256.get(name)
    if not known:
        return ""
    if content_digest(digests) == known:
        return f"; pixels identical to the copy this repository's {name} figures were measured on"
    if required:
        raise UserError(
            f"{name}: its HR pixels differ from the {name} this repository was measured on (SHA-256 "
            f"{content_digest(digests)}, expected {known}); {fix}"
        )
    return f"; note: its pixels differ from the copy this repository's {name} figures were measured on"


def _lay_out(
    name: str,
    images: Iterable[tuple[str, bytes, str]],
    final: Path,
    *,
    train: bool,
    count: int | None,
    content_required: bool,
    fix: str,
) -> str:
    """Write the decoded `images` (name, bytes, origin) as set `name` at `final`; returns the content note."""
    staging = _Staging(final, train=train)
    try:
        for file_name, data, origin in images:
            staging.add(file_name, _decode(data, origin, fix), origin, fix)
        if not staging.digests:
            raise UserError(f"{name}: no images found; {fix}")
        if count is not None and len(staging.digests) != count:
            raise UserError(f"{name}: {len(staging.digests)} images, expected {count}; {fix}")
        note = _check_content(name, staging.digests, required=content_required, fix=fix)
        staging.commit()
        return note
    except OSError as err:
        raise UserError(
            f"{final}: cannot write the images ({err.strerror or err}); free disk space and re-run"
        ) from None
    finally:
        staging.discard()


def download_set(
    source: Source,
    benchmark_dir: Path,
    *,
    sha256: str | None = None,
    base_url: str = HUB_URL,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch one set's HR archive, check it, and lay out HR + LR x4 at benchmark_dir/<set>."""
    folder = benchmark_dir / source.name
    if is_complete(folder, source.count):
        print(f"{folder}: complete ({source.count} images), skipped")
        return folder
    expected = (sha256 or source.sha256 or "").lower() or None
    content_only = expected is None and bool(CONTENT_SHA256.get(source.name))
    if expected is None and not content_only:
        raise UserError(
            f"{source.name}: no SHA-256 of {source.archive} is recorded here; copy the SHA256 shown under "
            f"'Git LFS Details' on {source.page} and re-run with --sha256 {source.name}=<that value> "
            "(or lay out a copy you have with --from_dir)"
        )
    archive = benchmark_dir / ".archives" / f"{source.name}_HR.tar.gz"
    if not archive.exists():
        print(f"downloading {source.url(base_url)}")
        download_file(
            source.url(base_url), archive, sha256=expected, progress=progress, max_bytes=source.max_bytes
        )
    fix = "it was deleted: re-run to download it again, and if it persists the file on the server has changed"
    if (
        content_only
    ):  # the pixels are the only check: say how to take the archive on its published digest instead
        fix += f" (to take it as published: --sha256 {source.name}=<the SHA256 shown on {source.page}>)"
    files = tar_files(
        archive, lambda member: Path(member).suffix.lower() in IMAGE_SUFFIXES,  # not folders, links or notes
        max_member_bytes=source.max_image_bytes, max_total_bytes=source.max_bytes, dataset=source.name,
        image=f"a {source.name} image", fix=fix,
    )  # fmt: skip
    images = ((Path(member).name, data, f"{archive}:{Path(member).name}") for member, data in files)
    try:
        note = _lay_out(
            source.name,
            images,
            folder,
            train=False,
            count=source.count,
            content_required=content_only,
            fix=fix,
        )
    except UserError:  # not what it should be: its bytes are of no use to a re-run
        _remove_archive(archive)
        raise
    if not keep_archives:
        _remove_archive(archive)
    print(f"{folder}: {source.name} ready, {source.count} HR/LR x{SCALE} pairs{note}")
    return folder


def _remove_archive(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    if archive.parent.is_dir() and not any(archive.parent.iterdir()):
        archive.parent.rmdir()


def _folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; pass --from_dir a folder of HR images")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(
            f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of HR images"
        )
    return paths


def lay_out_folder(src: Path, name: str, dest_root: Path, *, train: bool = False) -> Path:
    """Lay out a folder of HR images you have as set `name` under dest_root (benchmark or training layout)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it becomes a folder name)")
    final = dest_root / name
    if is_complete(final, train=train):
        print(f"{final}: complete, skipped (delete it to lay it out again)")
        return final
    paths = _folder_images(src)
    fix = f"replace or remove it in {src}"
    images = ((p.name, p.read_bytes(), str(p)) for p in paths)
    note = _lay_out(name, images, final, train=train, count=None, content_required=False, fix=fix)
    kind = "HR images" if train else f"HR/LR x{SCALE} pairs"
    print(f"{final}: {name} ready, {len(paths)} {kind}{note}")
    return final


def _parse_sha256(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        match = re.fullmatch(r"([A-Za-z0-9]+)=([0-9a-fA-F]{64})", item)
        if match is None or match.group(1) not in SOURCES:
            raise UserError(
                f"--sha256 {item}: expected SET=<64 hex digits> with SET one of {', '.join(SOURCES)}"
            )
        out[match.group(1)] = match.group(2).lower()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets", nargs="+", metavar="SET",
        help=f"sets to download: {', '.join(SOURCES)} (default: {' '.join(DEFAULT_SETS)})",
    )  # fmt: skip
    parser.add_argument("--benchmark_dir", type=Path, default=Path("benchmark"), help="where the sets go")
    parser.add_argument(
        "--sha256", nargs="+", default=[], metavar="SET=HEX",
        help="the archive's SHA-256 for a set this repository has none for (shown on the page the error names)",
    )  # fmt: skip
    parser.add_argument(
        "--from_dir", type=Path, help="lay out this folder of HR images instead of downloading"
    )
    parser.add_argument("--name", help="with --from_dir: the set's name (default: the folder's name)")
    parser.add_argument(
        "--train", action="store_true", help="with --from_dir: a training set, HR only, into --train_dir"
    )
    parser.add_argument("--train_dir", type=Path, default=Path("train_data"), help="where training sets go")
    parser.add_argument("--base_url", default=HUB_URL, help="the Hugging Face hub, or a mirror of it")
    parser.add_argument(
        "--keep_archives", action="store_true", help="keep the archives in benchmark_dir/.archives/"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.from_dir is not None and (args.sets or args.sha256):
        raise UserError(
            "--from_dir lays out a folder you have, --sets and --sha256 are for downloads: give one"
        )
    if args.from_dir is None and (args.name or args.train):
        raise UserError("--name and --train go with --from_dir FOLDER (a folder of HR images to lay out)")
    if args.from_dir is not None:
        dest = args.train_dir if args.train else args.benchmark_dir
        name = args.name or args.from_dir.resolve().name
        with download_session(dest, "--train_dir" if args.train else "--benchmark_dir", OFFLINE):
            lay_out_folder(args.from_dir, name, dest, train=args.train)
        return 0
    args.sets = args.sets or list(DEFAULT_SETS)
    for name in args.sets:
        if name in NO_SOURCE:
            raise UserError(
                f"{name}: {NO_SOURCE[name]}; lay out a copy you have with --from_dir FOLDER --name {name}"
            )
        if name not in SOURCES:
            raise UserError(
                f"--sets {name}: not one of {', '.join(SOURCES)} (others: --from_dir FOLDER --name SET)"
            )
    hashes = _parse_sha256(args.sha256)
    with download_session(args.benchmark_dir, "--benchmark_dir", OFFLINE, args.benchmark_dir / ".archives"):
        for name in dict.fromkeys(args.sets):
            download_set(
                SOURCES[name], args.benchmark_dir, sha256=hashes.get(name), base_url=args.base_url,
                keep_archives=args.keep_archives, progress=not args.no_progress,
            )  # fmt: skip
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
