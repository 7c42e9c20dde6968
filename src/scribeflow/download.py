"""Downloading one episode with yt-dlp's Python API, inside the disk gate.

No shell is ever involved: the catalogue's URL goes to yt-dlp as a Python string.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import MB
from .media import MediaError, validate

log = logging.getLogger("scribeflow.download")

BLOCK = 64 * 1024  # fixed read size: a download can overshoot its declared size by at most one block
PARTIAL_SUFFIXES = (".part", ".ytdl")


class DownloadFailed(RuntimeError):
    """The episode could not be downloaded; `permanent` when retrying cannot help."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class SizeExceeded(DownloadFailed):
    pass


def parse_rate(value) -> int | None:
    """'50K', '4.2M', '1G' or a number of bytes per second."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise ValueError(f"download.rate_limit: cannot read {value!r} as bytes per second") from None


class _YdlLog:
    """Routes yt-dlp's messages into the rule's log instead of the terminal."""

    def debug(self, msg):
        if not msg.startswith("[debug] "):
            log.debug(msg)

    def info(self, msg):
        log.info(msg)

    def warning(self, msg):
        log.warning(msg)

    def error(self, msg):
        log.error(msg)


def ydl_options(dl: dict, out: Path, hooks: list) -> dict:
    """yt-dlp options from the `download` config section."""
    opts = {
        "format": dl["format"],
        # outtmpl is a template: escape % so a directory name cannot inject fields.
        "outtmpl": str(out).replace("%", "%%"),
        "retries": dl["retries"],
        "fragment_retries": dl["fragment_retries"],
        "extractor_retries": dl["retries"],
        "socket_timeout": dl["socket_timeout"],
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "logger": _YdlLog(),
        "progress_hooks": hooks,
        "continuedl": True,  # within this call's retries: resume a cut connection
        "overwrites": True,
        "buffersize": BLOCK,
        "noresizebuffer": True,
        "updatetime": False,
    }
    optional = {
        "ratelimit": parse_rate(dl.get("rate_limit")),
        "sleep_interval": dl.get("sleep_interval") or None,
        "max_sleep_interval": dl.get("max_sleep_interval"),
        "cookiefile": dl.get("cookies"),
        "proxy": dl.get("proxy"),
        "max_filesize": int(dl["max_filesize_mb"] * MB) if dl.get("max_filesize_mb") else None,
        "http_headers": {"User-Agent": dl["user_agent"]} if dl.get("user_agent") else None,
    }
    opts.update({k: v for k, v in optional.items() if v is not None})
    return opts


def head_size(ydl, url: str) -> int | None:
    """Content-Length of a media URL, by a HEAD request through yt-dlp's own network
    stack (same proxy, cookies, user agent). None for web pages and unknown sizes."""
    from yt_dlp.networking import Request

    try:
        with ydl.urlopen(Request(url, method="HEAD")) as resp:
            length = resp.headers.get("Content-Length")
            ctype = resp.headers.get("Content-Type", "")
            if length and length.isdigit() and not ctype.startswith("text/"):
                return int(length)
    except Exception as exc:  # any failure here only means "size unknown"
        log.debug("HEAD %s failed: %s", url, exc)
    return None


def remove_partials(out: Path) -> int:
    """Delete a previous attempt's files for this output; yt-dlp would resume a stale
    .part blindly and accept a truncated final file as "already downloaded"."""
    freed = 0
    for path in [out, *(out.with_name(out.name + s) for s in PARTIAL_SUFFIXES)]:
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    return freed


def download_episode(episode: str, url: str, out: Path, config: dict, gate=None,
                     expected_size_mb: float | None = None) -> dict:
    """Download `url` to `out` inside the disk gate, then validate the media.

    Returns {"bytes", "declared", "size_source", "duration", "seconds"}; raises
    DownloadFailed with the reason otherwise. Nothing is left at `out` on failure.
    """
    import yt_dlp

    dl = config["download"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if remove_partials(out):
        log.info("Removed a previous attempt's partial files for %s", episode)

    progress = {"limit": None, "last_log": 0.0}

    def hook(status):
        if status.get("status") != "downloading":
            return
        done = status.get("downloaded_bytes") or 0
        if progress["limit"] is not None and done > progress["limit"]:
            raise SizeExceeded(
                f"{episode}: download grew past its declared {progress['limit']} bytes; "
                f"stopped at {done} bytes to hold the disk limit"
            )
        now = time.monotonic()
        if now - progress["last_log"] >= 10:
            progress["last_log"] = now
            total = status.get("total_bytes") or status.get("total_bytes_estimate")
            pct = f"{100 * done / total:.0f}%" if total else "?"
            log.info("Downloading %s: %.1f MB (%s), %.2f MB/s", episode, done / MB, pct,
                     (status.get("speed") or 0) / MB)

    opts = ydl_options(dl, out, [hook])
    dm = config["disk_management"]
    started = time.monotonic()
    with yt_dlp.YoutubeDL(opts) as ydl:
        # The catalogue's figure is an estimate; the server's Content-Length, when it
        # gives one, is the truth, and the larger of the two is what gets reserved.
        size = head_size(ydl, url)
        candidates = [(size, "Content-Length")] if size else []
        if expected_size_mb:
            candidates.append((int(expected_size_mb * MB), "catalogue expected_size_mb"))
        declared, source = max(candidates) if candidates else (
            int(dm["default_video_size_mb"] * MB), "default_video_size_mb")
        if dl.get("max_filesize_mb"):
            declared = min(declared, int(dl["max_filesize_mb"] * MB))
        progress["limit"] = declared
        log.info("Declared size of %s: %.1f MB (from %s)", episode, declared / MB, source)
        paths = [out, *(out.with_name(out.name + s) for s in PARTIAL_SUFFIXES)]
        try:
            if gate is None:
                _run(ydl, url, episode)
            else:
                with gate.admitted(episode, declared + BLOCK, paths):
                    _run(ydl, url, episode)
        except BaseException:
            remove_partials(out)
            raise
    if not out.is_file():
        remove_partials(out)
        raise DownloadFailed(f"{episode}: yt-dlp finished without a file (over max_filesize?)", permanent=True)
    try:
        info = validate(out)
    except MediaError as exc:
        remove_partials(out)
        raise DownloadFailed(f"{episode}: downloaded file is unusable: {exc}") from exc
    seconds = time.monotonic() - started
    size = out.stat().st_size
    log.info("Downloaded %s: %.1f MB, %.1f s of %s audio, in %.1f s", episode, size / MB,
             info.duration, info.audio_codec, seconds)
    return {"bytes": size, "declared": declared, "size_source": source,
            "duration": info.duration, "seconds": seconds}


def _run(ydl, url: str, episode: str) -> None:
    from yt_dlp.utils import DownloadError

    try:
        code = ydl.download([url])
    except SizeExceeded:
        raise
    except DownloadError as exc:
        cause = exc.exc_info[1] if exc.exc_info else None
        if isinstance(cause, SizeExceeded):
            raise cause from None
        status = getattr(cause, "status", None)
        raise DownloadFailed(f"{episode}: {exc.msg or exc}".replace("ERROR: ", ""),
                             permanent=status in (404, 410)) from exc
    if code:
        raise DownloadFailed(f"{episode}: yt-dlp reported failure (exit code {code})")
