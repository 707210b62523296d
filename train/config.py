"""Training configuration: one flat, validated model; defaults from a stage's YAML file, every field a CLI flag.

pydantic v2 does the validation (typed and ranged fields, one message per bad value) instead of hand-written
coercion: a flat model, not BasicSR's nested option trees, since a single-model repository needs no registry and
`--lr 2e-4` reads better than `--set train.optim_g.lr=2e-4`. The same rules hold for YAML files and for flags:

- numbers may be written as numbers or as numeric text: PyYAML reads `1e-3` (YAML 1.1) as the string "1e-3";
- booleans only from real booleans (YAML `true` / `false`); on the command line `true/false`, `yes/no`, `on/off`,
  `1/0`. A quoted "false" in a YAML file is an error, not a silent True;
- an unknown key is refused with the closest valid name.

Fields that change what a run computes (`RECIPE_FIELDS`) may not change when a run resumes (train_lkdn.py);
the others (`FREE_FIELDS`: threads, workers, logging, validation, saving, device, determinism) may.
"""

from __future__ import annotations

import argparse
import difflib
import typing
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from models import Attention, ShallowBlock
from utils.errors import UserError
from utils.files.yaml_file import read_yaml_mapping

TRAIN_DIR = Path(__file__).resolve().parent
STAGES = ("scratch", "finetune")

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


