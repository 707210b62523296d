"""The fault matrix: every long-running entry point under every fault class a cluster or a careless user causes.

One table: ENTRY_POINTS (training stage 1 and 2, test_demo over a folder, inference over a folder (one and two
images at once), each downloader (DIV2K, LSDIR, the benchmark sets, the authors' weights) against a local server)
x FAULTS (SIGTERM to the process, SIGTERM to its process group, SIGKILL then the same command again, an input
corrupted while the run goes, a full disk, a second process on the same output). Each case asserts the promise, whatever the entry point: the exit code, one line saying what happened
(no traceback), nothing lost beyond the step or image the run was on, no partial file. A new entry point joins
the table by describing itself as an `Entry`.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from local_http import serve_files
from test_download import _div2k_zips, _png, _tar_gz
from test_train import _args, tiny_data  # noqa: F401  (tiny_data is a fixture)

from data import download_benchmarks, download_lsdir
from train.state import latest_resumable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FULL_DISK_BYTES = (
    24 * 1024
)  # RLIMIT_FSIZE of a "full disk": logs fit, a checkpoint, an SR image or a zip does not
DEADLINE = 120.0  # seconds a process may take to reach its busy point or to end


@dataclass
class Entry:
    """How one entry point runs in the matrix. `busy()`: it is mid-way (a fault now interrupts real work);
    `corrupt()`: damage an input it has not read yet and return the name the error must give; `kept()`: after
    any stop, check that what it finished is intact; `complete()`: after the same command ran to its end."""

    cmd: list[str]
    outputs: Path
    busy: Callable[[], bool]
    corrupt: Callable[[], str]
    kept: Callable[[], None]
    complete: Callable[[], None]
    rerun: list[str] | None = None  # the command that finishes the work (default: cmd)
    unthrottle: Callable[[], None] = lambda: None  # a crawling server sends the rest at full speed
    full_disk_bytes: int = FULL_DISK_BYTES  # the largest file a "full disk" lets it write
    second_writer: str = "refused"  # or "waits" / "shares": what a second process on the same output gets
    partial_ok: tuple[str, ...] = ()  # what a stop may leave for the next run to resume (a download's .part)


# --- the checks every case makes --------------------------------------------------------------------------


def _start(entry: Entry, *, full_disk: bool = False, cmd: list[str] | None = None) -> subprocess.Popen:
    def limits() -> None:
        if full_disk:  # writes past this size fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
            resource.setrlimit(resource.RLIMIT_FSIZE, (entry.full_disk_bytes, entry.full_disk_bytes))

    return subprocess.Popen(
        [sys.executable, *(cmd or entry.cmd)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=limits,
    )  # fmt: skip


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=DEADLINE)
    return process.returncode, err


def _wait_busy(entry: Entry, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE
    while not entry.busy():
        if process.poll() is not None:
            pytest.fail(f"ended (exit {process.returncode}) before it was busy:\n{process.stderr.read()}")
        assert time.monotonic() < deadline, "never got busy"
        time.sleep(0.02)


def _messages(stderr: str) -> list[str]:
    """stderr's lines for the user, without progress bars (tqdm redraws with carriage returns)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.splitlines()]
    return [line for line in lines if line and not re.search(r"\d+%\||\bit/s\]|\bimg/s\]|\bimage/s\]", line)]


