"""Train LKDN: `python train/train_lkdn.py --stage scratch`, then `--stage finetune`.

Defaults come from train/<stage>.yml (the factsheet's recipe); every field can be overridden (`--lr 5e-4`).
A run resumes by itself from the newest state in its run folder, with the configuration saved there: flags or a
`--config` that would change the recipe are refused unless `--accept_config_change` is given (the change is then
recorded in config_history.yml). `--restart` starts over only in an empty folder. Multi-GPU or multi-process:
`torchrun --nproc_per_node=N train/train_lkdn.py --stage scratch`.

Exit codes: 0 finished (or stopped at --max_minutes, state saved), 2 a mistake to fix (the message says which),
130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP, to the process or its whole group (state saved; run the
same command to resume). One trainer per run folder: a second one is refused, naming the first one's PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from pathlib import Path

from train import state as run_state
from train.config import (
    FIXED_ON_RESUME,
    RECIPE_FIELDS,
    STAGES,
    TrainConfig,
    add_config_arguments,
    default_config_path,
    load_config,
    recipe_changes,
    validated,
)
from train.state import latest_resumable
from train.trainer import Trainer, build_model
from utils.errors import EXIT_SIGNAL, UserError, run_cli
from utils.files.checkpoint import load_checkpoint
from utils.files.lock import one_writer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage", choices=STAGES, help="which recipe stage (default scratch; a resumed run keeps its own)"
    )
    parser.add_argument("--config", type=Path, help="a YAML config (default train/<stage>.yml)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true", help="require a state to resume from in the run folder"
    )
    resume.add_argument(
        "--restart", action="store_true", help="ignore saved states (the run folder must be new)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a folder holding an earlier run's weights but no state to resume, replacing it",
    )
    parser.add_argument(
        "--accept_config_change",
        action="store_true",
        help="resume even though the flags or --config change the saved recipe (recorded in config_history.yml)",
    )
    parser.add_argument(
        "--export_fused",
        nargs="?",
        const="last",
        choices=("last", "best"),
        help="only write models/fused.pth from the run's last (default) or best EMA weights, then exit",
    )
    parser.add_argument(
        "--export_raw",
        action="store_true",
        help="with --export_fused: the raw weights (params) instead of their EMA, to models/fused_raw.pth",
    )
    add_config_arguments(parser)
    return parser.parse_args(argv)


def export_fused(config: TrainConfig, which: str, raw: bool = False) -> list[Path]:
    """The fused inference form of a run's last or best EMA weights, or raw weights (train.state.export_fused)."""
    run_dir = config.resolved_run_dir
    source = run_dir / "models" / f"{which}.pth"
    if not source.is_file():
        raise UserError(
            f"{source}: the run has no {which} weights yet; train it first, or export the other "
            f"(--export_fused {'best' if which == 'last' else 'last'}), or pass its --run_dir"
        )
    group = "params" if raw else None  # None: params_ema where the file has it
    model = load_checkpoint(source, build_model(config), group)
    paths = run_state.export_fused(model, run_dir, "fused_raw" if raw else "fused")
    print(
        f"wrote {' and '.join(map(str, paths))} (fused form of {source}, {'raw' if raw else 'EMA'} weights)"
    )
    return paths


COMMAND_FLAGS = (
    "stage", "config", "resume", "restart", "overwrite", "export_fused", "export_raw", "accept_config_change",
)  # fmt: skip


def resumed_config(
    run_dir: Path, iteration: int, args: argparse.Namespace, overrides: dict
) -> tuple[TrainConfig, dict[str, tuple]]:
    """(the configuration to resume with, its changes from the saved one). The saved configuration is the
    reference: flags (and a --config file, when given) apply on top; a change of the recipe is refused
    unless --accept_config_change."""
    source = run_state.state_path(run_dir, iteration)
    # a run saved before EMA warm-up existed ran without it: resuming must not switch it on silently
    saved = validated({"ema_warmup": False, **run_state.saved_config(run_dir, iteration)}, source)
    if args.config is not None:
        now = load_config(args.config, overrides)
    else:
        now = validated({**saved.to_dict(), **overrides}, source, set(overrides))
    changes = recipe_changes(saved, now)
    if args.stage is not None and args.stage != saved.stage:  # --stage picks a recipe, it is no field's flag
        changes["stage"] = (saved.stage, args.stage)
    recipe = {name: change for name, change in changes.items() if name in RECIPE_FIELDS}
    fixed = [name for name in recipe if name in FIXED_ON_RESUME]
    if fixed:
        name = fixed[0]
        old, new = recipe[name]
        raise UserError(
            f"{run_dir}: {name} cannot change on resume ({old!r} saved, {new!r} now): {FIXED_ON_RESUME[name]}"
        )
    if recipe and not args.accept_config_change:
        listed = "; ".join(f"{name}: {old!r} (saved) -> {new!r} (now)" for name, (old, new) in recipe.items())
        raise UserError(
            f"{run_dir}: resuming would change the recipe of this run: {listed}; resume with the saved values "
            "(drop those flags), or pass --accept_config_change to continue with the new ones"
        )
    return now, changes


