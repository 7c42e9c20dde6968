"""Fetching subtitles from the web: a page's own tracks (through the extraction the download
makes anyway, with its cookies, headers and proxy) and a subtitle at a URL. A track or URL
that cannot be fetched (404, 403, a timeout) is a reason kept, never an error: the next
track, the next source, then the ASR."""

from __future__ import annotations

from pathlib import Path

from scribeflow.config.layout import SUBTITLE_EXTENSIONS

FORMATS = "ass/ssa/srt/vtt/best"  # yt-dlp's subtitlesformat: the richest first (ASS keeps the styles)


def fetch_errors() -> tuple[type[BaseException], ...]:
    """What a failed fetch raises: yt-dlp's network errors (HTTP status, timeouts, TLS,
    connection), and the OS's."""
    from yt_dlp.networking.exceptions import RequestError
    from yt_dlp.utils import DownloadError

    return RequestError, DownloadError, OSError


def fetch(ydl, url: str, headers: dict | None = None) -> bytes:
    from yt_dlp.networking import Request

    with ydl.urlopen(Request(url, headers=headers or {})) as response:
        return response.read()


def fetch_url(url: str, dest: Path, socket_timeout: float = 30) -> Path:
    """The subtitle at `url`, written to `dest`; raises one of fetch_errors()."""
    from yt_dlp import YoutubeDL

    with YoutubeDL({"quiet": True, "no_warnings": True, "socket_timeout": socket_timeout}) as ydl:
        dest.write_bytes(fetch(ydl, url))
    return dest


def page_tracks(ydl, info: dict, episode: str, languages, dest: str | Path, automatic: bool = False,
                failed: list[str] | None = None) -> list[Path]:
    """The tracks of an extracted page (`info`, from `ydl`'s extract_info) in `languages`:
    manual ones, and automatic captions only if `automatic`, chosen by yt-dlp's own
    process_subtitles and fetched through `ydl`, never the media. Written as
    `dest`/{episode}.{lang}.{ext}; returns their paths. A track that cannot be fetched is
    left out, its reason appended to `failed`."""
    from yt_dlp import YoutubeDL

    selector = YoutubeDL({"writesubtitles": True, "writeautomaticsub": automatic, "subtitleslangs": list(languages),
                          "subtitlesformat": FORMATS, "quiet": True, "no_warnings": True})
    chosen = selector.process_subtitles(info.get("id") or episode, info.get("subtitles"),
                                        info.get("automatic_captions")) or {}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang, track in chosen.items():
        ext = (track.get("ext") or "vtt").lower()
        if f".{ext}" not in SUBTITLE_EXTENSIONS:
            continue
        data = track.get("data")
        if data is None:
            try:
                data = fetch(ydl, track["url"], track.get("http_headers"))
            except fetch_errors() as exc:
                if failed is None:
                    raise
                failed.append(f"the page's {lang} track {track['url']} could not be fetched ({exc})")
                continue
        path = dest / f"{episode}.{lang}.{ext}"
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        paths.append(path)
    return paths


def page_subtitles(url: str, episode: str, languages, dest: str | Path, automatic: bool = False,
                   socket_timeout: float = 30, failed: list[str] | None = None) -> list[Path]:
    """The tracks of the page at `url` (page_tracks), its media never requested."""
    from yt_dlp import YoutubeDL

    options = {"skip_download": True, "noplaylist": True, "quiet": True, "no_warnings": True, "noprogress": True,
               "socket_timeout": socket_timeout}
    with YoutubeDL(options) as ydl:
        info = ydl.extract_info(url, download=False)
        if info.get("_type") in ("playlist", "multi_video"):
            info = next(e for e in info.get("entries") or [] if e)
        return page_tracks(ydl, info, episode, languages, dest, automatic, failed)
