"""Training configuration: one flat dataclass, defaults from a stage's YAML file, every field a CLI flag.

A plain dataclass instead of BasicSR's nested option trees: a single-model repository needs no registry, and
`--lr 2e-4` reads better than `--set train.optim_g.lr=2e-4`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError
from utils.files.yaml_file import read_yaml_mapping

TRAIN_DIR = Path(__file__).resolve().parent
STAGES = ("scratch", "finetune")


@dataclass
class TrainConfig:
    """Every knob of a run. The defaults here are the factsheet's stage 1; the YAML files restate them."""

    name: str = "LKDN-S_x4_scratch"
    stage: str = "scratch"
    run_dir: str = ""  # default: experiments/<name>
    # network
    num_feat: int = 42
    num_blocks: int = 5
    scale: int = 4
    attention: str = "lka"
    shallow: str = "rbsb"
    online_fusion: bool = True
    channels_last: bool = True  # NHWC activations: faster depthwise convs on CPUs and tensor cores on GPUs
    init_from: str = ""  # weights to start from (params_ema preferred); stage 2 starts from stage 1's
    # data
    train_sources: list[str] = field(
        default_factory=lambda: ["data/DIV2K_train_HR", "data/LSDIR_first2000.txt"]
    )
    cache_dir: str = "data/cache"
    lr_patch: int = 64
    batch_size: int = 128
    augment: bool = True
    in_memory: bool = False
    num_workers: int = 4
    # optimisation
    loss: str = "l1"
    optimizer: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    scheduler: str = "constant"  # constant | cosine | multistep
    warmup_iters: int = 0
    min_lr: float = 1e-7  # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep
    gamma: float = 0.5  # multistep
    total_iters: int = 950_000
    ema_decay: float = 0.999
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + grad scaler, GPU)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0 = torch's default); 1 keeps a shared machine responsive
    # bookkeeping
    val_dirs: list[str] = field(default_factory=lambda: ["data/DIV2K_valid"])
    val_every: int = 5000
    save_every: int = 5000
    keep_last: int = 3
    log_every: int = 100
    max_minutes: float = 0.0  # stop (and save) after this much wall time; 0 = no limit

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or Path("experiments") / self.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, type]:
    return typing.get_type_hints(TrainConfig)


def _cli_type(annotation: object) -> tuple[type, str | None]:
    """(element type, nargs) of a field annotation for argparse."""
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], "*"
    if isinstance(annotation, types.UnionType):
        return typing.get_args(annotation)[0], None
    return annotation, None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field` flag per TrainConfig field (lists take several values, booleans true/false)."""
    group = parser.add_argument_group("configuration overrides (defaults from the stage's YAML file)")
    for name, annotation in _field_types().items():
        if name == "stage":  # chosen by --stage, which picks the YAML file
            continue
        kind, nargs = _cli_type(annotation)
        parse = _parse_bool if kind is bool else kind
        group.add_argument(f"--{name}", type=parse, nargs=nargs, default=None, metavar=kind.__name__.upper())


def default_config_path(stage: str) -> Path:
    return TRAIN_DIR / f"{stage}.yml"


def load_config(path: Path, overrides: dict[str, object] | None = None) -> TrainConfig:
    """A config from a YAML file, then the non-None `overrides` on top; unknown keys are errors."""
    raw = read_yaml_mapping(path, "pass an existing --config")
    values = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"{path}: unknown field(s) {', '.join(unknown)}; the fields are those of train/config.py"
        )
    config = TrainConfig(**values)
    validate(config, path)
    return config


def validate(config: TrainConfig, source: Path | str) -> None:
    choices = {
        "stage": STAGES,
        "loss": ("l1", "l2"),
        "optimizer": ("adam", "adan"),
        "scheduler": ("constant", "cosine", "multistep"),
        "precision": ("fp32", "bf16", "fp16"),
        "attention": ("lka", "esa_cca", "none"),
        "shallow": ("rbsb", "bsconv_shortcut", "bsconv"),
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise UserError(
                f"{source}: {name} must be one of {', '.join(allowed)}, not {getattr(config, name)!r}"
            )
    for name in ("lr_patch", "batch_size", "total_iters", "scale", "num_feat", "num_blocks", "keep_last"):
        if getattr(config, name) < 1:
            raise UserError(f"{source}: {name} must be at least 1, not {getattr(config, name)}")
    if not 0 <= config.ema_decay < 1:
        raise UserError(f"{source}: ema_decay must be in [0, 1), not {config.ema_decay}")
    expected_betas = 3 if config.optimizer == "adan" else 2
    if len(config.betas) != expected_betas:
        raise UserError(f"{source}: {config.optimizer} takes {expected_betas} betas, got {config.betas}")
    if not config.train_sources:
        raise UserError(f"{source}: train_sources is empty; name HR image folders or .txt file lists")
