"""The web page in a real browser (headless Chromium through Playwright): an upload comes back as the file
inference.py writes, byte for byte; a bad upload shows the CLI's line. Skips without Playwright or Chromium
(.ci/run installs Debian's chromium, as it installs LaTeX)."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
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
    import json
    import time
    import urllib.request

    def post(path: Path) -> dict:
        request = urllib.request.Request(
            page_url + "jobs", data=path.read_bytes(), method="POST",
            headers={"X-File-Name": path.name, "X-Weights": "bundled (team01_LKDN)"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    rng = np.random.default_rng(1)
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    cv2.imwrite(str(big), rng.integers(0, 256, (320, 320, 3), dtype=np.uint8))
    cv2.imwrite(str(small), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    first, second = post(big), post(small)
    assert second["state"] == "queued" and second["position"] in (1, 2)
    deadline = time.monotonic() + 300
    states = {}
    while time.monotonic() < deadline and any(states.get(j["id"]) != "done" for j in (first, second)):
        for job in (first, second):
            with urllib.request.urlopen(f"{page_url}jobs/{job['id']}", timeout=60) as response:
                states[job["id"]] = json.load(response)["state"]
        time.sleep(0.1)
    assert set(states.values()) == {"done"}
