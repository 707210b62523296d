"""Choose the native kernels' build for the CPU and thread count that run them, once, and remember the choice.

What is fastest differs between CPUs of one instruction set (the product tiles that win on one AVX-512 CPU lose on
another; a CPU that splits 512-bit operations in two may prefer 8-lane vectors), so the kernels' free choices are
build settings (SETTINGS: lkdn_cpu.cpp's LKDN_WIDE_TILES, LKDN_GELU_TABLE, LKDN_WINOGRAD, LKDN_TEAM_COLUMNS,
LKDN_STRIP, LKDN_DEPTHWISE_PIXELS, LKDN_CALLER_SHARE, the vector width) and this module tunes them on the machine
itself, one setting after another from the default build: the setting's alternatives are built (cached like any
kernel build), checked against the reference module's output (a build that differs by more than ATOL is never
chosen) and timed against the current choice in interleaved rounds on two input sizes (ROUNDS, and CONFIRM more
where the best alternative is a close call); an alternative replaces the current value if it takes at most MARGIN
of its time. Close calls get a second look (LOOKS) once every setting has been tuned. The choice is kept in
`native_tuning.json` beside the compiled kernels, keyed by the CPU (model and instruction-set flags), the compiler
and kernel source, how the tuner measures (its candidates, SIZES, ROUNDS, CONFIRM, CLEAR, MARGIN, LOOKS), the
thread count and the network's width: another CPU, compiler, source, way of tuning or thread count tunes again; an
unreadable record is ignored and redone. LKDN_NATIVE_TUNE=0 skips tuning (the default build), LKDN_NATIVE_TUNE=force
tunes again. `python -m utils.runtime.native_tune [--threads 1 2] [--force]` tunes now (or shows the kept choice)
and says how long it took; `--noise TRIALS` measures how far noise alone moves the tuner's estimate on this
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from models import BUNDLED_CHECKPOINT, LKDN
from utils.cli import positive_int
from utils.device import cpu_description, vector_isa
from utils.errors import UserError, run_cli
from utils.files.atomic_write import write_text_atomic
from utils.files.checkpoint import build_model_from_checkpoint
from utils.native import build
from utils.runtime.native import SOURCE, KernelUnavailable, NativeLKDN, load_kernel

ENV = "LKDN_NATIVE_TUNE"
SKIP = ("0", "off", "no", "false")  # values of ENV that skip tuning
RECORD = "native_tuning.json"
ATOL = 2e-5  # the native kernels' bound on the difference from the reference module (float32)
MARGIN = 0.98  # a candidate replaces the default build only if it takes at most this share of its time
# LR sizes timed: a small image, and one as wide as the default strip, where the strips' rings are at their widest
# (96x320, cut into two strips of 160, ranked the strip widths unlike 256x256: docs/speed.md)
SIZES = ((64, 64), (96, 256))
# Rounds of timing, and more where the best alternative took between CLEAR and 1 of the current build's time: on a
# shared machine the median ratio of two identical builds over 8 rounds spread as much as the gains to tell apart
# (the Winograd upsampler: 0.97), and a no-op passed MARGIN one time in five or six (`--noise 12` below: 0.91-1.05,
# standard deviation 0.034, at one thread on a 2-core Intel Xeon; docs/speed.md).
ROUNDS, CONFIRM, CLEAR = 8, 16, 0.95
# Looks at a close call (the best alternative within CLEAR of the default, either way): a second, after the other
# settings, is decided on the rounds of both, so that a spell of a few seconds in which the machine was busier does
# not decide alone (one two-thread tuning kept three defaults measured 1.004-1.038 that every other run that hour
# measured 0.92-0.97: docs/speed.md).
LOOKS = 2


@dataclass(frozen=True)
class Setting:
    """One free choice of the kernels and its alternatives to the default, as build flags."""

    name: str
    default: str
    alternatives: dict[str, tuple[str, ...]]
    needs: str | None = None  # the instruction set on which the alternatives differ from the default, if one
    min_threads: int = 1  # fewer threads than this: the alternatives change nothing
    when: tuple[tuple[str, str], ...] = ()  # tuned only where the choice so far has these values
    untimed: tuple[str, ...] = ()  # alternatives one may build (benchmarks, tests) but the tuner never times

    def timed(self) -> list[str]:
        return [value for value in self.alternatives if value not in self.untimed]


# In the order they are tuned (each with the choices before it fixed): the largest effects first.
SETTINGS = (
    Setting("tiles", "narrow", {"wide": ("-DLKDN_WIDE_TILES=1",)}),
    Setting("vectors", "512", {"256": ("-mno-avx512f",)}, needs="AVX-512"),
    Setting(
        "gelu", "rational", {"table": ("-DLKDN_GELU_TABLE=1",)}, needs="AVX-512", when=(("vectors", "512"),)
    ),
    Setting("upsampler", "direct", {"winograd": ("-DLKDN_WINOGRAD=1",)}),
    Setting("team", "rows", {"columns": ("-DLKDN_TEAM_COLUMNS=1",)}, min_threads=2),
    Setting(
        "strip",
        "256",
        {"64": ("-DLKDN_STRIP=64",), "128": ("-DLKDN_STRIP=128",), "512": ("-DLKDN_STRIP=512",)},
        untimed=("512",),  # on SIZES, no wider than 256, the same build as 256: only noise could choose it
    ),
    Setting("depthwise", "full", {"half": ("-DLKDN_DEPTHWISE_PIXELS=kDefaultDepthwisePixels/2",)}),
    Setting(
        "caller_share",
        "100",
        {"90": ("-DLKDN_CALLER_SHARE=90",), "110": ("-DLKDN_CALLER_SHARE=110",)},
        min_threads=2,
    ),
)
BY_SETTING = {setting.name: setting for setting in SETTINGS}
Choice = dict[str, str]  # setting -> value; a setting left out is at its default


def flags_of(choice: Choice) -> tuple[str, ...]:
    """The build flags of a choice (the default build: none)."""
    return tuple(flag for s in SETTINGS if choice.get(s.name, s.default) != s.default
                 for flag in s.alternatives[choice[s.name]])  # fmt: skip


def name_of(choice: Choice) -> str:
    """'default', or the settings that differ from it: 'tiles=wide,strip=512'."""
    changed = [f"{s.name}={choice[s.name]}" for s in SETTINGS if choice.get(s.name, s.default) != s.default]
    return ",".join(changed) or "default"


def parse_choice(text: str) -> Choice:
    """'tiles=wide,strip=512' (or 'default') as a choice; ValueError naming what is not a setting's value."""
    choice: Choice = {}
    for item in filter(None, text.split(",")):
        if item == "default":
            continue
        name, _, value = item.partition("=")
        if not _valid({name: value}):
            known = "; ".join(f"{s.name}={'|'.join([s.default, *s.alternatives])}" for s in SETTINGS)
            raise ValueError(f"{item!r} is not a kernel setting ({known})")
        choice[name] = value
    return choice


