"""Downloading one episode with yt-dlp's Python API, inside the disk gate.

No shell is ever involved: the catalogue's URL goes to yt-dlp as a Python string.

Faults. yt-dlp retries errors of its download phase (`retries`), but not those of
its extraction phase (a 503 on the first request fails at once), so every attempt
(HEAD, gate, extraction, download, validation) runs inside our own retry loop with
exponential backoff. Errors are classified:
- permanent (retrying cannot help): HTTP 404 and 410, a URL with no media (a web
  page), a file that is not usable media (garbage, truncated, no audio stream), a
  file larger than its declared size. The episode fails at once.
- transient: HTTP 408, 429 and 5xx, timeouts, cut connections, a full disk. Retried
  up to `retries` times, waiting retry_backoff_seconds × 2^n (at most
  max_backoff_seconds, or the server's Retry-After): by yt-dlp in its download phase
  (with the same backoff), by the loop here for everything before it. A full disk
  also pauses the gate, so the next attempt waits there until space returns.
- anything else, and a transient fault that outlasts the retries, fails the job; the
  next run tries again, up to `max_attempts` runs (see failures.py).
"""

from __future__ import annotations

import errno
import logging
import random
import time
from pathlib import Path

from .config import MB
from .media import MediaError, validate

log = logging.getLogger("scribeflow.download")

BLOCK = 64 * 1024  # fixed read size: a download can overshoot its declared size by at most one block
PARTIAL_SUFFIXES = (".part", ".ytdl")


TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
PERMANENT_STATUS = {404, 410}


