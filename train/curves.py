"""Training curves: loss, learning rate and validation PSNR against iteration, read from a run's train.log.

The trainer writes `curves.png` beside train.log at every validation. For runs that continue one another (stage
1, then stage 2), the command draws them end to end:

    python -m train.curves train/runs/lkdn_s_cpu/scratch train/runs/lkdn_s_cpu/finetune -o docs/curves.png

matplotlib draws them (the Agg backend: no display needed); the PNG is written atomically.
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_bytes_atomic

# the lines train/trainer.py logs (factsheet/training_log.py reads them too, after their time stamps)
STEP_LINE = r"iter (?P<iter>\d+) loss (?P<loss>[-+0-9.eE]+|nan|inf) lr (?P<lr>[-+0-9.eE]+|nan|inf)"
VALIDATION_LINE = (
    r"validation at (?P<iter>\d+), PSNR_Y of the EMA weights(?: \(decay [^)]*\))?: (?P<scores>.*)$"
)
_STEP = re.compile(r"\b" + STEP_LINE)
_VALIDATION = re.compile(r"\b" + VALIDATION_LINE)
_SCORE = re.compile(r"([^,]+?) ([\d.]+)(?: \(best\))?(?:,|$)")


@dataclass
class Curves:
    """What a log says about a run, by iteration."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    psnr: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def shifted(self, offset: int) -> Curves:
        def move(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
            return [(i + offset, v) for i, v in points]

        return Curves(move(self.loss), move(self.lr), {k: move(v) for k, v in self.psnr.items()})

    def last_iteration(self) -> int:
        points = [*self.loss, *self.lr, *(p for v in self.psnr.values() for p in v)]
        return max((i for i, _ in points), default=0)


def read_curves(log: Path) -> Curves:
    """The loss, learning rate and validation PSNR lines of a train.log (a resumed run's repeats: the last)."""
    try:
        text = log.read_text()
    except OSError as err:
        raise UserError(f"{log}: cannot read the training log ({err.strerror}); pass a run folder") from None
    loss: dict[int, float] = {}
    lr: dict[int, float] = {}
    psnr: dict[str, dict[int, float]] = {}
    for line in text.splitlines():
        if step := _STEP.search(line):
            iteration = int(step["iter"])
            loss[iteration], lr[iteration] = float(step["loss"]), float(step["lr"])
        elif validation := _VALIDATION.search(line):
            iteration = int(validation["iter"])
            for name, value in _SCORE.findall(validation["scores"]):
                psnr.setdefault(name.strip(), {})[iteration] = float(value)
    return Curves(sorted(loss.items()), sorted(lr.items()), {k: sorted(v.items()) for k, v in psnr.items()})


def plot_curves(curves: Curves, title: str, boundaries: tuple[int, ...] = ()) -> bytes:
    """A PNG of three panels (loss, learning rate, validation PSNR_Y) against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True, layout="constrained")
    panels = [(axes[0], {"L1/L2 loss": curves.loss}, True), (axes[1], {"learning rate": curves.lr}, True)]
    panels.append((axes[2], {f"PSNR_Y {k} [dB]": v for k, v in curves.psnr.items()}, False))
    for axis, series, log_scale in panels:
        for label, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        if log_scale and any(points for points in series.values()):
            axis.set_yscale("log")
        for boundary in boundaries:
            axis.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
        axis.grid(True, alpha=0.3)
        if any(series.values()):
            axis.legend(loc="best", fontsize=8)
    axes[0].set_title(title)
    axes[2].set_xlabel("iteration")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_curves(run_dirs: list[Path], output: Path) -> Path:
    """The curves of one run, or of runs that continue one another, drawn end to end, to `output`."""
    combined, offset, boundaries = Curves(), 0, []
    for run in run_dirs:
        part = read_curves(Path(run) / "train.log").shifted(offset)
        combined.loss += part.loss
        combined.lr += part.lr
        for name, points in part.psnr.items():
            combined.psnr.setdefault(name, []).extend(points)
        offset = part.last_iteration()
        boundaries.append(offset)
    title = " then ".join(Path(run).name for run in run_dirs)
    return write_bytes_atomic(output, plot_curves(combined, title, tuple(boundaries[:-1])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run folders (with train.log), in training order"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="the PNG to write (default: curves.png in the last run)"
    )
    args = parser.parse_args(argv)
    output = write_curves(args.run_dirs, args.output or args.run_dirs[-1] / "curves.png")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
