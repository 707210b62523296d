"""The authors' checkpoints: checksum table, skip-if-present, verified download from a local server."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from local_http import serve_files

from utils.errors import UserError
from utils.files import pretrained

ROOT = Path(__file__).resolve().parents[1]
NAME = "LKDN-S_x4"


def _fake_pth() -> bytes:
    buf = io.BytesIO()
    torch.save({"params": {"w": torch.arange(6.0).reshape(2, 3)}}, buf)
    return buf.getvalue()


@pytest.fixture
def fake(monkeypatch):
    """A server with a fake LKDN-S_x4.pth under /w/, and the checksum table pointing at it."""
    data = _fake_pth()
    monkeypatch.setitem(pretrained.AUTHORS_WEIGHTS_SHA256, f"{NAME}.pth", hashlib.sha256(data).hexdigest())
    monkeypatch.delenv(pretrained.BASE_URL_ENV, raising=False)
    with serve_files({f"/w/{NAME}.pth": data}) as server:
        yield server, data


def test_fetch_downloads_verifies_and_then_skips(fake, tmp_path):
    server, data = fake
    path = pretrained.fetch_authors_weights(
        NAME, tmp_path / "zoo", base_url=server.url + "/w", progress=False
    )
    assert path == tmp_path / "zoo" / f"{NAME}.pth"
    assert path.read_bytes() == data
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(state["params"]["w"], torch.arange(6.0).reshape(2, 3), rtol=0, atol=0)

    again = pretrained.fetch_authors_weights(f"{NAME}.pth", tmp_path / "zoo", base_url=server.url + "/w")
    assert again == path
    assert len(server.requests) == 1  # present with the right hash: no second download


def test_base_url_from_environment(fake, tmp_path, monkeypatch):
    server, data = fake
    monkeypatch.setenv(pretrained.BASE_URL_ENV, server.url + "/w/")
    path = pretrained.fetch_authors_weights(NAME, tmp_path, progress=False)
    assert path.read_bytes() == data
    assert server.requests[0]["path"] == f"/w/{NAME}.pth"


def test_served_file_with_another_hash_is_rejected(fake, tmp_path):
    server, _ = fake
    server.files[f"/w/{NAME}.pth"] = b"not the authors' weights"
    with pytest.raises(UserError, match=f"{NAME}.pth: SHA-256 mismatch"):
        pretrained.fetch_authors_weights(NAME, tmp_path, base_url=server.url + "/w", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_another_hash_is_not_replaced(fake, tmp_path):
    server, _ = fake
    (tmp_path / f"{NAME}.pth").write_bytes(b"something else")
    with pytest.raises(
        UserError,
        match=r"SHA-256 is [0-9a-f]{64}, expected [0-9a-f]{64} \(not the authors' file\); delete it",
    ):
        pretrained.fetch_authors_weights(NAME, tmp_path, base_url=server.url + "/w", progress=False)
    assert (tmp_path / f"{NAME}.pth").read_bytes() == b"something else"
    assert server.requests == []


def test_unknown_name():
    with pytest.raises(
        UserError, match="LKDN_x5: not one of the authors' checkpoints; choose one of LKDN-S_x4"
    ):
        pretrained.fetch_authors_weights("LKDN_x5")


def test_cli_prints_path_and_licence(fake, tmp_path, capsys):
    server, _ = fake
    argv = [NAME, "--dest", str(tmp_path), "--base_url", server.url + "/w", "--no_progress"]
    assert pretrained.main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / f"{NAME}.pth") in out and "MIT licence" in out


def test_cli_404_is_one_line_and_exit_code_2(tmp_path):
    with serve_files() as server:
        cmd = [sys.executable, "-m", "utils.files.pretrained", "LKDN_x2", "--dest", str(tmp_path)]
        cmd += ["--base_url", server.url, "--no_progress"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {server.url}/LKDN_x2.pth: HTTP 404 Not Found; check the URL (or the base URL)"
    )


def test_table_matches_the_reference_checkpoints(reference_dir):
    listed = dict(
        (name, digest)
        for digest, name in re.findall(
            r"^([0-9a-f]{64})  (\S+\.pth)$", (reference_dir / "README.md").read_text(), re.M
        )
    )
    assert listed == pretrained.AUTHORS_WEIGHTS_SHA256
    for name, digest in pretrained.AUTHORS_WEIGHTS_SHA256.items():
        assert hashlib.sha256((reference_dir / name).read_bytes()).hexdigest() == digest, name


def test_reference_checkpoint_is_used_in_place(reference_dir):
    # The shared folder holds the real files: fetch must accept them without any network access.
    path = pretrained.fetch_authors_weights(
        "LKDN-S_del_rep_x4", reference_dir, base_url="http://127.0.0.1:9/none"
    )
    assert path == reference_dir / "LKDN-S_del_rep_x4.pth"
