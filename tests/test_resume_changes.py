"""A resume with --accept_config_change applies every change it accepts from the next step, and refuses, with the
reason, every change that cannot apply. One row per configuration key a resume may change."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_train import _args, _train, tiny_data  # noqa: F401  (tiny_data is a fixture)
from torch import nn

from train import train_lkdn
from train.config import FIXED_ON_RESUME, FREE_FIELDS, RECIPE_FIELDS
from train.trainer import Trainer
from utils.errors import UserError

FIRST = ["--total_iters", "4", "--save_every", "4", "--val_every", "4", "--scheduler", "constant"]


@pytest.fixture(scope="module")
def first_run(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    """A finished 4-step run (lr 1e-3, constant): each row resumes a copy of it."""
    run = tmp_path_factory.mktemp("first") / "run"
    done = _train(_args(tiny_data, run, *FIRST))
    assert done.returncode == 0, done.stderr
    return run


def _resumed(tiny_data, first_run: Path, tmp_path: Path, *flags: str) -> Trainer:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    argv = [*_args(tiny_data, run, *FIRST, "--total_iters", "8"), *flags, "--accept_config_change"]
    args = train_lkdn.parse_args(argv)
    overrides = train_lkdn.config_overrides(args)
    config, changes = train_lkdn.resumed_config(run, 4, args, overrides)
    return Trainer(config, resume=True, changes=changes)


def _group(trainer: Trainer) -> dict:
    return trainer.optimizer.param_groups[0]


def _data(trainer: Trainer):
    return trainer._data()  # the loader the next steps draw from


# (flags, what the next step uses): the step reads these objects, so they must hold the new value
APPLIED: dict[str, tuple[list[str], Callable[[Trainer], bool]]] = {
    "lr": (["--lr", "5e-4"], lambda t: _group(t)["lr"] == pytest.approx(5e-4)),
    "scheduler": (
        ["--scheduler", "multistep", "--milestones", "2", "--gamma", "0.25"],
        lambda t: _group(t)["lr"] == pytest.approx(2.5e-4),
    ),  # fmt: skip
    "warmup_iters": (["--warmup_iters", "10"], lambda t: _group(t)["lr"] == pytest.approx(1e-3 * 5 / 10)),
    "min_lr": (
        ["--scheduler", "cosine", "--min_lr", "1e-3"],
        lambda t: _group(t)["lr"] == pytest.approx(1e-3),
    ),
    "total_iters": (
        ["--scheduler", "cosine", "--min_lr", "0"],  # cosine over 8 steps, at step 4: half
        lambda t: _group(t)["lr"] == pytest.approx(5e-4) and t._data().batch_sampler.total == 8,
    ),  # fmt: skip
    "betas": (["--betas", "0.8", "0.9"], lambda t: tuple(_group(t)["betas"]) == (0.8, 0.9)),
    "eps": (["--eps", "1e-6"], lambda t: _group(t)["eps"] == 1e-6),
    "weight_decay": (["--weight_decay", "0.01"], lambda t: _group(t)["weight_decay"] == 0.01),
    "batch_size": (["--batch_size", "2"], lambda t: _data(t).batch_sampler.global_batch == 2),
    "lr_patch": (["--lr_patch", "4"], lambda t: _data(t).dataset.lr_patch == 4),
    "augment": (["--augment", "false"], lambda t: _data(t).dataset.augment is False),
    "seed": (["--seed", "7"], lambda t: _data(t).dataset.seed == 7),
    "loss": (["--loss", "l2"], lambda t: isinstance(t.loss_fn, nn.MSELoss)),
    "ema_decay": (["--ema_decay", "0.5"], lambda t: t.ema.decay == 0.5),
    "ema_warmup": (["--ema_warmup", "false"], lambda t: t.ema.decay_at(4) == 0.999),
    "precision": (["--precision", "bf16"], lambda t: t.config.precision == "bf16"),  # read by every step
    "channels_last": (["--channels_last", "false"], lambda t: t.memory_format == torch.contiguous_format),
    "online_fusion": (["--online_fusion", "false"], lambda t: t.model.online_fusion is False),
    "val_every": (["--val_every", "3"], lambda t: t.config.val_every == 3),  # read by every step
    "save_every": (["--save_every", "3"], lambda t: t.config.save_every == 3),  # read by every step
}


def test_every_key_a_resume_may_change_has_a_row_or_a_reason():
    changeable = (RECIPE_FIELDS | FREE_FIELDS) - set(FIXED_ON_RESUME)
    bookkeeping = {
        "name",
        "run_dir",
        "device",
        "threads",
        "deterministic",
        "num_workers",
        "in_memory",
        "cache_dir",
        "val_dirs",
        "keep_last",
        "log_every",
        "max_minutes",
        "max_bad_images",
        "train_sources",
        "gamma",
        "milestones",
    }  # fmt: skip  (read when used; gamma, milestones: above)
    assert changeable - bookkeeping == set(APPLIED)


@pytest.mark.parametrize("key", APPLIED)
def test_an_accepted_change_applies_from_the_next_step(key, tiny_data, first_run, tmp_path):  # noqa: F811
    flags, applied = APPLIED[key]
    trainer = _resumed(tiny_data, first_run, tmp_path, *flags)
    assert trainer.start == 4
    assert applied(trainer), f"--{key} accepted on resume but not applied"


def test_the_logged_learning_rate_is_the_new_one(tiny_data, first_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(first_run, run)
    done = _train(_args(tiny_data, run, *FIRST, "--total_iters", "6", "--log_every", "1", "--lr", "5e-4",
                        "--accept_config_change"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (run / "train.log").read_text()
    assert "iter 5 loss" in log and "lr 5.000e-04" in log.split("iter 5 loss")[1].splitlines()[0]


@pytest.mark.parametrize("key", sorted(FIXED_ON_RESUME))
def test_a_change_that_cannot_apply_is_refused_with_the_reason(key, tiny_data, first_run, tmp_path):  # noqa: F811
    flags = {
        "num_feat": ["--num_feat", "12"], "num_blocks": ["--num_blocks", "3"], "scale": ["--scale", "2"],
        "attention": ["--attention", "esa_cca"], "shallow": ["--shallow", "bsconv_shortcut"],
        "optimizer": ["--optimizer", "adan", "--betas", "0.98", "0.92", "0.99"],
        "init_from": ["--init_from", str(first_run / "models" / "last.pth")], "stage": ["--stage", "finetune"],
    }[key]  # fmt: skip
    with pytest.raises(UserError, match=f"{key} cannot change on resume .*: {FIXED_ON_RESUME[key][:30]}"):
        _resumed(tiny_data, first_run, tmp_path, *flags)
