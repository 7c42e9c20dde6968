"""Downloading one episode with yt-dlp's Python API, inside the disk gate and the
per-host politeness limits (hosts.py).

No shell is ever involved: the catalogue's URL goes to yt-dlp as a Python string.

An attempt: take a slot of the URL's host; let yt-dlp extract the address and choose
the format(s) once (a direct file, an HLS or DASH manifest, a page with a player; audio
only when offered); declare the size of what it chose (see declare_size: never a
manifest's own size); wait for the gate to admit that size; download with the same
extraction into staging names `{id}@dl.{ext}`, stopped if it writes more than it
declared; rename the result to the rule's `{id}.media`; validate it with PyAV.

Faults. yt-dlp retries errors of its download phase (`retries`), but not those of
its extraction phase (a 503 on the first request fails at once), so every attempt
(extraction, sizing, gate, download, validation) runs inside our own retry loop with
exponential backoff. A 429 also backs the host off for every process. Errors are
classified:
- permanent (retrying cannot help): HTTP 404 and 410, a URL with no media (a web
  page), a file that is not usable media (garbage, truncated, no audio stream), a
  file larger than its declared size. The episode fails at once.
- transient: HTTP 408, 429 and 5xx, timeouts, cut connections, a full disk. Retried
  up to `retries` times, waiting retry_backoff_seconds × 2^n (at most
  max_backoff_seconds, or the server's Retry-After): by yt-dlp in its download phase
  (with the same backoff), by the loop here for everything before it. A full disk
  also pauses the gate, so the next attempt waits there until space returns.
- either's: a 401/403/451 and the site's own word for the episode (yt-dlp's expected
  extractor errors: unavailable, private, login required, GeoRestrictedError). The host's
  record decides (hosts.HostLimiter.judge): the episode's while the host serves other
  episodes (counted once a run, never retried in the job), else the host's.
- anything else, and a transient fault that outlasts the retries, fails the job; the
  next run tries again, up to `max_attempts` runs (see failures.py). Each download tells
  the host's breaker of its failure once, however often it is retried; a transient fault
  on one episode while its host serves the others is the episode's after TRIES_BEFORE_OWN
  tries, and a retry that would wait over LONG_WAIT_SECONDS is not waited for when no
  other episode is in flight.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from scribeflow.budget.hosts import EPISODE, host_of
from scribeflow.budget.monitor import ACTIVE_STAGES
from scribeflow.budget.watchdog import BLOCK, DiskWatchdog, Stopped, slack_bytes
from scribeflow.config.layout import PARTIAL_SUFFIXES, STAGING_MARK
from scribeflow.config.settings import GB, MB, Download, Settings
from scribeflow.files import human_bytes
from scribeflow.stages.media import MediaError, validate

log = logging.getLogger("scribeflow.stages.download")


TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
PERMANENT_STATUS = {404, 410}
EITHER_STATUS = {401, 403, 451}  # the episode's or the host's: judged (hosts.HostLimiter.judge)


class DownloadFailed(RuntimeError):
    """The episode could not be downloaded. `permanent`: retrying cannot help;
    `transient`: another attempt soon may succeed (after `retry_after` seconds,
    when the server said so). `either`: the episode's or the host's, as the host's own
    record decides (hosts.HostLimiter.judge): a 401/403, a region lock, a video the site
    calls unavailable or private."""

    def __init__(self, message: str, permanent: bool = False, transient: bool = False,
                 retry_after: float | None = None, status: int | None = None, kind: str | None = None,
                 either: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.transient = transient and not permanent
        self.retry_after = retry_after
        self.status = status  # the HTTP status, when the server answered with an error
        # Whose failure (failures.kind): the host's (or the environment's) is never
        # counted against the episode and feeds the host's circuit breaker (hosts.py).
        self.kind = "episode" if permanent else (kind or "episode")
        self.either = either and not permanent

    def charge(self, kind: str, note: str = "") -> "DownloadFailed":
        """Settle whose failure this is (judged), saying why in the message."""
        self.kind, self.either = kind, False
        if note:
            self.args = (f"{self.args[0]} {note}",)
        return self


class SizeExceeded(DownloadFailed):
    """The download grew past its declared size (the server understated it).

    With `written` (the bytes on disk when it was stopped) the episode is tried once
    more, declaring what was measured (download_episode); without, it is permanent."""

    def __init__(self, message: str, written: int | None = None, fraction: tuple[float, float] | None = None,
                 declared: int | None = None):
        self.written, self.fraction, self.declared = written, fraction, declared
        if written is None:
            message += ("; if the catalogue's expected_size_mb is too small, correct it, "
                        "then `scribeflow retry` the episode")
        super().__init__(message, permanent=written is None)


class DiskFull(DownloadFailed):
    """ENOSPC: the partial file is removed and the gate holds the next attempt until
    the filesystem has room again."""

    def __init__(self, message: str, **kw):
        super().__init__(message, kind="host", **kw)


def parse_rate(value) -> int | None:
    """'50K', '4.2M', '1G' or a number of bytes per second (yt-dlp's own parser)."""
    from yt_dlp.utils import parse_bytes

    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    rate = parse_bytes(str(value).strip().removesuffix("B").removesuffix("i"))
    if rate is None:
        raise ValueError(f"download.rate_limit: cannot read {value!r} as bytes per second")
    return int(rate)


class _YdlLog:
    """Routes yt-dlp's messages into the rule's log instead of the terminal.

    `on_rate_limited` is called when yt-dlp meets an HTTP 429 that it retries itself
    (a fragment, the media GET): it says so only in a warning."""

    RATE_LIMITED = re.compile(r"HTTP Error 429\b")

    def __init__(self, on_rate_limited=None):
        self.on_rate_limited = on_rate_limited

    def _check(self, msg):
        # The downloaders' "Got error: HTTP Error 429 ... Retrying" arrives as debug
        # (to_screen with a logger); an extraction's 429 is an error that the retry
        # loop in download_episode meets itself.
        if self.on_rate_limited and self.RATE_LIMITED.search(msg):
            self.on_rate_limited()

    def debug(self, msg):
        if not msg.startswith("[debug] "):
            log.debug(msg)
            self._check(msg)

    def info(self, msg):
        log.info(msg)
        self._check(msg)

    def warning(self, msg):
        log.warning(msg)
        self._check(msg)

    def error(self, msg):
        log.error(msg)


def ydl_options(dl: Download, out: Path, hooks: list, on_rate_limited=None) -> dict:
    """yt-dlp options from the `download` config section."""
    opts = {
        "format": dl.format,
        # outtmpl is a template: escape % so a directory name cannot inject fields.
        "outtmpl": str(out).replace("%", "%%"),
        "retries": dl.retries,
        "fragment_retries": dl.fragment_retries,
        "extractor_retries": dl.retries,
        # yt-dlp's own download-phase retries sleep nothing by default: back off like ours.
        "retry_sleep_functions": {kind: (lambda n: backoff_seconds(dl, n + 1))
                                  for kind in ("http", "fragment", "extractor")},
        "socket_timeout": dl.socket_timeout,
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "logger": _YdlLog(on_rate_limited),
        "progress_hooks": hooks,
        "continuedl": True,  # within this call's retries: resume a cut connection
        "overwrites": True,
        "buffersize": BLOCK,
        "noresizebuffer": True,
        "updatetime": False,
        "fixup": dl.fixup,
        # yt-dlp's own HLS downloader (AES-128 included, with pycryptodomex) even for
        # formats whose protocol is `m3u8`; false hands those to ffmpeg. Either is capped
        # by the watchdog (watchdog.py).
        "hls_prefer_native": dl.hls_prefer_native,
    }
    optional = {
        "ratelimit": parse_rate(dl.rate_limit),
        "sleep_interval": dl.sleep_interval or None,
        "max_sleep_interval": dl.max_sleep_interval,
        "cookiefile": dl.cookies,
        "proxy": dl.proxy,
        "max_filesize": int(dl.max_filesize_mb * MB) if dl.max_filesize_mb else None,
        "http_headers": {"User-Agent": dl.user_agent} if dl.user_agent else None,
        "sleep_interval_requests": dl.sleep_interval_requests or None,
    }
    opts.update({k: v for k, v in optional.items() if v is not None})
    return opts


def backoff_seconds(dl: Download, attempt: int, retry_after: float | None = None) -> float:
    """Wait before retry number `attempt` (1-based): exponential, capped, with jitter
    so that many jobs hit by one outage do not come back in lockstep."""
    base = dl.retry_backoff_seconds * 2 ** (attempt - 1)
    delay = max(base * random.uniform(0.8, 1.2), retry_after or 0)
    return min(delay, dl.max_backoff_seconds)


def head_size(ydl, url: str, episode: str = "", headers: dict | None = None) -> int | None:
    """Content-Length of a media URL, by a HEAD request through yt-dlp's own network
    stack (same proxy, cookies, user agent). None for web pages and unknown sizes
    (servers that refuse HEAD included). Raises DownloadFailed when the server is
    overloaded or unreachable (transient) or the episode is gone (404/410): the GET
    would fail the same way, and going on would reserve the default size for a
    download that cannot start."""
    from yt_dlp.networking import Request

    try:
        with ydl.urlopen(Request(url, method="HEAD", headers=headers or {})) as resp:
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


def breaker_reason(exc: DownloadFailed) -> str:
    """What a host's circuit breaker says of a failure: for yt-dlp's extractor failing on
    the site's pages (the site changed), what to do first."""
    if "yt-dlp's extractor failed" in str(exc):
        return f"its pages no longer parse: update yt-dlp ({yt_dlp_version()} in use); {exc}"
    return str(exc)


def yt_dlp_version() -> str:
    from yt_dlp.version import __version__

    return f"yt-dlp {__version__}"


def _site_says(exc) -> str:
    """yt-dlp's own words for an expected extractor error, without its prefixes."""
    text = str(getattr(exc, "orig_msg", None) or getattr(exc, "msg", None) or exc)
    return re.sub(r"^(ERROR: )?(\[[^\]]+\] )?([\w-]+: )?", "", text).strip()


def classify(exc: BaseException, episode: str) -> DownloadFailed:
    """A DownloadFailed saying whether `exc` (from yt-dlp or the network) is permanent,
    transient or neither, with a message a user can act on."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import ExtractorError, UnsupportedError

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
            # 401/403: a region lock or a removed video (the episode's), or a ban or
            # expired cookies (the host's): judged by the host's record. 429, 5xx: the host's.
            return DownloadFailed(f"{episode}: HTTP {status} ({e.reason})", transient=status in TRANSIENT_STATUS
                                  or status >= 500, retry_after=_retry_after(e.response), status=status,
                                  kind="host", either=status in EITHER_STATUS)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return DiskFull(f"{episode}: the disk is full (ENOSPC) while downloading", transient=True)
        if isinstance(e, UnsupportedError):
            return DownloadFailed(f"{episode}: no media at this address (yt-dlp found no video: the server "
                                  f"sent a web page or an unsupported format)", permanent=True)
        if isinstance(e, (TransportError, TimeoutError, ConnectionError)):
            return DownloadFailed(f"{message} (network error)", transient=True, kind="host")
    for e in _chain(exc):
        if isinstance(e, ExtractorError) and getattr(e, "expected", False):
            # What the site says of the episode: unavailable, private, removed, login
            # required, region-locked (GeoRestrictedError). The episode's, unless the
            # whole site says it (expired cookies, a blocked region): judged.
            return DownloadFailed(f"{episode}: the site says: {_site_says(e)}", kind="host", either=True)
        if isinstance(e, ExtractorError):
            # A page yt-dlp can no longer read: the site changed, until yt-dlp is updated.
            return DownloadFailed(f"{message} (yt-dlp's extractor failed: if many episodes of this site fail "
                                  f"so, update yt-dlp; {yt_dlp_version()} is in use)", kind="host")
    # Anything else, including a download-phase error yt-dlp already retried `retries`
    # times with our backoff ("Giving up after N retries"): retrying it again here would
    # multiply the retries. The next run tries again.
    return DownloadFailed(message)


# -- files a download writes -----------------------------------------------------------
# yt-dlp writes into staging names `{id}@dl.{ext}` beside the rule's `{id}.media`
# (an `@` cannot occur in an id, so the episode of any staging file is known): the
# real extension lets its ffmpeg post-processors (merging, fixups) pick a muxer.
# Besides the file itself it writes `.part`, `.ytdl`, fragment partials
# `.part-FragN.part`, per-format files `.fN.{ext}` before a merge and `.temp.{ext}`
# during post-processing: all start with the staging prefix. The finished file is
# renamed to `{id}.media`. (STAGING_MARK and PARTIAL_SUFFIXES: scribeflow.config.layout.)


def staging_prefix(out: Path) -> str:
    """The name prefix of every file yt-dlp writes for the output `out`."""
    return Path(out).stem + STAGING_MARK


def staging_files(out: Path) -> list[Path]:
    """Files yt-dlp left for `out` (the staging prefix), and the older `{out}.part`/.ytdl names."""
    out = Path(out)
    prefix = staging_prefix(out)
    found = [out.with_name(out.name + s) for s in PARTIAL_SUFFIXES]
    try:
        found += [Path(e.path) for e in os.scandir(out.parent) if e.name.startswith(prefix)]
    except FileNotFoundError:
        pass
    return [p for p in found if p.is_file()]


def remove_partials(out: Path) -> int:
    """Delete a previous attempt's files for this output (the output itself, partials,
    fragments, staging and post-processing files); yt-dlp would resume a stale .part
    blindly and accept a truncated final file as "already downloaded"."""
    freed = 0
    for path in [Path(out), *staging_files(out)]:
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    return freed


# -- the declared size ------------------------------------------------------------------
MANIFEST_EXTS = {"m3u8", "m3u", "mpd", "f4m", "ism", "isml"}
MAX_SEGMENT_HEADS = 6  # segments whose sizes are asked for when a stream declares none


@dataclass
class Size:
    bytes: int
    source: str
    exact: bool  # the server's own figure (filesize, Content-Length), not an estimate


def _is_manifest(url: str) -> bool:
    path = urllib.parse.urlsplit(url or "").path.lower()
    return path.rsplit(".", 1)[-1] in MANIFEST_EXTS if "." in path.rsplit("/", 1)[-1] else False


def _fetch_text(ydl, url: str, headers: dict | None, episode: str) -> str:
    from yt_dlp.networking import Request

    try:
        with ydl.urlopen(Request(url, headers=headers or {})) as resp:
            return resp.read(4 * MB).decode("utf-8", "replace")
    except Exception as exc:
        raise classify(exc, episode) from exc


def _hls_segments(ydl, fmt: dict, episode: str) -> list[tuple[str, float, int | None]]:
    """(url, seconds, bytes when the playlist says) of every segment of an HLS media
    playlist (parsed by the m3u8 library), the init segments (EXT-X-MAP) first with 0
    seconds. A master playlist: its first variant."""
    import m3u8

    url = fmt.get("url") or ""
    playlist = m3u8.loads(_fetch_text(ydl, url, fmt.get("http_headers"), episode), uri=url)
    if playlist.is_variant:
        if not playlist.playlists:
            return []
        url = playlist.playlists[0].absolute_uri
        playlist = m3u8.loads(_fetch_text(ydl, url, fmt.get("http_headers"), episode), uri=url)
    segments = [(init.absolute_uri, 0.0, None) for init in playlist.segment_map if init.uri]
    for seg in playlist.segments:
        length = int(seg.byterange.split("@")[0]) if seg.byterange else None
        segments.append((seg.absolute_uri, float(seg.duration or 0), length))
    return segments


def _dash_segments(fmt: dict) -> list[tuple[str, float, int | None]]:
    base = fmt.get("fragment_base_url") or ""
    segments = []
    for frag in fmt.get("fragments") or []:
        url = frag.get("url") or urllib.parse.urljoin(base, frag.get("path") or "")
        segments.append((url, float(frag.get("duration") or 0), frag.get("filesize")))
    return segments


def sampled_segments(seconds: list[float]) -> list[int]:
    """The indices of the segments whose sizes are asked for (of segments lasting
    `seconds` each; 0 is an init segment): all of a short stream, else the init
    segment and evenly spread media segments."""
    if len(seconds) <= MAX_SEGMENT_HEADS:
        return list(range(len(seconds)))
    media = [i for i, s in enumerate(seconds) if s > 0]
    step = (len(media) - 1) / (MAX_SEGMENT_HEADS - 2)
    return sorted({i for i, s in enumerate(seconds) if s == 0}
                  | {media[round(k * step)] for k in range(MAX_SEGMENT_HEADS - 1)})


def _segments_size(ydl, segments, headers, episode: str) -> Size | None:
    """The size of a fragmented stream from its segments: exact when the playlist
    gives byte ranges or every segment is asked for (HEAD), else the fastest sampled
    segment's bytes per second times the whole duration."""
    if not segments:
        return None
    if all(n is not None for _, _, n in segments):
        return Size(sum(n for _, _, n in segments), f"the byte ranges of {len(segments)} segments", True)
    picked = sampled_segments([s[1] for s in segments])
    sizes = {}
    for i in picked:
        url, _, known = segments[i]
        sizes[i] = known if known is not None else head_size(ydl, url, episode, headers)
        if sizes[i] is None:
            return None
    if len(sizes) == len(segments):
        return Size(sum(sizes.values()), f"Content-Length of all {len(segments)} segments", True)
    fixed = sum(sizes[i] for i in picked if segments[i][1] == 0)
    # The fastest sampled segment sets the rate (bitrates vary), but not a stub: a
    # final segment of a fraction of a second is mostly container headers.
    timed = [i for i in picked if segments[i][1] > 0]
    longest = max(segments[i][1] for i in timed)
    rate = max(sizes[i] / segments[i][1] for i in timed if segments[i][1] >= longest / 2)
    seconds = sum(s[1] for s in segments)
    return Size(int(fixed + rate * seconds),
                f"Content-Length of {len(picked)} of {len(segments)} segments x {seconds:.0f} s", False)


