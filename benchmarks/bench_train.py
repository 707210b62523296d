"""Training-step throughput: multi-branch fp32 vs online-fused fp32 vs online-fused bf16, in one process.

    python benchmarks/bench_train.py [--batch 16] [--lr_patch 64] [--rounds 10] [--threads N]

A step is forward, L1 loss, backward and an Adam step on LKDN-S x4 (training form). The last rows add, one
at a time, what train/train_lkdn.py runs by default on a CPU: channels-last activations, the conv gradients of
train/conv_backward.py (C++ kernels where oneDNN is slow), and GELU through the NHWC view
(train/nhwc_gelu.py); the last row is the trainer's step. The variants run
interleaved, round after round, so a busy machine slows all of them alike; the medians and their ratios are
printed. Online fusion must be at least 2x the multi-branch form in fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from models import lkdn_s
from train.conv_backward import use_fast_conv_backward
from train.nhwc_gelu import use_nhwc_gelu
from utils.cli import non_negative_int, positive_int


def make_step(
    batch: int,
    lr_patch: int,
    online_fusion: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
    fast_conv_backward: bool = False,
    nhwc_gelu: bool = False,
    device: str = "cpu",
):
    """One training step of LKDN-S on fixed random patches: forward (autocast for bf16 / fp16, fp16 with a
    gradient scaler), L1 loss, backward, Adam. The step returns its loss as a tensor (no synchronisation)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = lkdn_s(online_fusion=online_fusion).train().to(device, memory_format=memory_format)
    if fast_conv_backward:
        use_fast_conv_backward(model)
    if nhwc_gelu:
        use_nhwc_gelu(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    lr = torch.rand(batch, 3, lr_patch, lr_patch, device=device).contiguous(memory_format=memory_format)
    hr = torch.rand(batch, 3, 4 * lr_patch, 4 * lr_patch, device=device)

    def step() -> torch.Tensor:
        context = torch.autocast(device, dtype=dtype) if dtype else nullcontext()
        with context:
            sr = model(lr)
        loss = (sr.float() - hr).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--lr_patch", type=positive_int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch threads (default: torch's default)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    trainer_cpu = {"channels_last": True, "fast_conv_backward": True}
    options: dict[str, dict] = {
        "multi-branch fp32": {"online_fusion": False},
        "online-fused fp32": {},
        "online-fused bf16": {"precision": "bf16"},
        "online-fused fp32 NHWC": {"channels_last": True},
        "+ fast conv backward": trainer_cpu,
        "+ NHWC GELU (trainer)": {**trainer_cpu, "nhwc_gelu": True},
    }
    variants = {name: make_step(args.batch, args.lr_patch, **kw) for name, kw in options.items()}
    for step in variants.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["multi-branch fp32"])
    print(
        f"LKDN-S x4 training step, batch {args.batch} of {args.lr_patch}x{args.lr_patch} LR patches, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<26} {'step [ms]':>10} {'patches/s':>10} {'vs multi-branch':>16}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<26} {1000 * median:>10.1f} {args.batch / median:>10.1f} {base / median:>15.2f}x")
    ratio = base / statistics.median(times["+ NHWC GELU (trainer)"])
    verdict = "met" if ratio >= 2 else "not met"
    print(
        f"online-fused fp32 as the trainer runs it on a CPU: {ratio:.2f}x multi-branch fp32 (target 2x: {verdict})"
    )


if __name__ == "__main__":
    main()
