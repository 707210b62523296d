"""Resumable downloads, atomic extraction and the DIV2K script, against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from local_http import serve_files

from data import download_div2k, download_lsdir
from utils.errors import UserError
from utils.files.download import download_file, extract_zip

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


@pytest.fixture
def server():
    with serve_files() as srv:
        yield srv


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(server, dest: Path, name: str = "/f.bin", **kw) -> Path:
    return download_file(server.url + name, dest, progress=False, timeout=TIMEOUT, **kw)


# --- download_file ------------------------------------------------------------------------------------------


def test_full_download(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    out = _get(server, tmp_path / "sub" / "f.bin", sha256=_sha(data), size=len(data))
    assert out == tmp_path / "sub" / "f.bin"
    assert out.read_bytes() == data
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert server.requests == [{"path": "/f.bin", "range": None}]


def test_resume_after_broken_download(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    server.drop_after = 70_000
    with pytest.raises(UserError, match=r"f\.bin: connection closed after 70000 of 300000 bytes; re-run"):
        _get(server, dest, sha256=_sha(data))
    assert not dest.exists()
    assert (tmp_path / "f.bin.part").stat().st_size == 70_000

    _get(server, dest, sha256=_sha(data))
    assert server.requests[-1]["range"] == "bytes=70000-"
    assert dest.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_resume_after_a_stalled_download(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.stall_after = 100_000
    with pytest.raises(
        UserError, match=r"f\.bin: download failed after 100000 bytes .*re-run the same command"
    ):
        download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False, timeout=2.0)
    _get(server, tmp_path / "f.bin", sha256=_sha(data))
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_deletes_the_partial_file(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        _get(server, tmp_path / "f.bin", sha256=wrong)
    message = str(err.value)
    assert server.url + "/f.bin" in message and wrong in message and _sha(data) in message
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_an_error(server, tmp_path):
    server.files["/f.bin"] = _payload(1000)
    with pytest.raises(UserError, match="server reports 1000 bytes, expected 999"):
        _get(server, tmp_path / "f.bin", size=999)
    assert not (tmp_path / "f.bin").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that are not a prefix of the file")
    _get(server, tmp_path / "f.bin", sha256=_sha(data))
    assert server.requests[0]["range"] is not None  # asked to resume, got the whole file (200)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_partial_file_that_is_already_complete(server, tmp_path):
    data = _payload(5000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)  # a run stopped between the last byte and the rename
    _get(server, tmp_path / "f.bin", sha256=_sha(data))
    assert server.requests == [{"path": "/f.bin", "range": "bytes=5000-"}]  # answered 416, nothing re-sent
    assert (tmp_path / "f.bin").read_bytes() == data


def test_http_404_names_the_url(server, tmp_path):
    with pytest.raises(UserError, match=r"/missing\.bin: HTTP 404"):
        _get(server, tmp_path / "f.bin", name="/missing.bin")
    assert not (tmp_path / "f.bin").exists()


def test_unreachable_server_says_rerun(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more: connection refused.
    with pytest.raises(
        UserError,
        match=rf"127\.0\.0\.1:{port}/f\.bin: cannot download .*check the network connection and re-run",
    ):
        download_file(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", progress=False, timeout=TIMEOUT)


# --- extract_zip --------------------------------------------------------------------------------------------


def _zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_extract_zip_whole_and_subdir(tmp_path):
    zip_path = tmp_path / "a.zip"
    zip_path.write_bytes(_zip_bytes({"top/x/1.txt": b"one", "top/x/2.txt": b"two", "top/readme": b"r"}))
    out = extract_zip(zip_path, tmp_path / "whole", expected_members=["top/x/1.txt"])
    assert (out / "top" / "x" / "2.txt").read_bytes() == b"two"
    out = extract_zip(zip_path, tmp_path / "only_x", subdir="top/x")
    assert _siblings(out) == ["1.txt", "2.txt"]
    assert _siblings(tmp_path) == ["a.zip", "only_x", "whole"]  # no temporary folder left behind


def test_extract_corrupt_zip_leaves_no_folder(tmp_path):
    content = b"A" * 4000
    raw = bytearray(_zip_bytes({"d/1.txt": b"fine", "d/2.txt": content}))
    at = raw.index(content)
    raw[at + 2000] ^= 0xFF  # flip one byte of the stored data: its CRC no longer matches
    zip_path = tmp_path / "bad.zip"
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"bad\.zip: corrupt archive \(CRC error in d/2\.txt\)"):
        extract_zip(zip_path, tmp_path / "out")
    assert _siblings(tmp_path) == ["bad.zip"]


def test_extraction_failing_midway_leaves_no_folder(tmp_path, monkeypatch):
    zip_path = tmp_path / "a.zip"
    zip_path.write_bytes(_zip_bytes({f"d/{i}.txt": b"x" for i in range(5)}))

    def extract_two_then_fail(self, path, *args, **kwargs):
        self.extract("d/0.txt", path)
        self.extract("d/1.txt", path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_two_then_fail)
    with pytest.raises(UserError, match="No space left on device\\); free disk space and re-run"):
        extract_zip(zip_path, tmp_path / "out")
    assert _siblings(tmp_path) == ["a.zip"]


def test_extract_truncated_or_incomplete_zip(tmp_path):
    good = _zip_bytes({"d/1.txt": b"x" * 1000}, zipfile.ZIP_DEFLATED)
    (tmp_path / "cut.zip").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"cut\.zip: not a readable zip archive"):
        extract_zip(tmp_path / "cut.zip", tmp_path / "out")
    (tmp_path / "ok.zip").write_bytes(good)
    with pytest.raises(UserError, match=r"ok\.zip: missing d/2\.txt"):
        extract_zip(tmp_path / "ok.zip", tmp_path / "out", expected_members=["d/1.txt", "d/2.txt"])
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        extract_zip(tmp_path / "ok.zip", tmp_path / "out")
    assert _siblings(tmp_path) == ["cut.zip", "ok.zip", "out"]
    assert _siblings(tmp_path / "out") == []


# --- data/download_div2k.py ---------------------------------------------------------------------------------


def _png(h: int, w: int, seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _div2k_zips(lr_size: tuple[int, int] = (2, 3)) -> dict[str, bytes]:
    ids = range(801, 901)
    hr = {f"DIV2K_valid_HR/{i:04d}.png": _png(8, 12, i) for i in ids}
    lr = {f"DIV2K_valid_LR_bicubic/X4/{i:04d}x4.png": _png(*lr_size, i) for i in ids}
    return {"DIV2K_valid_HR.zip": _zip_bytes(hr), "DIV2K_valid_LR_bicubic_X4.zip": _zip_bytes(lr)}


@pytest.fixture(scope="module")
def div2k_zips() -> dict[str, bytes]:
    return _div2k_zips()


def test_div2k_cli_produces_the_kit_layout(server, div2k_zips, tmp_path, capsys):
    server.files.update({f"/div2k/{name}": data for name, data in div2k_zips.items()})
    argv = ["--data_dir", str(tmp_path), "--base_url", server.url + "/div2k/", "--no_progress"]
    assert download_div2k.main(argv) == 0
    hr = sorted(p.name for p in (tmp_path / "DIV2K_valid_HR").iterdir())
    lr = sorted(p.name for p in (tmp_path / "DIV2K_valid_LR").iterdir())
    assert hr == [f"{i:04d}.png" for i in range(801, 901)]
    assert lr == [f"{i:04d}x4.png" for i in range(801, 901)]
    assert cv2.imread(str(tmp_path / "DIV2K_valid_LR" / "0850x4.png")).shape == (2, 3, 3)
    assert _siblings(tmp_path) == ["DIV2K_valid_HR", "DIV2K_valid_LR"]  # zips removed, no temp folders
    assert "100 HR/LR x4 pairs" in capsys.readouterr().out

    n_requests = len(server.requests)
    assert download_div2k.main(argv) == 0  # already complete: nothing downloaded again
    assert len(server.requests) == n_requests
    assert "skipped" in capsys.readouterr().out


def test_div2k_rejects_lr_that_is_not_hr_over_4(server, tmp_path):
    server.files.update({f"/bad/{name}": data for name, data in _div2k_zips(lr_size=(3, 3)).items()})
    with pytest.raises(UserError, match=r"0801x4\.png: 3x3 is not the x4 downscale of .*0801\.png \(12x8\)"):
        download_div2k.download_div2k(tmp_path, base_url=server.url + "/bad", progress=False)


def test_div2k_cli_404_is_one_line_and_exit_code_2(server, tmp_path):
    cmd = [sys.executable, "-m", "data.download_div2k", "--data_dir", str(tmp_path), "--base_url", server.url]
    proc = subprocess.run(cmd + ["--no_progress"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and f"{server.url}/DIV2K_valid_HR.zip: HTTP 404" in lines[0]
    assert not (tmp_path / "DIV2K_valid_HR").exists()


def test_div2k_test_split_fetches_the_public_lr_only(server, tmp_path, capsys):
    lr = {f"DIV2K_test_LR_bicubic/X4/{i:04d}x4.png": _png(2, 3, i) for i in range(901, 1001)}
    server.files["/DIV2K_test_LR_bicubic_X4.zip"] = _zip_bytes(lr)
    argv = ["--data_dir", str(tmp_path), "--splits", "test", "--base_url", server.url, "--no_progress"]
    assert download_div2k.main(argv) == 0
    assert _siblings(tmp_path) == ["DIV2K_test_LR"]
    assert sorted(p.name for p in (tmp_path / "DIV2K_test_LR").iterdir()) == [
        f"{i:04d}x4.png" for i in range(901, 1001)
    ]
    out = capsys.readouterr().out
    assert "test HR images are not public" in out and f"{tmp_path}/DIV2K_test_HR/" in out
    assert [r["path"] for r in server.requests] == ["/DIV2K_test_LR_bicubic_X4.zip"]


def test_div2k_train_split_is_where_the_recipe_reads_it(server, tmp_path, capsys):
    ids = range(1, 801)
    hr = {f"DIV2K_train_HR/{i:04d}.png": _png(8, 4, i) for i in ids}
    lr = {f"DIV2K_train_LR_bicubic/X4/{i:04d}x4.png": _png(2, 1, i) for i in ids}
    server.files["/DIV2K_train_HR.zip"] = _zip_bytes(hr)
    server.files["/DIV2K_train_LR_bicubic_X4.zip"] = _zip_bytes(lr)
    server.drop_after = 5000  # the first download breaks off; the command resumes it
    argv = ["--data_dir", str(tmp_path), "--splits", "train", "--base_url", server.url, "--no_progress"]
    with pytest.raises(UserError, match="re-run the same command to resume"):
        download_div2k.main(argv)
    assert download_div2k.main(argv) == 0
    assert "DIV2K train ready, 800 HR/LR x4 pairs" in capsys.readouterr().out
    assert _siblings(tmp_path) == ["DIV2K_train_HR", "DIV2K_train_LR_bicubic"]
    from data.prepare import official_lr_path

    first = tmp_path / "DIV2K_train_HR" / "0001.png"
    assert official_lr_path(first, 4) == tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png"
    assert server.requests[1]["range"] == "bytes=5000-"


# --- data/download_lsdir.py ---------------------------------------------------------------------------------


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lsdir_shards() -> dict[str, bytes]:
    """Two shards in LSDIR's layout: 0001000/ in the first, 0002000/ and 0003000/ in the second."""
    tiny = _png(4, 4, 0)
    shard = {0: {}, 1: {}}
    for index in range(1, 3001):
        shard[0 if index <= 1000 else 1][f"{download_lsdir.image_path(index)}"] = tiny
    return {f"/lsdir/shard-{k:02d}.tar.gz": _tar_gz(members) for k, members in shard.items()}


