"""Train LKDN: `python train/train_lkdn.py --stage scratch`, then `--stage finetune`.

Defaults come from train/<stage>.yml (the factsheet's recipe); every field can be overridden (`--lr 5e-4`).
A run resumes by itself from the newest state in its run folder; `--restart` refuses to and starts over only in an
empty folder. Multi-GPU or multi-process: `torchrun --nproc_per_node=N train/train_lkdn.py --stage scratch`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from train import state as run_state
from train.config import STAGES, TrainConfig, add_config_arguments, default_config_path, load_config
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("stage", "config", "resume", "restart", "export_fused")
    }
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
    Trainer(config, resume=not args.restart).run()
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
