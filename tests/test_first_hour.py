"""A stranger's first hour: nothing they are told to run damages the repository, and every refusal names the
way forward. The committed runs stay as committed; the training flags explain themselves; README stays short."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import _args, _train, tiny_data  # noqa: F401  (tiny_data is a fixture)

from train import train_lkdn
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "train" / "runs" / "lkdn_s_cpu"


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _printed_commands(config: Path) -> list[list[str]]:
    """The commands a committed run's YAML header tells its reader to run."""
    lines = config.read_text().split("\n")
    header = "\n".join(line[1:].strip() for line in lines if line.startswith("#"))
    joined = header.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.startswith("python ")]


@pytest.mark.parametrize("stage", ["scratch", "finetune"])
def test_the_committed_runs_print_commands_that_write_elsewhere(stage):
    commands = _printed_commands(COMMITTED / f"{stage}.yml")
    assert commands, "the header prints no command"
    for command in commands:
        args = train_lkdn.parse_args(command[2:])
        run_dir = Path(train_lkdn.config_overrides(args).get("run_dir", ""))
        assert run_dir.parts and run_dir.parts[0] == "runs", command  # runs/ is ignored by git


def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_overwrite_replaces_it(tiny_data, tmp_path):  # noqa: F811
    run = tmp_path / "committed"
    shutil.copytree(COMMITTED / "scratch", run)  # config.yml, train.log, models/last.pth: no training state
    before = _digests(run)
    refused = _train(_args(tiny_data, run, "--total_iters", "2"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds a run (config.yml, train.log, models) with no training state to resume" in refused.stderr
    assert "--run_dir" in refused.stderr and "--overwrite" in refused.stderr
    assert _digests(run) == before  # not a byte changed
    replaced = _train(_args(tiny_data, run, "--total_iters", "2", "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert "lkdn_s_cpu_scratch" not in (run / "config.yml").read_text()


def test_the_committed_finished_run_is_left_as_it_is(tmp_path):
    run = tmp_path / "finetune"
    shutil.copytree(COMMITTED / "finetune", run)
    before = _digests(run)
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--stage", "finetune", "--config",
         str(COMMITTED.relative_to(ROOT) / "finetune.yml"), "--run_dir", str(run)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "finished at iteration 2000; nothing to do" in done.stdout
    assert _digests(run) == before


def test_every_training_flag_says_what_it_does_and_its_default():
    parser_help = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--help"], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    ).stdout  # fmt: skip
    for name in TrainConfig.model_fields:
        entry = re.search(rf"\n  --{name}\b.*?(?=\n  -|\Z)", parser_help, re.S)
        assert entry, f"--{name} is not in --help"
        words = " ".join(entry[0].split())
        assert "default" in words and len(words) > len(f"--{name} {name.upper()}") + 20, words


def test_readme_is_short_enough_to_read():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 360, f"README.md has {lines} lines; move long material to docs/"


# --- EMA warm-up, the raw weights, which weights a log line means --------------------------------------------


def test_the_ema_decay_warms_up_and_a_short_runs_ema_is_trained():
    from torch import nn

    from train.ema import EMA

    warm = EMA(nn.Linear(1, 1, bias=False), 0.999, warmup=True)
    assert [round(warm.decay_at(step), 4) for step in (0, 8, 80, 20_000)] == [0.1, 0.5, 0.9, 0.999]
    trained = nn.Linear(1, 1, bias=False)
    for ema in (warm, cold := EMA(trained, 0.999, warmup=False)):
        ema.model.weight.data.zero_()
        trained.weight.data.fill_(1.0)
        for step in range(100):  # the weights sit at 1.0 from the first step: the EMA should follow
            ema.update(trained, step)
    assert warm.model.weight.item() > 0.85 and cold.model.weight.item() < 0.1


def test_a_run_saved_before_the_warm_up_resumes_without_it(tiny_data, tmp_path):  # noqa: F811
    import torch

    from train.state import state_path

    run = tmp_path / "run"
    assert _train(_args(tiny_data, run, "--total_iters", "2", "--ema_warmup", "false")).returncode == 0
    state = torch.load(state_path(run, 2), weights_only=False)
    del state["config"]["ema_warmup"]  # as a state written before the field existed
    torch.save(state, state_path(run, 2))
    args = train_lkdn.parse_args(_args(tiny_data, run, "--total_iters", "2"))
    config, changes = train_lkdn.resumed_config(run, 2, args, train_lkdn.config_overrides(args))
    assert config.ema_warmup is False and "ema_warmup" not in changes


def test_the_raw_weights_export_and_stage_2_says_what_it_starts_from(tiny_data, tmp_path):  # noqa: F811
    import torch

    from models import LKDN, fuse_model
    from utils.files.checkpoint import load_checkpoint, read_checkpoint

    run = tmp_path / "run"
    assert _train(_args(tiny_data, run, "--total_iters", "3")).returncode == 0
    exported = _train(_args(tiny_data, run, "--export_fused", "--export_raw"))
    assert exported.returncode == 0, exported.stderr
    raw = read_checkpoint(run / "models" / "last.pth", "params").state
    model = LKDN(num_feat=8, num_blocks=2)
    model.load_state_dict(raw)
    fused = load_checkpoint(run / "models" / "fused_raw.pth", fuse_model(LKDN(num_feat=8, num_blocks=2)))
    for key, value in fuse_model(model).state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value)
    stage2 = tmp_path / "stage2"
    started = _train(_args(tiny_data, stage2, "--stage", "finetune", "--total_iters", "1", "--init_from",
                           str(run / "models" / "last.pth")))  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "last.pth (params_ema: the EMA weights)" in (stage2 / "train.log").read_text()


def test_test_demo_times_a_folder_of_lr_images_without_hr(tmp_path):
    import json

    import cv2
    import numpy as np

    lr_dir = tmp_path / "hidden_test_lr"
    lr_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("0901x4.png", "0902x4.jpg", "0903x4.png"):
        cv2.imwrite(str(lr_dir / name), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    save = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "test_demo.py", "--lr_dir", str(lr_dir), "--save_dir", str(save)], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    part = json.loads((save / "results.json").read_text())["team01_LKDN"]["lr_only"]
    assert part["num_images"] == 3 and len(part["runtime_per_image"]) == 3 and part["ave_runtime"] > 0
    assert not any("psnr" in key for key in json.dumps(part).split('"'))
    written = sorted((save / "team01_LKDN" / "hidden_test_lr").glob("*.png"))
    assert [p.name for p in written] == ["0901x4.png", "0902x4.png", "0903x4.png"]
    assert cv2.imread(str(written[0])).shape == (80, 96, 3)
    assert "LR only: no PSNR" in (save / "team01_LKDN.log").read_text()


# --- every refusal names its way out; nothing left behind ----------------------------------------------------


def test_a_default_run_without_data_names_the_flags_and_leaves_nothing(tmp_path):
    def run(*flags: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "train" / "train_lkdn.py"), "--stage", "scratch", *flags], cwd=tmp_path,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        return done.stderr

    assert "--val_dirs" in run() and "python -m data.download_div2k --data_dir data/" in run()
    no_val = run("--val_dirs")
    assert "data/DIV2K_train_HR: no such folder or file list; pass --train_sources" in no_val
    assert "python -m data.download_lsdir" in no_val
    assert list(tmp_path.iterdir()) == []  # no experiments/ folder, no config.yml, no empty train.log


def test_loader_workers_default_to_what_the_machine_has():
    import os

    assert TrainConfig().num_workers == "auto" and TrainConfig().workers == min(4, os.cpu_count() or 1)
    assert TrainConfig(num_workers=0).workers == 0


@pytest.mark.parametrize("module", ["data.download_div2k", "data.download_lsdir"])
def test_a_failed_download_names_the_offline_route_and_leaves_no_folders(module, tmp_path):
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", module, "--data_dir", str(data), "--base_url", "http://127.0.0.1:9",
         "--no_progress"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "check the network connection" in done.stderr and "offline: " in done.stderr
    assert ("--data_dir" in done.stderr) if "div2k" in module else ("--train_sources" in done.stderr)
    assert not data.exists()


def test_a_run_killed_before_its_first_save_starts_again_with_the_same_command(tiny_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "config.yml").write_text("name: killed\n")
    (run / "train.log").write_text("training ... from iteration 0\n")  # no weights, no state: nothing to keep
    done = _train(_args(tiny_data, run, "--total_iters", "2"))
    assert done.returncode == 0, done.stderr
    assert "name: killed" not in (run / "config.yml").read_text()