def format_size(ydl, info: dict, fmt: dict, episode: str = "", probe: bool = True) -> Size | None:
    """What one format will write, from what yt-dlp extracted: filesize, else
    filesize_approx, else bitrate x duration, else (probe=True) the Content-Length of
    a direct media URL or of the stream's segments. Never a manifest's own size."""
    if fmt.get("filesize"):
        return Size(int(fmt["filesize"]), "yt-dlp filesize", True)
    if fmt.get("filesize_approx"):
        return Size(int(fmt["filesize_approx"]), "yt-dlp filesize_approx", False)
    protocol = str(fmt.get("protocol") or "")
    segments = None
    if protocol.startswith("http_dash_segments"):
        segments = _dash_segments(fmt)
    elif protocol.startswith("m3u8") and probe:
        segments = _hls_segments(ydl, fmt, episode)
    kbps = fmt.get("tbr") or ((fmt.get("abr") or 0) + (fmt.get("vbr") or 0))
    seconds = max(float(info.get("duration") or 0), float(fmt.get("duration") or 0),
                  sum(s[1] for s in segments or []))
    estimates = []
    if kbps and seconds:
        estimates.append(Size(int(kbps * 1000 / 8 * seconds),
                              f"bitrate x duration ({kbps:.0f} kbit/s x {seconds:.1f} s)", False))
    if probe and segments:
        # A manifest's bitrate is nominal (container overhead, peaks): the segments'
        # own sizes, exact or sampled, are the check; the larger estimate is declared.
        sampled = _segments_size(ydl, segments, fmt.get("http_headers"), episode)
        if sampled and sampled.exact:
            return sampled
        estimates += [sampled] if sampled else []
    if estimates or not probe:
        return max(estimates, key=lambda e: e.bytes, default=None)
    url = fmt.get("url") or ""
    if protocol in ("http", "https") and not _is_manifest(url):
        size = head_size(ydl, url, episode, fmt.get("http_headers"))
        if size:
            return Size(size, "Content-Length", True)
    return None