def config_overrides(args: argparse.Namespace) -> dict:
    """The configuration fields given on the command line."""
    return {k: v for k, v in vars(args).items() if k not in COMMAND_FLAGS and v is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = config_overrides(args)
    stage = args.stage or "scratch"
    config_path = args.config or default_config_path(stage)
    config = load_config(config_path, overrides)
    if config.stage != stage and args.config is None:
        raise UserError(f"{config_path}: says stage {config.stage!r}, but --stage is {stage!r}; fix the file")
    run_dir = config.resolved_run_dir
    missing = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    created = missing[-1] if missing else None  # the outermost folder this run would create
    started: list[Trainer] = []
    try:
        with run_folder_lock(run_dir):
            return _in_run_folder(args, config, overrides, started)
    except BaseException:
        if created is not None and not started:  # refused before training began: no folder left behind
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in run_dir.parents[: len(missing) - 1]:  # the folders created above it, if still empty
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise


def run_folder_lock(run_dir: Path) -> contextlib.AbstractContextManager:
    """The run folder's lock (one trainer at a time), taken by rank 0 only: the other ranks of a torchrun group
    run under it."""
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return one_writer(run_dir, "trainer", "--run_dir")


def _in_run_folder(
    args: argparse.Namespace, config: TrainConfig, overrides: dict, started: list[Trainer]
) -> int:
    run_dir = config.resolved_run_dir
    saved = run_dir / "config.yml"
    if args.export_fused:
        if saved.is_file() and args.config is None:  # export what the run trained, not the stage defaults
            config = load_config(saved, overrides)
        export_fused(config, args.export_fused, args.export_raw)
        return 0
    found = latest_resumable(run_dir)
    if args.resume and found is None:
        raise UserError(
            f"{run_dir}: no saved training state to resume from; drop --resume to start a new run"
        )
    if args.restart and found is not None:
        raise UserError(
            f"{run_dir}: holds a run (iteration {found}); choose another --run_dir or --name to restart"
        )
    changes: dict[str, tuple] = {}
    if found is not None:
        config, changes = resumed_config(run_dir, found, args, overrides)
        if found >= config.total_iters:  # nothing to compute: touch nothing (a committed run stays as it is)
            print(
                f"{run_dir}: finished at iteration {found}; nothing to do (--export_fused writes its fused weights "
                "again; a larger --total_iters with --accept_config_change trains on)"
            )
            return 0
    elif args.overwrite or not (run_dir / "models" / "last.pth").exists():
        _clear_run(run_dir)  # --overwrite; or what a run stopped before its first save left (no weights)
    else:
        _refuse_to_overwrite(run_dir)
    trainer = Trainer(config, resume=not args.restart, changes=changes)
    started.append(trainer)
    trainer.run()
    return EXIT_SIGNAL + trainer.stopped_by if trainer.stopped_by is not None else 0


RUN_FILES = ("config.yml", "config_history.yml", "train.log", "curves.png", "models", "training_states")


def _run_files(run_dir: Path) -> list[str]:
    """What a run (finished, foreign, or one whose states were not kept) left in `run_dir`."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def _refuse_to_overwrite(run_dir: Path) -> None:
    """A folder whose run saved weights (models/last.pth) but holds no state to resume: a finished run whose
    states were not kept, a committed one, another tool's. A new run there would destroy it."""
    found = _run_files(run_dir)
    if found:
        raise UserError(
            f"{run_dir}: holds a run ({', '.join(found)}) with no training state to resume; a new run would "
            "overwrite it: pass another --run_dir, or --overwrite to replace it"
        )


def _clear_run(run_dir: Path) -> None:
    """--overwrite: the earlier run's files go, so that nothing of it mixes with the new one."""
    for name in _run_files(run_dir):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
