"""A local HTTP file server for download tests: Range support, and faults on demand.

Serves in-memory files on 127.0.0.1 (a free port) from a thread. `drop_after` makes the next response stop
after that many body bytes and close the connection (a broken download); `ignore_range` answers 200 with
the whole file as servers without Range support do; `stall_after` makes the next response stop sending after
that many bytes but keep the connection open (until the server shuts down), so that the client times out;
`trickle` (seconds) sends the next response one byte at a time with that pause between bytes, so that no
single read ever times out while the transfer as a whole crawls. A path in `endless` is answered with zeros and
no Content-Length, without end (a server that never says how much it sends). `crawl` (seconds, read live by
every response while it sends) paces all responses at 256 bytes per `crawl`; set it to 0 and the rest goes at
full speed.
Every request's path and Range header is recorded.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.drop_after: int | None = None
        self.stall_after: int | None = None
        self.trickle: float | None = None
        self.endless: set[str] = set()
        self.crawl = 0.0
        self.release = threading.Event()  # set on shutdown: ends stalled responses
        self.requests: list[dict[str, str | None]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        srv = self.server
        range_header = self.headers.get("Range")
        with srv.lock:
            srv.requests.append({"path": self.path, "range": range_header})
            drop_after, srv.drop_after = srv.drop_after, None
            stall_after, srv.stall_after = srv.stall_after, None
            trickle, srv.trickle = srv.trickle, None
        if self.path in srv.endless:
            self._send_endless()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "none" if srv.ignore_range else "bytes")
        self.end_headers()
        if drop_after is not None:
            body = body[:drop_after]
            self.close_connection = True
        if stall_after is not None:
            self.wfile.write(body[:stall_after])
            self.wfile.flush()
            srv.release.wait(timeout=30)
            self.close_connection = True
            return
        if trickle is not None:
            for index in range(len(body)):
                if srv.release.wait(timeout=trickle):
                    break
                try:
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    break
            self.close_connection = True
            return
        while srv.crawl > 0 and body:
            try:
                self.wfile.write(body[:256])
                self.wfile.flush()
            except OSError:  # the client gave up
                return
            body = body[256:]
            if srv.release.wait(timeout=srv.crawl):
                return
        self.wfile.write(body)
        self.wfile.flush()

    def _send_endless(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.close_connection = True
        block = bytes(1 << 16)
        while not self.server.release.is_set():
            try:
                self.wfile.write(block)
            except OSError:  # the client stopped reading
                return


@contextmanager
def serve_files(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """Run a FileServer in a thread for the duration of the block, then shut it down."""
    server = FileServer()
    server.files.update(files or {})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
