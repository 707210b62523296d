"""NTIRE 2023 Efficient SR: the organizers' entry point. Reports what the official kit reports, computed the same way.

    python test_demo.py --data_dir data/ --save_dir results/ [--include_test | --hybrid_test] [--ssim]
    python test_demo.py --benchmark_dir path/to/benchmark [--model_path file.pth | --model_id bicubic]
    python test_demo.py --lr_dir path/to/lr_images/

Challenge mode (DIV2K valid; DIV2K test with --include_test, the LSDIR + DIV2K test set with --hybrid_test): RGB
PSNR of the uint8 output, HR cropped to a multiple of 4, 4-pixel border, mean over images; forward time per image
in ms; peak memory; the complexity figures (params, conv FLOPs, activations, convs on 1x3x256x256) of the fused
model. Writes SR images to save_dir/<model name>/<mode>/, save_dir/results.json (the kit's fields, keyed by model
name (another checkpoint than the bundled one: <entry>@<file name>), merged with earlier runs), save_dir/results.txt (the kit's table) and save_dir/<model name>.log.

Benchmark mode (--benchmark_dir, folders Set5/, Set14/, B100/, ... each with HR/ and LR_bicubic_x4/): the paper's
table, PSNR and SSIM on the BT.601 Y channel with a 4-pixel border.

LR-only mode (--lr_dir, any folder of LR images, as in a test phase whose HR images are hidden): the runtime, the
memory and the SR images, timed as in challenge mode; results.json gets an `lr_only` part without PSNR.

On a CPU the forward pass is timed with perf_counter after a warm-up pass, and memory is the process's peak
resident memory: neither is comparable with the challenge's GPU figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models import BUNDLED_CHECKPOINT, MODEL_NAME, TEAM_NUMBER
from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_text_atomic
from utils.files.checkpoint import build_model_from_checkpoint, checkpoint_or_bundled
from utils.files.image_io import read_rgb, read_size, to_tensor, to_uint8, write_rgb
from utils.files.lock import exclusive
from utils.image.imresize import matlab_imresize
from utils.measure.metrics import SSIM_WINDOW, crop_to_multiple, psnr_rgb, psnr_y, ssim, ssim_y
from utils.measure.model_summary import CHALLENGE_INPUT, summarize
from utils.measure.timing import PeakMemory, timed_ms
from utils.runtime.backends import (
    BACKENDS,
    ONNX_PATH_HELP,
    PRECISION_HELP,
    PRECISIONS,
    OutputError,
    Runner,
    check_output,
    runner_for_cli,
)
from utils.runtime.tiling import tiled_forward

SCALE = 4
BORDER = SCALE
DOWNLOAD_COMMAND = "python -m data.download_div2k --data_dir {data_dir}"
BENCHMARK_ORDER = ("Set5", "Set14", "B100", "Urban100", "Manga109")
DATASET_DIRS = {  # (LR folder, HR folder) under --data_dir, as the kit names them
    "valid": ("DIV2K_valid_LR", "DIV2K_valid_HR"),
    "test": ("DIV2K_test_LR", "DIV2K_test_HR"),
    "hybrid_test": ("LSDIR_DIV2K_test_LR", "LSDIR_DIV2K_test_HR"),
}
MODE_TITLES = {"valid": "DIV2K valid", "test": "DIV2K test", "hybrid_test": "LSDIR + DIV2K test"}
CPU_TIME_NOTE = (
    "CPU times (perf_counter, after a warm-up pass) are not comparable to the challenge's GPU times"
)

log = logging.getLogger("test_demo")


# ----------------------------------------------------------------------------------------------------- model


class BicubicRunner:
    """The baseline row: MATLAB bicubic x4 upscaling of the uint8 LR, as a runner on [0, 1] tensors."""

    name = "matlab-bicubic"

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        img = to_uint8(lr)  # exact: the LR tensor came from a uint8 image
        sr = matlab_imresize(img, SCALE)
        return to_tensor(sr).to(lr.device)


@dataclass
class Selected:
    runner: Runner  # callable on a 1x3xHxW tensor in [0, 1], with `.name`
    name: str
    model: torch.nn.Module | None  # the fused network that runs; None for bicubic
    checkpoint: Path | None
    overlap: int  # LR context pixels around each tile
    radius: int | None  # LR receptive-field radius (None: not local)


def select_model(args: argparse.Namespace, device: torch.device) -> Selected:
    """The model of `--model_id` (this entry's team number, or `bicubic`) with its weights and runner."""
    if args.model_id == "bicubic":
        if args.tile:
            raise UserError("--tile: bicubic upscaling is not tiled; drop --tile or evaluate the network")
        return Selected(BicubicRunner(), "bicubic", None, None, 0, None)
    if args.model_id != str(TEAM_NUMBER):
        raise UserError(
            f"--model_id {args.model_id}: unknown model; this entry is {TEAM_NUMBER} ({MODEL_NAME}), "
            "or use 'bicubic' for the baseline"
        )
    path = checkpoint_or_bundled(args.model_path)
    model = build_model_from_checkpoint(path, fused=True)
    if model.scale != SCALE:
        raise UserError(
            f"{path}: a x{model.scale} checkpoint; the challenge is x{SCALE}, pass a x{SCALE} one"
        )
    runner = runner_for_cli(model, path, device, args.backend, args.precision, args.onnx_path)
    radius = model.receptive_radius()
    overlap = args.tile_overlap if args.tile_overlap is not None else radius
    if args.tile and overlap is None:
        raise UserError(
            "--tile: this model's attention pools over the whole image, so tiles cannot be exact; "
            "pass --tile_overlap explicitly or run without --tile"
        )
    return Selected(runner, result_name(path), model, path, overlap or 0, radius)


def result_name(checkpoint: Path) -> str:
    """The key of a run in results.json and results.txt: the team's entry for the bundled weights (in either
    format), `<entry>@<file stem>` for any other checkpoint, so measuring one never overwrites the entry's row."""
    bundled = {BUNDLED_CHECKPOINT.resolve(), BUNDLED_CHECKPOINT.with_suffix(".safetensors").resolve()}
    return MODEL_NAME if checkpoint.resolve() in bundled else f"{MODEL_NAME}@{checkpoint.stem}"


# ----------------------------------------------------------------------------------------------------- data


def _check_pair(lr: Path, hr: Path) -> None:
    """Fail before the run, not in the middle of it: both files readable, LR = HR (cropped to x4) / 4."""
    hr_h, hr_w = read_size(hr)
    lr_h, lr_w = read_size(lr)
    if (lr_h * SCALE, lr_w * SCALE) != (hr_h - hr_h % SCALE, hr_w - hr_w % SCALE):
        raise UserError(
            f"{lr}: size {lr_w}x{lr_h} does not match its HR {hr} ({hr_w}x{hr_h}): expected "
            f"{hr_w // SCALE}x{hr_h // SCALE} at x{SCALE}; replace it with the x{SCALE} bicubic LR of that HR"
        )


def _expected_pairs(data_dir: Path, mode: str) -> list[tuple[Path, Path]]:
    """The kit's file lists: DIV2K valid 0801-0900, DIV2K test 0901-1000, and every LSDIR_DIV2K_test_HR image."""
    lr_dir, hr_dir = (data_dir / folder for folder in DATASET_DIRS[mode])
    if mode == "valid":
        return [(lr_dir / f"{i:04d}x{SCALE}.png", hr_dir / f"{i:04d}.png") for i in range(801, 901)]
    if mode == "test":
        pairs = []
        for i in range(901, 1001):
            lr = lr_dir / f"{i:04d}.png"  # the kit's name; the public DIV2K test LR is named 0901x4.png
            pairs.append((lr if lr.is_file() else lr_dir / f"{i:04d}x{SCALE}.png", hr_dir / f"{i:04d}.png"))
        return pairs
    return [(lr_dir / f"{hr.stem}x{SCALE}.png", hr) for hr in sorted(hr_dir.glob("*.png"))]


def _missing_data_fix(data_dir: Path, mode: str) -> str:
    if mode == "valid":
        return f"download it with `{DOWNLOAD_COMMAND.format(data_dir=data_dir)}` (or pass --data_dir)"
    if mode == "test":
        return (
            "put the organizers' DIV2K test set there (DIV2K_test_LR/0901.png, DIV2K_test_HR/0901.png, ...); "
            "its HR images are not public"
        )
    return "put the organizers' LSDIR + DIV2K test set there (LSDIR_DIV2K_test_HR/*.png, LSDIR_DIV2K_test_LR/*x4.png)"


def select_dataset(data_dir: Path, mode: str, allow_partial: bool = False) -> list[tuple[Path, Path]]:
    """(LR, HR) paths of `mode`, every pair checked; UserError naming the path and the fix otherwise."""
    for folder in reversed(DATASET_DIRS[mode]):  # HR first: a missing HR folder means a missing dataset
        if not (data_dir / folder).is_dir():
            raise UserError(
                f"{data_dir / folder}: {MODE_TITLES[mode]} not found; {_missing_data_fix(data_dir, mode)}"
            )
    pairs = _expected_pairs(data_dir, mode)
    if not pairs:
        raise UserError(
            f"{data_dir / DATASET_DIRS[mode][1]}: no .png images; {_missing_data_fix(data_dir, mode)}"
        )
    present = [(lr, hr) for lr, hr in pairs if lr.is_file() and hr.is_file()]
    if len(present) < len(pairs) and not (allow_partial and present):
        lr, hr = next((lr, hr) for lr, hr in pairs if not (lr.is_file() and hr.is_file()))
        missing = hr if not hr.is_file() else lr
        raise UserError(
            f"{missing}: missing ({len(pairs) - len(present)} of {len(pairs)} {MODE_TITLES[mode]} "
            f"pairs incomplete); {_missing_data_fix(data_dir, mode)}, or pass --allow_partial"
        )
    for lr, hr in present:
        _check_pair(lr, hr)
    return present


LR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def select_lr_only(lr_dir: Path) -> list[tuple[Path, None]]:
    """(LR, None) for every image of `lr_dir`, in name order: LR-only mode has no reference to score against."""
    if not lr_dir.is_dir():
        raise UserError(f"{lr_dir}: no such folder; point --lr_dir at a folder of LR images")
    images = sorted(p for p in lr_dir.iterdir() if p.suffix.lower() in LR_SUFFIXES and p.is_file())
    if not images:
        raise UserError(
            f"{lr_dir}: no images ({', '.join(LR_SUFFIXES)}); point --lr_dir at a folder of LR images"
        )
    return [(image, None) for image in images]


def select_benchmark(benchmark_dir: Path) -> dict[str, list[tuple[Path, Path]]]:
    """{set name: (LR, HR) pairs} of the set folders (HR/ + LR_bicubic_x4/, same file names) in benchmark_dir."""
    if not benchmark_dir.is_dir():
        raise UserError(
            f"{benchmark_dir}: no such benchmark folder; point --benchmark_dir at a folder holding "
            "Set5/, Set14/, B100/ (each with HR/ and LR_bicubic_x4/)"
        )
    sets = (
        [benchmark_dir]
        if (benchmark_dir / "HR").is_dir()
        else [d for d in benchmark_dir.iterdir() if (d / "HR").is_dir()]
    )
    if not sets:
        raise UserError(
            f"{benchmark_dir}: no set folders with an HR/ subfolder inside; point --benchmark_dir at a "
            "folder holding Set5/, Set14/, B100/ (each with HR/ and LR_bicubic_x4/)"
        )
    order = {name: i for i, name in enumerate(BENCHMARK_ORDER)}
    sets.sort(key=lambda d: (order.get(d.name, len(order)), d.name))
    benchmark = {}
    for folder in sets:
        lr_dir = folder / f"LR_bicubic_x{SCALE}"
        if not lr_dir.is_dir():
            raise UserError(
                f"{lr_dir}: missing LR folder of {folder.name}; add the x{SCALE} bicubic LR images"
            )
        pairs = [(lr_dir / hr.name, hr) for hr in sorted((folder / "HR").glob("*.png"))]
        if not pairs:
            raise UserError(f"{folder / 'HR'}: no .png images; add the HR images of {folder.name}")
        for lr, hr in pairs:
            if not lr.is_file():
                raise UserError(f"{lr}: missing LR of {hr}; add it (same file name as the HR)")
            _check_pair(lr, hr)
        benchmark[folder.name] = pairs
    return benchmark


# ----------------------------------------------------------------------------------------------------- run


def forward(runner: Runner, lr: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
    """The whole image at once, or tile by tile (seamless when overlap >= the receptive-field radius)."""
    if not tile:
        return runner(lr)
    return tiled_forward(runner, lr, tile, overlap, SCALE)


def _check_runnable(runner: Runner, lr_path: Path) -> None:
    """An LR image the network takes (checked from its header, before any run)."""
    height, width = read_size(lr_path)
    if min(height, width) < getattr(runner, "min_size", 1):
        raise UserError(
            f"{lr_path}: {width}x{height} pixels; this network's attention (ESA) needs at least "
            f"{runner.min_size} on a side: remove the image from the set"
        )


def _check_measurable(hr_path: Path, with_ssim: bool) -> None:
    """An HR image large enough for the metrics inside the border (checked from its header, before any run)."""
    height, width = (side // SCALE * SCALE for side in read_size(hr_path))
    needed = 2 * BORDER + (SSIM_WINDOW if with_ssim else 1)
    if min(height, width) < needed:
        what = "SSIM" if with_ssim else "PSNR"
        raise UserError(
            f"{hr_path}: {width}x{height} pixels (cropped to x{SCALE}) leave too little inside the {BORDER}-pixel "
            f"border for {what}; it needs {needed} on a side: remove the image from the set"
        )


def _load_pair(lr_path: Path, hr_path: Path) -> tuple[np.ndarray, np.ndarray]:
    lr, hr = read_rgb(lr_path), crop_to_multiple(read_rgb(hr_path), SCALE)
    if hr.shape[:2] != (lr.shape[0] * SCALE, lr.shape[1] * SCALE):
        raise UserError(f"{lr_path}: size does not match its HR {hr_path} at x{SCALE}; replace it")
    return lr, hr


def run(
    selected: Selected,
    pairs: list[tuple[Path, Path]],
    mode: str,
    device: torch.device,
    args: argparse.Namespace,
    save_dir: Path,
    y_channel: bool = False,
) -> dict:
    """Evaluate one dataset; returns the kit's per-mode fields (`{mode}_runtime`, `{mode}_psnr`, ...)."""
    psnr_fn, ssim_fn = (psnr_y, ssim_y) if y_channel else (psnr_rgb, ssim)
    with_ssim = args.ssim or y_channel
    out_dir = save_dir / selected.name / mode
    for lr_path, hr_path in pairs:
        _check_runnable(selected.runner, lr_path)
        if hr_path is not None:  # None: LR-only mode, timed without a reference
            _check_measurable(hr_path, with_ssim)
    # the network alone is timed, as the kit times it; its output is checked right after, outside the timing
    network = getattr(selected.runner, "raw", selected.runner)
    runtimes, psnrs, ssims = [], [], []
    memory = PeakMemory(device)
    if device.type == "cpu":
        # the kit does not warm up; on a CPU the first call pays for allocations and kernel setup
        forward(network, to_tensor(read_rgb(pairs[0][0])).to(device), args.tile, selected.overlap)
    for lr_path, hr_path in tqdm(pairs, desc=f"{mode:>12s}", unit="img", file=sys.stderr, leave=False):
        lr, hr = _load_pair(lr_path, hr_path) if hr_path is not None else (read_rgb(lr_path), None)
        lr_tensor = to_tensor(lr).to(device)
        with memory:
            sr, ms = timed_ms(lambda x=lr_tensor: forward(network, x, args.tile, selected.overlap), device)
        try:
            check_output(sr)
        except OutputError as err:
            raise UserError(
                f"{selected.checkpoint}: {err} on {lr_path}; the weights are damaged or diverged: use another "
                "checkpoint"
            ) from None
        sr = to_uint8(sr)
        runtimes.append(ms)
        if hr is not None:
            psnrs.append(psnr_fn(sr, hr, border=BORDER))
            if with_ssim:
                ssims.append(ssim_fn(sr, hr, border=BORDER))
        write_rgb(out_dir / f"{lr_path.stem}.png", sr)
    results = {
        f"{mode}_runtime": runtimes,
        f"{mode}_memory": memory.peak_mb,
        f"{mode}_ave_runtime": float(np.mean(runtimes)),
        f"{mode}_num_images": len(pairs),
    }
    scores = ""
    if psnrs:
        results[f"{mode}_psnr"], results[f"{mode}_ave_psnr"] = psnrs, float(np.mean(psnrs))
        scores = f", {'PSNR_Y' if y_channel else 'PSNR'} {results[f'{mode}_ave_psnr']:.2f} dB"
    if ssims:
        results[f"{mode}_ssim"], results[f"{mode}_ave_ssim"] = ssims, float(np.mean(ssims))
        scores += f", SSIM{'_Y' if y_channel else ''} {results[f'{mode}_ave_ssim']:.4f}"
    log.info(
        f"{mode:>12s}: {len(pairs)} image{'s' * (len(pairs) != 1)}{scores}, "
        f"{results[f'{mode}_ave_runtime']:.2f} ms/img, memory {memory.peak_mb:.2f} MB"
    )
    return results


def complexity(selected: Selected) -> dict:
    """The kit's complexity fields (params in M, conv FLOPs in G, activations in M, convs) plus labelled extras."""
    if selected.model is None:
        return {"activations": None, "num_conv": None, "flops": None, "num_parameters": None}
    s = summarize(selected.model, CHALLENGE_INPUT)
    return {
        "activations": s.activations / 1e6,
        "num_conv": s.num_conv,
        "flops": s.conv_macs / 1e9,
        "num_parameters": s.num_parameters / 1e6,
        "fvcore_total_flops": s.fvcore_total_flops / 1e9,
        "thop_flops": s.thop_macs / 1e9,
        "complexity_input": list(s.input_shape),
    }


# ----------------------------------------------------------------------------------------------------- output


def _read_results(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{path}: not a readable results.json; move it away or choose another --save_dir"
        ) from None
    if not isinstance(results, dict) or not all(isinstance(entry, dict) for entry in results.values()):
        raise UserError(
            f"{path}: not a results.json of this script (a mapping of model name to figures); move it away or "
            "choose another --save_dir"
        )
    return results


def update_results(path: Path, name: str, entry: dict, keep: tuple[str, ...] | None = None) -> dict:
    """Merge `entry` into the row `name` of results.json and return all rows: read, merged and written under
    an exclusive lock (`.results.json.lock` beside it), so that runs sharing a --save_dir never lose a row.
    The row keeps its earlier fields (`keep` None) or only those named in `keep`."""
    with exclusive(path.parent / f".{path.name}.lock"):
        results = _read_results(path)
        old = results.get(name, {})
        kept = old if keep is None else {key: old[key] for key in keep if key in old}
        results[name] = {**kept, **entry}
        write_text_atomic(path, json.dumps(results, indent=2))
    return results


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def results_table(results: dict, test_mode: str | None) -> str:
    """The kit's results.txt: one row per model with challenge-mode results."""
    if test_mode:
        fmt = "{:20s}\t{:10s}\t{:10s}\t{:14s}\t{:14s}\t{:14s}\t{:10s}\t{:10s}\t{:8s}\t{:8s}\t{:8s}\n"
        text = fmt.format(
            "Model",
            "Val PSNR",
            "Test PSNR",
            "Val Time [ms]",
            "Test Time [ms]",
            "Ave Time [ms]",
            "Params [M]",
            "FLOPs [G]",
            "Acts [M]",
            "Mem [M]",
            "Conv",
        )
    else:
        fmt = "{:20s}\t{:10s}\t{:14s}\t{:10s}\t{:10s}\t{:8s}\t{:8s}\t{:8s}\n"
        text = fmt.format(
            "Model", "Val PSNR", "Val Time [ms]", "Params [M]", "FLOPs [G]", "Acts [M]", "Mem [M]", "Conv"
        )
    for name, v in results.items():
        if "valid_ave_psnr" not in v or (test_mode and f"{test_mode}_ave_psnr" not in v):
            continue
        common = (
            _fmt(v["num_parameters"], "2.3f"),
            _fmt(v["flops"], "2.2f"),
            _fmt(v["activations"], "2.2f"),
            _fmt(v["valid_memory"], "2.2f"),
            _fmt(v["num_conv"], "4d"),
        )
        val_psnr, val_time = f"{v['valid_ave_psnr']:2.2f}", f"{v['valid_ave_runtime']:3.2f}"
        if test_mode:
            test_psnr, test_time = (
                f"{v[f'{test_mode}_ave_psnr']:2.2f}",
                f"{v[f'{test_mode}_ave_runtime']:3.2f}",
            )
            ave_time = f"{(v['valid_ave_runtime'] + v[f'{test_mode}_ave_runtime']) / 2:3.2f}"
            text += fmt.format(name, val_psnr, test_psnr, val_time, test_time, ave_time, *common)
        else:
            text += fmt.format(name, val_psnr, val_time, *common)
    return text


def benchmark_table(benchmark: dict) -> str:
    lines = [f"{'Dataset':10s} {'Images':>6s} {'PSNR_Y':>8s} {'SSIM_Y':>8s} {'Time [ms]':>10s}"]
    for name, r in benchmark.items():
        lines.append(
            f"{name:10s} {r['num_images']:6d} {r['psnr_y']:8.2f} {r['ssim_y']:8.4f} {r['ave_runtime']:10.2f}"
        )
    return "\n".join(lines)


def log_complexity(c: dict) -> None:
    if c["num_parameters"] is None:
        log.info("complexity: n/a (bicubic upscaling has no parameters)")
        return
    shape = "x".join(map(str, c["complexity_input"]))
    log.info(f"{'Params [M]':>16s} : {c['num_parameters']:.3f}")
    log.info(
        f"{'FLOPs [G]':>16s} : {c['flops']:.2f}   (conv multiply-accumulates on {shape}, fvcore 'conv': "
        "the NTIRE 2023 convention)"
    )
    log.info(f"{'fvcore total [G]':>16s} : {c['fvcore_total_flops']:.2f}   (fvcore, all counted operators)")
    log.info(f"{'thop [G]':>16s} : {c['thop_flops']:.2f}   (thop.profile MACs)")
    log.info(f"{'Acts [M]':>16s} : {c['activations']:.2f}   (summed Conv2d output sizes on {shape})")
    log.info(f"{'Conv':>16s} : {c['num_conv']}")


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", type=Path, default=Path("data"), help="folder holding DIV2K_valid_LR/ etc.")
    p.add_argument("--save_dir", type=Path, default=Path("results"), help="SR images, results.json/.txt, log")
    p.add_argument(
        "--model_id",
        default=str(TEAM_NUMBER),
        help=f"{TEAM_NUMBER} (this entry, {MODEL_NAME}) or 'bicubic' (the MATLAB bicubic baseline)",
    )
    p.add_argument(
        "--model_path", help=f"checkpoint to evaluate (default: {BUNDLED_CHECKPOINT.name} in model_zoo/)"
    )
    p.add_argument("--include_test", action="store_true", help="also the DIV2K test set")
    p.add_argument(
        "--hybrid_test", action="store_true", help="also the LSDIR + DIV2K test set (instead of DIV2K test)"
    )
    p.add_argument("--ssim", action="store_true", help="also SSIM (RGB)")
    p.add_argument(
        "--allow_partial",
        action="store_true",
        help="evaluate the images present when a set is incomplete (averages then not comparable)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--benchmark_dir", type=Path, help="paper-table mode: Set5/, Set14/, B100/ ... (Y channel)"
    )
    mode.add_argument(
        "--lr_dir",
        type=Path,
        help="LR-only mode: runtime, memory and SR images of a folder of LR images, no PSNR",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: a CUDA GPU when there is one"
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="how the network runs: auto (native on a CPU, else the module), reference, fast, native (C++ "
        "kernels, CPU), cuda_graph (the module replayed as one CUDA graph), onnxruntime (default: auto)",
    )
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS), help=PRECISION_HELP)
    p.add_argument("--onnx_path", type=Path, help=ONNX_PATH_HELP)
    p.add_argument("--tile", type=int, help="run in LR tiles of this size (for large inputs)")
    p.add_argument(
        "--tile_overlap",
        type=int,
        help="LR context pixels around each tile (default: the receptive-field radius, 63 for LKDN-S: exact)",
    )
    args = p.parse_args(argv)
    if args.tile is not None and args.tile < 1:
        p.error("--tile must be a positive number of LR pixels")
    if args.tile_overlap is not None and args.tile_overlap < 0:
        p.error("--tile_overlap must be >= 0")
    if args.save_dir.exists() and not args.save_dir.is_dir():
        raise UserError(f"--save_dir {args.save_dir}: is a file, not a folder; pass the folder results go to")
    return args


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to this PyTorch; use --device cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _setup_log(log_path: Path) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    log.addHandler(logging.StreamHandler(sys.stdout))
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path)
    except OSError as err:
        raise UserError(
            f"{log_path.parent}: cannot write there ({err.strerror}); choose a writable --save_dir"
        ) from None
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)