def requested_formats(info: dict) -> list[dict]:
    """The format(s) yt-dlp chose: several when it merges (video+audio)."""
    return list(info.get("requested_formats") or [info])


def declare_size(ydl, info: dict, settings: Settings, episode: str, expected_size_mb: float | None,
                 measured: int | None = None):
    """(media bytes, reserved bytes, source): `media` caps what the download may write,
    `reserved` adds what post-processing copies (a merge or an ffmpeg fixup writes the
    file once more before the parts are deleted). `measured`: what an earlier attempt
    that was stopped measured (download_episode), declared as it is."""
    dl, dm = settings.download, settings.disk_management
    formats = requested_formats(info)
    fragmented = any(str(f.get("protocol") or "").startswith(("m3u8", "http_dash")) for f in formats)
    copies = len(formats) > 1 or (fragmented and dl.fixup != "never")
    if measured:
        return measured, measured * (2 if copies else 1), "measured by the attempt that was stopped"
    sizes = []
    for fmt in formats:
        size = format_size(ydl, info, fmt, episode, probe=not expected_size_mb)
        sizes.append(size)
    margin = dl.size_estimate_margin
    # An estimate gets the margin; an exact figure does not.
    known = None if any(s is None for s in sizes) else Size(
        sum(s.bytes if s.exact else math.ceil(s.bytes * (1 + margin)) for s in sizes),
        " + ".join(s.source + ("" if s.exact or not margin else f" + {margin:.0%} margin") for s in sizes),
        all(s.exact for s in sizes))
    if expected_size_mb:
        media, source = int(expected_size_mb * MB), "catalogue expected_size_mb"
        if known and known.exact and known.bytes > media:
            raise SizeExceeded(f"{episode}: the server declares {known.bytes} bytes ({known.source}), more than "
                               f"the catalogue's expected_size_mb {expected_size_mb}")
        if known:
            source += f" (yt-dlp: {known.bytes / MB:.1f} MB from {known.source})"
    elif known:
        media, source = known.bytes, known.source
    else:
        media, source = int(dm.default_video_size_mb * MB), "default_video_size_mb (yt-dlp gave no size)"
    if dl.max_filesize_mb:
        media = min(media, int(dl.max_filesize_mb * MB))
    return media, media * (2 if copies else 1), source


