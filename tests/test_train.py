"""Training: the recipe as defaults, schedules, Adan, EMA, exact resume after SIGKILL, DDP, errors, export."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import fuse_model
from train.config import TrainConfig, default_config_path, load_config
from train.ema import EMA
from train.optim import build_optimizer, lr_factor
from train.state import latest_resumable, state_path
from train.trainer import Trainer, build_model
from utils.errors import UserError
from utils.files.checkpoint import load_checkpoint
from utils.image.imresize import matlab_imresize

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "train" / "train_lkdn.py"
TINY = ["--num_feat", "8", "--num_blocks", "2", "--num_workers", "0", "--in_memory", "true", "--threads", "1"]


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random but image-like picture: a few blurred colour blobs."""
    img = rng.random((size // 8, size // 8, 3))
    return (cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Four 64x64 training images, and a two-image validation folder in benchmark layout."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "hr" / f"{i}.png"), _smooth_image(rng, 64))
    for sub in ("HR", "LR_bicubic_x4"):
        (root / "val" / sub).mkdir(parents=True)
    for name in ("a", "b"):
        hr = _smooth_image(rng, 48)
        cv2.imwrite(str(root / "val" / "HR" / f"{name}.png"), hr)
        cv2.imwrite(str(root / "val" / "LR_bicubic_x4" / f"{name}.png"), matlab_imresize(hr, 1 / 4))
    return {"hr": root / "hr", "val": root / "val", "cache": root / "cache"}


def _args(data: dict[str, Path], run_dir: Path, *extra: str) -> list[str]:
    return [
        "--train_sources",
        str(data["hr"]),
        "--cache_dir",
        str(data["cache"]),
        "--val_dirs",
        str(data["val"]),
        "--run_dir",
        str(run_dir),
        "--lr_patch",
        "8",
        "--batch_size",
        "4",
        "--log_every",
        "5",
        *TINY,
        *extra,
    ]


def _train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(run_dir / "models" / "last.pth", weights_only=True)


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    for group in ("params", "params_ema"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            torch.testing.assert_close(a[group][key], b[group][key], rtol=0, atol=atol, msg=f"{group}.{key}")


# --- configuration -----------------------------------------------------------------------------------------


def test_stage_defaults_are_the_factsheet_recipe():
    scratch = load_config(default_config_path("scratch"))
    assert (scratch.lr_patch * scratch.scale, scratch.batch_size, scratch.loss, scratch.optimizer) == (
        256,
        128,
        "l1",
        "adam",
    )
    assert (scratch.betas, scratch.eps, scratch.lr, scratch.scheduler) == (
        [0.9, 0.99],
        1e-8,
        1e-3,
        "constant",
    )
    assert (scratch.total_iters, scratch.ema_decay, scratch.augment) == (950_000, 0.999, True)
    assert (scratch.num_feat, scratch.num_blocks, scratch.scale) == (42, 5, 4)
    finetune = load_config(default_config_path("finetune"))
    assert (finetune.lr_patch * finetune.scale, finetune.batch_size, finetune.loss) == (480, 64, "l2")
    assert (finetune.lr, finetune.total_iters, finetune.stage) == (2e-5, 50_000, "finetune")
    assert finetune.init_from.endswith("LKDN-S_x4_scratch/models/last.pth")
    assert TrainConfig() == scratch, "the dataclass defaults restate stage 1"


def test_command_line_overrides_every_field(tmp_path):
    from train.train_lkdn import config_overrides, parse_args

    args = parse_args(
        ["--stage", "finetune", "--lr", "5e-4", "--betas", "0.9", "0.999", "--augment", "false"]
    )
    overrides = config_overrides(args)
    config = load_config(default_config_path("finetune"), overrides)
    assert (config.lr, config.betas, config.augment, config.loss) == (5e-4, [0.9, 0.999], False, "l2")


def test_bad_config_values_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("optimizer: sgd\n")
    with pytest.raises(UserError, match="bad.yml: optimizer: Input should be 'adam' or 'adan'"):
        load_config(bad)
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(UserError, match="unknown field"):
        load_config(bad)
    bad.write_text("optimizer: adan\n")
    with pytest.raises(UserError, match="betas: adan takes 3 betas"):
        load_config(bad)


def test_learning_rate_schedules():
    cosine = TrainConfig(lr=1e-3, min_lr=1e-5, scheduler="cosine", total_iters=100, warmup_iters=10)
    assert lr_factor(cosine, 0) == pytest.approx(0.1) and lr_factor(cosine, 9) == pytest.approx(1.0)
    assert lr_factor(cosine, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(cosine, 100) == pytest.approx(0.01)
    steps = TrainConfig(scheduler="multistep", milestones=[5, 8], gamma=0.5)
    assert [lr_factor(steps, i) for i in (0, 4, 5, 7, 8, 20)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor(TrainConfig(), 123_456) == 1.0


# --- optimizer and EMA --------------------------------------------------------------------------------------


def _adan_reference(
    param: torch.Tensor, grads: list[torch.Tensor], lr: float, betas, eps: float
) -> torch.Tensor:
    """Adan as published (Xie et al., 2022, Algorithm 1, with the bias corrections of the authors' code):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2)(g - g_prev);  n = b3 n + (1-b3)(g + b2 (g - g_prev))^2;
    theta -= lr (m_hat + b2 v_hat) / (sqrt(n_hat) + eps); at the first step g_prev = g."""
    b1, b2, b3 = betas
    theta = param.clone().double()
    m = v = n = torch.zeros_like(theta)
    previous = None
    for k, g in enumerate(grads, start=1):
        g = g.double()
        diff = torch.zeros_like(g) if previous is None else g - previous
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + b2 * diff) ** 2
        m_hat, v_hat, n_hat = m / (1 - b1**k), v / (1 - b2**k), n / (1 - b3**k)
        theta = theta - lr * (m_hat + b2 * v_hat) / (n_hat.sqrt() + eps)
        previous = g
    return theta.float()


def test_adan_follows_the_published_update_rule():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=generator)
    grads = [torch.randn(5, 3, generator=generator) for _ in range(6)]
    config = TrainConfig(optimizer="adan", lr=5e-3, betas=[0.98, 0.92, 0.99], eps=1e-8)
    param = torch.nn.Parameter(start.clone())
    optimizer = build_optimizer([param], config)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    expected = _adan_reference(start, grads, 5e-3, (0.98, 0.92, 0.99), 1e-8)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)


def test_ema_follows_the_decay():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * (before + 1.0))


# --- runs ---------------------------------------------------------------------------------------------------


RESUME_ARGS = [
    "--total_iters",
    "60",
    "--save_every",
    "3",
    "--val_every",
    "1000",
    "--keep_last",
    "2",
    "--lr_patch",
    "16",
]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _train(_args(tiny_data, run, *RESUME_ARGS))
    assert done.returncode == 0, done.stderr
    return run


def _start_and_signal(tiny_data, run: Path, sig: signal.Signals) -> subprocess.Popen:
    """Start a run, send `sig` once it has saved iteration 9, and wait for it to end."""
    command = [sys.executable, str(TRAIN_SCRIPT), *_args(tiny_data, run, *RESUME_ARGS)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not state_path(run, 9).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    still_running = process.poll() is None
    os.kill(process.pid, sig)
    process.wait()
    assert still_running, "the run finished before it could be signalled: make it longer"
    return process


def _resume_and_compare(tiny_data, run: Path, reference: Path) -> None:
    resumed = _train(_args(tiny_data, run, *RESUME_ARGS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (run / "train.log").read_text()
    _assert_same_weights(_final_weights(run), _final_weights(reference))


def test_killed_run_resumes_to_the_same_weights(tiny_data, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    _start_and_signal(tiny_data, run, signal.SIGKILL)
    assert latest_resumable(run) is not None and latest_resumable(run) < 60
    _resume_and_compare(tiny_data, run, uninterrupted)


def test_sigterm_saves_the_step_reached_and_resumes_exactly(tiny_data, uninterrupted, tmp_path):
    run = tmp_path / "terminated"
    process = _start_and_signal(tiny_data, run, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM == 143  # stopped, not finished: a scheduler can tell
    stopped = re.search(
        r"stopping at iteration (\d+): SIGTERM received; state saved in ", (run / "train.log").read_text()
    )
    assert stopped, "no stop line in the log"
    assert latest_resumable(run) == int(stopped.group(1)) < 60
    _resume_and_compare(tiny_data, run, uninterrupted)


def test_two_gloo_processes_match_one_process_of_the_same_global_batch(tiny_data, tmp_path):
    common = ["--total_iters", "4", "--save_every", "4", "--val_every", "1000", "--device", "cpu"]
    single = _train(_args(tiny_data, tmp_path / "single", *common))
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    distributed = subprocess.run(
        [*torchrun, str(TRAIN_SCRIPT), *_args(tiny_data, tmp_path / "ddp", *common)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert distributed.returncode == 0, distributed.stderr[-3000:]
    _assert_same_weights(_final_weights(tmp_path / "ddp"), _final_weights(tmp_path / "single"), atol=1e-5)
    assert "2 process(es)" in (tmp_path / "ddp" / "train.log").read_text()


def test_export_fused_matches_the_ema_weights(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = _train(_args(tiny_data, run, "--total_iters", "3", "--save_every", "3", "--val_every", "3"))
    assert result.returncode == 0, result.stderr
    assert (run / "models" / "fused.pth").is_file() and (run / "models" / "best.pth").is_file()
    assert "validation at 3" in (run / "train.log").read_text()
    if importlib.util.find_spec("tensorboard") is not None:  # scalars are written only where it is installed
        assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    (run / "models" / "fused.pth").unlink()
    exported = _train(["--run_dir", str(run), "--export_fused"])
    assert exported.returncode == 0, exported.stderr
    config = TrainConfig(num_feat=8, num_blocks=2)
    fused = load_checkpoint(
        run / "models" / "fused.pth", build_model(config).__class__(**_fused_args(config))
    )
    ema = load_checkpoint(run / "models" / "last.pth", build_model(config)).eval()
    x = torch.rand(1, 3, 11, 9)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), fuse_model(ema)(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            fused(x), ema.set_online_fusion(False)(x), rtol=0, atol=1e-5
        )  # the branches


def _fused_args(config: TrainConfig) -> dict:
    return {
        "num_feat": config.num_feat,
        "num_blocks": config.num_blocks,
        "scale": config.scale,
        "fused": True,
    }


def test_bf16_autocast_trains_on_cpu(tiny_data, tmp_path):
    result = _train(
        _args(tiny_data, tmp_path / "bf16", "--total_iters", "2", "--precision", "bf16", "--val_every", "9")
    )
    assert result.returncode == 0, result.stderr
    assert "precision bf16" in (tmp_path / "bf16" / "train.log").read_text()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    config = load_config(default_config_path("scratch"))
    for key, value in {
        "train_sources": [str(tiny_data["hr"])],
        "cache_dir": str(tiny_data["cache"]),
        "val_dirs": [],
        "run_dir": str(tmp_path / "nan"),
        "lr_patch": 8,
        "batch_size": 2,
        "num_feat": 8,
        "num_blocks": 1,
        "num_workers": 0,
        "in_memory": True,
        "total_iters": 10,
        "save_every": 2,
    }.items():
        setattr(config, key, value)
    trainer = Trainer(config)
    real_loss, calls = trainer.loss_fn, []

    def loss_turning_nan(sr, hr):
        calls.append(1)
        return real_loss(sr, hr) * (math.nan if len(calls) == 5 else 1.0)

    trainer.loss_fn = loss_turning_nan
    with pytest.raises(
        UserError, match=r"NaN or infinite at iteration 5; stopped, the last good checkpoint is iteration 4"
    ):
        trainer.run()
    assert latest_resumable(tmp_path / "nan") == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_sources", "/nonexistent/hr"], "/nonexistent/hr: no such folder"),
        (
            ["--lr_patch", "64"],
            "all 4 readable images are smaller than 256 pixels on a side; the largest allows 64 (for training: --lr_patch 16 or less",
        ),
        (["--init_from", "/nonexistent/ckpt.pth"], "ckpt.pth: the init_from checkpoint does not exist"),
        (["--optimizer", "sgd"], "--optimizer: Input should be 'adam' or 'adan' (got 'sgd')"),
    ],
    ids=["no-images", "all-too-small", "missing-init", "bad-optimizer"],
)
def test_user_errors_exit_2_with_one_line(tiny_data, tmp_path, extra, message):
    result = _train([*_args(tiny_data, tmp_path / "run", "--total_iters", "1"), *extra])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_configuration_init_checkpoint_is_a_user_error(tiny_data, tmp_path):
    torch.save(build_model(TrainConfig(num_feat=16, num_blocks=1)).state_dict(), tmp_path / "other.pth")
    result = _train(
        [
            *_args(tiny_data, tmp_path / "run", "--total_iters", "1"),
            "--init_from",
            str(tmp_path / "other.pth"),
        ]
    )
    assert result.returncode == 2 and "holds an LKDN with 16 channels and 1 blocks" in result.stderr


def test_unwritable_run_folder_is_a_user_error(tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _train(_args(tiny_data, blocker / "run", "--total_iters", "1"))
    assert (
        result.returncode == 2 and "folder is not writable" in result.stderr and "--run_dir" in result.stderr
    )


def test_both_stages_on_real_images_then_test_demo_evaluates(train_data_dir, benchmark_dir, tmp_path):
    """The CI run of the recipe, shrunk: a few iterations of each stage on a handful of ../shared images."""
    images = sorted((train_data_dir / "BSD200").glob("*.png"))[:6]
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in images))
    shared = [
        "--train_sources",
        str(tmp_path / "list.txt"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--val_dirs",
        str(benchmark_dir / "Set5"),
        "--num_workers",
        "1",
        "--threads",
        "1",
    ]
    scratch_dir, finetune_dir = tmp_path / "scratch", tmp_path / "finetune"
    scratch = _train(
        [
            "--stage",
            "scratch",
            *shared,
            "--run_dir",
            str(scratch_dir),
            "--lr_patch",
            "16",
            "--batch_size",
            "4",
            "--total_iters",
            "4",
            "--save_every",
            "2",
            "--val_every",
            "4",
        ]
    )
    assert scratch.returncode == 0, scratch.stderr
    finetune = _train(
        [
            "--stage",
            "finetune",
            *shared,
            "--run_dir",
            str(finetune_dir),
            "--lr_patch",
            "24",
            "--batch_size",
            "2",
            "--total_iters",
            "2",
            "--save_every",
            "2",
            "--val_every",
            "2",
            "--init_from",
            str(scratch_dir / "models" / "last.pth"),
        ]
    )
    assert finetune.returncode == 0, finetune.stderr
    log = (finetune_dir / "train.log").read_text()
    assert (
        "initialised from" in log and "validation at 2, PSNR_Y of the EMA weights (decay 0.1818): Set5" in log
    )
    fused = finetune_dir / "models" / "fused.pth"
    assert fused.is_file()
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "Set5").symlink_to(benchmark_dir / "Set5")
    bench = ["--benchmark_dir", str(tmp_path / "bench"), "--save_dir", str(tmp_path / "results")]
    demo = subprocess.run(
        [sys.executable, "test_demo.py", "--model_path", str(fused), *bench],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "Set5" in demo.stdout