def _log_setup(selected: Selected, args: argparse.Namespace, device: torch.device) -> None:
    log.info(
        f"model {selected.name} ({args.model_id}), checkpoint {selected.checkpoint or 'none'}, device {device}, "
        f"backend {selected.runner.name}, tile {args.tile or 'off'}"
        + (f" (overlap {selected.overlap} LR pixels)" if args.tile else "")
    )
    if args.tile and selected.radius is not None and selected.overlap < selected.radius:
        log.info(
            f"warning: --tile_overlap {selected.overlap} is below the receptive-field radius ({selected.radius} "
            "LR pixels): tiled outputs will differ from whole-image outputs near tile edges"
        )
    if device.type == "cpu":
        log.info(f"note: {CPU_TIME_NOTE}")


def run_benchmark(
    selected: Selected, datasets: dict, device: torch.device, args: argparse.Namespace, info: dict
) -> dict:
    """Benchmark mode: PSNR/SSIM on the Y channel per dataset; the entry's `benchmark` part."""
    benchmark = {}
    for name, pairs in datasets.items():
        r = run(selected, pairs, name, device, args, args.save_dir, y_channel=True)
        benchmark[name] = {
            "num_images": len(pairs),
            "psnr_y": r[f"{name}_ave_psnr"],
            "ssim_y": r[f"{name}_ave_ssim"],
            "ave_runtime": r[f"{name}_ave_runtime"],
            "psnr_y_per_image": r[f"{name}_psnr"],
            "ssim_y_per_image": r[f"{name}_ssim"],
        }
    return {
        "benchmark": benchmark,
        "benchmark_info": {**info, "benchmark_dir": str(args.benchmark_dir), "border": BORDER},
    }


