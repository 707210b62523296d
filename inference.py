"""Upscale your own images with LKDN: files, folders or globs in, <name>_x4 images of the same format out.

    python inference.py -i photo.jpg -o upscaled/
    python inference.py -i photos/ -o upscaled/ [--model_path file.pth] [--device cuda] [--max-memory 4G]
    python inference.py -i "scans/**/*.tif" -o upscaled/
    python inference.py -i thumbnails/ -o upscaled/ --jobs 2    # two images at once, one thread each

8- and 16-bit PNG, JPEG, BMP, TIFF and WebP. Colour goes through the network; grayscale goes through it as RGB
and is written back as grayscale (the mean of the three output channels); an alpha channel is upscaled with
MATLAB's bicubic; the EXIF orientation is applied, so outputs are upright. 16-bit images run on [0, 1] floats
from their 16-bit values and are written in 16 bits.

Images too large for --max-memory run in tiles with the network's receptive-field radius as overlap, so the
output equals the whole-image output (up to float rounding): no seams. A file that cannot be read or written is
reported and skipped; the exit code is 2 if any failed. Inputs are never overwritten; outputs are written
atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models import BUNDLED_CHECKPOINT, LKDN
from utils.cli import positive_int
from utils.device import resolve_device
from utils.errors import EXIT_USER_ERROR, FatalError, UserError, run_cli
from utils.files.checkpoint import build_model_from_checkpoint, checkpoint_or_bundled, config_name
from utils.files.image_io import DecodedImage, image_to_tensor, quantize, read_image, write_image
from utils.image.imresize import matlab_imresize
from utils.runtime.backends import (
    BACKENDS,
    ONNX_PATH_HELP,
    PRECISION_HELP,
    PRECISIONS,
    InputTooSmall,
    OutputError,
    Runner,
    runner_for_cli,
)
from utils.runtime.tiling import tiled_forward

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_MEMORY = "2G"
# Peak working memory of one forward pass per LR pixel, in float32 feature maps of num_feat channels (plus the
# float32 output). Measured with benchmarks/inference_memory.py (CPU, process peak above the memory in use before
# the pass, LR sizes 128-768): LKDN-S 9-26 maps (reference backend), 9-15 (fast), 6-9 (native, LR 128-512);
# LKDN 17-30, 9-15 and 9-11. The live tensors alone (what a GPU's caching allocator sees) are about 9 maps.
# 32 covers every measurement.
FEATURE_MAPS_AT_PEAK = 32
MIN_TILE = 16  # LR pixels: smaller cores would spend nearly all the work on overlap
ALPHA_CONTEXT = 4  # LR pixels of context for tiled bicubic alpha: the cubic kernel reaches 2 pixels
_UNITS = {"": 1024**2, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


# ----------------------------------------------------------------------------------------------------- inputs


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _regular_file(path: Path) -> Path:
    """`path` if it is a regular file (not a FIFO, device or socket, which would block or never end)."""
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (a pipe, device or socket); pass image files")
    return path


def _walk_glob(spec: str) -> list[Path]:
    """Glob matches of `spec`, with `**` descending into each real folder once: a symlink loop ends (Python's
    glob follows directory symlinks with no memory of where it has been)."""
    if "**" not in spec:
        return sorted(Path(p) for p in glob.glob(spec))
    root, _, rest = spec.partition("**")
    root, rest = root.rstrip("/") or ".", rest.lstrip("/") or "*"
    matches: set[Path] = set()
    seen: set[Path] = set()
    for base in sorted(Path(p) for p in glob.glob(root)) if glob.has_magic(root) else [Path(root)]:
        for folder, subfolders, _ in os.walk(base, followlinks=True):
            real = Path(folder).resolve()
            if real in seen:
                subfolders[:] = []  # a folder reached twice (a loop or a second link): its files are counted
                continue
            seen.add(real)
            matches.update(Path(p) for p in glob.glob(os.path.join(glob.escape(folder), rest)))
    return sorted(matches)


def collect_inputs(specs: list[str]) -> list[Path]:
    """Image files named by `specs`: files as given, folders' images (not recursive), glob matches (sorted).
    A file named twice, or reached twice through links, is upscaled once."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if _is_image(p))
            if not images:
                raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder; check -i")
            found += images
        elif path.exists():
            found.append(_regular_file(path))
        elif glob.has_magic(spec):
            images = [p for p in _walk_glob(spec) if _is_image(p)]
            if not images:
                raise UserError(f"{spec}: no image file matches this pattern; check -i")
            found += images
        else:
            raise UserError(f"{spec}: no such file or folder; check -i")
    unique = {p.resolve(): p for p in found}
    return list(unique.values())


