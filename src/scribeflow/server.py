"""A loopback HTTP server for the demo and the tests: serves a folder with HEAD,
Content-Length and byte ranges (yt-dlp resumes with Range), on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import sys
import threading
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class MediaHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    rate_bytes_per_s: float | None = None  # throttle, so tests can watch downloads in flight
    hide_length: bool = False  # no Content-Length, like a chunked stream: the body ends at close
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    def _resolve(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = (self.root / name).resolve()
        if self.root not in path.parents or not path.is_file():
            return None
        return path

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        path = self._resolve()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/mp4" if path.suffix == ".mp4" else "application/octet-stream")
        if self.hide_length:
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self._send_body(path, start, end - start + 1)

    def _send_body(self, path: Path, start: int, length: int):
        block = 16384
        with path.open("rb") as f:
            f.seek(start)
            while length > 0:
                data = f.read(min(block, length))
                if not data:
                    break
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                length -= len(data)
                if self.rate_bytes_per_s:
                    threading.Event().wait(len(data) / self.rate_bytes_per_s)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client hanging up mid-body is normal (yt-dlp stops, tests cut connections).
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class MediaServer:
    """`with MediaServer(folder) as server: server.url("a.mp4")` — stops on exit."""

    def __init__(self, root: str | os.PathLike, rate_bytes_per_s: float | None = None, hide_length: bool = False):
        handler = type("Handler", (MediaHandler,), {
            "root": Path(root).resolve(), "rate_bytes_per_s": rate_bytes_per_s, "hide_length": hide_length})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def __enter__(self) -> "MediaServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()
