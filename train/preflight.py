"""Before the first step: does one training step of this configuration fit the machine's memory?

A configuration the machine cannot hold would otherwise run for a while, take the machine's memory and die with
a traceback (or take the machine down with it). The estimate is the parameters with their gradients, Adam's two
moments, the EMA copy and the fused copy, plus the activations autograd keeps for the backward pass, which grow
with batch x LR patch area x channels x blocks. The activation constants come from peak resident memory measured
over one CPU training step (LKDN-S and smaller networks, channels-last, the recipe's CPU speed-ups): about 33
feature maps per block and 750 floats per LR pixel for the HR-sized tail; the constants below add ~20%.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import LKDN
from train.config import TrainConfig
from utils.errors import UserError

MAPS_PER_BLOCK = 40  # float32 feature maps of num_feat channels kept per block and LR pixel
TAIL_FLOATS = 800  # floats per LR pixel of the upsampler, the HR output, the target and the loss
PARAM_COPIES = 6  # weights, gradients, two Adam moments, the EMA model, its fused copy at validation
WORKER_BYTES = 256 << 20  # one loader worker process (its own interpreter, torch and a batch in flight)
GIB = 1 << 30


def parameter_count(config: TrainConfig) -> int:
    """The training-form network's parameter count, without allocating it (built on the meta device)."""
    with torch.device("meta"):
        model = LKDN(
            num_feat=config.num_feat, num_blocks=config.num_blocks, scale=config.scale,
            attention=config.attention, shallow=config.shallow,
        )  # fmt: skip
    return sum(p.numel() for p in model.parameters())


def step_bytes(config: TrainConfig, batch: int | None = None, lr_patch: int | None = None) -> int:
    """Estimated memory of one training step (this process and its loader workers)."""
    batch = config.batch_size if batch is None else batch
    lr_patch = config.lr_patch if lr_patch is None else lr_patch
    per_pixel = MAPS_PER_BLOCK * config.num_feat * config.num_blocks + TAIL_FLOATS
    activations = 4 * batch * lr_patch**2 * per_pixel
    return 4 * PARAM_COPIES * parameter_count(config) + activations + config.workers * WORKER_BYTES


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now: the GPU's free memory, or the OS's MemAvailable (Linux); None
    where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _largest(fits, upper: int) -> int:
    """The largest n in [1, upper] with fits(n) (fits is monotone), or 0."""
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_memory(config: TrainConfig, device: torch.device, available: int | None = None) -> None:
    """UserError, naming the flags that fix it, when a step of `config` cannot fit in the memory available."""
    available = available_bytes(device) if available is None else available
    if available is None:
        return
    need = step_bytes(config)
    if need <= available:
        return
    where = "GPU memory" if device.type == "cuda" else "memory available"
    head = (
        f"one training step of this configuration needs about {need / GIB:.1f} GiB ({config.num_feat} channels x "
        f"{config.num_blocks} blocks, batch {config.batch_size}, LR patch {config.lr_patch}), more than the "
        f"{available / GIB:.1f} GiB {where} now"
    )
    batch = _largest(lambda b: step_bytes(config, batch=b) <= available, config.batch_size)
    patch = _largest(lambda p: step_bytes(config, lr_patch=p) <= available, config.lr_patch)
    if batch == 0 and patch == 0:
        raise UserError(
            f"{head}; even batch 1 does not fit: lower --num_feat or --num_blocks (or --num_workers), or use a "
            "machine with more memory"
        )
    options = [f"--batch_size {batch}"] * (batch > 0) + [f"--lr_patch {patch}"] * (patch > 0)
    raise UserError(f"{head}; the largest that fits: {' or '.join(options)}")
