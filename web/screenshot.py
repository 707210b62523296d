"""README's picture of the web page: serve it, upload the drawn test chart, photograph the result.

    python -m web.screenshot docs/web_page.png

Needs Playwright and Chromium (as the browser tests do). The chart is drawn (utils.image.chart), so the picture
holds no third-party image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from utils.image.chart import draw_test_chart
from utils.image.imresize import matlab_imresize


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "chart.png"
        small = matlab_imresize(draw_test_chart(512), 1 / 4)  # a 128x128 LR image, as a x4 input is
        cv2.imwrite(str(chart), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        server = subprocess.Popen(
            [sys.executable, "-m", "web.server", "--port", "0"], stdout=subprocess.PIPE, text=True
        )
        try:
            url = server.stdout.readline().split()[1]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 900, "height": 700})
                page.goto(url)
                page.wait_for_function("document.getElementById('weights').options.length > 0")
                page.set_input_files("#files", str(chart))
                page.wait_for_selector(".job[data-state=done] img.after", timeout=120_000)
                page.wait_for_timeout(500)  # the images load
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/web_page.png"))