def test_lsdir_fetches_only_the_shards_it_needs_and_writes_the_list(server, lsdir_shards, tmp_path):
    server.files.update(lsdir_shards)
    server.drop_after = 3000  # the first shard breaks off once: the command resumes it
    argv = [
        "--data_dir",
        str(tmp_path),
        "--first",
        "1500",
        "--base_url",
        server.url + "/lsdir",
        "--no_progress",
    ]
    with pytest.raises(UserError, match="re-run the same command to resume"):
        download_lsdir.main(argv)
    assert not (tmp_path / "LSDIR").exists()
    assert download_lsdir.main([*argv, "--token", "secret"]) == 0
    assert server.requests[1]["range"] == "bytes=3000-"
    assert _siblings(tmp_path) == ["LSDIR", "LSDIR_first1500.txt"]  # archives removed, no temporary folders
    assert _siblings(tmp_path / "LSDIR") == ["0001000", "0002000"]  # 0003000 is not wanted
    assert len(list((tmp_path / "LSDIR" / "0002000").iterdir())) == 500
    from data.prepare import list_hr_images

    listed = list_hr_images([tmp_path / "LSDIR_first1500.txt"])
    assert len(listed) == 1500 and listed[-1] == tmp_path / "LSDIR" / "0002000" / "0001500.png"
    requests = len(server.requests)
    assert download_lsdir.main(argv) == 0  # complete: nothing fetched again
    assert len(server.requests) == requests


