"""A loopback HTTP server for the tests: serves a folder with HEAD,
Content-Length and byte ranges (yt-dlp resumes with Range), on 127.0.0.1 only.

For the fault-injection tests it follows a fault plan: per path, a list of what
the next requests get, consumed one per request, then "ok" for ever after:

    MediaServer(folder, faults={"/ep.mp4": ["503", "503", "ok"], "GET /b.mp4": ["cut"]})

A key "/path" applies to every method; "GET /path" or "HEAD /path" to one method
(and is used first); a key ending in "*" ("/*", "GET /hls/*") to every path that
starts with what precedes the star (exact keys are used first). Kinds: a status code ("404", "503", ...; "429:5" adds
"Retry-After: 5"); "cut"
(headers promise the whole body, half of it is sent, then the connection closes);
"hang" (the request is read and never answered); "stall" (all the body but its last
16 KiB is sent, then the rest once the test calls `server.release()`, so a download
is surely in flight, with data on disk, at a chosen moment); "html" (a web page instead of
the media); "understated" (HEAD declares half the real size, GET streams the whole
file without a Content-Length); "ok". Every request is recorded in `requests`.

Streams. Files are served with the Content-Type of their extension (HLS playlists,
DASH manifests, segments, HTML pages), so a folder made by `make_streams` (ffmpeg's
HLS and DASH muxers, and a page with an HTML5 player) is a streaming site as yt-dlp
meets it. `MediaServer(folder, host="127.0.0.2")` binds another loopback address:
a second "host" with its own fault plan (all of 127.0.0.0/8 is loopback on Linux).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import sys
import threading
import time
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
FAULT_KINDS = ("ok", "cut", "hang", "stall", "html", "understated")
CONTENT_TYPES = {
    ".mp4": "video/mp4", ".m4a": "audio/mp4", ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml", ".ts": "video/mp2t", ".aac": "audio/aac", ".m4s": "video/iso.segment",
    ".html": "text/html; charset=utf-8", ".webm": "video/webm",
}
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><p>Please sign in.</p></body></html>"


class MediaHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    rate_bytes_per_s: float | None = None  # throttle, so tests can watch downloads in flight
    signed_ttl: float | None = None  # seconds a signed media URL lives (see _signed)
    hide_length: bool = False  # no Content-Length, like a chunked stream: the body ends at close
    faults: dict  # the fault plan, shared with MediaServer (see the module docstring)
    requests: list  # (method, path, fault) of every request, in order
    lock: threading.Lock
    stopping: threading.Event  # set when the server stops: releases "hang" requests
    released: threading.Event  # set by MediaServer.release(): "stall" requests send the rest
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

    def _next_fault(self) -> str:
        name = self.path.split("?", 1)[0]
        with self.lock:
            fault = "ok"
            wild = [k for k in self.faults if k.endswith("*") and k.split(" ")[-1][:-1] == name[:len(k.split(" ")[-1]) - 1]
                    and (" " not in k or k.startswith(f"{self.command} "))]
            for key in (f"{self.command} {name}", name, *sorted(wild, key=len, reverse=True)):
                if self.faults.get(key):
                    fault = str(self.faults[key].pop(0))
                    break
            self.requests.append((self.command, name, fault))
        return fault

    def _signed(self, body: bool) -> bool:
        """Signed URLs (signed_ttl): /signed/NAME.html is a player page whose <video> points
        to /NAME?exp=NOW+TTL, as a streaming site signs its media URLs; a request whose exp
        has passed gets 403. True when the request was answered here."""
        from urllib.parse import parse_qs, urlsplit

        if self.signed_ttl is None:
            return False
        parts = urlsplit(self.path)
        if parts.path.startswith("/signed/") and parts.path.endswith(".html"):
            media = parts.path[len("/signed/"):-len(".html")]
            page = (f'<!DOCTYPE html><html><head><title>{media}</title></head><body><video controls>'
                    f'<source src="/{media}?exp={time.time() + self.signed_ttl:.0f}" type="video/mp4"></video>'
                    f'</body></html>').encode()
            with self.lock:
                self.requests.append((self.command, parts.path, "ok"))
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)
            return True
        exp = parse_qs(parts.query).get("exp")
        if exp and float(exp[0]) < time.time():
            with self.lock:
                self.requests.append((self.command, parts.path, "403 expired"))
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def _serve(self, body: bool):
        if self._signed(body):
            return
        fault = self._next_fault()
        status, _, retry_after = fault.partition(":")
        if status.isdigit():
            self.send_response(int(status))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault == "hang":
            self.close_connection = True
            self.stopping.wait(600)
            return
        if fault == "html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(HTML_PAGE)))
            self.end_headers()
            if body:
                self.wfile.write(HTML_PAGE)
            return
        path = self._resolve()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        if fault == "understated":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.close_connection = True
            self.send_header("Connection", "close")
            if not body:
                self.send_header("Content-Length", str(size // 2))
            self.end_headers()
            if body:
                self._send_body(path, 0, size)
            return
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
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        if self.hide_length:
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body and fault == "cut":
            self.close_connection = True
            self._send_body(path, start, (end - start + 1) // 2)
        elif body and fault == "stall":
            sent = max(0, end - start + 1 - 16384)
            self._send_body(path, start, sent)
            self.wfile.flush()
            while not (self.released.wait(0.1) or self.stopping.is_set()):
                pass
            self._send_body(path, start + sent, end - start + 1 - sent)
        elif body:
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

    def __init__(self, root: str | os.PathLike, rate_bytes_per_s: float | None = None, hide_length: bool = False,
                 faults: dict | None = None, host: str = "127.0.0.1", signed_ttl: float | None = None):
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        for key, plan in (faults or {}).items():
            self.plan(key, plan)
        handler = type("Handler", (MediaHandler,), {
            "root": Path(root).resolve(), "rate_bytes_per_s": rate_bytes_per_s, "hide_length": hide_length,
            "signed_ttl": signed_ttl,
            "faults": self.faults, "requests": self.requests, "lock": self._lock, "stopping": self._stopping,
            "released": self._released})
        if not host.startswith("127."):
            raise ValueError(f"{host}: the test server binds loopback addresses only")
        self.httpd = _QuietServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def plan(self, key: str, faults: list) -> None:
        """Set what the next requests for `key` ("/path" or "GET /path") get."""
        faults = [str(f) for f in faults]
        unknown = [f for f in faults if f not in FAULT_KINDS and not re.fullmatch(r"\d{3}(:\d+)?", f)]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; use a status code or one of {FAULT_KINDS}")
        if not key.split(" ")[-1].startswith("/"):
            raise ValueError(f"fault plan key {key!r}: use '/path' or 'GET /path'")
        with self._lock:
            self.faults[key] = faults

    def release(self) -> None:
        """Let every "stall" request, now and later, send the rest of its body."""
        self._released.set()

    def served(self, name: str, method: str | None = None) -> list[str]:
        """The faults (or "ok") that requests for /name got, in order."""
        with self._lock:
            return [f for m, p, f in self.requests if p == f"/{name}" and method in (None, m)]

    def __enter__(self) -> "MediaServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()


# -- streams made by ffmpeg, for the streaming tests and the demo ----------------------------
STREAM_KINDS = ("hls_audio", "hls_muxed", "dash", "page")


def _ffmpeg(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], cwd=cwd, check=True)


def make_streams(src: str | os.PathLike, folder: str | os.PathLike, segment_seconds: float = 1.0,
                 kinds=STREAM_KINDS, video_kbps: int = 64) -> dict:
    """Serve `src` (an MP4 with video and audio) the ways streaming sites do, under
    `folder`/{kind}/{stem}/; returns {kind: path to give MediaServer.url}:

    - hls_audio: an HLS master playlist whose variant takes its audio from a separate
      audio rendition (EXT-X-MEDIA TYPE=AUDIO), as most sites do;
    - hls_muxed: an HLS master playlist with one variant, audio and video in the same segments;
    - dash: a DASH manifest with a video and an audio adaptation set;
    - page: an HTML page with a <video> player: an HLS <source> (an hls_audio stream) and an MP4 one.

    A higher `video_kbps` with longer segments makes segments bigger than yt-dlp's
    64 KiB read, so that fragment partials (`.part-FragN.part`) stay on disk a while.
    """
    src, folder = Path(src).resolve(), Path(folder)
    stem = src.stem
    encode = ["-i", str(src), "-map", "0:v", "-map", "0:a", "-c:v", "libx264", "-preset", "ultrafast",
              "-g", "10", "-keyint_min", "10", "-sc_threshold", "0", "-b:v", f"{video_kbps}k",
              "-c:a", "aac", "-b:a", "48k", "-ac", "1"]
    hls = ["-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
           "-master_pl_name", "master.m3u8", "-hls_segment_filename", "s%v_%03d.ts"]
    recipes = {
        "hls_audio": ("master.m3u8", [*encode, *hls, "-var_stream_map",
                                      "v:0,agroup:aud a:0,agroup:aud,default:yes,language:en", "v%v.m3u8"]),
        "hls_muxed": ("master.m3u8", [*encode, *hls, "-var_stream_map", "v:0,a:0", "v%v.m3u8"]),
        "dash": ("manifest.mpd", [*encode, "-f", "dash", "-seg_duration", str(segment_seconds),
                                  "-use_template", "1", "-use_timeline", "1",
                                  "-adaptation_sets", "id=0,streams=v id=1,streams=a", "manifest.mpd"]),
    }
    wanted = set(kinds) | ({"hls_audio"} if "page" in kinds else set())
    made = {}
    for kind, (name, args) in recipes.items():
        if kind in wanted:
            d = folder / kind / stem
            d.mkdir(parents=True, exist_ok=True)
            _ffmpeg(*args, cwd=d)
            made[kind] = f"{kind}/{stem}/{name}"
    if "page" in kinds:
        d = folder / "page" / stem
        d.mkdir(parents=True, exist_ok=True)
        (d / "video.mp4").write_bytes(src.read_bytes())
        (d / "index.html").write_text(
            f"<!DOCTYPE html><html><head><title>Episode {stem}</title></head><body>\n"
            f'<video controls width="640">\n'
            f'  <source src="../../hls_audio/{stem}/master.m3u8" type="application/x-mpegURL">\n'
            f'  <source src="video.mp4" type="video/mp4">\n'
            f"</video>\n</body></html>\n")
        made["page"] = f"page/{stem}/index.html"
    return made


# -- streams that misstate their size, for the hard-limit tests -----------------------------
def make_aes_hls(src: str | os.PathLike, folder: str | os.PathLike, segment_seconds: int = 2,
                 video_kbps: int = 3000) -> str:
    """`src` as an AES-128 encrypted HLS media playlist (no master playlist, so no
    BANDWIDTH anywhere) of `video_kbps` of picture in `segment_seconds` segments;
    returns the playlist's path under `folder`. Served with hide_length, nothing says
    its size."""
    src, folder = Path(src).resolve(), Path(folder)
    d = folder / "aes" / src.stem
    d.mkdir(parents=True, exist_ok=True)
    (d / "key.bin").write_bytes(bytes(range(16)))
    (d / "keyinfo").write_text(f"key.bin\n{d / 'key.bin'}\n")
    _ffmpeg("-i", str(src), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(10 * segment_seconds),
            "-b:v", f"{video_kbps}k", "-minrate", f"{video_kbps}k", "-maxrate", f"{video_kbps}k",
            "-bufsize", f"{video_kbps}k", "-x264-params", "nal-hrd=cbr", "-c:a", "copy",
            "-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
            "-hls_key_info_file", "keyinfo", "-hls_segment_filename", "seg%03d.ts", "index.m3u8", cwd=d)
    return f"aes/{src.stem}/index.m3u8"


def make_understated_dash(src: str | os.PathLike, folder: str | os.PathLike, factor: int = 20) -> str:
    """A DASH manifest whose bandwidth attributes say 1/`factor` of the real bitrates."""
    import re as _re

    made = make_streams(src, Path(folder) / "under", kinds=["dash"])["dash"]
    manifest = Path(folder) / "under" / made
    text = manifest.read_text()
    manifest.write_text(_re.sub(r'bandwidth="(\d+)"', lambda m: f'bandwidth="{int(m.group(1)) // factor}"', text))
    return f"under/{made}"


def make_hls_larger_later(src: str | os.PathLike, folder: str | os.PathLike, sampled,
                          segments: int = 20, low_kbps: int = 32, high_kbps: int = 600) -> str:
    """An HLS media playlist of at least `segments` one-second segments where the ones at
    the indices `sampled(seconds)` gives for the playlist's segment durations (those
    scribeflow asks the sizes of: download.sampled_segments) come from a low-bitrate
    encode and every other one from a high-bitrate encode of the same source (the same
    audio): the samples understate the stream many times. (A callable, not a set: how
    many segments there are depends on how long the speech synthesizer made `src`.)"""
    src, folder = Path(src).resolve(), Path(folder)
    d = folder / "later" / src.stem
    for name, kbps in (("low", low_kbps), ("high", high_kbps)):
        (d / name).mkdir(parents=True, exist_ok=True)
        _ffmpeg("-i", str(src), "-map", "0:v", "-map", "0:a", "-c:v", "libx264", "-preset", "ultrafast",
                "-g", "10", "-keyint_min", "10", "-sc_threshold", "0", "-b:v", f"{kbps}k", "-minrate", f"{kbps}k",
                "-maxrate", f"{kbps}k", "-bufsize", f"{kbps}k", "-x264-params", "nal-hrd=cbr",
                "-c:a", "aac", "-b:a", "48k", "-ac", "1", "-f", "hls", "-hls_time", "1", "-hls_playlist_type",
                "vod", "-hls_segment_filename", "s%03d.ts", "index.m3u8", cwd=d / name)
    lines = (d / "low" / "index.m3u8").read_text().splitlines()
    sampled = set(sampled([float(line[8:].split(",")[0]) for line in lines if line.startswith("#EXTINF:")]))
    out, n = [], 0
    for line in lines:
        if line and not line.startswith("#"):
            line = f"{'low' if n in sampled else 'high'}/{line}"
            n += 1
        out.append(line)
    if n < segments:
        raise ValueError(f"{src.name}: {n} segments, fewer than {segments}: use a longer source")
    (d / "index.m3u8").write_text("\n".join(out) + "\n")
    return f"later/{src.stem}/index.m3u8"


def make_restarting_ts(src: str | os.PathLike, folder: str | os.PathLike, times: int = 2) -> str:
    """`src` as MPEG-TS, `times` copies one after the other, each starting its timestamps
    again at zero: the container says one copy's duration, the audio decodes to all of them."""
    src, folder = Path(src).resolve(), Path(folder)
    d = folder / "restart"
    d.mkdir(parents=True, exist_ok=True)
    one = d / f"{src.stem}.one.ts"
    _ffmpeg("-i", str(src), "-c:v", "copy", "-c:a", "copy", "-f", "mpegts", str(one), cwd=d)
    (d / f"{src.stem}.ts").write_bytes(one.read_bytes() * times)
    one.unlink()
    return f"restart/{src.stem}.ts"
