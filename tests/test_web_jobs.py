"""The web page's job list without a browser: a long-running server keeps the files of recent jobs only."""

from __future__ import annotations

import argparse
import shutil

from web import server


def test_a_long_running_server_keeps_only_recent_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "KEPT_JOBS", 2)
    upscaling = server.Upscaling(argparse.Namespace(), {"bundled": tmp_path / "unused.pth"})
    jobs = []
    for index in range(3):
        folder = tmp_path / f"job{index}"
        folder.mkdir()
        job = server.Job(f"{index:016x}", f"{index}.png", "bundled", folder, state="done")
        upscaling.jobs[job.id] = job
        jobs.append(job)
    upscaling._forget_old()
    assert list(upscaling.jobs) == [jobs[1].id, jobs[2].id]
    assert not jobs[0].folder.exists() and jobs[1].folder.exists()
    shutil.rmtree(upscaling.root)


def test_an_upload_name_cannot_leave_its_folder():
    assert server._file_name("../../etc/passwd") == "passwd"
    assert server._file_name("..") == "upload" and server._file_name("a b?.png") == "a_b_.png"
