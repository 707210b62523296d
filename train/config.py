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
import os
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
    """Every knob of a run. The defaults here are the factsheet's stage 1; the YAML files restate them. Each
    field's docstring is its `--help` text."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    name: Annotated[str, Field(min_length=1)] = "LKDN-S_x4_scratch"
    """the run's name; its folder is experiments/<name> unless --run_dir says otherwise"""
    stage: Literal["scratch", "finetune"] = "scratch"
    """the recipe stage (chosen by --stage)"""
    run_dir: str = ""
    """the run folder (empty: experiments/<name>)"""
    # network
    num_feat: Positive = 42
    """channels (LKDN-S: 42, LKDN: 56)"""
    num_blocks: Positive = 5
    """LKDB blocks (LKDN-S: 5, LKDN: 8)"""
    scale: Annotated[int, Field(ge=2, le=4)] = 4
    """upscaling factor"""
    attention: Attention = "lka"
    """the blocks' attention: lka (the paper), esa_cca, or none (ablations)"""
    shallow: ShallowBlock = "rbsb"
    """the blocks' shallow feature step: rbsb (re-parameterizable, the paper), bsconv, bsconv_shortcut"""
    online_fusion: StrictBool = True
    """each step fuses the re-parameterizable branches into one conv (same outputs and gradients, faster)"""
    channels_last: StrictBool = True
    """NHWC activations: faster depthwise convs on CPUs and tensor cores on GPUs"""
    init_from: str = ""
    """weights to start a new run from (params_ema preferred); stage 2 starts from stage 1's"""
    # data
    train_sources: Annotated[list[str], Field(min_length=1)] = [
        "data/DIV2K_train_HR",
        "data/LSDIR_first2000.txt",
    ]
    """HR training images: folders, or .txt lists of paths (relative to the list's folder)"""
    cache_dir: str = "data/cache"
    """where LR images made from HR ones are cached"""
    lr_patch: Positive = 64
    """LR patch side (the HR patch is scale times larger)"""
    batch_size: Positive = 128
    """patches per step, over all processes"""
    augment: StrictBool = True
    """random flips and 90-degree rotations"""
    in_memory: StrictBool = False
    """decode every training image once and keep it in memory"""
    num_workers: NonNegative | Literal["auto"] = "auto"
    """DataLoader worker processes (auto: min(4, CPU cores); 0 loads in the main process)"""
    max_bad_images: Annotated[float, Field(ge=0, lt=1)] = 0.01
    """fraction of unreadable training images tolerated (skipped and logged) before the run stops"""
    # optimisation
    loss: Literal["l1", "l2"] = "l1"
    """pixel loss"""
    optimizer: Literal["adam", "adan"] = "adam"
    """optimizer (Adan from pytorch-optimizer takes three betas)"""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """base learning rate (finite, positive)"""
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = [0.9, 0.99]
    """optimizer betas (two for Adam, three for Adan)"""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """optimizer epsilon"""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """optimizer weight decay"""
    scheduler: Literal["constant", "cosine", "multistep"] = "constant"
    """learning-rate schedule after the warm-up"""
    warmup_iters: NonNegative = 0
    """linear learning-rate warm-up, in iterations"""
    min_lr: Annotated[float, Field(ge=0)] = 1e-7
    """the cosine schedule's floor"""
    milestones: list[Positive] = []
    """multistep: iterations where the rate is multiplied by gamma"""
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5
    """multistep: the factor at each milestone"""
    total_iters: Positive = 950_000
    """iterations of the run"""
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    """decay of the weights' exponential moving average (params_ema, what is exported and validated)"""
    ema_warmup: StrictBool = True
    """EMA decay min(ema_decay, (1 + step) / (10 + step)), so that a short run's EMA is not its initial weights"""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32; bf16: autocast (CPU or GPU); fp16: autocast and a gradient scaler (GPU)"""
    seed: NonNegative = 0
    """seed of the initial weights and of every training sample"""
    device: Annotated[str, Field(min_length=1)] = "auto"
    """auto (a GPU when there is one), cpu, cuda or cuda:N"""
    threads: NonNegative = 0
    """CPU threads for torch (0: torch's default); 1 keeps a shared machine responsive"""
    deterministic: StrictBool = True
    """CUDA: cuDNN's deterministic algorithms, so a resumed run ends bit-identical (false: autotuned, faster)"""
    # bookkeeping
    val_dirs: list[str] = ["data"]
    """validation sets: a folder in DIV2K layout (DIV2K_valid_HR, _LR) or benchmark folders (HR, LR_bicubic_x4)"""
    val_every: Positive = 5000
    """validate (PSNR_Y of the EMA weights) every this many iterations"""
    save_every: Positive = 5000
    """save the weights and training state every this many iterations"""
    keep_last: Positive = 3
    """training states and numbered weights kept"""
    log_every: Positive = 100
    """log the mean loss every this many iterations"""
    max_minutes: Annotated[float, Field(ge=0)] = 0.0
    """stop (and save) after this much wall time; 0: no limit"""

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
    def workers(self) -> int:
        """num_workers resolved: `auto` is min(4, the CPU cores), so a small machine gets no worker warning."""
        return min(4, os.cpu_count() or 1) if self.num_workers == "auto" else self.num_workers

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
    stage_defaults = {stage: load_config(default_config_path(stage)).to_dict() for stage in STAGES}
    for name, field in TrainConfig.model_fields.items():
        if name == "stage":  # chosen by --stage, which picks the YAML file
            continue
        annotation = field.annotation
        is_list = typing.get_origin(annotation) is list
        parse = _parse_bool if annotation is bool else str
        metavar = "BOOL" if annotation is bool else name.upper()
        group.add_argument(
            f"--{name}", type=parse, nargs="*" if is_list else None, default=None, metavar=metavar,
            help=f"{field.description} ({_defaults_text([stage_defaults[stage][name] for stage in STAGES])})",
        )  # fmt: skip


def _defaults_text(values: list[object]) -> str:
    """'default 1e-3', or 'default 64 (scratch), 120 (finetune)' where the stages differ."""

    def shown(value: object) -> str:
        if isinstance(value, list):
            return " ".join(map(str, value)) or "none"
        return str(value) if value != "" else "none"

    if all(value == values[0] for value in values):
        return f"default {shown(values[0])}"
    return "default " + ", ".join(
        f"{shown(value)} ({stage})" for value, stage in zip(values, STAGES, strict=True)
    )


def default_config_path(stage: str) -> Path:
    return TRAIN_DIR / f"{stage}.yml"


def recipe_changes(saved: TrainConfig, now: TrainConfig) -> dict[str, tuple[object, object]]:
    """{field: (saved, now)} for every field whose values differ, recipe fields and free fields alike."""
    old, new = saved.to_dict(), now.to_dict()
    return {name: (old[name], new[name]) for name in TrainConfig.model_fields if old[name] != new[name]}