def test_lsdir_first_2000_needs_only_what_the_recipe_reads(server, lsdir_shards, tmp_path):
    server.files.update(lsdir_shards)
    download_lsdir.download_lsdir(tmp_path, 1000, base_url=server.url + "/lsdir", progress=False)
    assert [r["path"] for r in server.requests] == ["/lsdir/shard-00.tar.gz"]


def test_lsdir_corrupt_shard_is_one_error_and_leaves_no_folder(server, lsdir_shards, tmp_path):
    data = bytearray(lsdir_shards["/lsdir/shard-00.tar.gz"])
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    server.files["/lsdir/shard-00.tar.gz"] = bytes(data)
    with pytest.raises(
        UserError, match="shard-00.tar.gz: not a readable tar.gz archive .*delete .* and re-run"
    ):
        download_lsdir.download_lsdir(tmp_path, 10, base_url=server.url + "/lsdir", progress=False)
    assert _siblings(tmp_path) == ["LSDIR_archives"]


def test_lsdir_member_larger_than_an_image_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download_lsdir, "MAX_IMAGE_BYTES", 100)
    server.files["/lsdir/shard-00.tar.gz"] = _tar_gz({"0001000/0000001.png": _png(64, 64, 1)})
    with pytest.raises(UserError, match="0000001.png declares .* bytes, not an LSDIR image"):
        download_lsdir.download_lsdir(tmp_path, 1, base_url=server.url + "/lsdir", progress=False)
    assert not (tmp_path / "LSDIR" / "0001000").exists()


