"""Pair every HR training image with its bicubic LR, making each LR once and caching it.

The LR must be MATLAB bicubic (what the benchmarks and DIV2K use), so it comes from an official pre-made file
when one sits beside the HR (DIV2K naming or benchmark naming), else from `matlab_imresize`, stored in a cache
folder under a name derived from the HR path, size and mtime: a changed HR gets a new LR, an unchanged one is
reused. The HR used for training is the top-left crop of the HR image to a multiple of the scale (the pair's
`lr_size` times the scale), as in the benchmarks.

    python -m data.prepare --hr ../shared/data/train/T91 ../shared/data/train/BSD200 --cache ../cache/train_x4
    python -m data.prepare --hr DIV2K/DIV2K_train_HR --cache ../cache/div2k_x4 --crop-size 480 --step 240
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError, run_cli
from utils.files.image_io import read_rgb, read_size, write_rgb
from utils.image.imresize import matlab_imresize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Pair:
    """One training image: HR file, LR file, LR size; the HR used is its top-left lr_size * scale."""

    hr: Path
    lr: Path
    lr_size: tuple[int, int]


@dataclass
class PairList:
    """The pairs, in a fixed order (sources in order, names sorted), and what preparing them did."""

    pairs: list[Pair]
    scale: int
    skipped_small: int = 0
    unreadable: list[str] = field(default_factory=list)  # one message per image that could not be read
    official: int = 0
    reused: int = 0
    generated: int = 0
    sources: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        return self.pairs[index]

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)


def list_hr_images(hr_sources: list[str | Path]) -> list[Path]:
    """The images of the sources, deduplicated; a source is a folder (not recursive, names sorted), a .txt
    list of paths or one image."""
    images: list[Path] = []
    for source in map(Path, hr_sources):
        if source.is_dir():
            found = (p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            images += sorted(found)
        elif source.is_file() and source.suffix == ".txt":
            images += _read_list(source)
        elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
            images.append(source)
        elif source.exists():
            raise UserError(f"{source}: neither a folder, a .txt list of image paths nor an image")
        else:
            raise UserError(f"{source}: no such folder or file list; check the path")
    seen: set[Path] = set()
    unique = []
    for path in images:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _read_list(list_file: Path) -> list[Path]:
    """Paths in a .txt list (one a line), relative ones from the list's folder; skips blanks, '#' lines."""
    paths = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else list_file.parent / line
        if not path.is_file():
            raise UserError(f"{list_file}:{number}: {line} does not exist; fix or remove the line")
        paths.append(path)
    return paths


def official_lr_path(hr: Path, scale: int) -> Path | None:
    """Where a pre-made LR for `hr` would be: DIV2K naming (X_HR/0001.png -> X_LR_bicubic/X4/0001x4.png) or
    benchmark naming (HR/name.png -> LR_bicubic_x4/name.png). None if neither exists."""
    folder = hr.parent
    candidates = [folder.parent / f"LR_bicubic_x{scale}" / hr.name] if folder.name == "HR" else []
    if folder.name.endswith("_HR"):
        stem = folder.name[: -len("_HR")]
        name = f"{hr.stem}x{scale}{hr.suffix}"
        candidates.append(folder.parent / f"{stem}_LR_bicubic" / f"X{scale}" / name)
    return next((c for c in candidates if c.is_file()), None)


def cache_key(hr: Path, scale: int) -> str:
    """Changes when the HR file is replaced or edited (path, byte size, mtime) or the scale changes."""
    stat = hr.stat()
    text = f"{hr.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|x{scale}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _hr_crop_size(hr: Path, scale: int) -> tuple[int, int]:
    height, width = read_size(hr)
    return height // scale * scale, width // scale * scale


def prepare_pairs(
    hr_sources: list[str | Path], cache_dir: Path, scale: int = 4, min_size: int = 0
) -> PairList:
    """Pair each HR image of the sources with its LR, making missing LR into `cache_dir`.

    Images whose cropped HR is smaller than `min_size` on a side (or than `scale`) are skipped and counted in
    `skipped_small`. Safe to run from several processes at once: every file is written atomically.
    """
    if scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale}")
    images = list_hr_images(hr_sources)
    if not images:
        names = ", ".join(str(s) for s in hr_sources) or "(none given)"
        raise UserError(
            f"{names}: no training images found ({'/'.join(IMAGE_SUFFIXES)}; folders are not searched "
            "recursively); check the HR paths, or pass the subfolders that hold the images"
        )
    cache_dir = Path(cache_dir)
    result = PairList(pairs=[], scale=scale, sources=[Path(s) for s in hr_sources])
    largest = 0
    for hr in images:
        try:
            pair = _pair(hr, cache_dir, scale, min_size, result)
        except UserError as err:  # an unreadable image is skipped and reported, not the end of a run
            result.unreadable.append(str(err))
            continue
        if pair is None:
            result.skipped_small += 1
            largest = max(largest, min(_hr_crop_size(hr, scale)))
            continue
        result.pairs.append(pair)
    if not result.pairs and result.skipped_small:
        raise UserError(
            f"{', '.join(map(str, hr_sources))}: all {len(images) - len(result.unreadable)} readable images are "
            f"smaller than {min_size} pixels on a side; the largest allows {largest} (for training: --lr_patch "
            f"{largest // scale} or less at x{scale}), or add larger images"
        )
    if not result.pairs:
        raise UserError(f"no training image is readable; the first: {result.unreadable[0]}")
    return result