def describe_format(info: dict) -> dict:
    """What was chosen, as the ledger and the transcript record it."""
    formats = requested_formats(info)
    audio_only = all(f.get("vcodec") == "none" for f in formats)  # None: unknown, so not audio only
    return {"format_id": str(info.get("format_id") or "+".join(str(f.get("format_id")) for f in formats)),
            "format": info.get("format"), "ext": info.get("ext"),
            "protocol": "+".join(str(f.get("protocol")) for f in formats), "audio_only": bool(audio_only)}


# -- one episode --------------------------------------------------------------------------
def download_episode(episode: str, url: str, out: Path, settings: Settings, gate=None,
                     expected_size_mb: float | None = None, hosts=None, on_extracted=None,
                     suspect: bool = False) -> dict:
    """Download `url` to `out` inside the disk gate and the host's politeness limits,
    then validate the media, retrying transient faults with backoff (see the module
    docstring). A download stopped for growing past its declared size is deleted at
    once and tried once more, declaring what was measured, when that fits the budget;
    else (or when it grows past that too) the episode can never fit and is given up.

    Returns {"bytes", "declared", "size_source", "format_id", "format", "ext",
    "protocol", "audio_only", "duration", "seconds", "attempts"}; raises
    DownloadFailed with the reason otherwise. Nothing is left at `out` on failure.
    `on_extracted(ydl, info)`, called with the page's extraction before any media request
    or reservation, may take the episode another way (a subtitle): when it returns
    something, nothing is downloaded and the result is {"subtitles": what it returned}.
    `suspect`: the episode failed on its own in an earlier run; it never probes a paused host.
    """
    measured = None
    while True:
        try:
            return _download_with_retries(episode, url, Path(out), settings, gate, expected_size_mb, hosts,
                                          measured, on_extracted, suspect)
        except SizeExceeded as exc:
            if exc.written is None:
                raise
            measured = _declare_after_stop(exc, settings, episode, retried=measured is not None,
                                           limit=largest_now(settings, gate))
            log.warning("%s; its files were deleted; trying once more, declaring %s (measured)",
                        exc, human_bytes(measured))


