"""Exclusive locks on files, so that two processes never read-modify-write the same file or run folder at once.

`fcntl.flock` on a lock file beside what it guards: the kernel releases the lock when its holder exits, however
it exits (a SIGKILL included), so a lock left by a dead process never blocks anyone. The holder removes the lock
file while it still holds it, and a process that locks a file checks that it is still the one at the path (else
it opens the path again), so no lock file is left behind and no two processes ever hold the same path. The
holder writes its PID into the lock file, so that a refused process can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from utils.errors import UserError

LOCK_NAME = ".lock"  # a folder's lock file, held by the one process that writes into it


class LockHeld(Exception):
    """The lock is held by another process (`pid`, when it could be read)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path}: held by process {pid if pid is not None else '(unknown)'}")
        self.path, self.pid = path, pid


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive(path: str | Path, wait: float | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of lock file `path` (created if missing, removed when released) for the `with`
    block. `wait`: seconds to wait for another holder (None: as long as it takes; 0: not at all); then LockHeld."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd, path, deadline)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder before us removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: whoever opens the path later opens a new file
        os.close(fd)  # releases the lock


def _lock(fd: int, path: Path, deadline: float | None) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockHeld(path, _holder(fd)) from None
            time.sleep(0.05)


def _same_file(fd: int, path: Path) -> bool:
    """Is the locked file still the one at `path` (not removed, or replaced, by its previous holder)?"""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def one_writer(folder: Path, who: str, flag: str, wait: float | None = 0) -> Iterator[None]:
    """Hold `folder`'s `.lock` for the block (waiting up to `wait` seconds for another holder, None: as long as
    it takes), or refuse with one line naming the holder: "{folder}: another {who} (PID n) is using this folder;
    ..., or pass another {flag}". A folder that cannot hold the lock file is a UserError too."""
    folder = Path(folder)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(folder / LOCK_NAME, wait=wait))
        except LockHeld as err:
            holder = f"PID {err.pid}" if err.pid is not None else "PID unknown"
            raise UserError(
                f"{folder}: another {who} ({holder}) is using this folder; wait for it to end, or pass another {flag}"
            ) from None
        except OSError as err:
            raise UserError(
                f"{folder}: the folder is not writable ({err.strerror}); pass a writable {flag}"
            ) from None
        yield
