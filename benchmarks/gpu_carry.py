"""What a GPU session carries to a machine that cannot download: wheels and data, in `.gpu/` (git-ignored).

    python benchmarks/gpu_carry.py [--out .gpu] [--shared ../shared] [--no-wheels]

- `wheels/`: the packages this repository imports that the GPU machine's Python 3.12 lacks (fvcore, thop,
  pytorch-optimizer, pydantic and their own needs), at the versions installed here, as x86-64 / pure wheels
  (`pip download`; `pip wheel` for the ones published as source only);
- `train/`: T91 + BSD200 as lossless WebP (a third smaller than their PNGs; every file read back and compared);
- `benchmark/Set5`, `benchmark/Set14`: copied as they are, for validation and the PSNR checks.

The device tool moves at most 64 MiB (the working tree and what it carries); the script adds up both and stops
with an error if they do not fit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024**2
WHEELS = ("fvcore", "iopath", "yacs", "termcolor", "thop", "pytorch-optimizer", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "typing-extensions")  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
TRAIN_SETS = ("T91", "BSD200")
EVAL_SETS = ("Set5", "Set14")


def fetch_wheels(folder: Path) -> list[Path]:
    """Each package of WHEELS at this environment's version, for CPython 3.12 on x86-64."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        pin = f"{name}=={importlib.metadata.version(name)}"
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder), pin]  # fmt: skip
        if subprocess.run(download, capture_output=True).returncode != 0:  # published as source only
            build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), pin]
            done = subprocess.run(build, capture_output=True, text=True)
            if done.returncode != 0:
                raise UserError(
                    f"{pin}: no wheel could be downloaded or built ({done.stderr.strip()[-200:]})"
                )
    return sorted(folder.glob("*.whl"))


def lossless_webp(source: Path, folder: Path) -> list[Path]:
    """Every PNG of `source` as `<source name>_<stem>.webp` in `folder`, each read back and compared."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for png in sorted(source.glob("*.png")):
        pixels = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise UserError(f"{png}: does not decode; replace it")
        target = folder / f"{source.name}_{png.stem}.webp"
        if not cv2.imwrite(str(target), pixels, [cv2.IMWRITE_WEBP_QUALITY, 101]):  # above 100: lossless
            raise UserError(f"{target}: could not be written")
        if not np.array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), pixels):
            raise UserError(
                f"{target}: the WebP does not read back as {png}; this OpenCV's WebP is not lossless"
            )
        written.append(target)
    return written


def tree_bytes(root: Path) -> int:
    """Bytes of what the device tool moves besides the carry: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout  # fmt: skip
    return sum(
        (root / name).stat().st_size for name in listed.decode().split("\0") if (root / name).is_file()
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu")
    p.add_argument(
        "--shared", type=Path, default=ROOT.parent / "shared", help="holds data/train, data/benchmark"
    )
    p.add_argument("--no-wheels", dest="wheels", action="store_false", help="data only")
    args = p.parse_args(argv)
    train, benchmark = args.shared / "data" / "train", args.shared / "data" / "benchmark"
    for folder in [train / name for name in TRAIN_SETS] + [benchmark / name for name in EVAL_SETS]:
        if not folder.is_dir():
            raise UserError(
                f"{folder}: missing; pass --shared, the folder holding data/train and data/benchmark"
            )
    if args.out.exists():
        shutil.rmtree(args.out)
    if args.wheels:
        print(f"wheels: {len(fetch_wheels(args.out / 'wheels'))}")
    images = [path for name in TRAIN_SETS for path in lossless_webp(train / name, args.out / "train")]
    print(f"training images: {len(images)}")
    for name in EVAL_SETS:
        shutil.copytree(benchmark / name, args.out / "benchmark" / name)
    carried, tree = folder_bytes(args.out), tree_bytes(ROOT)
    print(
        f"carry {carried / 1024**2:.1f} MiB + working tree {tree / 1024**2:.1f} MiB of {LIMIT / 1024**2:.0f} MiB"
    )
    if carried + tree > LIMIT:
        raise UserError(f"{args.out}: {carried + tree} bytes with the working tree, over the device's 64 MiB")
    return 0


if __name__ == "__main__":
    run_cli(main)