def _valid(choice: object) -> bool:
    return isinstance(choice, dict) and all(
        name in BY_SETTING and (value == BY_SETTING[name].default or value in BY_SETTING[name].alternatives)
        for name, value in choice.items()
    )


def settings(threads: int) -> list[Setting]:
    """The settings whose alternatives differ from the default on this CPU at `threads`."""
    isa = vector_isa()
    return [s for s in SETTINGS if (s.needs is None or s.needs == isa) and threads >= s.min_threads]


def fingerprint() -> str:
    """What a choice depends on besides the thread count and width: the CPU, the compiler, the kernel source, and
    how the tuner measures (the candidates it times, its sizes, rounds and margins)."""
    sources = [SOURCE, *sorted(build.INCLUDE.glob("*.h"))]
    parts = [
        cpu_description(),
        build.cpu_key(),
        build.find_compiler() or "",
        *(p.read_text() for p in sources),
        repr([(s.name, s.default, s.timed()) for s in SETTINGS]),
        repr((SIZES, ROUNDS, CONFIRM, CLEAR, MARGIN, LOOKS)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def record_key(threads: int, channels: int) -> str:
    return f"{fingerprint()}/{threads}t/{channels}c"


def record_path() -> Path:
    return build.cache_dir() / RECORD


def read_records(path: Path | None = None) -> dict[str, dict]:
    """The kept choices; an unreadable or malformed file, or a record naming no candidate, counts as absent."""
    path = path or record_path()
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(records, dict):
        return {}
    return {
        key: record
        for key, record in records.items()
        if isinstance(record, dict) and _valid(record.get("choice"))
    }


def _write_record(key: str, record: dict) -> None:
    path = record_path()
    records = read_records(path)  # read again just before writing: another process may have added its own
    records[key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(records, indent=1, sort_keys=True) + "\n")


def _say(text: str) -> None:
    print(f"native kernels: {text}", file=sys.stderr, flush=True)


class Timer:
    """Checks candidate builds against the reference module and times them against each other on `model` at the
    current thread count (see the module's doc): a runner per build, made once."""

    def __init__(self, model: LKDN) -> None:
        self.model = model
        generator = torch.Generator().manual_seed(0)
        self.inputs = [torch.rand(1, 3, h, w, generator=generator) for h, w in SIZES]
        self.check = torch.rand(1, 3, 21, 35, generator=generator)
        with torch.inference_mode():
            self.expected = model(self.check)
        self.runners: dict[tuple[str, ...], NativeLKDN] = {}

    def prepare(self, builds: list[tuple[str, ...]]) -> None:
        """Compile `builds` at once, one compiler process each (a build that fails is reported by `usable`)."""

        def build(flags: tuple[str, ...]) -> None:
            with contextlib.suppress(KernelUnavailable):
                load_kernel(flags)

        with ThreadPoolExecutor(max_workers=max(1, min(len(builds), os.cpu_count() or 1))) as pool:
            list(pool.map(build, builds))

    def usable(self, flags: tuple[str, ...]) -> str | None:
        """None when the build runs here and matches the reference within ATOL, else why not."""
        if flags in self.runners:
            return None
        try:
            runner = NativeLKDN(self.model, build=flags).eval()
            with torch.inference_mode():
                diff = (runner(self.check) - self.expected).abs().max().item()
                for x in self.inputs:  # warm-up: rings and workspace allocated, code paged in
                    runner(x)
        except KernelUnavailable as err:
            return f"does not build ({err})"
        if not diff <= ATOL:  # NaN included
            return f"differs from the reference by {diff:.2e}"
        self.runners[flags] = runner
        return None

    def compare(self, current: tuple[str, ...], others: list[tuple[str, ...]]) -> list[list[float]]:
        """Each of `others`' per-round time ratios to `current`'s (see `settled`)."""
        return settled(lambda rounds: self.rounds(current, others, rounds))

    def rounds(
        self, current: tuple[str, ...], others: list[tuple[str, ...]], count: int
    ) -> list[list[float]]:
        """For each of `others`, the ratio of its time to `current`'s in each of `count` rounds (the order
        rotating), so that a busy machine's drift between rounds cancels."""
        builds = [current, *others]
        ratios: list[list[float]] = [[] for _ in others]
        with torch.inference_mode():
            for round_ in range(count):
                spent = [0.0] * len(builds)
                for k in range(len(builds)):
                    i = (k + round_) % len(builds)
                    for x in self.inputs:
                        start = time.perf_counter()
                        self.runners[builds[i]](x)
                        spent[i] += time.perf_counter() - start
                for j in range(len(others)):
                    ratios[j].append(spent[j + 1] / spent[0])
        return ratios


def _require_default(timer: Timer) -> None:
    """The default build, every tuning's starting point and fallback, must run and match the reference."""
    reason = timer.usable(())
    if reason is not None:
        raise KernelUnavailable(f"the default build: {reason}")


@contextlib.contextmanager
def _at_threads(threads: int) -> Iterator[None]:
    """torch's thread count set to `threads` inside, and back to what it was after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def settled(measure: Callable[[int], list[list[float]]]) -> list[list[float]]:
    """The per-round time ratios of each alternative to the current build, from `measure(n)` (n rounds of ratios
    per alternative): ROUNDS rounds, and CONFIRM more for all of them where the best median is a close call
    (between CLEAR and 1), so that noise decides fewer choices."""
    ratios = measure(ROUNDS)
    if CLEAR < min(statistics.median(r) for r in ratios) < 1:
        for kept, more in zip(ratios, measure(CONFIRM), strict=True):
            kept.extend(more)
    return ratios


def _applies(setting: Setting, choice: Choice) -> bool:
    return all(choice.get(name, BY_SETTING[name].default) == value for name, value in setting.when)


def _time_setting(time_: Timer, setting: Setting, choice: Choice) -> tuple[dict[str, list[float]], list[str]]:
    """Each timed alternative of `setting`: its per-round time ratios to `choice` with `setting` at its default,
    for those that build and match the reference; and a note on each of the others, saying why not."""
    base = {name: value for name, value in choice.items() if name != setting.name}
    builds = {value: flags_of({**base, setting.name: value}) for value in setting.timed()}
    time_.prepare([flags_of(base), *builds.values()])
    reason = time_.usable(flags_of(base))
    if reason is not None:  # a combination not built before (a second look): nothing to compare against
        return {}, [f"{setting.default}: {reason}"]
    usable, notes = {}, []
    for value, flags in builds.items():
        reason = time_.usable(flags)
        if reason is None:
            usable[value] = flags
        else:
            notes.append(f"{value}: {reason}")
    ratios = time_.compare(flags_of(base), list(usable.values())) if usable else []
    return dict(zip(usable, ratios, strict=True)), notes


def _decide(setting: Setting, ratios: dict[str, list[float]], notes: list[str]) -> tuple[str, str]:
    """The value the ratios choose (the fastest alternative, if its median is at most MARGIN; else the default)
    and the line that says so."""
    medians = {value: statistics.median(r) for value, r in ratios.items()}
    best = min(medians, key=medians.__getitem__, default=None)
    value = best if best is not None and medians[best] <= MARGIN else setting.default
    shown = [f"{v} {m:.3f}" for v, m in medians.items()] + notes
    return value, f"{setting.default} 1, {', '.join(shown)} -> {value}"


def _close(ratios: dict[str, list[float]]) -> bool:
    """Whether the best alternative's median lay within CLEAR of the default's time, on either side."""
    return bool(ratios) and CLEAR < min(statistics.median(r) for r in ratios.values()) < 1 / CLEAR


def _with(choice: Choice, setting: Setting, value: str) -> Choice:
    """`choice` with `setting` at `value`, less any later setting that this change leaves without its condition."""
    changed = {name: v for name, v in choice.items() if name != setting.name}
    if value != setting.default:
        changed[setting.name] = value
    return {name: v for name, v in changed.items() if _applies(BY_SETTING[name], changed)}


def tune(
    model: LKDN, say: Callable[[str], None] = _say, timer: Callable[[LKDN], Timer] = Timer
) -> tuple[Choice, list[str]]:
    """Tune the settings one after another from the default build: for each, its alternatives are built, checked
    and timed against the current choice, and the fastest replaces it if it takes at most MARGIN of its time.
    Then a second look at each close call (the best alternative within CLEAR of the default, either way): timed
    again in the final choice, later, and decided on the rounds of both looks, so that a few seconds in which
    the machine was busier decide less. Returns the choice and what was measured, one line per look."""
    time_ = timer(model)
    _require_default(time_)
    choice: Choice = {}
    lines: list[str] = []
    close: dict[str, dict[str, list[float]]] = {}  # a close call's first look: alternative -> round ratios

    def report(line: str) -> None:
        lines.append(line)
        say(line)

    for setting in settings(torch.get_num_threads()):
        if not _applies(setting, choice):
            continue
        ratios, notes = _time_setting(time_, setting, choice)
        value, line = _decide(setting, ratios, notes)
        choice = _with(choice, setting, value)
        if _close(ratios):
            close[setting.name] = ratios
        report(f"{setting.name}: {line}")
    for name, first in close.items() if LOOKS > 1 else ():
        setting = BY_SETTING[name]
        if not _applies(setting, choice):
            continue
        again, notes = _time_setting(time_, setting, choice)
        both = {value: first[value] + ratios for value, ratios in again.items() if value in first}
        if not both:  # nothing built to time again in this choice (its default, say): the first look stands
            report(f"{name}, second look: {', '.join(notes)} -> {choice.get(name, setting.default)} kept")
            continue
        value, line = _decide(setting, both, notes)
        choice = _with(choice, setting, value)
        report(f"{name}, both looks: {line}")
    return choice, lines


def chosen_build(
    model: LKDN,
    threads: int | None = None,
    tuner: Callable[..., tuple[Choice, list[str]]] | None = None,
    mode: str | None = None,
) -> Choice:
    """The kernel build for `model` at `threads` (default: torch's): the kept choice, or one tuned now
    (20-50 s, plus the builds the first time), or the default build when LKDN_NATIVE_TUNE=0. `mode` overrides that
    variable ("": tune if no choice is kept, "force", "0")."""
    mode = (os.environ.get(ENV, "") if mode is None else mode).strip().lower()
    if mode in SKIP:
        return {}
    load_kernel()  # the default build must work (KernelUnavailable otherwise): it is the fallback
    threads = threads or torch.get_num_threads()
    key = record_key(threads, model.num_feat)
    record = read_records().get(key)
    if record is not None and mode != "force":
        return record["choice"]
    plural = "s" if threads > 1 else ""
    _say(
        f"tuning for {cpu_description()}, {threads} thread{plural} (once: 20-50 s, and about 30 s of compiling "
        f"the first time; {ENV}=0 skips). Each line: a setting's values, time relative to its default (close "
        "calls get a second look)"
    )
    with _at_threads(threads):
        choice, lines = (tuner or tune)(model)
    _say(f"chose {name_of(choice)}; kept in {record_path()}")
    record = {
        "choice": choice,
        "name": name_of(choice),
        "cpu": cpu_description(),
        "threads": threads,
        "channels": model.num_feat,
        "measured": lines,
        "tuned": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        _write_record(key, record)
    except (OSError, UserError) as err:  # an unwritable or full cache: the choice holds for this process only
        _say(f"could not keep the choice in {record_path()} ({getattr(err, 'strerror', None) or err})")
    return choice


def noise(model: LKDN, trials: int) -> list[float]:
    """The tuner's estimate for two identical builds (the default build against itself), `trials` times over: how
    far from 1 noise alone moves a median ratio of ROUNDS rounds on this machine now, against MARGIN and CLEAR."""
    timer = Timer(model)
    _require_default(timer)
    return [statistics.median(timer.rounds((), [()], ROUNDS)[0]) for _ in range(trials)]


def _noise_summary(model: LKDN, threads: int, trials: int) -> str:
    with _at_threads(threads):
        medians = noise(model, trials)
    spread = statistics.stdev(medians) if len(medians) > 1 else 0.0
    return (
        f"identical builds, {len(medians)} trials of {ROUNDS} rounds: median ratios {min(medians):.3f}-"
        f"{max(medians):.3f}, standard deviation {spread:.3f}, {sum(m <= MARGIN for m in medians)} at or under "
        f"the margin ({MARGIN})"
    )


def main(argv: list[str] | None = None) -> int:
    """Tune now (or show the kept choice) for the bundled weights' network at each thread count asked for, or
    (--noise) measure how far noise moves the tuner's estimate here."""
    parser = argparse.ArgumentParser(
        description="Tune the native kernels for this CPU (kept for later runs)."
    )
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--force", action="store_true", help="tune again even where a choice is kept")
    parser.add_argument(
        "--noise", type=positive_int, metavar="TRIALS",
        help="instead of tuning, time the default build against itself TRIALS times as the tuner times a setting",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model = build_model_from_checkpoint(BUNDLED_CHECKPOINT).eval()
    try:
        for threads in args.threads:  # an explicit request: it tunes whatever LKDN_NATIVE_TUNE says
            plural = "s" if threads > 1 else ""
            if args.noise:
                print(f"{threads} thread{plural}: {_noise_summary(model, threads, args.noise)}")
                continue
            start = time.perf_counter()
            choice = chosen_build(model, threads, mode="force" if args.force else "")
            print(f"{threads} thread{plural}: {name_of(choice)} ({time.perf_counter() - start:.1f} s)")
    except KernelUnavailable as err:  # no compiler, say: one line, not a traceback
        raise UserError(f"the native kernels cannot run here: {err}") from None
    return 0


if __name__ == "__main__":
    run_cli(main)