class DownloadFailed(RuntimeError):
    """The episode could not be downloaded. `permanent`: retrying cannot help;
    `transient`: another attempt soon may succeed (after `retry_after` seconds,
    when the server said so)."""

    def __init__(self, message: str, permanent: bool = False, transient: bool = False,
                 retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.transient = transient and not permanent
        self.retry_after = retry_after


class SizeExceeded(DownloadFailed):
    """The download grew past its declared size (the server understated it)."""

    def __init__(self, message: str):
        super().__init__(message + "; if the catalogue's expected_size_mb is too small, correct it, "
                         "then `scribeflow retry` the episode", permanent=True)


class DiskFull(DownloadFailed):
    """ENOSPC: the partial file is removed and the gate holds the next attempt until
    the filesystem has room again."""


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
        # yt-dlp's own download-phase retries sleep nothing by default: back off like ours.
        "retry_sleep_functions": {kind: (lambda n: backoff_seconds(dl, n + 1))
                                  for kind in ("http", "fragment", "extractor")},
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


def backoff_seconds(dl: dict, attempt: int, retry_after: float | None = None) -> float:
    """Wait before retry number `attempt` (1-based): exponential, capped, with jitter
    so that many jobs hit by one outage do not come back in lockstep."""
    base = dl["retry_backoff_seconds"] * 2 ** (attempt - 1)
    delay = max(base * random.uniform(0.8, 1.2), retry_after or 0)
    return min(delay, dl["max_backoff_seconds"])


def head_size(ydl, url: str, episode: str = "") -> int | None:
    """Content-Length of a media URL, by a HEAD request through yt-dlp's own network
    stack (same proxy, cookies, user agent). None for web pages and unknown sizes
    (servers that refuse HEAD included). Raises DownloadFailed when the server is
    overloaded or unreachable (transient) or the episode is gone (404/410): the GET
    would fail the same way, and going on would reserve the default size for a
    download that cannot start."""
    from yt_dlp.networking import Request

    try:
        with ydl.urlopen(Request(url, method="HEAD")) as resp:
            length = resp.headers.get("Content-Length")
            ctype = resp.headers.get("Content-Type", "")
            if length and length.isdigit() and not ctype.startswith("text/"):
                return int(length)
    except Exception as exc:
        failure = classify(exc, episode)
        if failure.transient or failure.permanent:
            raise failure from exc
        log.debug("HEAD %s failed: %s", url, exc)  # anything else only means "size unknown"
    return None


def _chain(exc: BaseException):
    """The exception and its causes: yt-dlp wraps the original in DownloadError.exc_info,
    ExtractorError.cause and __cause__. (Not __context__: an error yt-dlp caught and
    got past must not decide the class of a later one.)"""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        if isinstance(exc_info, tuple) and len(exc_info) > 1:
            stack.append(exc_info[1])
        for attr in ("cause", "__cause__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _retry_after(response) -> float | None:
    try:
        value = response.headers.get("Retry-After")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def classify(exc: BaseException, episode: str) -> DownloadFailed:
    """A DownloadFailed saying whether `exc` (from yt-dlp or the network) is permanent,
    transient or neither, with a message a user can act on."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import UnsupportedError

    if isinstance(exc, DownloadFailed):
        return exc
    text = str(getattr(exc, "msg", None) or exc).replace("ERROR: ", "").strip()
    message = f"{episode}: {text}"
    for e in _chain(exc):
        if isinstance(e, DownloadFailed):
            return e
        if isinstance(e, HTTPError):
            status = e.status
            if status in PERMANENT_STATUS:
                return DownloadFailed(f"{episode}: HTTP {status} ({e.reason}): the episode is gone from "
                                      f"the server", permanent=True)
            return DownloadFailed(f"{episode}: HTTP {status} ({e.reason})", transient=status in TRANSIENT_STATUS
                                  or status >= 500, retry_after=_retry_after(e.response))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return DiskFull(f"{episode}: the disk is full (ENOSPC) while downloading", transient=True)
        if isinstance(e, UnsupportedError):
            return DownloadFailed(f"{episode}: no media at this address (yt-dlp found no video: the server "
                                  f"sent a web page or an unsupported format)", permanent=True)
        if isinstance(e, (TransportError, TimeoutError, ConnectionError)):
            return DownloadFailed(f"{message} (network error)", transient=True)
    # Anything else, including a download-phase error yt-dlp already retried `retries`
    # times with our backoff ("Giving up after N retries"): retrying it again here would
    # multiply the retries. The next run tries again.
    return DownloadFailed(message)


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
    """Download `url` to `out` inside the disk gate, then validate the media, retrying
    transient faults with backoff (see the module docstring).

    Returns {"bytes", "declared", "size_source", "duration", "seconds", "attempts"};
    raises DownloadFailed with the reason otherwise. Nothing is left at `out` on failure.
    """
    dl = config["download"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if remove_partials(out):
        log.info("Removed a previous attempt's partial files for %s", episode)
    for attempt in range(1, dl["retries"] + 2):
        try:
            result = _attempt(episode, url, out, config, gate, expected_size_mb)
            return {**result, "attempts": attempt}
        except DownloadFailed as exc:
            freed = remove_partials(out)
            if isinstance(exc, DiskFull):
                log.warning("%s; removed its partial file (%.1f MB): downloads pause until space returns",
                            exc, freed / MB)
            if not exc.transient or attempt > dl["retries"]:
                if exc.transient:
                    exc.args = (f"{exc} (gave up after {attempt} attempt(s))",)
                raise
            delay = backoff_seconds(dl, attempt, exc.retry_after)
            log.warning("Attempt %d of %d for %s failed: %s; retrying in %.1f s",
                        attempt, dl["retries"] + 1, episode, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _attempt(episode: str, url: str, out: Path, config: dict, gate, expected_size_mb) -> dict:
    import yt_dlp

    dl = config["download"]
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
        size = head_size(ydl, url, episode)
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
        raise DownloadFailed(f"{episode}: downloaded file is unusable: {exc}", permanent=True) from exc
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
    except DownloadFailed:
        raise
    except (DownloadError, OSError) as exc:
        failure = classify(exc, episode)
        if failure.__traceback__ is not None:  # our own, raised inside yt-dlp (the size hook)
            raise failure from None
        raise failure from exc
    if code:
        raise DownloadFailed(f"{episode}: yt-dlp reported failure (exit code {code})")