def largest_download(settings: Settings) -> int:
    """The largest reservation a download may ever hold under this budget (the gate's rule)."""
    from scribeflow.budget.gate import DownloadGate

    return DownloadGate.from_config(settings).largest(download=True)


def reservation(settings: Settings, declared: int) -> int:
    """What the gate reserves for a download that may write `declared` bytes: its cap
    plus the slack the watchdog's interval allows at the fastest write rate (watchdog.py)."""
    dm = settings.disk_management
    return declared + slack_bytes(dm.max_write_rate_mb_per_s * MB, dm.watch_interval_seconds)


def largest_now(settings: Settings, gate=None) -> int:
    """The largest reservation a download could be admitted with now, were nothing else
    in flight (the gate's largest_beside_kept; without a gate, the budget's largest)."""
    return largest_download(settings) if gate is None else gate.largest_beside_kept()


def _declare_after_stop(exc: SizeExceeded, settings: Settings, episode: str, retried: bool,
                        limit: int | None = None) -> int:
    """The media bytes to declare for the one retry after a stop. The whole is at least
    what was written over the larger share of the stream it covered (`exc.fraction`: at
    least, at most; unknown for ffmpeg, which reports none). The declaration is the first
    of these that fits the budget: the smaller share's extrapolation (plus
    size_estimate_margin), or without a share twice what was written or the room above
    the pause threshold when that is more (one download of unknown size then has the
    in-flight margin to itself); the least whole plus the margin; the least whole.
    Raises a permanent failure when even the least whole can never fit (or after the retry)."""
    dm = settings.disk_management
    margin = 1 + settings.download.size_estimate_margin
    written, declared = exc.written, exc.declared or exc.written
    limit = largest_download(settings) if limit is None else limit
    room = int(dm.in_flight_gb * GB - dm.audio_headroom_mb * MB) - reservation(settings, 0)
    unknown = max(2 * max(written, declared), min(room, limit - reservation(settings, 0)))
    low, high = exc.fraction or (0.0, 0.0)
    if 0 < high and low < 1:
        at_least = written / high
        share = f"{low:.0%}" if low == high else f"{low:.0%}-{high:.0%}"
        how = f"{human_bytes(written)} written at {share} of the stream: at least {human_bytes(at_least)} in all"
        first = written / low * margin if low else unknown
    else:
        at_least, first = written, unknown
        how = f"{human_bytes(written)} written of an unknown total"
    fix = (f"Set the catalogue's expected_size_mb to its real size, or raise disk_management.hard_limit_gb, "
           f"then `scribeflow retry {episode}`")
    if retried:
        raise DownloadFailed(f"{episode}: the download grew past its declared size twice (declared "
                             f"{human_bytes(declared)} after measuring it, stopped at {human_bytes(written)}): "
                             f"it cannot be sized, so it never fits this budget. {fix}", permanent=True)
    if reservation(settings, at_least) > limit:
        hard = human_bytes(settings.disk_management.hard_limit_gb * GB)
        beside = " beside the files the pipeline keeps (transcripts, tokens, the ledger)" \
            if limit < largest_download(settings) else ""
        raise DownloadFailed(f"{episode}: never fits: the download grew past its declared {human_bytes(declared)} "
                             f"({how}), more than the {human_bytes(limit)} one download may take under the hard "
                             f"limit of {hard}{beside}. {fix}", permanent=True)
    # Each is at least the least whole, which fits (above): the first that fits is declared.
    return next(e for e in (math.ceil(c) for c in (first, at_least * margin, at_least))
                if reservation(settings, e) <= limit)