def output_path(src: Path, out_dir: Path, scale: int) -> Path:
    return out_dir / f"{src.stem}_x{scale}{src.suffix}"


def parse_memory(text: str) -> int:
    """Bytes from '2G', '512M', '1.5GiB', '800' (MB): powers of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--max-memory {text}: not a memory size; write e.g. 2G, 512M or 1.5G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n / 1024:.0f} KiB"


# ----------------------------------------------------------------------------------------------------- network


def bytes_per_lr_pixel(model: LKDN) -> int:
    """Estimated peak working memory of one forward pass per LR pixel (see FEATURE_MAPS_AT_PEAK)."""
    return 4 * (FEATURE_MAPS_AT_PEAK * model.num_feat + 3 * model.scale**2)


def plan_tile(height: int, width: int, radius: int | None, per_pixel: int, max_memory: int) -> int:
    """The LR core tile size for an image: the whole image when it fits `max_memory`, else the largest square core
    whose window (core + 2 * radius) fits."""
    if height * width * per_pixel <= max_memory:
        return max(height, width)
    budget = format_bytes(max_memory)
    if radius is None:
        raise UserError(
            f"--max-memory {budget}: a {width}x{height} image does not fit and this model's attention pools over "
            "the whole image, so it cannot be tiled exactly; raise --max-memory"
        )
    tile = math.isqrt(max_memory // per_pixel) - 2 * radius
    if tile < MIN_TILE:
        needed = format_bytes((MIN_TILE + 2 * radius) ** 2 * per_pixel)
        raise UserError(
            f"--max-memory {budget}: too small to tile this model (needs {needed} or more); raise it"
        )
    return tile


@dataclass
class Upscaler:
    """The network with its runner and what tiling needs to know."""

    runner: Runner
    device: torch.device
    scale: int
    radius: int | None  # LR receptive-field radius: the exact tile overlap (None: not tileable)
    per_pixel: int  # estimated bytes of working memory per LR pixel
    max_memory: int

    def tile_for(self, height: int, width: int, sample_bytes: int = 1) -> int:
        """The LR tile for an image, within max_memory less what the whole output needs (it is assembled in
        full: the tiles' quantized pixels, then one contiguous copy)."""
        output = 2 * height * width * self.scale**2 * 3 * sample_bytes
        if output >= self.max_memory:
            raise UserError(
                f"--max-memory {format_bytes(self.max_memory)}: the {width * self.scale}x{height * self.scale} "
                f"output alone needs {format_bytes(output)}; raise --max-memory or upscale a smaller image"
            )
        return plan_tile(height, width, self.radius, self.per_pixel, self.max_memory - output)

    def run(self, lr: torch.Tensor, tile: int, finish: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
        """The network on a 1x3xHxW CPU tensor, in LR tiles of `tile` pixels; each tile's output goes through
        `finish` on the device (e.g. quantization, so the full-size result is integers) and comes back to the
        CPU."""
        overlap = self.radius or 0
        with torch.inference_mode():
            return tiled_forward(
                lambda window: finish(self.runner(window.to(self.device))).cpu(),
                lr,
                tile,
                overlap,
                self.scale,
            )


def upscale_alpha(alpha: np.ndarray, scale: int, tile: int) -> np.ndarray:
    """MATLAB-bicubic upscaling of an HxW alpha channel, in tiles of `tile` pixels (exact: the cubic kernel's
    reach is inside ALPHA_CONTEXT)."""

    def resize(window: torch.Tensor) -> torch.Tensor:
        out = matlab_imresize(window[0, 0].numpy().astype(alpha.dtype), scale)
        return torch.from_numpy(out.astype(np.int32))[None, None]

    planes = torch.from_numpy(alpha.astype(np.int32))[None, None]
    return tiled_forward(resize, planes, tile, ALPHA_CONTEXT, scale)[0, 0].numpy().astype(alpha.dtype)


def upscale_image(image: DecodedImage, upscaler: Upscaler) -> tuple[np.ndarray, int]:
    """(the upscaled pixels, ready for write_image, in the image's dtype and layout; the LR tile size used)."""
    height, width = image.rgb.shape[:2]
    dtype = image.rgb.dtype
    tile = upscaler.tile_for(height, width, dtype.itemsize)

    def finish(sr: torch.Tensor) -> torch.Tensor:
        return quantize(sr.mean(dim=1, keepdim=True) if image.grayscale else sr, dtype)

    out = upscaler.run(image_to_tensor(image.rgb), tile, finish)[0].numpy().astype(dtype, copy=False)
    if image.grayscale:
        return out[0], tile
    pixels = out.transpose(1, 2, 0)
    if image.alpha is not None:
        pixels = np.dstack([pixels, upscale_alpha(image.alpha, upscaler.scale, tile)])
    return np.ascontiguousarray(pixels), tile


def _upscale_file(
    src: Path, image: DecodedImage, upscaler: Upscaler, checkpoint: Path
) -> tuple[np.ndarray, int]:
    """upscale_image, every failure of this image a UserError naming it; weights whose output is no image
    (OutputError) stop the whole run with a FatalError naming them."""
    try:
        return upscale_image(image, upscaler)
    except OutputError as err:
        raise FatalError(
            f"{checkpoint}: {err}; the weights are damaged or diverged: use another checkpoint"
        ) from None
    except (InputTooSmall, UserError) as err:
        raise UserError(f"{src}: {err}") from None
    except (torch.OutOfMemoryError, MemoryError):
        raise UserError(f"{src}: out of memory; pass a smaller --max-memory") from None
    except RuntimeError as err:  # the CPU allocator's failure is a plain RuntimeError
        if "alloc" not in str(err) and "memory" not in str(err):
            raise
        raise UserError(
            f"{src}: out of memory ({str(err).splitlines()[0][:80]}); pass a smaller --max-memory"
        ) from None


def load_upscaler(args: argparse.Namespace, jobs: int = 1) -> tuple[Upscaler, LKDN, Path]:
    """The network and its runner; with `jobs` images at once, each gets 1 / jobs of --max-memory."""
    path = checkpoint_or_bundled(args.model_path)
    model = build_model_from_checkpoint(path, fused=True)
    device = resolve_device(args.device)
    runner = runner_for_cli(model, path, device, args.backend, args.precision, args.onnx_path)
    radius, per_pixel = model.receptive_radius(), bytes_per_lr_pixel(model)
    budget = args.max_memory // jobs
    if radius is not None and budget < (MIN_TILE + 2 * radius) ** 2 * per_pixel:
        needed = format_bytes((MIN_TILE + 2 * radius) ** 2 * per_pixel)
        each = f", {format_bytes(budget)} for each of --jobs {jobs}" if jobs > 1 else ""
        raise UserError(
            f"--max-memory {format_bytes(args.max_memory)}{each}: too small for one tile of this model "
            f"({MIN_TILE} LR pixels and {radius} of overlap on each side need {needed}); raise it"
        )
    return Upscaler(runner, device, model.scale, radius, per_pixel, budget), model, path


# ----------------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


def plan_jobs(inputs: list[Path], out_dir: Path, scale: int) -> tuple[list[Job], list[str]]:
    """Each input's output, before any work: an input whose output would replace an input image, or another
    input's output, fails (the first to claim an output keeps it)."""
    protected = {p.resolve() for p in inputs}
    claimed: dict[Path, Path] = {}
    jobs, failures = [], []
    for src in inputs:
        dst = output_path(src, out_dir, scale)
        key = dst.resolve()
        if key in protected:
            failures.append(f"{src}: its output {dst} is an input image; choose another -o")
        elif key in claimed:
            failures.append(f"{src}: its output {dst} is also {claimed[key]}'s; upscale them apart")
        else:
            claimed[key] = src
            jobs.append(Job(src, dst))
    return jobs, failures


def upscale_job(job: Job, upscaler: Upscaler, checkpoint: Path) -> str | None:
    """Read, upscale and write one image (UserError naming it if any of that fails); a line saying how it was
    tiled, if it was."""
    image = read_image(job.src)
    pixels, tile = _upscale_file(job.src, image, upscaler, checkpoint)
    write_image(job.dst, pixels)
    height, width = image.rgb.shape[:2]
    if tile >= max(height, width):
        return None
    tiles = math.ceil(height / tile) * math.ceil(width / tile)
    return f"{job.src}: {width}x{height} in {tiles} tiles of {tile} LR pixels (--max-memory)"


def upscale_jobs(
    jobs: list[Job], upscaler: Upscaler, checkpoint: Path, workers: int = 1, progress: bool = True
) -> int:
    """Every job, `workers` at once (threads: the kernels, decoders and encoders release the GIL); each failure
    is one line and the batch goes on; a FatalError stops it once the images in progress are written. Returns
    the number that failed."""
    failed = 0
    bar = tqdm(total=len(jobs), desc="upscaling", unit="image", file=sys.stderr, disable=not progress)

    def settle(outcome: Callable[[], str | None]) -> None:
        nonlocal failed
        try:
            note = outcome()
        except FatalError:
            raise
        except UserError as err:
            tqdm.write(f"failed: {err}", file=sys.stderr)
            failed += 1
        else:
            if note:
                tqdm.write(note)
        bar.update()

    with bar:
        if workers == 1:
            for job in jobs:
                settle(lambda job=job: upscale_job(job, upscaler, checkpoint))
            return failed
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(upscale_job, job, upscaler, checkpoint) for job in jobs]
            try:
                for future in as_completed(futures):
                    settle(future.result)
            except BaseException:  # FatalError or Ctrl-C: no new image starts
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return failed


@contextlib.contextmanager
def threads_per_job(workers: int) -> Iterator[int]:
    """torch's threads divided between `workers` images at once (at least one each), restored on leaving; the
    runner is made inside, since the native kernels' build is chosen per thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


def resolve_jobs(requested: int | None, device: torch.device, images: int) -> int:
    """Images upscaled at once: --jobs, else 1 (a GPU runs one at a time; --jobs above 1 there is refused)."""
    if requested is None:
        return 1
    if requested > 1 and device.type != "cpu":
        raise UserError(f"--jobs {requested}: images run one at a time on {device.type}; drop --jobs")
    return max(1, min(requested, images))


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-i",
        "--input",
        nargs="+",
        required=True,
        help="image files, folders or glob patterns (quote patterns)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the upscaled images")
    p.add_argument("--model_path", help=f"checkpoint (default: model_zoo/{BUNDLED_CHECKPOINT.name})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--backend", default="auto", help=f"{', '.join(BACKENDS)} (default auto: the fastest exact one)"
    )
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS), help=PRECISION_HELP)
    p.add_argument("--onnx_path", type=Path, help=ONNX_PATH_HELP)
    p.add_argument(
        "--max-memory",
        "--max_memory",
        dest="max_memory",
        default=DEFAULT_MAX_MEMORY,
        help="memory for one image: the network's working memory plus the whole output image; larger images "
        f"are tiled to fit (e.g. 512M, 4G; default {DEFAULT_MAX_MEMORY}). The decoded input comes on top",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="on a CPU, images upscaled at once, each on its share of the threads (default 1: one image at a "
        "time on all of them); --max-memory is shared between them",
    )
    args = p.parse_args(argv)
    args.max_memory = parse_memory(args.max_memory)
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"-o {args.output}: is a file, not a folder; pass the folder the images go to")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = collect_inputs(args.input)
    workers = resolve_jobs(args.jobs, resolve_device(args.device), len(inputs))
    with threads_per_job(workers):
        return _upscale_inputs(args, inputs, workers)


def _upscale_inputs(args: argparse.Namespace, inputs: list[Path], workers: int) -> int:
    upscaler, model, checkpoint = load_upscaler(args, workers)
    at_once = f", {workers} images at once on {torch.get_num_threads()} thread(s) each" if workers > 1 else ""
    print(
        f"{config_name(model.num_feat, model.num_blocks)} x{model.scale} from {checkpoint}: device {upscaler.device}, "
        f"backend {upscaler.runner.name}, max memory {format_bytes(args.max_memory)}{at_once}; "
        f"{len(inputs)} image{'s' * (len(inputs) != 1)} -> {args.output}"
    )
    jobs, refused = plan_jobs(inputs, args.output, model.scale)
    for line in refused:
        print(f"failed: {line}", file=sys.stderr)
    failed = len(refused) + upscale_jobs(jobs, upscaler, checkpoint, workers)
    print(f"{len(inputs) - failed} of {len(inputs)} upscaled x{model.scale} into {args.output}", end="")
    print(f"; {failed} failed (listed above)" if failed else "")
    return EXIT_USER_ERROR if failed else 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
