"""Training never loses work and never silently changes its recipe: bad configuration values, resumes with
another command line, unreadable images, errors between steps, a full disk, exit codes."""

from __future__ import annotations

import errno
import re
import shutil
import time

import pytest
import torch
import yaml
from test_train import _args, _train, tiny_data  # noqa: F401  (tiny_data is a fixture)

from train import preflight, train_lkdn
from train import state as run_state
from train.config import TrainConfig, load_config, validated
from train.state import latest_resumable
from train.trainer import Trainer
from utils.errors import UserError, run_cli
from utils.files import atomic_write


def _cli_error(argv: list[str], capsys) -> str:
    """Run train_lkdn's main as the command does; returns stderr, asserting exit code 2 and no traceback."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: train_lkdn.main(argv))
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err and re.match(r"(\S+: )?error: ", err.splitlines()[-1])  # prog: argparse's
    return err


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("betas: 0.9\n", "betas: Input should be a valid list (got 0.9)"),
        ("milestones: 5\n", "milestones: Input should be a valid list (got 5)"),
        ("lr:\n", "lr: Input should be a valid number (got None)"),
        ("seed: -1\n", "seed: Input should be greater than or equal to 0 (got -1)"),
        ("lr: .inf\n", "lr: Input should be a finite number (got inf)"),
        ("ema_decay: .nan\n", "ema_decay: Input should be a finite number (got nan)"),
        ('online_fusion: "false"\n', "online_fusion: must be true or false"),
        ("batch_size: many\n", "batch_size: Input should be a valid integer"),
        ("ema_decay: 1\n", "ema_decay: Input should be less than 1"),
        (
            "milestones: [8, 5]\n",
            "milestones: milestones must be strictly increasing iterations (got [8, 5])",
        ),
        ("bach_size: 16\n", "unknown field 'bach_size'; did you mean 'batch_size'?"),
    ],
)
def test_bad_yaml_values_are_one_line_each_with_exit_2(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yml"
    config.write_text(yaml_text)
    err = _cli_error(["--config", str(config), "--run_dir", str(tmp_path / "run")], capsys)
    assert f"bad.yml: {message}" in err
    assert err.count("\n") == 1  # one bad value: one line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "-1"], "error: --lr: Input should be greater than 0 (got '-1')"),
        (["--val_every", "0"], "error: --val_every: Input should be greater than or equal to 1 (got '0')"),
        (["--online_fusion", "maybe"], "argument --online_fusion: expected true or false, got 'maybe'"),
        (["--lr", "inf"], "error: --lr: Input should be a finite number (got 'inf')"),
    ],
)
def test_bad_flags_follow_the_same_rules(tmp_path, capsys, flags, message):
    err = _cli_error([*flags, "--run_dir", str(tmp_path / "run")], capsys)
    assert message in err


def test_two_bad_values_give_two_lines(tmp_path, capsys):
    err = _cli_error(["--batch_size", "0", "--seed", "-2", "--run_dir", str(tmp_path / "run")], capsys)
    assert err.count("\n") == 2 and "batch_size" in err and "seed" in err


def test_yaml_1_1_numbers_and_quoted_numbers_are_numbers(tmp_path):
    config = tmp_path / "ok.yml"
    config.write_text('lr: 1e-3\nbatch_size: "16"\nmilestones: [100, 200]\nscheduler: multistep\n')
    loaded = load_config(config)
    assert (loaded.lr, loaded.batch_size, loaded.milestones) == (1e-3, 16, [100, 200])
    assert loaded.online_fusion is True and validated({"online_fusion": False}, "x").online_fusion is False


def _first_run(tiny_data, run, *extra: str):  # noqa: F811
    done = _train(
        _args(tiny_data, run, "--total_iters", "2", "--save_every", "2", "--val_every", "2", *extra)
    )
    assert done.returncode == 0, done.stderr
    return (run / "config.yml").read_text()


def test_a_resume_that_changes_the_recipe_is_refused_then_accepted_on_request(tiny_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    started_with = _first_run(tiny_data, run)
    refused = _train(
        _args(tiny_data, run, "--total_iters", "2", "--batch_size", "2", "--betas", "0.8", "0.9")
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert (
        "batch_size: 4 (saved) -> 2 (now)" in refused.stderr
        and "betas: [0.9, 0.99] (saved)" in refused.stderr
    )
    assert "--accept_config_change" in refused.stderr
    accepted = _train(
        _args(tiny_data, run, "--total_iters", "4", "--batch_size", "2", "--accept_config_change")
    )
    assert accepted.returncode == 0, accepted.stderr
    assert (run / "config.yml").read_text() == started_with  # the record of how the run started
    (entry,) = yaml.safe_load_all((run / "config_history.yml").read_text())
    assert entry["resumed_at_iteration"] == 2
    assert entry["changes"]["batch_size"] == {"saved": 4, "now": 2}
    assert entry["changes"]["total_iters"] == {"saved": 2, "now": 4}
    assert "resumed with configuration changes: " in (run / "train.log").read_text()
    assert latest_resumable(run) == 4


def test_a_resume_with_a_forgotten_flag_continues_the_saved_recipe(tiny_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    _first_run(tiny_data, run, "--lr", "5e-4")
    saved = run_state.saved_config(run, 2)
    args = train_lkdn.parse_args(["--run_dir", str(run)])
    config, changes = train_lkdn.resumed_config(run, 2, args, train_lkdn.config_overrides(args))
    assert config.lr == 5e-4 == saved["lr"] and changes == {}
    free = train_lkdn.parse_args(["--run_dir", str(run), "--threads", "2", "--log_every", "1"])
    config, changes = train_lkdn.resumed_config(run, 2, free, train_lkdn.config_overrides(free))
    assert changes == {"threads": (1, 2), "log_every": (5, 1)}  # free fields change, and say so


def _with_a_corrupt_image(tiny_data, tmp_path):  # noqa: F811
    """The tiny training images plus one that decodes in preparation (its LR is cached) but not afterwards."""
    hr = tmp_path / "hr"
    shutil.copytree(tiny_data["hr"], hr)
    shutil.copy(hr / "0.png", hr / "9_broken.png")
    first = _train(
        _args({**tiny_data, "hr": hr}, tmp_path / "prepare", "--total_iters", "1", "--val_every", "5")
    )
    assert first.returncode == 0, first.stderr  # the LR of every image is in the cache now
    data = (hr / "9_broken.png").read_bytes()
    (hr / "9_broken.png").write_bytes(data[:40])  # the PNG header survives, the pixels do not
    return {**tiny_data, "hr": hr}


def test_an_unreadable_image_in_a_worker_is_skipped_and_named(tiny_data, tmp_path):  # noqa: F811
    data = _with_a_corrupt_image(tiny_data, tmp_path)
    run = tmp_path / "run"
    done = _train(_args(data, run, "--total_iters", "12", "--val_every", "100", "--save_every", "100",
                        "--num_workers", "2", "--in_memory", "false", "--max_bad_images", "0.5"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (run / "train.log").read_text()
    assert log.count("skipped an unreadable training image: ") == 1 and "9_broken.png" in log
    assert latest_resumable(run) == 12


def test_too_many_unreadable_images_stop_the_run_with_exit_2(tiny_data, tmp_path):  # noqa: F811
    data = _with_a_corrupt_image(tiny_data, tmp_path)
    run = tmp_path / "run"
    done = _train(_args(data, run, "--total_iters", "40", "--val_every", "100", "--save_every", "100",
                        "--in_memory", "false", "--max_bad_images", "0.1"))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "1 of 5 training images are unreadable (more than max_bad_images 0.1)" in done.stderr
    assert "9_broken.png" in (run / "train.log").read_text()


def _tiny_config(tiny_data, run, **changes) -> TrainConfig:  # noqa: F811
    values = {
        "train_sources": [str(tiny_data["hr"])], "cache_dir": str(tiny_data["cache"]),
        "val_dirs": [str(tiny_data["val"])], "run_dir": str(run), "lr_patch": 8, "batch_size": 4,
        "num_feat": 8, "num_blocks": 2, "num_workers": 0, "in_memory": True, "threads": 1, "total_iters": 20,
        "save_every": 100, "val_every": 100, **changes,
    }  # fmt: skip
    return TrainConfig(**values)


def test_an_error_between_steps_leaves_a_state_at_the_last_step(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    trainer = Trainer(_tiny_config(tiny_data, tmp_path / "run"))
    real_data = trainer._data

    def failing_after_three():
        loader = real_data()

        class Failing:
            dataset = loader.dataset

            def __iter__(self):
                for step, batch in enumerate(loader):
                    if step == 3:
                        raise OSError(errno.EIO, "Input/output error (test)")
                    yield batch

        return Failing()

    monkeypatch.setattr(trainer, "_data", failing_after_three)
    with pytest.raises(OSError, match="test"):
        trainer.run()
    assert latest_resumable(tmp_path / "run") == 3


def test_a_full_disk_at_start_is_a_user_error(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_write.os, "replace", full)
    with pytest.raises(UserError, match="config.yml: cannot write it \\(No space left on device\\)"):
        Trainer(_tiny_config(tiny_data, tmp_path / "run"))


def test_a_missing_validation_folder_is_caught_before_the_first_step(tiny_data, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="nowhere: no such validation folder"):
        Trainer(_tiny_config(tiny_data, tmp_path / "run", val_dirs=[str(tmp_path / "nowhere")]))
    assert latest_resumable(tmp_path / "run") is None


def test_resume_restores_the_schedule_and_every_generator(tiny_data, tmp_path):  # noqa: F811
    """A decaying schedule and the global generators: skipping either restore changes what this compares."""
    import random

    import numpy as np
    import torch

    config = _tiny_config(tiny_data, tmp_path / "run", total_iters=8, save_every=4, scheduler="cosine",
                          min_lr=1e-5, lr=5e-3, warmup_iters=2)  # fmt: skip
    whole = Trainer(config)
    whole.run()
    final = {k: v.clone() for k, v in whole.model.state_dict().items()}
    saved_rng = run_state.saved_rng(tmp_path / "run", 4)
    for stale in (run_state.weights_path(tmp_path / "run", 8), run_state.state_path(tmp_path / "run", 8)):
        stale.unlink()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # noqa: B018 (a process that drew elsewhere)
    resumed = Trainer(config)
    assert resumed.start == 4
    assert torch.equal(torch.get_rng_state(), saved_rng["torch"])
    assert random.getstate() == saved_rng["python"]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(whole_lr_at(config, 4))
    resumed.run()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, final[key]), key


def whole_lr_at(config: TrainConfig, iteration: int) -> float:
    from train.optim import lr_factor

    return config.lr * lr_factor(config, iteration)


# --- pre-flight: a configuration the machine cannot hold ---------------------------------------------------


def test_a_network_the_machine_cannot_hold_is_refused_before_anything_is_allocated(tmp_path, capsys):
    started = time.monotonic()
    run = tmp_path / "run"
    err = _cli_error(["--num_feat", "100000", "--val_dirs", "--train_sources", str(tmp_path), "--run_dir", str(run)],
                     capsys)  # fmt: skip
    assert "one training step of this configuration needs about" in err and "even batch 1 does not fit" in err
    assert "--num_feat" in err and time.monotonic() - started < 30
    assert not run.exists()  # a refused start leaves no folder behind


def test_the_refusal_names_the_largest_batch_and_patch_that_fit():
    config = TrainConfig(num_workers=0)
    available = preflight.step_bytes(config) // 3
    with pytest.raises(UserError) as refused:
        preflight.check_memory(config, torch.device("cpu"), available=available)
    batch, patch = (
        int(n) for n in re.search(r"--batch_size (\d+) or --lr_patch (\d+)", str(refused.value)).groups()
    )
    assert (
        preflight.step_bytes(config, batch=batch) <= available < preflight.step_bytes(config, batch=batch + 1)
    )
    assert (
        preflight.step_bytes(config, lr_patch=patch)
        <= available
        < preflight.step_bytes(config, lr_patch=patch + 1)
    )
    preflight.check_memory(
        config.model_copy(update={"batch_size": batch}), torch.device("cpu"), available=available
    )


def test_the_estimate_covers_a_measured_step():
    """The constants came from peak RSS over CPU steps (LKDN-S, batch 16, LR patch 48: 1.10 GB above the idle
    process); the estimate must not fall below that measurement."""
    config = TrainConfig(batch_size=16, lr_patch=48, num_workers=0)
    assert preflight.step_bytes(config) >= 1.10e9