def run_lr_only(
    selected: Selected, datasets: dict, device: torch.device, args: argparse.Namespace, info: dict
) -> dict:
    """LR-only mode: runtime and memory per image, no reference; the entry's `lr_only` part."""
    ((name, pairs),) = datasets.items()
    r = run(selected, pairs, name, device, args, args.save_dir)
    return {
        "lr_only": {
            "lr_dir": str(args.lr_dir), "num_images": len(pairs), "ave_runtime": r[f"{name}_ave_runtime"],
            "runtime_per_image": r[f"{name}_runtime"], "memory": r[f"{name}_memory"], **info,
        }
    }  # fmt: skip


def run_challenge(
    selected: Selected, datasets: dict, device: torch.device, args: argparse.Namespace, info: dict
) -> dict:
    """Challenge mode: the kit's RGB PSNR and runtime per split; the entry's challenge part."""
    entry = dict(info)
    for mode, pairs in datasets.items():
        entry.update(run(selected, pairs, mode, device, args, args.save_dir))
        expected = len(_expected_pairs(args.data_dir, mode))
        if len(pairs) < expected:
            log.info(
                f"warning: {mode} ran on {len(pairs)} of {expected} images (--allow_partial): "
                "not comparable with the challenge table"
            )
    return entry


def _report(selected: Selected, results: dict, args: argparse.Namespace, device: torch.device) -> None:
    """The closing log: complexity, memory, and the benchmark table or the challenge table (results.txt)."""
    entry = results[selected.name]
    log.info("")
    log_complexity(entry)
    log.info(f"{'Memory':>16s} : {PeakMemory(device).label}")
    if args.lr_dir is not None:
        part = entry["lr_only"]
        log.info(
            f"\n{selected.name}: {part['num_images']} LR images of {args.lr_dir}, {part['ave_runtime']:.2f} ms/img, "
            f"memory {part['memory']:.2f} MB (LR only: no PSNR)"
        )
    elif args.benchmark_dir is not None:
        log.info(
            f"\n{selected.name}: PSNR / SSIM on the Y channel (BT.601), border {BORDER}, uint8 outputs\n"
            + benchmark_table(entry["benchmark"])
        )
    else:
        test_mode = "hybrid_test" if args.hybrid_test else "test" if args.include_test else None
        table = results_table(results, test_mode)
        write_text_atomic(args.save_dir / "results.txt", table)
        log.info("\n" + table.rstrip())
    if device.type == "cpu":
        log.info(f"note: {CPU_TIME_NOTE}")
    log.info(f"results: {args.save_dir / 'results.json'}, SR images: {args.save_dir / selected.name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = _device(args.device)
    selected = select_model(args, device)
    if args.benchmark_dir is not None:
        datasets = select_benchmark(args.benchmark_dir)
    elif args.lr_dir is not None:
        datasets = {args.lr_dir.name or "lr_only": select_lr_only(args.lr_dir)}
    else:
        modes = ["valid"] + (["hybrid_test"] if args.hybrid_test else ["test"] if args.include_test else [])
        datasets = {mode: select_dataset(args.data_dir, mode, args.allow_partial) for mode in modes}
    _setup_log(args.save_dir / f"{selected.name}.log")
    _log_setup(selected, args, device)

    results_path = args.save_dir / "results.json"
    _read_results(results_path)  # a file of another shape is refused before anything runs
    info = {
        "device": str(device),
        "backend": selected.runner.name,
        "memory_measure": PeakMemory(device).label,
        "checkpoint": str(selected.checkpoint) if selected.checkpoint else None,
        "tile": args.tile,
    }
    if args.benchmark_dir is not None:  # a benchmark run adds its part to the entry
        entry, keep = run_benchmark(selected, datasets, device, args, info), None
    elif args.lr_dir is not None:  # so does an LR-only run
        entry, keep = run_lr_only(selected, datasets, device, args, info), None
    else:  # a challenge run replaces the entry's challenge part and keeps its benchmark part
        entry, keep = run_challenge(selected, datasets, device, args, info), ("benchmark", "benchmark_info")
    entry.update(complexity(selected))
    results = update_results(results_path, selected.name, entry, keep)
    _report(selected, results, args, device)
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
