"""A local web page for upscaling: drop images, pick the weights, compare before and after, download.

    python -m web.server [--port 8765] [--backend auto] [--max-memory 2G]    (or: lkdn-serve)

Serves http://127.0.0.1:PORT/ (this machine only). Each uploaded image becomes a job; one worker thread runs the
jobs in arrival order, so a second visitor waits in the queue (the page shows the position) instead of doubling
the memory. A job runs exactly what inference.py runs (its runner, backend choice, tiling and memory budget, and
its image reading and writing), so the file the page offers for download is the one `python inference.py`
writes; what the CLI refuses (not an image, an animated file, an output too large for --max-memory, ...) is
refused here with the same line. While a job runs the page shows the tiles done.

Why the standard library (http.server, threading) rather than gradio: the page needs four routes and one queue;
gradio would add a web framework and dozens of packages to an environment whose torch is pinned, and its
own preprocessing of images, where this page must pass the uploaded bytes to the CLI's reader untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

import inference
from utils.errors import UserError, run_cli
from utils.files.image_io import DecodedImage, read_image, write_image
from utils.files.pretrained import DEFAULT_DEST as AUTHORS_DEST

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_BYTES = 256 << 20  # larger bodies are refused before they are read
KEPT_JOBS = 64  # finished jobs whose files are kept for the page; older ones are deleted
_SAFE_NAME = re.compile(r"[^\w.\-]+")


@dataclasses.dataclass
class Job:
    id: str
    name: str  # the uploaded file's name, as the user knows it
    weights: str
    folder: Path  # holds the upload (under its own name) and the output
    state: str = "queued"  # queued, running, done, failed
    message: str = ""
    tiles: tuple[int, int] = (0, 0)  # done, total
    ms: float = 0.0
    output: Path | None = None
    preview: Path | None = None  # 8-bit PNG of the output for the browser (16-bit, TIFF... do not display)
    input_preview: Path | None = None


class Upscaling:
    """The queue and its one worker: jobs run one at a time, with one cached upscaler per weights file."""

    def __init__(self, args: argparse.Namespace, weights: dict[str, Path]) -> None:
        self.args, self.weights = args, weights
        self.jobs: dict[str, Job] = {}
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.order: list[str] = []  # ids not yet started, in arrival order (for the position shown)
        self.lock = threading.Lock()
        self.upscalers: dict[str, inference.Upscaler] = {}
        self.root = Path(tempfile.mkdtemp(prefix="lkdn-serve-"))
        threading.Thread(target=self._work, daemon=True, name="upscaling").start()

    def submit(self, name: str, weights: str, data: bytes) -> Job:
        if weights not in self.weights:
            raise UserError(
                f"{weights}: not one of the weights this server offers ({', '.join(self.weights)})"
            )
        job = Job(secrets.token_hex(8), name, weights, self.root / secrets.token_hex(8))
        job.folder.mkdir()
        (job.folder / _file_name(name)).write_bytes(data)
        with self.lock:
            self.jobs[job.id] = job
            self.order.append(job.id)
        self.waiting.put(job)
        return job

    def status(self, job: Job) -> dict:
        with self.lock:
            position = self.order.index(job.id) + 1 if job.id in self.order else 0
        return {"id": job.id, "name": job.name, "state": job.state, "message": job.message, "position": position,
                "tiles": job.tiles, "ms": round(job.ms, 1),
                "download": job.output.name if job.output else None}  # fmt: skip

    def _upscaler(self, weights: str) -> inference.Upscaler:
        """The upscaler of `weights`, loaded on first use (by the worker; at start for the default weights)."""
        if weights not in self.upscalers:
            args = argparse.Namespace(**{**vars(self.args), "model_path": str(self.weights[weights])})
            self.upscalers[weights] = inference.load_upscaler(args)[0]
        return self.upscalers[weights]

    def _work(self) -> None:
        while True:
            job = self.waiting.get()
            with self.lock:
                self.order.remove(job.id)
            job.state = "running"
            try:
                self._run(job)
                job.state = "done"
            except UserError as err:
                job.state, job.message = "failed", str(err).replace(f"{job.folder}/", "")
            except Exception as err:  # noqa: BLE001 (the page reports it; the server keeps serving)
                job.state, job.message = "failed", f"{job.name}: {type(err).__name__}: {err}"
            self._forget_old()

    def _forget_old(self) -> None:
        """A long-running server keeps the files of the last KEPT_JOBS finished jobs only."""
        with self.lock:
            finished = [job for job in self.jobs.values() if job.state in ("done", "failed")]
            for job in finished[:-KEPT_JOBS]:
                del self.jobs[job.id]
                shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        upscaler = self._upscaler(job.weights)
        src = job.folder / _file_name(job.name)
        image = read_image(src)
        height, width = image.rgb.shape[:2]
        tile = upscaler.tile_for(height, width, image.rgb.dtype.itemsize)
        job.tiles = (0, math.ceil(height / tile) * math.ceil(width / tile))
        runner = upscaler.runner

        def counted(window):
            out = runner(window)
            job.tiles = (job.tiles[0] + 1, job.tiles[1])
            return out

        started = time.perf_counter()
        pixels, _ = inference.upscale_image(image, dataclasses.replace(upscaler, runner=counted))
        job.ms = (time.perf_counter() - started) * 1000
        job.output = inference.output_path(src, job.folder / "out", upscaler.scale)
        write_image(job.output, pixels)
        job.preview = _preview(pixels, job.folder / "preview.png")
        job.input_preview = _preview(_shown(image), job.folder / "input.png")


def _file_name(name: str) -> str:
    """The upload's name made safe for a file system (no folders, no odd characters); never empty."""
    return _SAFE_NAME.sub("_", Path(name).name).lstrip(".") or "upload"


