"""Never a half-written output: every file this repository writes goes through `write_bytes_atomic`."""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import re
import secrets
import time
from pathlib import Path

import torch

from utils.errors import FatalError, UserError

# no room for the file (a full disk, a quota, a file-size limit): nothing later can be written either
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename over `path`.

    A crash leaves the old file or the new one, never a mix (the data is fsynced before the rename); temporary
    files that a killed writer of the same path left are removed. The file gets the permissions of any new file
    (0o666 less the umask), not mkstemp's private 0o600. An OSError becomes a UserError naming the path (a FatalError when
    the disk is full: nothing after it can be written either).
    """
    path = Path(path)
    tmp = (
        path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
    )  # the writer's PID: see below
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise FatalError(
                f"{path}: cannot write it ({err.strerror or err}); free disk space and re-run"
            ) from None
        if isinstance(err, OSError):
            raise UserError(
                f"{path}: cannot write it ({err.strerror or err}); choose a writable folder"
            ) from None
        raise
    return path


STALE_SECONDS = 600  # a temporary file this old belongs to a writer that was killed, not to a running one
_WRITER = re.compile(r"\.(\d+)-[0-9a-f]+\.tmp$")


def _abandoned(tmp: Path, cutoff: float) -> bool:
    """A temporary file whose writer is gone: its PID (in the name) runs no process, or it is older than
    STALE_SECONDS (a name without a PID, or a PID reused since)."""
    found = _WRITER.search(tmp.name)
    if found and int(found[1]) != os.getpid():
        try:
            os.kill(int(found[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
    return tmp.stat().st_mtime < cutoff


def _remove_abandoned(path: Path) -> None:
    """Temporary files of `path` that a killed writer (SIGKILL, power loss) left behind."""
    cutoff = time.time() - STALE_SECONDS
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # another writer may remove it first
            if _abandoned(tmp, cutoff):
                tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def save_atomic(obj: object, path: str | Path) -> Path:
    """torch.save, atomically (checkpoints are a few MB: serialised in memory, then written)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes_atomic(path, buffer.getvalue())
