"""Optimizers, learning-rate schedules and losses of the recipe and of the slides' optimizer study.

Adan comes from pytorch-optimizer (maintained, depends on torch and numpy only); tests check it against the
published update rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from train.config import TrainConfig


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay
        )
    from pytorch_optimizer import Adan

    return Adan(
        params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay
    )


def lr_factor(config: TrainConfig, iteration: int) -> float:
    """Multiplier of the base learning rate at a 0-based iteration: linear warm-up, then the schedule."""
    if iteration < config.warmup_iters:
        return (iteration + 1) / config.warmup_iters
    if config.scheduler == "constant":
        return 1.0
    if config.scheduler == "multistep":
        return config.gamma ** sum(iteration >= m for m in config.milestones)
    span = max(1, config.total_iters - config.warmup_iters)
    progress = min(1.0, (iteration - config.warmup_iters) / span)
    floor = config.min_lr / config.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> LRScheduler:
    return LambdaLR(optimizer, lambda iteration: lr_factor(config, iteration))


def build_loss(config: TrainConfig) -> nn.Module:
    return nn.L1Loss() if config.loss == "l1" else nn.MSELoss()