@dataclass
class _Tries:
    """One download's tries within its job."""

    count: int = 0  # failed tries that may be retried
    first_failure: float | None = None
    waiting_since: float | None = None  # since when it waits for its paused host


def _download_with_retries(episode: str, url: str, out: Path, settings: Settings, gate, expected_size_mb,
                           hosts, measured: int | None, on_extracted=None, suspect: bool = False) -> dict:
    from scribeflow.budget.hosts import HostLimiter

    out.parent.mkdir(parents=True, exist_ok=True)
    hosts = hosts or HostLimiter.from_config(settings)
    if remove_partials(out):
        log.info("Removed a previous attempt's partial files for %s", episode)
    attempt, tries = 0, _Tries()
    while True:
        attempt += 1
        try:
            with hosts.slot(url, episode, waiting_since=tries.waiting_since, suspect=suspect):
                result = _attempt(episode, url, out, settings, gate, expected_size_mb,
                                  on_rate_limited=lambda: hosts.slow_down(url), measured=measured,
                                  on_extracted=on_extracted)
            hosts.succeeded(url)
            return {**result, "attempts": attempt}
        except DownloadFailed as exc:
            delay = _after_failure(exc, episode, url, out, settings.download, hosts, tries)
            if delay > LONG_WAIT_SECONDS and _alone(gate):
                exc.args = (f"{exc} (not retried in {delay:.0f} s: nothing else of this run is in flight; the next "
                            f"run tries again)",)
                raise exc
            if delay:
                time.sleep(delay)


def _after_failure(exc: DownloadFailed, episode: str, url: str, out: Path, dl: Download, hosts,
                   tries: _Tries) -> float:
    """After a failed try: raise it (the job fails, charged to whom it is due: judged
    when it could be either's), or return the seconds to wait before the next try (0:
    the host is paused, and this download waits for it in its slot, without spending
    its retries). The host's breaker hears of each download once, however often it is
    retried; an episode's own failure is never retried within its job."""
    freed = remove_partials(out)
    if isinstance(exc, DiskFull):
        log.warning("%s; removed its partial file (%.1f MB): downloads pause until space returns", exc, freed / MB)
    tries.first_failure = tries.first_failure or time.time()
    refused = exc.either
    if refused:
        _judge(exc, hosts, url, episode, tries.first_failure)
        if exc.kind == "episode":
            hosts.failed(url, str(exc), episode, own=True, refused=True)  # a ban that starts with one episode is seen
            raise exc
    if exc.kind == "host" and not isinstance(exc, DiskFull) \
            and hosts.failed(url, breaker_reason(exc), episode, refused=refused):
        tries.waiting_since = tries.waiting_since or time.time()
        return 0.0
    tries.count += 1
    # The host's failures (a 403 while it serves no one, an extractor error) are retried
    # like transient ones: the host's breaker pauses it when they keep coming.
    retryable = exc.transient or exc.kind == "host"
    if not retryable or tries.count > dl.retries:
        if retryable:
            exc.args = (f"{exc} (gave up after {tries.count} attempt(s))",)
        raise exc
    if _serves_others(exc, hosts, url, episode, tries):
        raise exc.charge("episode", f"on {tries.count} tries while the host {host_of(url)} serves other episodes: "
                                    f"the episode's own")
    delay = backoff_seconds(dl, tries.count, exc.retry_after)
    if exc.status == 429:  # slow the whole host down, in every process
        delay = max(delay, hosts.slow_down(url, exc.retry_after))
    log.warning("Attempt %d of %d for %s failed: %s; retrying in %.1f s", tries.count, dl.retries + 1, episode,
                exc, delay)
    return delay


# A retry that would wait longer than this is not waited for when no other episode is in
# flight: a run whose other work is done does not stay alive for one episode's backoff.
LONG_WAIT_SECONDS = 30.0


def _alone(gate) -> bool:
    """Whether this download is the only episode in flight (the ledger's stages)."""
    ledger = getattr(gate, "ledger", None)
    try:
        counts = ledger.stage_counts() if ledger is not None else None
    except Exception:  # the ledger is history here: never fail a download on it
        return False
    return counts is not None and sum(counts.get(s, 0) for s in ACTIVE_STAGES) <= 1


# In-job retries of a transient fault (5xx, a timeout) stop after this many when the host
# serves other episodes (none of them failing): it is then the episode's own.
TRIES_BEFORE_OWN = 4  # with the default backoff, 2 + 4 + 8 s of waiting: a blip of a 503 or two passes


def _serves_others(exc: DownloadFailed, hosts, url: str, episode: str, tries: _Tries) -> bool:
    if exc.status == 429 or isinstance(exc, DiskFull) or tries.count < TRIES_BEFORE_OWN:
        return False
    return hosts.serves_others(url, episode)


def _judge(exc: DownloadFailed, hosts, url: str, episode: str, since: float) -> None:
    """Settle a failure the episode or its host could own by the host's record (hosts.py)."""
    whose, served = hosts.judge(url, episode, since)
    host = host_of(url)
    if whose == EPISODE:
        exc.charge("episode", f"while the host {host} serves other episodes ({served} served): the episode's own "
                              f"(region-locked, removed or private?)")
    else:
        exc.charge("host", f"(the host {host} fails other episodes too, or has served none yet: the host's)")


