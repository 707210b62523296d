"""The web page in a real browser (headless Chromium through Playwright): an upload comes back as the file
inference.py writes, byte for byte; a bad upload shows the CLI's line. Skips without Playwright or Chromium
(.ci/run installs Debian's chromium, as it installs LaTeX)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "web.server", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert "serving" in server.stdout.readline()
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _upload(browser, url: str, path: Path, state: str):
    page = browser.new_page(accept_downloads=True)
    page.goto(url)
    page.wait_for_function("document.getElementById('weights').options.length > 0")
    page.set_input_files("#files", str(path))
    page.wait_for_selector(f".job[data-state={state}]", timeout=180_000)
    return page


def test_an_upload_comes_back_as_the_cli_writes_it(browser, page_url, tmp_path):
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.GaussianBlur(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8), (5, 5), 1))
    page = _upload(browser, page_url, photo, "done")
    assert page.inner_text(".job .status").startswith("done in ")
    assert page.locator(".compare img.before").count() == 1 and page.locator("input[type=range]").count() == 1
    with page.expect_download() as download:
        page.click("a.download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    cli = subprocess.run(
        [sys.executable, "inference.py", "-i", str(photo), "-o", str(tmp_path / "cli")], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert saved.name == "photo_x4.png"
    assert saved.read_bytes() == (tmp_path / "cli" / "photo_x4.png").read_bytes()


def test_a_bad_upload_shows_the_line_the_cli_gives(browser, page_url, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page = _upload(browser, page_url, bad, "failed")
    shown = page.inner_text(".job .status")
    cli = subprocess.run(
        [sys.executable, "inference.py", "-i", str(bad), "-o", str(tmp_path / "cli")], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    said = next(line for line in cli.stderr.splitlines() if "notes.png" in line)
    assert shown.startswith("notes.png: not a readable image")
    assert said.endswith(shown.removeprefix("notes.png"))


def test_a_second_visitor_waits_in_the_queue(page_url, tmp_path):
    rng = np.random.default_rng(1)
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    cv2.imwrite(str(big), rng.integers(0, 256, (320, 320, 3), dtype=np.uint8))
    cv2.imwrite(str(small), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    first, second = _post(page_url, big), _post(page_url, small)
    assert second["state"] == "queued" and second["position"] in (1, 2)
    assert _wait(page_url, first)["state"] == _wait(page_url, second)["state"] == "done"


def _post(url: str, path: Path) -> dict:
    request = urllib.request.Request(
        url + "jobs", data=path.read_bytes(), method="POST",
        headers={"X-File-Name": path.name, "X-Weights": "bundled (team01_LKDN)"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _wait(url: str, job: dict) -> dict:
    deadline = time.monotonic() + 300
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        with urllib.request.urlopen(f"{url}jobs/{job['id']}", timeout=60) as response:
            job = json.load(response)
    return job


def test_every_kind_of_image_gets_what_the_cli_gives(page_url, tmp_path):
    """16-bit, alpha and grayscale come back as the CLI writes them; a multi-page TIFF gets the CLI's line."""
    rng = np.random.default_rng(2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "deep.png"), rng.integers(0, 65536, (12, 14, 3), dtype=np.uint16))
    cv2.imwrite(str(inputs / "alpha.png"), rng.integers(0, 256, (12, 14, 4), dtype=np.uint8))
    cv2.imwrite(str(inputs / "gray.png"), rng.integers(0, 256, (12, 14), dtype=np.uint8))
    pages = [rng.integers(0, 256, (12, 14, 3), dtype=np.uint8) for _ in range(2)]
    assert cv2.imwritemulti(str(inputs / "pages.tiff"), pages)
    cli = subprocess.run(
        [sys.executable, "inference.py", "-i", str(inputs), "-o", str(tmp_path / "cli")], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    for name in ("deep", "alpha", "gray"):
        job = _wait(page_url, _post(page_url, inputs / f"{name}.png"))
        assert job["state"] == "done", job
        with urllib.request.urlopen(f"{page_url}jobs/{job['id']}/download", timeout=60) as response:
            assert response.read() == (tmp_path / "cli" / f"{name}_x4.png").read_bytes(), name
    job = _wait(page_url, _post(page_url, inputs / "pages.tiff"))
    said = next(line for line in cli.stderr.splitlines() if "pages.tiff" in line)
    assert job["state"] == "failed" and said.endswith(job["message"].removeprefix("pages.tiff"))
    assert job["message"].startswith("pages.tiff: an animated or multi-page image (2 frames)")
