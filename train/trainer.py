"""The training loop: data, step, EMA, validation, checkpoints, exact resume, DDP.

Exact resume rests on two facts: training sample k is a pure function of (seed, k) (data/datasets.py), and every
other piece of state (weights, EMA, optimizer, schedule, random generators) is saved together at an iteration.
So a run killed at any point and resumed from its newest state computes the same steps as an uninterrupted one.

Nothing is lost that was computed, by construction rather than case by case:
- SIGINT, SIGTERM and SIGHUP, sent to the trainer or to its whole process group (as schedulers and `timeout`
  do), stop it after the step, saving it. The loader's workers ignore them (the main process owns shutdown;
  the signals are blocked while the workers start, so none arrives before they can ignore it).
- Everything between two steps (loading, logging, saving, validation, curves, export) runs under one guard that
  saves the last completed step before the error ends the run; validation runs on saved work only.
- A resume applies every change it accepts at the next step (learning rate and schedule, optimizer constants,
  EMA decay, loss, batch, patch, augmentation, intervals); train_lkdn.py refuses the ones that cannot apply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from data.datasets import PatchDataset, ValidationSet
from data.prepare import prepare_pairs
from models import LKDN, fuse_model
from train import state as run_state
from train.config import TrainConfig
from train.conv_backward import use_fast_conv_backward
from train.curves import write_curves
from train.distributed import DistInfo, barrier, init_distributed, shutdown
from train.ema import EMA
from train.native_conv_grad import native_conv_grad_available
from train.nhwc_gelu import use_nhwc_gelu
from train.optim import build_loss, build_optimizer, build_scheduler, lr_factor
from train.preflight import check_memory
from utils.device import resolve_device
from utils.errors import UserError
from utils.files.atomic_write import write_text_atomic
from utils.files.checkpoint import load_read, load_state, read_checkpoint, save_weights
from utils.files.image_io import to_tensor, to_uint8
from utils.files.yaml_file import yaml_text
from utils.measure.metrics import psnr_y

log = logging.getLogger("lkdn.train")
DOWNLOAD_HINTS = {
    "valid": "python -m data.download_div2k --data_dir data/",
    "train": "python -m data.download_div2k --data_dir data/ --splits train and python -m data.download_lsdir "
    "--data_dir data/",
}
GROUP_WORDS = {"params_ema": "params_ema: the EMA weights", "params": "params: the raw weights"}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """A loader worker's start: the stop signals are the main process's to handle (a signal to the process
    group would otherwise kill the workers and, with them, the main process's next batch)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _shared_memory_full(err: BaseException) -> bool:
    """A worker's batch could not be put in shared memory (a container's small /dev/shm, a full one)."""
    text = str(err)
    return (
        isinstance(err, RuntimeError)
        and "DataLoader worker" in text
        and any(
            reason in text
            for reason in ("No space left on device", "File too large", "unable to write to file </torch_")
        )
    )


def _stop_workers(loader: DataLoader) -> None:
    """End the loader's workers now, through their queues. Left to garbage collection, they may outlive the
    run until multiprocessing's exit handler, which stops them with SIGTERM: the signal they ignore."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Stop signals held back (pending, then delivered) while loader workers are forked: a worker inherits the
    block, so a signal to the group reaches it only after `ignore_stop_signals` has run."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class StepBatches(Sampler[list[int]]):
    """This rank's share of the global batch of every step from `start`: indices step*B .. step*B+B-1."""

    def __init__(self, start: int, total: int, global_batch: int, info: DistInfo) -> None:
        if global_batch % info.world_size:
            raise UserError(
                f"batch_size {global_batch} does not split over {info.world_size} processes; "
                "use a multiple of the process count"
            )
        self.start, self.total, self.global_batch = start, total, global_batch
        self.local = global_batch // info.world_size
        self.offset = info.rank * self.local

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            first = step * self.global_batch + self.offset
            yield list(range(first, first + self.local))

    def __len__(self) -> int:
        return self.total - self.start


def build_model(config: TrainConfig) -> LKDN:
    return LKDN(
        num_feat=config.num_feat,
        num_blocks=config.num_blocks,
        scale=config.scale,
        attention=config.attention,
        shallow=config.shallow,
        online_fusion=config.online_fusion,
    )


def _autocast(config: TrainConfig, device: torch.device):
    if config.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _setup_logging(run_dir: Path, info: DistInfo) -> None:
    log.handlers.clear()
    log.setLevel(logging.INFO if info.is_main else logging.WARNING)
    log.propagate = False
    if not info.is_main:
        return
    file_handler = logging.FileHandler(run_dir / "train.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(file_handler)

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tqdm.write(self.format(record))

    log.addHandler(TqdmHandler())


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{run_dir}: the run folder is not writable ({err.strerror}); pass a writable --run_dir"
        ) from None


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: scalars only when tensorboard is installed
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


@torch.no_grad()
def validate(model: LKDN, val_dirs: list[str], scale: int, device: torch.device) -> dict[str, float]:
    """Mean Y-channel PSNR (border = scale, uint8 outputs) of the fused `model` on each validation folder."""
    fused = fuse_model(model).to(device).eval()
    results = {}
    for folder in val_dirs:
        scores = []
        for _name, lr, hr in ValidationSet(Path(folder), scale):
            with torch.inference_mode():
                sr = fused(to_tensor(lr).to(device))
            scores.append(psnr_y(to_uint8(sr), hr, border=scale))
        results[Path(folder).name] = float(np.mean(scores))
    return results


class Trainer:
    """One run: built from a validated config, resumed from its run folder when `resume` finds a state there.

    `changes` are the configuration changes a resume accepted ({field: (saved, now)}); they are logged and
    appended to config_history.yml, never written over config.yml (the configuration the run started with).
    """

    def __init__(
        self, config: TrainConfig, resume: bool = True, changes: dict[str, tuple] | None = None
    ) -> None:
        self.config = config
        self.device = self._device()
        self.info = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.info.enabled:
            self.device = torch.device("cuda", self.info.local_rank)
        self.run_dir = config.resolved_run_dir
        self.stop_signal: str | None = None  # set by SIGINT / SIGTERM: stop after the step, saving first
        self.stopped_by: int | None = None  # the signal number that stopped the run, if one did
        self.unreadable: set[str] = set()  # training images that failed to decode, each logged once
        if self.info.is_main:
            _prepare_run_dir(self.run_dir)
        barrier(self.info)
        _setup_logging(self.run_dir, self.info)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if self.device.type == "cuda":  # cuDNN's fastest convolution gradients add in a varying order
            torch.backends.cudnn.deterministic = config.deterministic
            torch.backends.cudnn.benchmark = not config.deterministic
        torch.manual_seed(config.seed)
        resume_at = run_state.latest_resumable(self.run_dir) if resume else None
        self._check_inputs(from_init=resume_at is None)
        check_memory(config, self.device)  # before the network and its optimizer are allocated
        self.model = self._model(from_init=resume_at is None)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = build_optimizer(self.model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.start, self.best, self.saved_at = 0, -math.inf, 0
        if resume_at is not None:
            self._resume(resume_at)
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.info.enabled
            else self.model
        )
        self.loss_fn = build_loss(config)
        if self.info.is_main:
            self._record_config(resumed=resume_at is not None, changes=changes or {})

    def _device(self) -> torch.device:
        device = resolve_device(self.config.device)
        if self.config.precision == "fp16" and device.type != "cuda":
            raise UserError(
                "--precision fp16 needs a CUDA GPU (it uses a gradient scaler); use bf16 on a CPU"
            )
        return device

    def _check_inputs(self, from_init: bool) -> None:
        """Every validation folder readable in a layout it understands, and init_from there on a fresh start:
        checked before the first step, not at the first validation hours later."""
        config = self.config
        for folder in config.val_dirs:
            try:
                ValidationSet(Path(folder), config.scale)
            except UserError as err:
                raise UserError(f"{err} (--val_dirs; DIV2K valid: {DOWNLOAD_HINTS['valid']})") from None
        for source in config.train_sources:
            if not Path(source).exists():
                raise UserError(
                    f"{source}: no such folder or file list; pass --train_sources (the recipe's data: "
                    f"{DOWNLOAD_HINTS['train']}; or any folders of HR images)"
                )
        if from_init and config.init_from and not Path(config.init_from).is_file():
            raise UserError(
                f"{config.init_from}: the init_from checkpoint does not exist; finish stage 1 first "
                "(python train/train_lkdn.py --stage scratch) or pass --init_from <file.pth>"
            )

    def _model(self, from_init: bool) -> LKDN:
        """The training-form model on the device, from `init_from` on a fresh start, with the CPU speed-ups."""
        config = self.config
        model = build_model(config)
        if from_init and config.init_from:
            checkpoint = read_checkpoint(config.init_from)  # refuses non-finite weights, naming the tensor
            load_read(model, checkpoint)
            words = GROUP_WORDS.get(checkpoint.group, "its weights")
            log.info("initialised from %s (%s)", config.init_from, words)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(self.device, memory_format=self.memory_format)
        if self.device.type == "cpu":  # CPU-only speed-ups that change no number
            use_fast_conv_backward(model)
            use_nhwc_gelu(model)
            if (reason := native_conv_grad_available()) is not None:
                log.warning(
                    "C++ conv-gradient kernels unavailable (%s); oneDNN's gradients run instead", reason
                )
        return model

    def _record_config(self, resumed: bool, changes: dict[str, tuple]) -> None:
        """config.yml on a fresh start; on a resume, the changes it accepted, in the log and the history."""
        if not resumed:
            write_text_atomic(self.run_dir / "config.yml", yaml_text(self.config.to_dict()))
            return
        if not changes:
            return
        lines = [f"{name}: {saved!r} (saved) -> {now!r} (now)" for name, (saved, now) in changes.items()]
        log.info("resumed with configuration changes: %s", "; ".join(lines))
        history = self.run_dir / "config_history.yml"
        entry = {
            "resumed_at_iteration": self.start,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "changes": {name: {"saved": saved, "now": now} for name, (saved, now) in changes.items()},
        }
        previous = history.read_text() if history.is_file() else ""
        write_text_atomic(history, previous + "---\n" + yaml_text(entry))

    def _resume(self, iteration: int) -> None:
        weights, state = run_state.load_iteration(self.run_dir, iteration)
        source = run_state.weights_path(self.run_dir, iteration)
        load_state(self.model, weights["params"], source)
        self.ema.load_state_dict(weights["params_ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_recipe()
        self.scaler.load_state_dict(state["scaler"])
        run_state.restore_rng_states(state["rng"])
        self.start, self.best = state["iteration"], state["best"]
        self.saved_at = self.start  # on disk already: an error before the next step need not save it
        log.info("resumed from %s at iteration %d", source, iteration)

    def _apply_recipe(self) -> None:
        """The configuration's optimizer constants and schedule over what a loaded state restored: a change
        that a resume accepted applies from the next step (the state holds the values it was saved with)."""
        config, groups = self.config, self.optimizer.param_groups
        for group in groups:
            group.update(
                initial_lr=config.lr,
                betas=tuple(config.betas),
                eps=config.eps,
                weight_decay=config.weight_decay,
            )
            group["lr"] = config.lr * lr_factor(config, self.scheduler.last_epoch)
        self.scheduler.base_lrs = [config.lr] * len(groups)
        self.scheduler._last_lr = [group["lr"] for group in groups]

    def _weights(self) -> dict:
        return {"params": self.model.state_dict(), "params_ema": self.ema.state_dict()}

    def save(self, iteration: int) -> None:
        state = {
            "iteration": iteration,
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": run_state.rng_states(),
            "config": self.config.to_dict(),
            "lkdn_config": self.model.config(),
        }
        try:
            run_state.save_iteration(self.run_dir, iteration, self._weights(), state, self.config.keep_last)
        except (OSError, UserError) as err:  # the atomic writer's line says which file, why, and the fix
            kept = f"iteration {self.saved_at}" if self.saved_at else "none yet"
            raise UserError(
                f"{self.run_dir}: cannot save iteration {iteration} ({err}); the last saved state: {kept}, "
                "which the same command resumes from"
            ) from None
        self.saved_at = iteration
        log.info("saved iteration %d", iteration)

    def export_fused(self) -> list[Path]:
        paths = run_state.export_fused(self.ema.model, self.run_dir)
        log.info("exported the fused EMA weights to %s", " and ".join(map(str, paths)))
        return paths

    def _data(self) -> DataLoader:
        config = self.config
        cache = Path(config.cache_dir)
        min_size = config.lr_patch * config.scale
        if self.info.is_main:  # rank 0 makes the LR cache, the others reuse it
            pairs = prepare_pairs(config.train_sources, cache, config.scale, min_size=min_size)
        barrier(self.info)
        if not self.info.is_main:
            pairs = prepare_pairs(config.train_sources, cache, config.scale, min_size=min_size)
        log.info(
            "training images: %d (%d skipped: smaller than the %d-pixel HR patch)",
            len(pairs),
            pairs.skipped_small,
            min_size,
        )
        for message in pairs.unreadable:
            self.unreadable.add(message)
            log.warning("skipped an unreadable training image: %s", message)
        dataset = PatchDataset(
            pairs, config.lr_patch, config.scale, config.seed, config.augment, config.in_memory
        )
        sampler = StepBatches(self.start, config.total_iters, config.batch_size, self.info)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.workers > 0,
            worker_init_fn=ignore_stop_signals if config.workers > 0 else None,
        )

    def _reduced(self, loss: torch.Tensor) -> float:
        if self.info.enabled:
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= self.info.world_size
        return loss.item()

    def _stop_reason(self, started: float) -> str | None:
        """Why to stop after this step (a signal, or max_minutes), agreed by every rank; None to go on."""
        reason = self.stop_signal
        limit = 60 * self.config.max_minutes
        if reason is None and limit > 0 and time.monotonic() - started > limit:
            reason = f"max_minutes {self.config.max_minutes:g} reached"
        if self.info.enabled:  # every rank must stop at the same step
            flag = torch.tensor(float(reason is not None))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and reason is None:
                reason = "another process stopped"
        return reason

    def _request_stop(self, signum: int, _frame) -> None:
        self.stop_signal = f"{signal.Signals(signum).name} received"
        self.stopped_by = signum

    def _validate(self, iteration: int, writer) -> bool:
        scores = validate(self.ema.model, self.config.val_dirs, self.config.scale, self.device)
        mean = float(np.mean(list(scores.values())))
        text = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
        improved = mean > self.best
        if improved:
            self.best = mean
            save_weights(self._weights(), self.run_dir / "models" / "best.pth", self.model.config())
            text += " (best)"
        decay = self.ema.decay_at(iteration - 1)
        log.info("validation at %d, PSNR_Y of the EMA weights (decay %.4g): %s", iteration, decay, text)
        try:  # the picture of the run so far; a failure to draw it must not end the run
            write_curves([self.run_dir], self.run_dir / "curves.png")
        except Exception as err:  # noqa: BLE001 (matplotlib and font errors have no common base)
            log.warning("could not draw curves.png: %s", err)
        if writer is not None:
            for name, value in scores.items():
                writer.add_scalar(f"val/psnr_y/{name}", value, iteration)
        return improved

    def _diverged(self, iteration: int) -> UserError:
        last = run_state.latest_resumable(self.run_dir)
        kept = (
            f"the last good checkpoint is iteration {last} in {self.run_dir}"
            if last
            else "no checkpoint was saved"
        )
        start = (
            f"the weights were finite when training started (init_from {self.config.init_from} included)"
            if self.config.init_from
            else "the weights were finite when training started"
        )
        return UserError(
            f"{self.run_dir}: the loss became NaN or infinite at iteration {iteration}; stopped, {kept}; "
            f"{start}, so the run diverged: lower --lr (or use fp32) and resume"
        )

    def _note_unreadable(self, messages: list[str], total_images: int) -> None:
        """Log each unreadable training image once; past max_bad_images of them, stop (the caller saves)."""
        for message in (line for text in messages for line in text.splitlines() if line):
            if message not in self.unreadable:
                self.unreadable.add(message)
                log.warning("skipped an unreadable training image: %s", message)
        limit = self.config.max_bad_images * total_images
        if len(self.unreadable) > limit:
            raise UserError(
                f"{len(self.unreadable)} of {total_images} training images are unreadable (more than max_bad_images "
                f"{self.config.max_bad_images:g}); they are named in {self.run_dir / 'train.log'}: replace or "
                "remove them, then resume"
            )

    def _step(self, lr_batch: torch.Tensor, hr_batch: torch.Tensor) -> float:
        """One optimisation step; returns the (all-reduced) loss."""
        lr_batch = lr_batch.to(self.device, non_blocking=True, memory_format=self.memory_format)
        hr_batch = hr_batch.to(self.device, non_blocking=True)
        with _autocast(self.config, self.device):
            sr = self.ddp(lr_batch)
        loss = self.loss_fn(sr.float(), hr_batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model, self.scheduler.last_epoch - 1)  # the global step, 0-based
        return self._reduced(loss)

    def _log_progress(self, iteration: int, window: list[float], writer) -> None:
        learning_rate = self.optimizer.param_groups[0]["lr"]
        log.info("iter %d loss %.5f lr %.3e", iteration, float(np.mean(window)), learning_rate)
        if writer is not None:
            writer.add_scalar("train/loss", float(np.mean(window)), iteration)
            writer.add_scalar("train/lr", learning_rate, iteration)

    def _save_and_validate(self, iteration: int, stop: str | None, writer) -> None:
        """The checkpoint when due (or when stopping, or before a validation: validation runs on saved work
        only), then validation when due; a new best is saved into the state too."""
        config = self.config
        due = iteration == config.total_iters or stop is not None
        validating = bool(config.val_dirs) and (iteration % config.val_every == 0 or due)
        if not self.info.is_main:
            return
        if iteration % config.save_every == 0 or due or validating:
            self.save(iteration)
        if validating and self._validate(iteration, writer):
            self.save(iteration)  # the state's `best` follows, so a resume compares with it

    def _save_after_error(self, iteration: int) -> None:
        """After an error between steps: save the last completed step, unless it is saved already. A save that
        fails too is logged; the first error is the one reported."""
        if self.info.is_main and iteration > self.saved_at:
            try:
                self.save(iteration)
            except Exception as err:  # noqa: BLE001 (the error being handled is the one to report)
                log.error("could not save iteration %d: %s", iteration, err)
                return
            log.info("saved iteration %d before stopping on the error below", iteration)

    def _log_stop(self, iteration: int, reason: str) -> None:
        log.info(
            "stopping at iteration %d: %s; state saved in %s: run the same command to resume",
            iteration, reason, self.run_dir,
        )  # fmt: skip

    def _worker_died_on_stop(self, err: BaseException) -> bool:
        """A loader worker killed while the run is stopping (SIGKILL to the group, or a worker that did not
        ignore the signal): the stop it is, not an error."""
        return (
            self.stop_signal is not None and isinstance(err, RuntimeError) and "DataLoader worker" in str(err)
        )

    def run(self) -> int:
        """Train to total_iters (or max_minutes, or a signal); returns the last iteration reached."""
        config, info = self.config, self.info
        loader = self._data()
        total_images = len(loader.dataset.pairs) + len(self.unreadable)
        writer = _tensorboard(self.run_dir) if info.is_main else None
        log.info(
            "training %s from iteration %d to %d on %s x%d process(es), precision %s, online fusion %s",
            config.name, self.start, config.total_iters, self.device, info.world_size, config.precision,
            config.online_fusion,
        )  # fmt: skip
        started = time.monotonic()
        self.stop_signal = None
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}
        bar = tqdm(total=config.total_iters, initial=self.start, disable=not info.is_main, dynamic_ncols=True)
        iteration, window = self.start, []
        self.model.train()
        try:
            with stop_signals_blocked():
                batches = iter(loader)
            while iteration < config.total_iters:
                try:  # between steps: an error here leaves the weights of the last step intact
                    lr_batch, hr_batch, unreadable = next(batches)
                    self._note_unreadable(unreadable, total_images)
                except StopIteration:
                    break
                except BaseException as err:
                    self._save_after_error(iteration)
                    if self._worker_died_on_stop(err):
                        self._log_stop(iteration, self.stop_signal)
                        break
                    if _shared_memory_full(err):
                        raise UserError(
                            f"the loader's workers cannot pass batches through shared memory (/dev/shm is full or "
                            f"limited); pass --num_workers 0, or give the container more /dev/shm (state saved at "
                            f"iteration {self.saved_at}: run the same command to resume)"
                        ) from None
                    raise
                value = self._step(lr_batch, hr_batch)
                if not math.isfinite(value):
                    raise self._diverged(iteration + 1)
                iteration += 1
                try:  # between steps again: whatever fails here, the step just computed is saved first
                    window.append(value)
                    bar.update()
                    bar.set_postfix(
                        loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False
                    )
                    if iteration % config.log_every == 0:
                        self._log_progress(iteration, window, writer)
                        window = []
                    stop = self._stop_reason(started)
                    self._save_and_validate(iteration, stop, writer)
                    barrier(info)
                except BaseException:
                    self._save_after_error(iteration)
                    raise
                if stop is not None:
                    self._log_stop(iteration, stop)
                    break
            if info.is_main and iteration == config.total_iters:
                self.export_fused()
        finally:
            _stop_workers(loader)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if writer is not None:
                writer.close()
            shutdown(info)
        return iteration