def _assert_one_line(stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr
    said = [
        line for line in _messages(stderr) if line.startswith(("error:", "stopped", "interrupted", "failed:"))
    ]
    assert len(said) == 1, stderr
    for fragment in fragments:
        assert fragment in said[0], said[0]
    return said[0]


def _assert_no_partial_file(entry: Entry) -> None:
    """No temporary file or extraction folder of an atomic write is left, and every image there decodes."""
    for path in entry.outputs.rglob("*") if entry.outputs.exists() else ():
        name = path.name
        if any(name.endswith(ok) for ok in entry.partial_ok):
            continue
        assert not name.endswith(".tmp") and ".extracting." not in name, f"partial file left: {path}"
        if path.suffix == ".png" and path.is_file():
            assert cv2.imread(str(path)) is not None, f"an image that does not decode: {path}"


# --- the faults ---------------------------------------------------------------------------------------------


def _signal(entry: Entry, to_group: bool) -> None:
    process = _start(entry)
    _wait_busy(entry, process)
    (os.killpg if to_group else os.kill)(process.pid, signal.SIGTERM)
    code, err = _finish(process)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    entry.kept()
    _assert_no_partial_file(entry)


def fault_sigterm(entry: Entry) -> None:
    _signal(entry, to_group=False)


def fault_sigterm_group(entry: Entry) -> None:
    _signal(entry, to_group=True)


def fault_sigkill_then_rerun(entry: Entry) -> None:
    process = _start(entry)
    _wait_busy(entry, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=DEADLINE)
    entry.kept()
    entry.unthrottle()
    code, err = _finish(_start(entry, cmd=entry.rerun))
    assert code == 0 and "Traceback" not in err, err
    entry.complete()
    _assert_no_partial_file(entry)


def fault_corrupt_input(entry: Entry) -> None:
    process = _start(entry)
    _wait_busy(entry, process)
    name = entry.corrupt()
    entry.unthrottle()
    code, err = _finish(process)
    assert code == 2, err
    _assert_one_line(err, name)
    entry.kept()
    _assert_no_partial_file(entry)


def fault_disk_full(entry: Entry) -> None:
    entry.unthrottle()
    code, err = _finish(_start(entry, full_disk=True))
    assert code == 2, err
    _assert_one_line(err, "free disk space")
    entry.kept()
    _assert_no_partial_file(entry)


def fault_second_writer(entry: Entry) -> None:
    first = _start(entry)
    _wait_busy(entry, first)
    second = _start(entry)
    if entry.second_writer == "refused":
        code, err = _finish(second)
        assert code == 2, err
        _assert_one_line(err, f"PID {first.pid}", "is using this folder")
        assert first.poll() is None, "the first process ended: make its run longer"
        os.kill(first.pid, signal.SIGTERM)
        code, err = _finish(first)
        assert code == 128 + signal.SIGTERM, err
        entry.kept()
    else:  # "shares" (each writes whole files, atomically) or "waits" (for the first one's lock)
        entry.unthrottle()
        for process in (first, second):
            code, err = _finish(process)
            assert code == 0 and "Traceback" not in err, err
        entry.complete()
    _assert_no_partial_file(entry)


FAULTS: dict[str, Callable[[Entry], None]] = {
    "sigterm": fault_sigterm,
    "sigterm_group": fault_sigterm_group,
    "sigkill_rerun": fault_sigkill_then_rerun,
    "corrupt_input": fault_corrupt_input,
    "disk_full": fault_disk_full,
    "second_writer": fault_second_writer,
}


# --- the entry points ---------------------------------------------------------------------------------------


def _damage(path: Path) -> str:
    """Zero the body of an image file, keeping its size (a header check passes; decoding does not)."""
    path.write_bytes(bytes(path.stat().st_size))
    return path.name


def _log(run: Path) -> str:
    log = run / "train.log"
    return log.read_text() if log.exists() else ""


TRAIN_FLAGS = ["--num_workers", "2", "--in_memory", "false", "--log_every", "2"]


def _training(data: dict[str, Path], run: Path, *stage: str) -> Entry:
    """A run that saves and validates every 20 steps; stops must save the step they were on."""
    cmd = [str(ROOT / "train" / "train_lkdn.py"), *stage, *_args(data, run, "--total_iters", "100000",
           "--save_every", "20", "--val_every", "20", *TRAIN_FLAGS)]  # fmt: skip
    stopped: dict[str, bool] = {}

    def busy() -> bool:
        return latest_resumable(run) is not None

    def corrupt() -> str:
        stopped["validation"] = True
        return _damage(data["val"] / "HR" / "a.png")

    def kept() -> None:
        log, last = _log(run), latest_resumable(run)
        if stopped.get("validation"):  # the failing validation ran on a state saved at its iteration
            failed_at = max(int(m[1]) for m in re.finditer(r"saved iteration (\d+)", log))
            assert last == failed_at and last % 20 == 0, log
            return
        stop = re.search(r"stopping at iteration (\d+): (\w+) received; state saved in ", log)
        if stop:  # a signal: the step it arrived in is saved
            assert last == int(stop[1]) and stop[2] == "SIGTERM", log
        elif "cannot save iteration" not in log:  # SIGKILL: at most the steps since the last save are lost
            assert last is not None and last % 20 == 0, log

    def complete() -> None:
        resumed = re.search(r"resumed from .* at iteration (\d+)", _log(run))
        assert resumed and int(resumed[1]) % 20 == 0 and latest_resumable(run) == int(resumed[1]) + 1

    rerun = [*cmd, "--max_minutes", "0.0001"]  # a free field: resume, take one step, save, stop (exit 0)
    return Entry(
        cmd=cmd, outputs=run, busy=busy, corrupt=corrupt, kept=kept, complete=complete, rerun=rerun,
        full_disk_bytes=64 * 1024,  # a batch passes through shared memory (48 KiB); a checkpoint (84 KiB) does not
    )  # fmt: skip


def _image_folder(folder: Path, count: int, size: int, first: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first)
    paths = []
    for index in range(first, first + count):
        path = folder / f"{index:04d}.png"
        image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 2)
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


