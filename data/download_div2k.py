"""Download DIV2K (validation HR + x4 bicubic LR, the training set, the public test LR) in the NTIRE kit's layout.

    python -m data.download_div2k --data_dir data/ [--splits valid train test] [--keep_zips]

Result: data_dir/DIV2K_valid_HR/0801.png .. 0900.png and data_dir/DIV2K_valid_LR/0801x4.png .. 0900x4.png
(the official zips hold DIV2K_valid_HR/ and DIV2K_valid_LR_bicubic/X4/). `--splits train` adds the training set
as the recipe reads it: data_dir/DIV2K_train_HR/0001.png .. 0800.png and the official bicubic LR in
data_dir/DIV2K_train_LR_bicubic/X4/0001x4.png .. (where data/prepare.py finds an HR image's official LR). The DIV2K test HR images were
never released: `--splits test` fetches only the public test LR (data_dir/DIV2K_test_LR/0901x4.png ..).
The NTIRE 2023 organizers' test set goes in data_dir/DIV2K_test_HR/ and data_dir/DIV2K_test_LR/ with
the same names (0901.png, 0901x4.png), where the kit's test mode looks for it.

Verification: the official SHA-256s are not published, so each zip is checked by its Content-Length, its
zip CRCs and its member list, and the extracted folders by count and LR = HR / 4 sizes. A folder that is
already complete is skipped; a broken download resumes when the command is re-run.
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError, run_cli
from utils.files.download import decode_all, download_file, download_session, extract_zip, png_bound

OFFICIAL_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
SCALE = 4
# SHA-256 of the official zips, to be filled in once known from a trusted download; empty means "not checked".
KNOWN_ZIP_SHA256: dict[str, str] = {}

OFFLINE = (
    "test_demo.py measures any folder in DIV2K layout (--data_dir: DIV2K_valid_HR/0801.png, DIV2K_valid_LR/0801x4.png"
    ", ...) or a folder of LR images alone (--lr_dir)"
)
HR_MAX_SIDE = 2040  # DIV2K's images are 2040 pixels on their longer side (or less)
TRAIN_IDS = range(1, 801)
VALID_IDS = range(801, 901)
TEST_IDS = range(901, 1001)


@dataclass(frozen=True)
class Part:
    """One zip and the folder of it that becomes `folder` under data_dir."""

    zip_name: str
    zip_subdir: str
    folder: str
    file_names: tuple[str, ...]
    max_side: int = HR_MAX_SIDE  # the longest side of its images (LR: the HR's / SCALE)

    def members(self) -> list[str]:
        return [f"{self.zip_subdir}/{name}" for name in self.file_names]

    @property
    def max_member_bytes(self) -> int:
        return png_bound(self.max_side, self.max_side)

    @property
    def max_bytes(self) -> int:
        """The most its zip (or its extracted folder) can take: every image at the largest size, plus the zip's
        own records (under 1 KiB a member)."""
        return len(self.file_names) * (self.max_member_bytes + 1024)


def _hr_names(ids: range) -> tuple[str, ...]:
    return tuple(f"{i:04d}.png" for i in ids)


def _lr_names(ids: range) -> tuple[str, ...]:
    return tuple(f"{i:04d}x{SCALE}.png" for i in ids)


VALID_HR = Part("DIV2K_valid_HR.zip", "DIV2K_valid_HR", "DIV2K_valid_HR", _hr_names(VALID_IDS))
VALID_LR = Part(
    f"DIV2K_valid_LR_bicubic_X{SCALE}.zip",
    f"DIV2K_valid_LR_bicubic/X{SCALE}",
    "DIV2K_valid_LR",
    _lr_names(VALID_IDS),
    HR_MAX_SIDE // SCALE,
)
TEST_LR = Part(
    f"DIV2K_test_LR_bicubic_X{SCALE}.zip",
    f"DIV2K_test_LR_bicubic/X{SCALE}",
    "DIV2K_test_LR",
    _lr_names(TEST_IDS),
    HR_MAX_SIDE // SCALE,
)
TRAIN_HR = Part("DIV2K_train_HR.zip", "DIV2K_train_HR", "DIV2K_train_HR", _hr_names(TRAIN_IDS))
TRAIN_LR = Part(
    f"DIV2K_train_LR_bicubic_X{SCALE}.zip",
    f"DIV2K_train_LR_bicubic/X{SCALE}",
    f"DIV2K_train_LR_bicubic/X{SCALE}",
    _lr_names(TRAIN_IDS),
    HR_MAX_SIDE // SCALE,
)
SPLITS = {"valid": (VALID_HR, VALID_LR), "train": (TRAIN_HR, TRAIN_LR), "test": (TEST_LR,)}

TEST_HR_NOTE = (
    "note: the DIV2K test HR images are not public. The NTIRE 2023 organizers' test set goes in "
    "{data_dir}/DIV2K_test_HR/0901.png .. and {data_dir}/DIV2K_test_LR/0901x4.png .. (the kit's test mode)."
)


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, without decoding the image."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise UserError(f"{path}: not a PNG file; delete its folder and re-run to download it again")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def is_complete(folder: Path, names: tuple[str, ...]) -> bool:
    """True when `folder` holds exactly the expected PNG files."""
    return folder.is_dir() and sorted(p.name for p in folder.glob("*.png")) == sorted(names)


def check_pairs(hr_dir: Path, lr_dir: Path, hr_names: tuple[str, ...], scale: int = SCALE) -> int:
    """Check that every HR image has its LR image of size HR // scale; returns the number of pairs."""
    for hr_name in hr_names:
        lr_path = lr_dir / hr_name.replace(".png", f"x{scale}.png")
        if not lr_path.is_file():
            raise UserError(f"{lr_path}: missing LR image for {hr_dir / hr_name}; delete {lr_dir} and re-run")
        (hh, hw), (lh, lw) = png_size(hr_dir / hr_name), png_size(lr_path)
        if (lh, lw) != (hh // scale, hw // scale):
            raise UserError(
                f"{lr_path}: {lw}x{lh} is not the x{scale} downscale of {hr_dir / hr_name} ({hw}x{hh}); "
                f"delete {lr_dir} and {hr_dir} and re-run"
            )
    return len(hr_names)


def fetch_part(part: Part, data_dir: Path, base_url: str, *, keep_zips: bool, progress: bool) -> Path:
    """Download and extract one zip into data_dir/part.folder unless that folder is already complete."""
    folder = data_dir / part.folder
    if is_complete(folder, part.file_names):
        print(f"{folder}: complete ({len(part.file_names)} images), skipped")
        return folder
    if folder.exists():
        raise UserError(
            f"{folder}: exists but does not hold the files of {part.zip_name}; delete it and re-run"
        )
    zip_path = data_dir / "DIV2K_zips" / part.zip_name  # matches the .gitignore pattern /data/DIV2K_*/
    url = f"{base_url.rstrip('/')}/{part.zip_name}"
    if not zip_path.exists():
        print(f"downloading {url}")
        download_file(
            url,
            zip_path,
            sha256=KNOWN_ZIP_SHA256.get(part.zip_name),
            progress=progress,
            max_bytes=part.max_bytes,
        )
    print(f"extracting {zip_path} -> {folder}")
    fix = f"delete {zip_path} and re-run to download it again"
    extract_zip(
        zip_path, folder, expected_members=part.members(), subdir=part.zip_subdir,
        max_member_bytes=part.max_member_bytes, max_total_bytes=part.max_bytes,
        verify=lambda extracted: decode_all(sorted(extracted.glob("*.png")), fix),
    )  # fmt: skip
    if not is_complete(folder, part.file_names):
        raise UserError(f"{folder}: not the expected {len(part.file_names)} images; delete it and re-run")
    if not keep_zips:
        zip_path.unlink()
        if not any(zip_path.parent.iterdir()):
            zip_path.parent.rmdir()
    return folder


def download_div2k(
    data_dir: Path,
    splits: tuple[str, ...] = ("valid",),
    *,
    base_url: str = OFFICIAL_BASE_URL,
    keep_zips: bool = False,
    progress: bool = True,
) -> None:
    """Fetch the requested DIV2K splits into data_dir in the NTIRE kit's layout."""
    data_dir = Path(data_dir)
    with download_session(data_dir, "--data_dir", OFFLINE, data_dir / "DIV2K_zips"):
        _download_splits(data_dir, splits, base_url, keep_zips, progress)


def _download_splits(
    data_dir: Path, splits: tuple[str, ...], base_url: str, keep_zips: bool, progress: bool
) -> None:
    for split in splits:
        for part in SPLITS[split]:
            fetch_part(part, data_dir, base_url, keep_zips=keep_zips, progress=progress)
        if split in ("valid", "train"):
            hr, lr = SPLITS[split]
            n = check_pairs(data_dir / hr.folder, data_dir / lr.folder, hr.file_names)
            print(f"{data_dir}: DIV2K {split} ready, {n} HR/LR x{SCALE} pairs")
        else:
            print(f"{data_dir / TEST_LR.folder}: DIV2K test LR ready, {len(TEST_LR.file_names)} images")
            print(TEST_HR_NOTE.format(data_dir=data_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=Path("data"), help="where the DIV2K folders go")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=sorted(SPLITS),
        default=["valid"],
        help="valid: HR + x4 LR (100 pairs); train: HR + x4 LR (800 pairs); test: x4 LR only (no public HR)",
    )
    parser.add_argument("--base_url", default=OFFICIAL_BASE_URL, help="where the zips are served")
    parser.add_argument("--keep_zips", action="store_true", help="keep the zips in data_dir/DIV2K_zips/")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    download_div2k(
        args.data_dir,
        tuple(dict.fromkeys(args.splits)),
        base_url=args.base_url,
        keep_zips=args.keep_zips,
        progress=not args.no_progress,
    )
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