def _attempt(episode: str, url: str, out: Path, settings: Settings, gate, expected_size_mb,
             on_rate_limited=None, measured: int | None = None, on_extracted=None) -> dict:
    """One try: extract, declare the size, wait for the gate, download under the
    watchdog, validate. Returns what download_episode describes."""
    import yt_dlp

    progress = _Progress(episode)
    opts = ydl_options(settings.download, out, [progress.hook], on_rate_limited)
    opts["postprocessor_hooks"] = [lambda status: progress.check()]
    opts["outtmpl"] = str(out.with_name(staging_prefix(out))).replace("%", "%%") + "%(ext)s"
    started = time.monotonic()
    with yt_dlp.YoutubeDL(opts) as ydl:
        info = _extract(ydl, url, episode)
        extracted_at = time.monotonic()
        taken = on_extracted(ydl, info) if on_extracted is not None else None
        if taken:
            return {"subtitles": taken}
        media, declared, source = declare_size(ydl, info, settings, episode, expected_size_mb, measured)
        chosen = describe_format(info)
        progress.limit = media
        _log_declared(episode, media, declared, source, chosen)
        watchdog = _download_admitted(ydl, url, info, out, episode, settings, gate, progress,
                                      (media, declared), extracted_at)
    return {**_validated(out, episode, chosen, started, watchdog, settings), "declared": declared,
            "size_source": source, **chosen}


class _Progress:
    """yt-dlp's progress hook: stops a download that grows past its declared size (the
    watchdog does the same by the bytes on disk, for downloaders that report nothing),
    and logs the progress every 10 s."""

    def __init__(self, episode: str):
        self.episode = episode
        self.limit: int | None = None
        self.last_log = 0.0
        self.files: dict[str, int] = {}
        self.fraction: tuple[float, float] | None = None
        self.watchdog: DiskWatchdog | None = None

    def check(self) -> None:
        if self.watchdog is not None:
            self.watchdog.check()

    def hook(self, status: dict) -> None:
        self.check()
        if status.get("status") != "downloading":
            return
        # downloaded_bytes is cumulative over a fragmented download's fragments, and
        # per file: a merge downloads one file per format.
        self.files[status.get("filename") or ""] = status.get("downloaded_bytes") or 0
        done = sum(self.files.values())
        self.fraction = _share_written(status) or self.fraction
        if self.limit is not None and done > self.limit:
            raise SizeExceeded(
                f"{self.episode}: download grew past its declared {human_bytes(self.limit)}; "
                f"stopped at {human_bytes(done)} to hold the disk limit",
                written=done, fraction=self.fraction, declared=self.limit)
        now = time.monotonic()
        if now - self.last_log >= 10:
            self.last_log = now
            total = status.get("total_bytes") or status.get("total_bytes_estimate")
            pct = f"{100 * done / total:.0f}%" if total else "?"
            log.info("Downloading %s: %.1f MB (%s), %.2f MB/s", self.episode, done / MB, pct,
                     (status.get("speed") or 0) / MB)


def _share_written(status: dict) -> tuple[float, float] | None:
    """The share of the stream written, as (at least, at most): for a fragmented stream,
    between the fragments finished and those begun; for a file whose length the server
    sent, exact. (yt-dlp's total_bytes_estimate is no help: without lengths it equals
    what is done.)"""
    if status.get("fragment_count"):
        index, count = status.get("fragment_index") or 0, status["fragment_count"]
        return index / count, min(1.0, (index + 1) / count)
    if status.get("total_bytes"):
        share = (status.get("downloaded_bytes") or 0) / status["total_bytes"]
        return share, share
    return None


def _log_declared(episode: str, media: int, declared: int, source: str, chosen: dict) -> None:
    log.info("Declared size of %s: %.2f MB (from %s)%s; format %s (%s%s)", episode, media / MB, source,
             f", {declared / MB:.2f} MB reserved with the post-processing copy" if declared > media else "",
             chosen["format_id"], "audio only" if chosen["audio_only"] else "with video", ", " + chosen["protocol"])


def _download_admitted(ydl, url: str, info: dict, out: Path, episode: str, settings: Settings, gate,
                       progress: _Progress, sizes: tuple[int, int], extracted_at: float) -> DiskWatchdog:
    """The download itself, once the gate admits its reservation, under the watchdog
    that stops it at its declared size by the bytes on disk; `out` is then the
    finished file. Returns the watchdog (for its figures)."""
    dl, dm = settings.download, settings.disk_management
    media, declared = sizes
    reserved = reservation(settings, declared)
    watchdog = DiskWatchdog(out.parent, staging_prefix(out), cap=declared, interval=dm.watch_interval_seconds,
                            extra=(out,), episode=episode)
    try:
        admission = gate.admitted(episode, reserved, [out, *_expected_files(ydl, info)]) if gate is not None \
            else contextlib.nullcontext()
        with admission, watchdog:
            progress.watchdog = watchdog
            try:
                # Signed media URLs expire (minutes to hours) while downloads are paused:
                # an old extraction is done again now that the download may start.
                age = time.monotonic() - extracted_at
                if age > dl.max_url_age_seconds:
                    log.info("%s: extracted %.0f s ago, before the gate admitted it: extracting again for "
                             "fresh media URLs", episode, age)
                    info = _fresh(ydl, url, episode, info, settings, declared)
                _finish(_run_refreshing(ydl, url, info, out, episode, settings, declared), out, episode)
                watchdog.check()  # a stop in the last interval: the file is not trusted
            except (DownloadFailed, Stopped):
                if watchdog.tripped:  # whatever yt-dlp made of the stop (ffmpeg's exit code...)
                    raise SizeExceeded(watchdog.tripped, written=max(watchdog.written_at_stop, media),
                                       fraction=progress.fraction, declared=media) from None
                raise
    except BaseException:
        remove_partials(out)
        raise
    finally:
        progress.watchdog = None
        log.info("Watchdog of %s: %d readings every %.0f ms (longest gap %.0f ms), largest %s of %s "
                 "reserved, fastest %s/s, %.3f s CPU (peak_bytes=%d reserved_bytes=%d)", episode,
                 watchdog.readings, dm.watch_interval_seconds * 1000, watchdog.longest_gap * 1000,
                 human_bytes(watchdog.peak), human_bytes(reserved), human_bytes(watchdog.fastest),
                 watchdog.cpu_seconds, watchdog.peak, reserved)
    return watchdog