ATOMIC_TEMPORARY = re.compile(r"\..+\.\d+-[0-9a-f]+\.tmp")  # write_bytes_atomic's temporary file of a path
IMAGES = 24  # per folder run: enough that a fault lands mid-way, few enough to finish fast


def _test_demo(tmp: Path) -> Entry:
    data, save = tmp / "div2k", tmp / "results"
    lrs = _image_folder(data / "DIV2K_valid_LR", IMAGES, 48, first=801)
    hr_dir = data / "DIV2K_valid_HR"
    hr_dir.mkdir()
    for lr in lrs:
        hr = cv2.resize(cv2.imread(str(lr)), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(hr_dir / lr.name), hr)
        lr.rename(lr.with_name(f"{lr.stem}x4.png"))
    cmd = ["test_demo.py", "--data_dir", str(data), "--save_dir", str(save), "--allow_partial"]
    sr_dir = save / "team01_LKDN" / "valid"

    def rows() -> dict:
        import json

        path = save / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def kept() -> None:
        if not rows():  # a stopped run records no row: a mean over part of the set is not the set's figure
            return
        assert rows()["team01_LKDN"]["valid_num_images"] == IMAGES

    def complete() -> None:
        assert rows()["team01_LKDN"]["valid_num_images"] == IMAGES
        assert len(list(sr_dir.glob("*.png"))) == IMAGES

    return Entry(
        cmd=cmd, outputs=save, busy=lambda: len(list(sr_dir.glob("*.png"))) >= 2,
        corrupt=lambda: _damage(data / "DIV2K_valid_LR" / f"{800 + IMAGES:04d}x4.png"), kept=kept,
        complete=complete, second_writer="shares",
    )  # fmt: skip


def _inference(tmp: Path, *flags: str) -> Entry:
    inputs, out = tmp / "photos", tmp / "upscaled"
    _image_folder(inputs, IMAGES, 64)
    cmd = ["inference.py", "-i", str(inputs), "-o", str(out), *flags]

    def kept() -> None:
        for path in out.glob("*"):  # each output written is whole (checked by decoding) and of its input
            if ATOMIC_TEMPORARY.fullmatch(path.name):
                continue  # a SIGKILL mid-write leaves one: the next run removes it (_assert_no_partial_file)
            assert re.fullmatch(r"\d{4}_x4\.png", path.name), path

    def complete() -> None:
        assert len(list(out.glob("*_x4.png"))) == IMAGES

    return Entry(
        cmd=cmd, outputs=out, busy=lambda: len(list(out.glob("*_x4.png"))) >= 2,
        corrupt=lambda: _damage(inputs / f"{IMAGES - 1:04d}.png"), kept=kept, complete=complete,
        second_writer="shares",
    )  # fmt: skip


def _served(server, tmp: Path, module: str, files: dict[str, bytes], *flags: str) -> tuple[list[str], Path]:
    server.files.update(files)
    server.crawl = CRAWL  # faults land mid-transfer
    dest = tmp / "downloads"
    return ["-m", module, "--base_url", server.url, "--no_progress", *flags], dest


CRAWL = 0.05  # seconds per 256 bytes while a download is to be interrupted


def _partial(dest: Path) -> bool:
    return any(path.stat().st_size >= 1024 for path in dest.rglob("*.part"))


def _damage_partial(dest: Path) -> str:
    """Zero bytes of what a download has written so far (a disk's corruption, a proxy's): the archive's own
    checks, or its SHA-256, must refuse it when the transfer ends."""
    (part,) = dest.rglob("*.part")
    with open(part, "r+b") as f:
        f.seek(300)
        f.write(bytes(512))
    return part.name.removesuffix(".part")


def _download_entry(
    server, cmd: list[str], dest: Path, kept: Callable[[], None], complete: Callable[[], None], **extra
) -> Entry:
    """A downloader in the matrix: busy once it has written part of a file, which is what a corrupt input
    damages; the `.part` file a stop leaves is for the next run to resume."""
    return Entry(
        cmd=cmd, outputs=dest, busy=lambda: _partial(dest), corrupt=lambda: _damage_partial(dest), kept=kept,
        complete=complete, partial_ok=(".part",), unthrottle=_unthrottle(server), **extra,
    )  # fmt: skip


def _unthrottle(server) -> Callable[[], None]:
    def unthrottle() -> None:
        server.crawl = 0.0

    return unthrottle