class TrainConfig(BaseModel):
    """Every knob of a run. The defaults here are the factsheet's stage 1; the YAML files restate them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: Annotated[str, Field(min_length=1)] = "LKDN-S_x4_scratch"
    stage: Literal["scratch", "finetune"] = "scratch"
    run_dir: str = ""  # default: experiments/<name>
    # network
    num_feat: Positive = 42
    num_blocks: Positive = 5
    scale: Annotated[int, Field(ge=2, le=4)] = 4
    attention: Attention = "lka"
    shallow: ShallowBlock = "rbsb"
    online_fusion: StrictBool = True
    channels_last: StrictBool = (
        True  # NHWC activations: faster depthwise convs on CPUs and tensor cores on GPUs
    )
    init_from: str = ""  # weights to start from (params_ema preferred); stage 2 starts from stage 1's
    # data
    train_sources: Annotated[list[str], Field(min_length=1)] = [
        "data/DIV2K_train_HR",
        "data/LSDIR_first2000.txt",
    ]
    cache_dir: str = "data/cache"
    lr_patch: Positive = 64
    batch_size: Positive = 128
    augment: StrictBool = True
    in_memory: StrictBool = False
    num_workers: NonNegative = 4
    max_bad_images: Annotated[float, Field(ge=0, lt=1)] = (
        0.01  # unreadable training images tolerated (fraction)
    )
    # optimisation
    loss: Literal["l1", "l2"] = "l1"
    optimizer: Literal["adam", "adan"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = [0.9, 0.99]
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    scheduler: Literal["constant", "cosine", "multistep"] = "constant"
    warmup_iters: NonNegative = 0
    min_lr: Annotated[float, Field(ge=0)] = 1e-7  # cosine floor
    milestones: list[Positive] = []  # multistep
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5  # multistep
    total_iters: Positive = 950_000
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: autocast (CPU or GPU); fp16: + scaler (GPU)
    seed: NonNegative = 0
    device: Annotated[str, Field(min_length=1)] = "auto"
    threads: NonNegative = (
        0  # CPU threads for torch (0 = torch's default); 1 keeps a shared machine responsive
    )
    deterministic: StrictBool = (
        True  # CUDA: cuDNN's deterministic algorithms, so a resumed run ends bit-identical (false: autotuned)
    )
    # bookkeeping
    val_dirs: list[str] = ["data"]  # DIV2K layout (data/DIV2K_valid_HR, _LR) or benchmark folders
    val_every: Positive = 5000
    save_every: Positive = 5000
    keep_last: Positive = 3
    log_every: Positive = 100
    max_minutes: Annotated[float, Field(ge=0)] = (
        0.0  # stop (and save) after this much wall time; 0 = no limit
    )

    @field_validator("milestones")
    @classmethod
    def _ascending(cls, milestones: list[int]) -> list[int]:
        if milestones != sorted(set(milestones)):
            raise ValueError("milestones must be strictly increasing iterations")
        return milestones

    @model_validator(mode="after")
    def _betas_fit_the_optimizer(self) -> TrainConfig:
        wanted = 3 if self.optimizer == "adan" else 2
        if len(self.betas) != wanted:
            raise ValueError(f"betas: {self.optimizer} takes {wanted} betas, not {self.betas}")
        return self

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or Path("experiments") / self.name)

    def to_dict(self) -> dict:
        return self.model_dump()


FREE_FIELDS = frozenset(
    {"name", "run_dir", "device", "threads", "deterministic", "num_workers", "in_memory", "cache_dir", "val_dirs",
     "val_every", "save_every", "keep_last", "log_every", "max_minutes", "max_bad_images"}
)  # fmt: skip
RECIPE_FIELDS = frozenset(TrainConfig.model_fields) - FREE_FIELDS
# Recipe fields a resume cannot change, with the reason; every other change takes effect at the next step.
FIXED_ON_RESUME = {
    **dict.fromkeys(
        ("num_feat", "num_blocks", "scale", "attention", "shallow"),
        "the saved weights are of another network; start a new run (--run_dir) or fine-tune from them "
        "(--init_from)",
    ),
    "optimizer": "the saved optimizer state belongs to the other optimizer; start a new run with --init_from",
    "init_from": "only a new run starts from init_from; a resumed run continues from its own weights",
    "stage": "a run folder holds one stage; start the other stage in its own --run_dir",
}


def _one_line(error: dict, source: Path | str, flags: set[str]) -> str:
    """`source: field: problem (got value)`; a value given as a flag is named as the flag."""
    message = error["msg"].removeprefix("Value error, ")
    field = str(error["loc"][0]) if error["loc"] else ""
    where = f"--{field}" if field in flags else f"{source}: {'.'.join(map(str, error['loc']))}"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, TrainConfig.model_fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; the fields are those of train/config.py"
        return f"{source}: unknown field {field!r}{hint}"
    if not error["loc"]:  # a rule across fields: its message names them
        return f"{source}: {message}"
    if error["type"] == "bool_type":
        message = "must be true or false (YAML true/false, not a quoted string)"
    return f"{where}: {message} (got {error['input']!r})"


def validated(
    values: dict, source: Path | str, flags: set[str] | frozenset[str] = frozenset()
) -> TrainConfig:
    """A TrainConfig from `values`, or a UserError with one line per bad value, naming `source` (or the flag,
    for the fields in `flags`)."""
    try:
        return TrainConfig.model_validate(values)
    except pydantic.ValidationError as err:
        raise UserError("\n".join(_one_line(e, source, set(flags)) for e in err.errors())) from None


def load_config(path: Path, overrides: dict[str, object] | None = None) -> TrainConfig:
    """A config from a YAML file, then the non-None `overrides` (command-line flags) on top."""
    raw = read_yaml_mapping(path, "pass an existing --config")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    return validated({**raw, **flags}, path, set(flags))


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field` flag per TrainConfig field (lists take several values, booleans true/false). Values stay
    text: TrainConfig validates them with the same rules as a YAML file's."""
    group = parser.add_argument_group("configuration overrides (defaults from the stage's YAML file)")
    for name, field in TrainConfig.model_fields.items():
        if name == "stage":  # chosen by --stage, which picks the YAML file
            continue
        annotation = field.annotation
        is_list = typing.get_origin(annotation) is list
        parse = _parse_bool if annotation is bool else str
        metavar = "BOOL" if annotation is bool else name.upper()
        group.add_argument(
            f"--{name}", type=parse, nargs="*" if is_list else None, default=None, metavar=metavar
        )


def default_config_path(stage: str) -> Path:
    return TRAIN_DIR / f"{stage}.yml"


def recipe_changes(saved: TrainConfig, now: TrainConfig) -> dict[str, tuple[object, object]]:
    """{field: (saved, now)} for every field whose values differ, recipe fields and free fields alike."""
    old, new = saved.to_dict(), now.to_dict()
    return {name: (old[name], new[name]) for name in TrainConfig.model_fields if old[name] != new[name]}