def _run_refreshing(ydl, url: str, info: dict, out: Path, episode: str, settings: Settings, declared: int) -> dict:
    """yt-dlp's download of `info`; a 403 on a media URL, most often a signed URL that
    expired, gets one fresh extraction before it counts as anything."""
    try:
        return _run(ydl, info, episode)
    except DownloadFailed as exc:
        if exc.status != 403:
            raise
        log.warning("%s; extracting again for fresh media URLs", exc)
        remove_partials(out)
        return _run(ydl, _fresh(ydl, url, episode, info, settings, declared), episode)


def _validated(out: Path, episode: str, chosen: dict, started: float, watchdog: DiskWatchdog,
               settings: Settings) -> dict:
    """The finished file checked with PyAV: unusable media is the episode's, for good."""
    try:
        media_info = validate(out)
    except MediaError as exc:
        remove_partials(out)
        raise DownloadFailed(f"{episode}: downloaded file is unusable: {exc}", permanent=True) from exc
    seconds = time.monotonic() - started
    size = out.stat().st_size
    log.info("Downloaded %s: %.2f MB (format %s), %.1f s of %s audio, in %.1f s", episode, size / MB,
             chosen["format_id"], media_info.duration, media_info.audio_codec, seconds)
    dm = settings.disk_management
    if watchdog.fastest > dm.max_write_rate_mb_per_s * MB:
        log.warning("%s was written at %s/s, faster than disk_management.max_write_rate_mb_per_s (%g MB/s): "
                    "raise it, so that the slack reserved per download covers the watchdog's interval",
                    episode, human_bytes(watchdog.fastest), dm.max_write_rate_mb_per_s)
    return {"bytes": size, "duration": media_info.duration, "seconds": seconds}


def _fresh(ydl, url: str, episode: str, info: dict, settings: Settings, declared: int) -> dict:
    """The episode extracted again (fresh signed URLs), its format chosen again; the same
    reservation holds unless the new choice declares more, which is tried again later."""
    fresh = _extract(ydl, url, episode)
    if describe_format(fresh)["format_id"] != describe_format(info)["format_id"]:
        _, again, _ = declare_size(ydl, fresh, settings, episode, None)
        if again > declared:
            raise DownloadFailed(f"{episode}: extracted again, it now declares {human_bytes(again)}, more than "
                                 f"the {human_bytes(declared)} reserved", transient=True, kind="host")
    return fresh


def _expected_files(ydl, info: dict) -> list[Path]:
    """The staging files yt-dlp will write for `info`, with their partials (for the
    gate's accounting; fragment partials come and go and are not listed, so the gate's
    view of what is left to write stays on the safe side)."""
    final = Path(ydl.prepare_filename(info))
    names = [final, final.with_name(f"{final.stem}.temp{final.suffix}")]
    if len(requested_formats(info)) > 1:
        names += [final.with_name(f"{final.stem}.f{f.get('format_id')}.{f.get('ext')}")
                  for f in requested_formats(info)]
    return [p for n in names for p in (n, n.with_name(n.name + ".part"), n.with_name(n.name + ".ytdl"))]


def _finish(done: dict | None, out: Path, episode: str) -> None:
    """Rename yt-dlp's finished file to the rule's output."""
    path = None
    for d in (done or {}).get("requested_downloads") or []:
        if d.get("filepath") and Path(d["filepath"]).is_file():
            path = Path(d["filepath"])
    if path is None:
        left = [p for p in staging_files(out) if not p.name.endswith(PARTIAL_SUFFIXES) and ".part-Frag" not in p.name]
        path = left[0] if len(left) == 1 else None
    if path is None:
        remove_partials(out)
        raise DownloadFailed(f"{episode}: yt-dlp finished without a file (over max_filesize?)", permanent=True)
    os.replace(path, out)
    for stale in staging_files(out):  # parts of a merge yt-dlp was told to keep, none normally
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _ytdlp_errors(episode: str):
    """yt-dlp's errors as DownloadFailed, classified; ours (the size hook's) as they are."""
    from yt_dlp.utils import DownloadError

    try:
        yield
    except DownloadFailed:
        raise
    except (DownloadError, OSError) as exc:
        failure = classify(exc, episode)
        if failure.__traceback__ is not None:  # our own, raised inside yt-dlp (the size hook)
            raise failure from None
        raise failure from exc


def _extract(ydl, url: str, episode: str) -> dict:
    """yt-dlp's extraction and format choice, once (the download reuses it)."""
    with _ytdlp_errors(episode):
        info = ydl.extract_info(url, download=False)
    if info is None:
        raise DownloadFailed(f"{episode}: yt-dlp extracted nothing at this address")
    if info.get("_type") in ("playlist", "multi_video"):
        entries = [e for e in info.get("entries") or [] if e]
        if len(entries) != 1:
            raise DownloadFailed(f"{episode}: the address holds {len(entries)} videos, not one; put each "
                                 f"video's own address in the catalogue", permanent=True)
        info = entries[0]
    return info


def _run(ydl, info: dict, episode: str) -> dict:
    with _ytdlp_errors(episode):
        done = ydl.process_ie_result(info, download=True)
    if ydl._download_retcode:
        raise DownloadFailed(f"{episode}: yt-dlp reported failure (exit code {ydl._download_retcode})")
    return done
