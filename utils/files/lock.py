"""Exclusive locks on files, so that two processes never read-modify-write the same file or run folder at once.

`fcntl.flock` on a lock file beside what it guards: the kernel releases the lock when its holder exits, however
it exits (a SIGKILL included), so a lock left by a dead process never blocks anyone; the lock file itself stays
(deleting it would race with a process that has just opened it). The holder writes its PID into the lock file,
so that a refused process can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


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
    """Hold the exclusive lock of lock file `path` (created if missing) for the `with` block. `wait`: seconds
    to wait for another holder (None: as long as it takes; 0: not at all); then LockHeld."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(path, _holder(fd)) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
