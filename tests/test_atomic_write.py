"""Atomic writes: a failure leaves nothing behind, a success leaves an ordinary file."""

from __future__ import annotations

import os
import stat

import pytest

from utils.errors import UserError
from utils.files.atomic_write import save_atomic, write_bytes_atomic, write_text_atomic


def test_save_atomic_leaves_no_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"x": Unpicklable()}, tmp_path / "ckpt.pth")
    assert list(tmp_path.iterdir()) == []


def test_written_files_have_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "results.txt", "hello")
    finally:
        os.umask(umask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"]


def test_unwritable_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"out\.bin: cannot write it"):
        write_bytes_atomic(blocker / "out.bin", b"x")
