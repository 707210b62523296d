"""The native kernels' tuner: every build it may choose computes the reference's function; its choice, its
record and when it tunes again."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics

import pytest
import torch
from test_fast_inference import ATOL, perturbed, reference_output

from models import lkdn, lkdn_s
from utils.errors import FatalError, UserError
from utils.runtime import native_tune as tune
from utils.runtime.native import NativeLKDN, native_available

needs_kernels = pytest.mark.skipif(
    native_available() is not None, reason=f"native kernels unavailable: {native_available()}"
)

# every build the tuner can reach: each alternative alone, and each with wide tiles (tuned first); on an AVX-512
# CPU also the Winograd upsampler with 8-float vectors (the AVX2 build's tiles of it differ); and the caller's
# share of column strips (team=columns), where it moves the strips' edges
_AVX2 = ({"vectors": "256", "upsampler": "winograd"},) if tune.vector_isa() == "AVX-512" else ()
_STRIPS = tuple({"team": "columns", "caller_share": share} for share in ("90", "110"))
BUILDS = sorted(
    {
        tune.name_of(choice)
        for setting in tune.settings(threads=2)
        for value in setting.alternatives
        for choice in ({setting.name: value}, {"tiles": "wide", setting.name: value})
    }
    | {tune.name_of(choice) for choice in (*_AVX2, *_STRIPS)}
    | {"default"}
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(20)
    return perturbed(lkdn_s(fused=True), seed=21)


def _run(model, x, choice, threads=1):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return NativeLKDN(model, tune.flags_of(choice)).eval()(x)
    finally:
        torch.set_num_threads(previous)


@needs_kernels
@pytest.mark.slow
@pytest.mark.parametrize("build", BUILDS)
def test_every_build_the_tuner_may_choose_computes_the_reference(model, build):
    """Odd sizes, a width cut into column strips by every strip setting, two images, a team of threads
    (bit-identical to one thread), and the other width the kernels are built for."""
    choice = tune.parse_choice(build)
    g = torch.Generator().manual_seed(22)
    # 70 columns: two strips of 36 and 34 at a 110 share; 33 rows: the tail in two bands of rows (team=columns)
    for shape in ((2, 3, 13, 53), (1, 3, 9, 70), (1, 3, 7, 530), (2, 3, 33, 21)):
        x = torch.rand(shape, generator=g)
        one = _run(model, x, choice)
        torch.testing.assert_close(one, reference_output(model, x), atol=ATOL, rtol=0)
        torch.testing.assert_close(_run(model, x, choice, threads=2), one, atol=0, rtol=0)
    torch.manual_seed(23)
    wide = perturbed(lkdn(fused=True), seed=24)
    x = torch.rand(1, 3, 11, 19, generator=g)
    torch.testing.assert_close(_run(wide, x, choice), reference_output(wide, x), atol=ATOL, rtol=0)


class FakeTimer:
    """Stands in for tune.Timer: `relative[flags]` is a build's time relative to the default build, the same in each
    of ROUNDS rounds; builds in `broken` do not pass the check."""

    def __init__(self, relative, broken=()):
        self.relative, self.broken = relative, set(broken)
        self.timed = []  # every build compared, in order

    def prepare(self, builds):
        pass

    def usable(self, flags):
        return "differs from the reference by 1.00e-01" if flags in self.broken else None

    def compare(self, current, others):
        self.timed.extend(others)
        return [[self.relative.get(o, 1.0) / self.relative.get(current, 1.0)] * tune.ROUNDS for o in others]


def _timer(relative, broken=()):
    fake = FakeTimer(relative, broken)
    return lambda model: fake


WIDE = tune.flags_of({"tiles": "wide"})
WIDE_128 = tune.flags_of({"tiles": "wide", "strip": "128"})


def test_settings_are_tuned_one_after_another_and_only_a_clear_gain_counts(monkeypatch):
    monkeypatch.setattr(
        tune, "settings", lambda threads: [tune.BY_SETTING["tiles"], tune.BY_SETTING["strip"]]
    )
    relative = {WIDE: 0.9, WIDE_128: 0.9 * 0.99, tune.flags_of({"tiles": "wide", "strip": "64"}): 0.95}
    choice, lines = tune.tune(None, say=lambda line: None, timer=_timer(relative))
    assert choice == {"tiles": "wide"}  # strip=128: 1% faster, under the 2% margin
    assert lines[0].endswith("-> wide") and lines[1].endswith("-> 256")
    relative[WIDE_128] = 0.9 * 0.97
    choice, _ = tune.tune(None, say=lambda line: None, timer=_timer(relative))
    assert choice == {"tiles": "wide", "strip": "128"}


def test_an_alternative_the_tuned_sizes_cannot_tell_apart_is_never_timed(monkeypatch):
    """Strips of 512 are the same build as 256 on images no wider than 256: only noise could choose them."""
    assert max(w for _, w in tune.SIZES) <= 256
    monkeypatch.setattr(tune, "settings", lambda threads: [tune.BY_SETTING["strip"]])
    fake = FakeTimer({tune.flags_of({"strip": "512"}): 0.5})
    choice, lines = tune.tune(None, say=lambda line: None, timer=lambda model: fake)
    assert choice == {} and "512" not in lines[0]
    assert set(fake.timed) == {tune.flags_of({"strip": value}) for value in ("64", "128")}
    assert tune.parse_choice("strip=512") == {"strip": "512"}  # still a build one may ask for


@pytest.mark.parametrize(
    ("first", "confirmed"),
    [
        ([0.90, 1.10], False),  # a clear gain
        ([1.00, 1.05], False),  # no gain
        ([0.97, 1.02], True),  # a close call: more rounds decide
    ],
)
def test_close_calls_are_timed_again_and_decided_on_every_round(first, confirmed):
    calls = []

    def measure(rounds):  # each alternative's ratio the same in every round: the first, then 0.99 and 1.03
        calls.append(rounds)
        later = len(calls) > 1
        return [[(0.99 if later else first[0])] * rounds, [(1.03 if later else first[1])] * rounds]

    medians = [statistics.median(r) for r in tune.settled(measure)]
    assert calls == ([tune.ROUNDS, tune.CONFIRM] if confirmed else [tune.ROUNDS])
    if confirmed:  # the median over all rounds: the confirming rounds outnumber the first
        assert medians == [0.99, 1.03] and tune.CONFIRM > tune.ROUNDS
    else:
        assert medians == first


TABLE = tune.flags_of({"gelu": "table"})


@pytest.mark.parametrize(
    ("first", "second", "chosen"),
    [
        (1.02, 0.90, "table"),  # a busy spell hid a gain on the first look: the rounds of both decide
        (0.97, 1.03, "rational"),  # a close gain the second look does not bear out
        (0.97, 0.97, "table"),
    ],
)
def test_close_calls_get_a_second_look_after_the_other_settings(monkeypatch, first, second, chosen):
    monkeypatch.setattr(tune, "settings", lambda threads: [tune.BY_SETTING["gelu"], tune.BY_SETTING["tiles"]])
    wide_table = tune.flags_of({"tiles": "wide", "gelu": "table"})
    fake = FakeTimer({TABLE: first, WIDE: 0.5, wide_table: 0.5 * second})
    choice, lines = tune.tune(None, say=lambda line: None, timer=lambda model: fake)
    assert choice == ({"tiles": "wide", "gelu": "table"} if chosen == "table" else {"tiles": "wide"})
    tiles_look = wide_table if first <= tune.MARGIN else WIDE  # in the choice so far
    assert fake.timed == [TABLE, tiles_look, wide_table]  # wide tiles, a clear gain, get one look
    both = statistics.median([first, second])
    assert lines[-1] == f"gelu, both looks: rational 1, table {both:.3f} -> {chosen}" and len(lines) == 3


def test_a_clear_call_gets_one_look(monkeypatch):
    monkeypatch.setattr(tune, "settings", lambda threads: [tune.BY_SETTING["gelu"]])
    for relative in (0.90, 1.10):
        fake = FakeTimer({TABLE: relative})
        _, lines = tune.tune(None, say=lambda line: None, timer=lambda model, fake=fake: fake)
        assert fake.timed == [TABLE] and len(lines) == 1


def test_a_second_look_that_changes_a_setting_resets_those_that_needed_its_value(monkeypatch):
    """gelu=table is tuned only with 16-float vectors: where 8-float vectors win on the second look, it goes."""
    monkeypatch.setattr(
        tune, "settings", lambda threads: [tune.BY_SETTING["vectors"], tune.BY_SETTING["gelu"]]
    )
    narrow = tune.flags_of({"vectors": "256"})
    fake = FakeTimer({narrow: 0.99, TABLE: 0.9, tune.flags_of({"vectors": "256", "gelu": "table"}): 0.8})
    choice, lines = tune.tune(None, say=lambda line: None, timer=lambda model: fake)
    assert choice == {"vectors": "256"}
    assert lines[-1] == f"vectors, both looks: 512 1, 256 {statistics.median([0.99, 0.8 / 0.9]):.3f} -> 256"


def test_a_second_look_with_nothing_to_time_keeps_the_first(monkeypatch):
    """gelu=table chosen on a close call, then wide tiles: where the rational GELU with wide tiles does not build,
    the second look has nothing to compare and the choice stands (resetting it would choose that build)."""
    monkeypatch.setattr(tune, "settings", lambda threads: [tune.BY_SETTING["gelu"], tune.BY_SETTING["tiles"]])
    fake = FakeTimer({TABLE: 0.97, tune.flags_of({"tiles": "wide", "gelu": "table"}): 0.5}, broken={WIDE})
    choice, lines = tune.tune(None, say=lambda line: None, timer=lambda model: fake)
    assert choice == {"tiles": "wide", "gelu": "table"}
    assert lines[-1] == "gelu, second look: rational: differs from the reference by 1.00e-01 -> table kept"


def test_a_setting_that_needs_another_choice_is_skipped_without_it(monkeypatch):
    """The table GELU is AVX-512 code: where 8-float vectors won, its alternative would time the same build."""
    monkeypatch.setattr(
        tune, "settings", lambda threads: [tune.BY_SETTING["vectors"], tune.BY_SETTING["gelu"]]
    )
    narrow = tune.flags_of({"vectors": "256"})
    table = tune.flags_of({"gelu": "table"})
    choice, lines = tune.tune(None, say=lambda line: None, timer=_timer({narrow: 0.9, table: 0.5}))
    assert choice == {"vectors": "256"} and len(lines) == 1
    choice, lines = tune.tune(None, say=lambda line: None, timer=_timer({narrow: 1.1, table: 0.9}))
    assert choice == {"gelu": "table"} and lines[1] == "gelu: rational 1, table 0.900 -> table"


def test_a_build_that_does_not_match_the_reference_is_never_chosen(monkeypatch):
    monkeypatch.setattr(tune, "settings", lambda threads: [tune.BY_SETTING["tiles"]])
    choice, lines = tune.tune(None, say=lambda line: None, timer=_timer({WIDE: 0.5}, broken={WIDE}))
    assert choice == {} and "wide: differs from the reference" in lines[0]


@pytest.fixture
def records(tmp_path, monkeypatch):
    """An empty kernel cache, tuning on, and a fake tuner that counts its calls."""
    monkeypatch.setenv("LKDN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv(tune.ENV, "")
    monkeypatch.setattr(tune, "load_kernel", lambda: None)
    calls = []

    def tuner(model):
        calls.append(torch.get_num_threads())
        return {"tiles": "wide"}, ["tiles: narrow 1, wide 0.900 -> wide"]

    return tmp_path / tune.RECORD, calls, tuner


def test_a_choice_is_kept_beside_the_kernels_and_used_without_tuning_again(records, model):
    path, calls, tuner = records
    assert tune.chosen_build(model, 1, tuner) == {"tiles": "wide"}
    assert tune.chosen_build(model, 1, tuner) == {"tiles": "wide"}
    assert calls == [1]
    (record,) = json.loads(path.read_text()).values()
    assert record["choice"] == {"tiles": "wide"} and record["threads"] == 1 and record["channels"] == 42
    assert record["cpu"] == tune.cpu_description()
    tune.chosen_build(model, 2, tuner)  # another thread count is tuned for itself, at that thread count
    assert calls == [1, 2] and len(json.loads(path.read_text())) == 2


def test_another_cpu_kernel_source_or_tuning_method_tunes_again(records, model, monkeypatch):
    path, calls, tuner = records
    tune.chosen_build(model, 1, tuner)
    monkeypatch.setattr(tune, "cpu_description", lambda: "Another CPU (x86_64, AVX2)")
    tune.chosen_build(model, 1, tuner)
    assert len(calls) == 2
    monkeypatch.setattr(tune.build, "cpu_key", lambda: "flags : fpu sse2")
    tune.chosen_build(model, 1, tuner)
    assert len(calls) == 3 and len(json.loads(path.read_text())) == 3
    monkeypatch.setattr(tune, "SIZES", ((64, 64), (96, 320)))  # a choice measured another way
    tune.chosen_build(model, 1, tuner)
    tune.chosen_build(model, 1, tuner)
    assert len(calls) == 4 and len(json.loads(path.read_text())) == 4
    strip = dataclasses.replace(tune.BY_SETTING["strip"], untimed=())  # or among other candidates
    monkeypatch.setattr(tune, "SETTINGS", tuple(strip if s.name == "strip" else s for s in tune.SETTINGS))
    tune.chosen_build(model, 1, tuner)
    assert len(calls) == 5


@pytest.mark.parametrize(
    "damage",
    ["{not json", '["a list"]', '{"k": {"choice": {"tiles": "sideways"}}}', ""],
    ids=["corrupt", "not-a-table", "unknown-value", "empty"],
)
def test_an_unreadable_record_is_ignored_and_redone(records, model, damage):
    path, calls, tuner = records
    path.write_text(damage)
    assert tune.chosen_build(model, 1, tuner) == {"tiles": "wide"}
    assert calls == [1]
    assert json.loads(path.read_text())  # rewritten whole


def test_a_cache_that_cannot_be_written_keeps_the_choice_for_the_process_only(
    records, model, monkeypatch, capsys
):
    path, calls, tuner = records

    def full(key, record):
        raise FatalError(f"{path}: no space left on the device; free disk space and re-run")

    monkeypatch.setattr(tune, "_write_record", full)
    assert tune.chosen_build(model, 1, tuner) == {"tiles": "wide"}
    assert "could not keep the choice" in capsys.readouterr().err and not path.exists()


def test_tuning_can_be_skipped_or_forced(records, model, monkeypatch):
    path, calls, tuner = records
    monkeypatch.setenv(tune.ENV, "0")
    assert tune.chosen_build(model, 1, tuner) == {} and calls == [] and not path.exists()
    monkeypatch.setenv(tune.ENV, "")
    tune.chosen_build(model, 1, tuner)
    monkeypatch.setenv(tune.ENV, "force")
    tune.chosen_build(model, 1, tuner)
    assert calls == [1, 1]


def test_the_command_tunes_even_where_tuning_is_off_and_forces_when_asked(records, monkeypatch, capsys):
    path, calls, tuner = records
    monkeypatch.setattr(tune, "tune", tuner)
    monkeypatch.setenv(tune.ENV, "0")  # as in the tests' environment: the command is an explicit request
    assert tune.main(["--threads", "1"]) == 0
    assert tune.main(["--threads", "1"]) == 0
    assert calls == [1]
    assert tune.main(["--threads", "1", "--force"]) == 0
    assert calls == [1, 1]
    assert capsys.readouterr().out.splitlines()[0].startswith("1 thread: tiles=wide (")
    assert os.environ[tune.ENV] == "0"  # the setting of the process around it is left as it was


@needs_kernels
def test_the_command_measures_the_tuners_noise_on_identical_builds(monkeypatch, capsys):
    monkeypatch.setattr(tune, "SIZES", ((8, 8),))
    monkeypatch.setattr(tune, "ROUNDS", 3)
    threads = torch.get_num_threads()
    assert tune.main(["--threads", "1", "--noise", "4"]) == 0
    out = capsys.readouterr().out
    found = re.fullmatch(
        r"1 thread: identical builds, 4 trials of 3 rounds: median ratios (\S+)-(\S+), standard deviation (\S+), "
        r"(\d) at or under the margin \(0.98\)\n",
        out,
    )
    assert found, out
    low, high, spread = map(float, found.groups()[:3])
    assert 0.2 < low <= high < 5 and spread >= 0 and int(found[4]) <= 4
    assert torch.get_num_threads() == threads


def test_the_command_says_in_one_line_why_the_kernels_cannot_run(monkeypatch):
    def unavailable(*args, **kwargs):
        raise tune.KernelUnavailable("no C++ compiler found (install g++ or clang++, or set CXX)")

    monkeypatch.setattr(tune, "chosen_build", unavailable)
    monkeypatch.setattr(tune, "noise", unavailable)
    for argv in (["--threads", "1"], ["--threads", "1", "--noise", "2"]):
        with pytest.raises(UserError, match=r"^the native kernels cannot run here: no C\+\+ compiler found"):
            tune.main(argv)


def test_parse_choice_names_the_settings():
    assert tune.parse_choice("tiles=wide,strip=512") == {"tiles": "wide", "strip": "512"}
    assert tune.parse_choice("default") == {}
    with pytest.raises(ValueError, match="tiles=narrow|wide"):
        tune.parse_choice("tiles=sideways")


@needs_kernels
@pytest.mark.slow
def test_the_real_tuner_checks_times_and_keeps_a_choice(tmp_path, monkeypatch, model, capsys):
    """The whole path on this CPU, at small sizes: builds, checks, times, prints a line per setting, and the
    runner it gives is the chosen build (named after it when it is not the default)."""
    from utils.runtime.backends import make_runner

    monkeypatch.setenv(tune.ENV, "")
    monkeypatch.setattr(tune, "record_path", lambda: tmp_path / tune.RECORD)
    monkeypatch.setattr(tune, "SIZES", ((16, 16), (8, 40)))
    monkeypatch.setattr(tune, "ROUNDS", 1)
    runner = make_runner(model, "cpu", "native")
    err = capsys.readouterr().err
    assert "native kernels: tuning for" in err and "native kernels: chose" in err
    for setting in tune.settings(torch.get_num_threads()):
        assert f"native kernels: {setting.name}: " in err
    choice = next(iter(json.loads(tune.record_path().read_text()).values()))["choice"]
    assert runner.name == ("native" if not choice else f"native:{tune.name_of(choice)}")
    x = torch.rand(1, 3, 9, 13)
    torch.testing.assert_close(runner(x), reference_output(model, x), atol=ATOL, rtol=0)