def test_lsdir_gated_download_says_how_to_authenticate(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download_lsdir.download_lsdir(tmp_path, 10, base_url=server.url + "/none", progress=False)


# --- faults: a crawling server, oversized members, a full disk -----------------------------------------------


def test_a_crawling_server_is_given_up_and_the_bytes_kept(server, tmp_path, monkeypatch):
    """One byte every 50 ms never trips the per-read timeout; the minimum rate over a window does."""
    from utils.files import download

    monkeypatch.setattr(download, "RATE_WINDOW", 0.5)
    monkeypatch.setattr(download, "MIN_RATE", 100.0)
    payload = _payload(5000)
    server.files["/f.bin"] = payload
    server.trickle = 0.05
    with pytest.raises(UserError, match=r"bytes/s over the last 0.5 s, below 100; \d+ bytes kept: re-run"):
        _get(server, tmp_path / "f.bin")
    kept = (tmp_path / "f.bin.part").stat().st_size
    assert 0 < kept < 100
    assert _get(server, tmp_path / "f.bin").read_bytes() == payload  # the re-run resumes
    assert server.requests[-1]["range"] == f"bytes={kept}-"


def test_a_transfer_past_the_deadline_is_given_up(server, tmp_path, monkeypatch):
    from utils.files import download

    monkeypatch.setattr(download, "DEADLINE", 0.2)
    server.files["/f.bin"] = _payload(2000)
    server.trickle = 0.02
    with pytest.raises(UserError, match="still downloading after .* h; re-run the same command to resume"):
        _get(server, tmp_path / "f.bin")


def test_a_zip_member_larger_than_any_expected_file_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("d/big.png", bytes(300_000))  # compresses to almost nothing: a bomb in miniature
    data = buffer.getvalue()
    (tmp_path / "bomb.zip").write_bytes(data)
    assert len(data) < 5_000
    with pytest.raises(UserError, match="big.png declares 300000 bytes, more than any file it should hold"):
        extract_zip(tmp_path / "bomb.zip", tmp_path / "out", max_member_bytes=100_000)
    assert _siblings(tmp_path) == ["bomb.zip"]


def test_a_full_disk_during_extraction_is_one_error_and_no_folder(tmp_path, monkeypatch):
    (tmp_path / "ok.zip").write_bytes(_zip_bytes({"d/1.txt": b"one", "d/2.txt": b"two"}))

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", full)
    with pytest.raises(
        UserError, match="cannot extract ok.zip here \\(No space left on device\\); free disk space"
    ):
        extract_zip(tmp_path / "ok.zip", tmp_path / "out")
    assert _siblings(tmp_path) == ["ok.zip"]


# --- caps: what a data set can be, and images that decode ---------------------------------------------------


def test_a_stream_without_a_length_is_capped_and_deleted(server, tmp_path):
    server.endless.add("/endless")
    with pytest.raises(UserError, match=r"sent more than 1048576 bytes, more than this file can be; stopped"):
        download_file(server.url + "/endless", tmp_path / "f.zip", progress=False, max_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_an_announced_size_over_the_cap_is_refused_before_any_byte(server, tmp_path):
    server.files["/big.zip"] = bytes(4096)
    with pytest.raises(
        UserError, match=r"the server reports 4096 bytes, more than this file can be \(1000\)"
    ):
        download_file(server.url + "/big.zip", tmp_path / "big.zip", progress=False, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_declaring_more_than_the_data_set_in_all_is_refused(tmp_path):
    zipped = tmp_path / "bomb.zip"
    zipped.write_bytes(_zip_bytes({f"d/{i}.png": bytes(1 << 20) for i in range(3)}, zipfile.ZIP_DEFLATED))
    with pytest.raises(UserError, match=r"declares 3145728 bytes in all, more than the data set can hold"):
        extract_zip(zipped, tmp_path / "d", max_member_bytes=2 << 20, max_total_bytes=2 << 20)
    assert _siblings(tmp_path) == ["bomb.zip"]


def test_div2k_refuses_a_zip_of_zeros_posing_as_its_images(server, div2k_zips, tmp_path):
    """A 20 MiB member of zeros compresses to 20 KiB: no DIV2K image (2040 pixels a side at most) is that large."""
    members = {f"DIV2K_valid_HR/{i:04d}.png": _png(8, 12, i) for i in range(801, 901)}
    members["DIV2K_valid_HR/0801.png"] = bytes(20 << 20)
    server.files["/DIV2K_valid_HR.zip"] = _zip_bytes(members, zipfile.ZIP_DEFLATED)
    with pytest.raises(
        UserError, match=r"0801.png declares 20971520 bytes, more than any file it should hold"
    ):
        download_div2k.download_div2k(tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "DIV2K_valid_HR").exists()


@pytest.mark.parametrize("damage", ["zeros", "truncated"])
def test_div2k_refuses_an_image_that_does_not_decode(server, div2k_zips, tmp_path, damage):
    members = {f"DIV2K_valid_HR/{i:04d}.png": _png(8, 12, i) for i in range(801, 901)}
    good = members["DIV2K_valid_HR/0850.png"]
    members["DIV2K_valid_HR/0850.png"] = bytes(len(good)) if damage == "zeros" else good[: len(good) // 2]
    server.files["/DIV2K_valid_HR.zip"] = _zip_bytes(members)
    with pytest.raises(
        UserError, match=r"0850.png: not a decodable image .*delete .*DIV2K_valid_HR.zip and re-run"
    ):
        download_div2k.download_div2k(tmp_path, base_url=server.url, progress=False)
    assert _siblings(tmp_path) == ["DIV2K_zips"]  # the zip stays for inspection; no image folder


def test_lsdir_refuses_an_image_that_does_not_decode(server, tmp_path):
    members = {download_lsdir.image_path(i): _png(4, 4, i) for i in range(1, 11)}
    members[download_lsdir.image_path(7)] = bytes(len(members[download_lsdir.image_path(7)]))
    server.files["/lsdir/shard-00.tar.gz"] = _tar_gz(members)
    with pytest.raises(UserError, match=r"0000007.png: not a decodable image"):
        download_lsdir.download_lsdir(tmp_path, 10, base_url=server.url + "/lsdir", progress=False)
    assert not (tmp_path / "LSDIR" / "0001000").exists()


def test_the_caps_hold_every_real_image_with_margin():
    """The largest DIV2K image (2040 x 2040, incompressible) fits its cap; so does LSDIR's at twice 2K."""
    noise = np.random.default_rng(0).integers(0, 256, (2040, 2040, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", noise)
    assert ok and len(encoded) <= download_div2k.VALID_HR.max_member_bytes
    assert download_div2k.VALID_HR.max_member_bytes <= download_lsdir.MAX_IMAGE_BYTES
