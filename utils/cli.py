"""argparse types shared by the command lines: a bad number is argparse's usage line and exit code 2, not a
traceback from deep inside (e.g. torch.set_num_threads(0))."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (threads, batch, sizes, repetitions)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (where 0 means "the default", e.g. torch's thread count)."""
    if text.strip() == "0":
        return 0
    return positive_int(text)