def _pair(hr: Path, cache_dir: Path, scale: int, min_size: int, result: PairList) -> Pair | None:
    """`hr` with its LR (official, cached, or made now), or None when it is smaller than `min_size`."""
    crop_h, crop_w = _hr_crop_size(hr, scale)
    if min(crop_h, crop_w) < max(min_size, scale):
        return None
    lr_size = (crop_h // scale, crop_w // scale)
    lr = official_lr_path(hr, scale)
    if lr is not None:
        if read_size(lr) != lr_size:
            raise UserError(
                f"{lr}: size {read_size(lr)} but its HR {hr} needs {lr_size} at x{scale}; "
                "replace it or remove it (the LR is then made from the HR)"
            )
        result.official += 1
    else:
        lr = cache_dir / f"{hr.stem}_{cache_key(hr, scale)}x{scale}.png"
        if lr.is_file() and read_size(lr) == lr_size:
            result.reused += 1
        else:
            hr_img = read_rgb(hr)[:crop_h, :crop_w]
            write_rgb(lr, matlab_imresize(hr_img, output_shape=lr_size))
            result.generated += 1
    return Pair(hr=hr, lr=lr, lr_size=lr_size)


def _starts(length: int, crop: int, step: int) -> list[int]:
    """Top-left corners along one axis: every `step`, plus one flush with the far edge so nothing is lost."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, step))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def crop_subimages(pairs: PairList, out_dir: Path, crop_size: int, step: int) -> Path:
    """Cut each pair into overlapping HR sub-images of `crop_size` and their aligned LR, for fast loading.

    Writes out_dir/HR/*.png and out_dir/LR_bicubic_x{scale}/*.png (the benchmark layout, so `prepare_pairs`
    finds the LR beside each HR) and out_dir/subimages.txt listing this run's HR sub-images: pass that list
    as the HR source for training. Sub-images already present are reused. Images smaller than `crop_size`
    are kept whole along that side.
    """
    scale = pairs.scale
    if crop_size % scale or step % scale or crop_size <= 0 or step <= 0:
        raise UserError(f"--crop-size {crop_size}, --step {step}: need multiples of the scale {scale}")
    lr_crop, lr_step = crop_size // scale, step // scale
    hr_dir, lr_dir = out_dir / "HR", out_dir / f"LR_bicubic_x{scale}"
    listed = []
    for pair in pairs:
        lr_h, lr_w = pair.lr_size
        prefix = f"{pair.hr.stem}_{cache_key(pair.hr, scale)[:8]}"
        hr_img = lr_img = None
        index = 0
        for y in _starts(lr_h, lr_crop, lr_step):
            for x in _starts(lr_w, lr_crop, lr_step):
                index += 1
                name = f"{prefix}_s{index:03d}.png"
                listed.append(f"HR/{name}")
                if (hr_dir / name).is_file() and (lr_dir / name).is_file():
                    continue
                if hr_img is None:
                    hr_img, lr_img = read_rgb(pair.hr), read_rgb(pair.lr)
                ch, cw = min(lr_crop, lr_h), min(lr_crop, lr_w)
                write_rgb(lr_dir / name, lr_img[y : y + ch, x : x + cw])  # LR first: HR present => LR present
                write_rgb(hr_dir / name, hr_img[y * scale : (y + ch) * scale, x * scale : (x + cw) * scale])
    list_file = out_dir / "subimages.txt"
    tmp = list_file.with_name(f".{list_file.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in listed))
    tmp.replace(list_file)
    return list_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hr", nargs="+", required=True, help="HR folders, .txt path lists or images")
    parser.add_argument("--cache", type=Path, required=True, help="folder for generated LR and sub-images")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=0, help="skip images whose HR side is below this")
    parser.add_argument("--crop-size", type=int, help="also cut HR into sub-images of this size (e.g. 480)")
    parser.add_argument("--step", type=int, help="stride between sub-images (default: crop size / 2)")
    args = parser.parse_args()
    if args.step and not args.crop_size:
        raise UserError("--step needs --crop-size; give both, or neither for whole images")
    start = time.perf_counter()
    pairs = prepare_pairs(args.hr, args.cache, scale=args.scale, min_size=args.min_size)
    skipped = (
        f"; {pairs.skipped_small} images below {args.min_size} px skipped" if pairs.skipped_small else ""
    )
    print(
        f"{len(pairs)} pairs at x{args.scale}: {pairs.official} pre-made LR beside the HR, "
        f"{pairs.reused} cached LR reused, {pairs.generated} LR made into {args.cache}{skipped} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    if args.crop_size:
        step = args.step or args.crop_size // 2
        out_dir = args.cache / f"sub{args.crop_size}_step{step}_x{args.scale}"
        list_file = crop_subimages(pairs, out_dir, args.crop_size, step)
        count = sum(1 for _ in list_file.open())
        print(
            f"{count} sub-images in {out_dir}; train with --hr {list_file} "
            f"({time.perf_counter() - start:.1f} s in all)"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
