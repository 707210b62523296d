"""Training: configuration, loop, checkpoints and resume, optimizers, EMA, distributed helpers."""