def _shown(image: DecodedImage) -> np.ndarray:
    rgb = image.rgb if not image.grayscale else image.rgb[..., 0]
    return rgb if image.alpha is None else np.dstack([rgb, image.alpha])


def _preview(pixels: np.ndarray, path: Path) -> Path:
    """An 8-bit PNG a browser shows (the download keeps the output's own format and depth)."""
    if pixels.dtype == np.uint16:
        pixels = (pixels.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    write_image(path, pixels, (cv2.IMWRITE_PNG_COMPRESSION, 1))
    return path


def available_weights() -> dict[str, Path]:
    """The bundled checkpoint, and the authors' x4 ones where `python -m utils.files.pretrained all` put them."""
    from models import BUNDLED_CHECKPOINT

    found = {"bundled (team01_LKDN)": BUNDLED_CHECKPOINT}
    for name in ("LKDN-S_del_rep_x4", "LKDN-S_x4", "LKDN_x4"):
        if (AUTHORS_DEST / f"{name}.pth").is_file():
            found[f"authors' {name}"] = AUTHORS_DEST / f"{name}.pth"
    return found


def handler_for(upscaling: Upscaling) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # one line per request is noise here
            pass

        def _send(
            self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: object, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/":
                return self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            if path == "/weights":
                return self._json(list(upscaling.weights))
            match = re.fullmatch(r"/jobs/([0-9a-f]{16})(?:/(input|preview|download))?", path)
            job = upscaling.jobs.get(match[1]) if match else None
            if job is None:
                return self._json({"error": "no such job"}, HTTPStatus.NOT_FOUND)
            if match[2] is None:
                return self._json(upscaling.status(job))
            file = {"input": job.input_preview, "preview": job.preview, "download": job.output}[match[2]]
            if file is None:
                return self._json({"error": "not ready"}, HTTPStatus.CONFLICT)
            if match[2] != "download":  # the 8-bit PNGs the page shows
                return self._send(HTTPStatus.OK, file.read_bytes(), "image/png")
            extra = {"Content-Disposition": f'attachment; filename="{file.name}"'}
            return self._send(HTTPStatus.OK, file.read_bytes(), "application/octet-stream", extra)

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?", 1)[0] != "/jobs":
                return self._json({"error": "no such route"}, HTTPStatus.NOT_FOUND)
            length = int(self.headers.get("Content-Length") or 0)
            name = self.headers.get("X-File-Name") or "upload"
            if length > MAX_UPLOAD_BYTES:
                return self._json({"error": f"{name}: larger than {MAX_UPLOAD_BYTES >> 20} MiB"}, 413)
            data = self.rfile.read(length)
            try:
                job = upscaling.submit(name, self.headers.get("X-Weights") or "", data)
            except UserError as err:
                return self._json({"error": str(err)}, HTTPStatus.BAD_REQUEST)
            return self._json(upscaling.status(job), HTTPStatus.ACCEPTED)

    return Handler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free one)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", default="auto", help="as inference.py's --backend (default auto)")
    p.add_argument("--precision", default="auto", help="as inference.py's --precision (default auto)")
    p.add_argument("--max-memory", "--max_memory", dest="max_memory", default=inference.DEFAULT_MAX_MEMORY,
                   help=f"as inference.py's --max-memory (default {inference.DEFAULT_MAX_MEMORY})")  # fmt: skip
    args = p.parse_args(argv)
    args.max_memory = inference.parse_memory(args.max_memory)
    args.onnx_path = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    upscaling = Upscaling(args, available_weights())
    upscaling._upscaler(next(iter(upscaling.weights)))  # the default weights load now: errors show at start
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(upscaling))
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        shutil.rmtree(upscaling.root, ignore_errors=True)
    return 0


def cli() -> None:
    """The console script (pyproject.toml): `main` with one-line errors and exit code 2."""
    run_cli(main)


if __name__ == "__main__":
    cli()
