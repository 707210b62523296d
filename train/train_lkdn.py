"""Train LKDN: `python train/train_lkdn.py --stage scratch`, then `--stage finetune`.

Defaults come from train/<stage>.yml (the factsheet's recipe); every field can be overridden (`--lr 5e-4`).
A run resumes by itself from the newest state in its run folder, with the configuration saved there: flags or a
`--config` that would change the recipe are refused unless `--accept_config_change` is given (the change is then
recorded in config_history.yml). `--restart` starts over only in an empty folder. Multi-GPU or multi-process:
`torchrun --nproc_per_node=N train/train_lkdn.py --stage scratch`.

Exit codes: 0 finished (or stopped at --max_minutes, state saved), 2 a mistake to fix (the message says which),
130 / 143 stopped by SIGINT / SIGTERM (state saved; run the same command to resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train import state as run_state
from train.config import (
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
from utils.errors import UserError, run_cli
from utils.files.checkpoint import load_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage", choices=STAGES, default="scratch", help="which recipe stage (default scratch)"
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
    add_config_arguments(parser)
    return parser.parse_args(argv)


def export_fused(config: TrainConfig, which: str) -> list[Path]:
    """The fused inference form of a run's last or best EMA weights (train.state.export_fused)."""
    run_dir = config.resolved_run_dir
    source = run_dir / "models" / f"{which}.pth"
    if not source.is_file():
        raise UserError(
            f"{source}: the run has no {which} weights yet; train it first, or export the other "
            f"(--export_fused {'best' if which == 'last' else 'last'}), or pass its --run_dir"
        )
    paths = run_state.export_fused(load_checkpoint(source, build_model(config)), run_dir)
    print(f"wrote {' and '.join(map(str, paths))} (fused form of {source})")
    return paths


COMMAND_FLAGS = ("stage", "config", "resume", "restart", "export_fused", "accept_config_change")
EXIT_SIGNAL = 128  # a run stopped by signal N exits with 128 + N, as a shell reports it


def resumed_config(
    run_dir: Path, iteration: int, args: argparse.Namespace, overrides: dict
) -> tuple[TrainConfig, dict[str, tuple]]:
    """(the configuration to resume with, its changes from the saved one). The saved configuration is the
    reference: flags (and a --config file, when given) apply on top; a change of the recipe is refused
    unless --accept_config_change."""
    source = run_state.state_path(run_dir, iteration)
    saved = validated(run_state.saved_config(run_dir, iteration), source)
    if args.config is not None:
        now = load_config(args.config, overrides)
    else:
        now = validated({**saved.to_dict(), **overrides}, source, set(overrides))
    changes = recipe_changes(saved, now)
    recipe = {name: change for name, change in changes.items() if name in RECIPE_FIELDS}
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
    config_path = args.config or default_config_path(args.stage)
    config = load_config(config_path, overrides)
    if config.stage != args.stage and args.config is None:
        raise UserError(
            f"{config_path}: says stage {config.stage!r}, but --stage is {args.stage!r}; fix the file"
        )
    run_dir = config.resolved_run_dir
    saved = run_dir / "config.yml"
    if args.export_fused:
        if saved.is_file() and args.config is None:  # export what the run trained, not the stage defaults
            config = load_config(saved, overrides)
        export_fused(config, args.export_fused)
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
    trainer = Trainer(config, resume=not args.restart, changes=changes)
    trainer.run()
    return EXIT_SIGNAL + trainer.stopped_by if trainer.stopped_by is not None else 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