def _div2k(server, tmp: Path) -> Entry:
    zips = {f"/{name}": data for name, data in _div2k_zips().items()}
    cmd, dest = _served(server, tmp, "data.download_div2k", zips)
    cmd += ["--data_dir", str(dest)]

    def kept() -> None:
        for folder in ("DIV2K_valid_HR", "DIV2K_valid_LR"):  # a folder is there whole, or not at all
            assert not (dest / folder).exists() or len(list((dest / folder).glob("*.png"))) == 100

    def complete() -> None:
        assert len(list((dest / "DIV2K_valid_LR").glob("*.png"))) == 100

    return _download_entry(server, cmd, dest, kept, complete)


def _lsdir(server, tmp: Path) -> Entry:
    shard = _tar_gz({download_lsdir.image_path(i): _png(4, 4, i) for i in range(1, 1001)})
    cmd, dest = _served(server, tmp, "data.download_lsdir", {"/shard-00.tar.gz": shard}, "--first", "1000")
    cmd += ["--data_dir", str(dest)]

    def kept() -> None:
        folder = dest / "LSDIR" / "0001000"
        assert not folder.exists() or len(list(folder.glob("*.png"))) == 1000

    def complete() -> None:
        assert len((dest / "LSDIR_first1000.txt").read_text().splitlines()) == 1000

    return _download_entry(server, cmd, dest, kept, complete)


def _benchmarks(server, tmp: Path) -> Entry:
    source = download_benchmarks.SOURCES["Set5"]
    archive = _tar_gz({f"Set5_HR/{i}.png": _png(48, 48, i) for i in range(source.count)})
    sha256 = hashlib.sha256(archive).hexdigest()
    cmd, dest = _served(server, tmp, "data.download_benchmarks", {source.url(""): archive}, "--sets", "Set5")
    cmd += ["--benchmark_dir", str(dest), "--sha256", f"Set5={sha256}"]

    def kept() -> None:  # the set is there whole, or not at all
        assert not (dest / "Set5").exists() or download_benchmarks.is_complete(dest / "Set5", source.count)

    def complete() -> None:
        assert download_benchmarks.is_complete(dest / "Set5", source.count)

    return _download_entry(server, cmd, dest, kept, complete)


def _pretrained(server, tmp: Path, reference_dir: Path) -> Entry:
    name = "LKDN-S_x4.pth"
    data = (reference_dir / name).read_bytes()
    dest = tmp / "weights"
    server.files[f"/{name}"] = data
    server.crawl = CRAWL
    cmd = ["-m", "utils.files.pretrained", "LKDN-S_x4", "--dest", str(dest), "--base_url", server.url,
           "--no_progress"]  # fmt: skip

    def kept() -> None:
        assert not (dest / name).exists() or (dest / name).read_bytes() == data

    def complete() -> None:
        assert (dest / name).read_bytes() == data

    return _download_entry(server, cmd, dest, kept, complete, second_writer="waits")


# --- the table ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    """A finished short stage 1: stage 2's init_from (and the training images' cache, built once)."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train_lkdn.py"), *_args(tiny_data, run, "--total_iters", "2", *TRAIN_FLAGS)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run / "models" / "last.pth"


@pytest.fixture
def server() -> Iterator:
    with serve_files() as srv:
        yield srv


@pytest.fixture
def own_data(tiny_data, tmp_path) -> dict[str, Path]:  # noqa: F811
    """The tiny data with a validation folder of this test's own (a fault may damage it)."""
    val = tmp_path / "val"
    for sub in ("HR", "LR_bicubic_x4"):
        (val / sub).mkdir(parents=True)
        for path in (tiny_data["val"] / sub).iterdir():
            (val / sub / path.name).write_bytes(path.read_bytes())
    return {**tiny_data, "val": val}


ENTRY_POINTS: dict[str, Callable[..., Entry]] = {
    "train_scratch": lambda r: _training(r.own_data, r.tmp / "run"),
    "train_finetune": lambda r: _training(
        r.own_data, r.tmp / "run", "--stage", "finetune", "--init_from", str(r.stage1)
    ),  # fmt: skip
    "test_demo": lambda r: _test_demo(r.tmp),
    "inference": lambda r: _inference(r.tmp),
    "inference_jobs": lambda r: _inference(r.tmp, "--jobs", "2"),  # two images at once
    "download_div2k": lambda r: _div2k(r.server, r.tmp),
    "download_lsdir": lambda r: _lsdir(r.server, r.tmp),
    "download_benchmarks": lambda r: _benchmarks(r.server, r.tmp),
    "download_pretrained": lambda r: _pretrained(r.server, r.tmp, r.reference_dir),
}


@dataclass
class Resources:
    tmp: Path
    request: pytest.FixtureRequest

    def __getattr__(self, name: str):  # fixtures on demand: only what an entry point uses is built
        return self.request.getfixturevalue(name)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_fault_matrix(entry_point: str, fault: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    entry = ENTRY_POINTS[entry_point](Resources(tmp_path, request))
    FAULTS[fault](entry)
