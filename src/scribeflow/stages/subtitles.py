"""Subtitles as transcripts: a subtitle file (ASS, SSA, SRT or VTT, read by pysubs2) reduced
to its dialogue, in the transcript's own shape (segments with start, end and text).

Anime ASS files mix dialogue with typesetting: signs, titles, karaoke-timed songs with
their romaji and translations, notes. What a reader of the corpus wants is what was said,
so a line is dropped when it is
- a comment;
- positioned or drawn (\\pos, \\move, \\clip, \\iclip, \\org, a \\p drawing): a sign;
- karaoke-timed (\\k, \\kf, \\ko, \\K): a song;
- of a style whose name matches one of `style_patterns` (case-insensitive regular
  expressions: "sign", "song", "op", "ed", ...);
and what is left loses its override tags, its \\N and \\n line breaks are joined (without a
space between two Japanese characters), and the same text shown twice over overlapping or
touching times (a line split for a layout, an outline layer) becomes one segment."""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from pathlib import Path

from scribeflow.config.layout import SUBTITLE_EXTENSIONS

log = logging.getLogger("scribeflow.stages.subtitles")

# Style names that mark typesetting rather than dialogue, in fansub and broadcast ASS files.
STYLE_PATTERNS = (r"sign", r"song", r"\bop\b", r"\bed\b", r"^op", r"^ed", r"kara", r"lyric", r"romaji", r"title",
                  r"insert", r"note", r"typeset", r"\btl\b", r"eyecatch", r"preview", r"logo", r"credit")
_SIGN = re.compile(r"\\(?:pos|move|clip|iclip|org)\s*\(|\\p[1-9]")
_KARAOKE = re.compile(r"\\(?:k|kf|ko|K)\d")
ENCODINGS = ("utf-8-sig", "utf-16", "cp932", "euc_jp")  # cp932: Shift JIS as Windows writes it, common in old sets


class SubtitleError(ValueError):
    """A subtitle file that cannot be read; the message names it."""


def load(path: str | Path):
    """The file, parsed by pysubs2, in the first encoding that reads it (UTF-16 only with
    its byte-order mark: any even number of bytes decodes as UTF-16)."""
    import pysubs2

    data = Path(path).read_bytes()
    encodings = [e for e in ENCODINGS if e != "utf-16" or data[:2] in (b"\xff\xfe", b"\xfe\xff")]
    failure = f"not text in any of {', '.join(encodings)}"
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        try:
            return pysubs2.SSAFile.from_string(text)
        except Exception as exc:  # pysubs2 raises its own kinds, and ValueError, on a bad file
            failure = f"not a subtitle file pysubs2 reads ({exc})"
    raise SubtitleError(f"{path}: {failure}")


def _join(lines: list[str]) -> str:
    out = ""
    for line in (ln.strip() for ln in lines):
        if not line:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(line[0])):
            out += " "
        out += line
    return out


def _is_cjk(char: str) -> bool:
    name = unicodedata.name(char, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "FULLWIDTH")) or char in "、。「」『』…！？"


def dialogue(subs, style_patterns=STYLE_PATTERNS) -> list[dict]:
    """The dialogue of a parsed file: [{start, end, text}] in seconds, in time order."""
    styles = [re.compile(p, re.I) for p in style_patterns]
    kept = []
    for event in subs:
        if event.is_comment or _SIGN.search(event.text) or _KARAOKE.search(event.text):
            continue
        if any(p.search(event.style or "") for p in styles):
            continue
        text = _join(re.split(r"\\[Nn]|\n", event.plaintext))
        if text and event.end > event.start:
            kept.append({"start": round(event.start / 1000, 3), "end": round(event.end / 1000, 3), "text": text})
    kept.sort(key=lambda s: (s["start"], s["end"]))
    merged: list[dict] = []
    for seg in kept:
        twin = next((m for m in reversed(merged[-4:]) if m["text"] == seg["text"] and seg["start"] <= m["end"]), None)
        if twin is not None:
            twin["end"] = max(twin["end"], seg["end"])
        else:
            merged.append(seg)
    return merged


def script_share(text: str, language: str) -> float:
    """The share of the letters of `text` written in `language`'s script: kana and kanji for
    Japanese, hangul for Korean, CJK for Chinese, Latin otherwise. A Japanese show's
    English subtitles are a translation: their share for "ja" is near 0."""
    letters = [c for c in text if unicodedata.category(c)[0] == "L"]
    if not letters:
        return 0.0
    base = language.split("-")[0].lower()
    prefixes = {"ja": ("HIRAGANA", "KATAKANA", "CJK"), "zh": ("CJK",), "ko": ("HANGUL",),
                "jpn": ("HIRAGANA", "KATAKANA", "CJK")}.get(base, ("LATIN",))
    return sum(unicodedata.name(c, "").startswith(prefixes) for c in letters) / len(letters)


def covered_seconds(segments: list[dict]) -> float:
    """Seconds covered by at least one segment (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for seg in sorted(segments, key=lambda s: s["start"]):
        start = max(seg["start"], end)
        if seg["end"] > start:
            total += seg["end"] - start
        end = max(end, seg["end"])
    return total


FORMATS = "ass/ssa/srt/vtt/best"  # yt-dlp's subtitlesformat: the richest first (ASS keeps the styles)


def page_tracks(ydl, info: dict, episode: str, languages, dest: str | Path, automatic: bool = False) -> list[Path]:
    """The tracks of an extracted page (`info`, from `ydl`'s extract_info) in `languages`:
    manual ones, and automatic captions only if `automatic`, chosen by yt-dlp's own
    process_subtitles and fetched through `ydl` (its cookies, headers and proxy), never the
    media. Written as `dest`/{episode}.{lang}.{ext}; returns their paths."""
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
            from yt_dlp.networking import Request

            with ydl.urlopen(Request(track["url"], headers=track.get("http_headers") or {})) as response:
                data = response.read()
        path = dest / f"{episode}.{lang}.{ext}"
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        paths.append(path)
    return paths


def page_subtitles(url: str, episode: str, languages, dest: str | Path, automatic: bool = False,
                   socket_timeout: float = 30) -> list[Path]:
    """The tracks of the page at `url` (page_tracks), its media never requested."""
    from yt_dlp import YoutubeDL

    options = {"skip_download": True, "noplaylist": True, "quiet": True, "no_warnings": True, "noprogress": True,
               "socket_timeout": socket_timeout}
    with YoutubeDL(options) as ydl:
        info = ydl.extract_info(url, download=False)
        if info.get("_type") in ("playlist", "multi_video"):
            info = next(e for e in info.get("entries") or [] if e)
        return page_tracks(ydl, info, episode, languages, dest, automatic)


def choose(candidates: list[str | Path], language: str, duration: float | None = None, min_coverage: float = 0.5,
           min_script_share: float = 0.5, style_patterns=STYLE_PATTERNS) -> tuple[list[dict] | None, Path | None,
                                                                                  list[str]]:
    """The first usable subtitle of `candidates`: (its dialogue, its path, why each one
    before it was refused). Usable: it reads, it has dialogue, its text is written in
    `language`'s script (a Japanese show's English subtitles are a translation, not a
    transcript), and, when the episode's `duration` is known, its dialogue spans at least
    `min_coverage` of it. None when none is: the episode is transcribed."""
    refused = []
    for path in map(Path, candidates):
        try:
            segments = dialogue(load(path), style_patterns)
        except SubtitleError as exc:
            refused.append(str(exc))
            continue
        text = " ".join(s["text"] for s in segments)
        if not segments:
            refused.append(f"{path.name}: no dialogue (only signs, songs or comments)")
            continue
        share = script_share(text, language)
        if share < min_script_share:
            refused.append(f"{path.name}: {share:.0%} of its letters are in {language}'s script: a translation, "
                           f"not a transcript")
            continue
        if duration:
            span = segments[-1]["end"] - segments[0]["start"]
            if span < min_coverage * duration:
                refused.append(f"{path.name}: its dialogue spans {span:.0f} s of the episode's {duration:.0f} s")
                continue
        return segments, path, refused
    return None, None, refused


# -- an episode's subtitles, found, judged and remembered ------------------------------------
# subtitles/{id}.subtitle.json (Layout.subtitle_verdict) holds what was found: the chosen
# file and its dialogue, or why each candidate was refused. Local files are judged once,
# when a run is planned (the key says which files and which settings the verdict is for);
# URLs and page tracks by the download job, which writes the same file.


def languages_for(settings, language: str | None) -> list[str]:
    """The configured subtitle languages, and the episode's catalogue language."""
    langs = list(settings.subtitles.languages)
    if language and language not in langs:
        langs.append(language)
    return langs


def folder_listing(folder: str | Path | None) -> dict[str, list[Path]]:
    """{stem: [paths]} of the subtitle files of `folder` ({id}.ass, {id}.ja.srt): one
    directory read per process, not a stat per episode."""
    listing: dict[str, list[Path]] = {}
    if not folder:
        return listing
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return listing
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in SUBTITLE_EXTENSIONS:
            listing.setdefault(stem, []).append(Path(entry.path))
    return listing


def local_candidates(episode: str, column: str | None, settings, listing: dict[str, list[Path]],
                     language: str | None = None) -> list[tuple[str, Path]]:
    """(origin, path) of the episode's local subtitle files, in the configured order: the
    catalogue's column (a path, not a URL) and the folder's {id}.{ext} and {id}.{lang}.{ext}
    in the languages' order."""
    found = []
    for source in settings.subtitles.sources:
        if source == "column" and column and not is_url(column):
            found.append(("column", Path(column)))
        elif source == "folder":
            for stem in (episode, *(f"{episode}.{lang}" for lang in languages_for(settings, language))):
                found.extend(("folder", path) for path in sorted(listing.get(stem, ())))
    return found


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def key_of(candidates: list[tuple[str, Path]], settings, language: str, duration: float | None) -> str:
    """What a verdict on local files depends on: the files as they are and the settings."""
    files = []
    for origin, path in candidates:
        try:
            st = path.stat()
            files.append([origin, str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([origin, str(path), None, None])
    sub = settings.subtitles
    return json.dumps([files, language, duration, sub.min_coverage, sub.min_script_share,
                       list(sub.style_patterns or STYLE_PATTERNS)], ensure_ascii=False)


def judge(candidates: list[tuple[str, Path | str]], settings, language: str, duration: float | None,
          key: str | None = None) -> dict:
    """The verdict on `candidates` ([(origin, path)]): the first usable one's dialogue, or
    why each was refused."""
    sub = settings.subtitles
    origins = {str(path): origin for origin, path in candidates}
    segments, path, refused = choose([p for _, p in candidates], language, duration, sub.min_coverage,
                                     sub.min_script_share, sub.style_patterns or STYLE_PATTERNS)
    verdict = {"key": key, "usable": segments is not None, "language": language, "refused": refused}
    if segments is not None:
        verdict.update(origin=origins.get(str(path)), file=str(path), segments=segments)
    return verdict


def read_verdict(path: str | Path) -> dict | None:
    """A verdict file, or None when there is none (or it is damaged: it is judged again)."""
    try:
        verdict = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and "usable" in verdict else None


def write_verdict(path: str | Path, verdict: dict) -> None:
    from scribeflow.files import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(verdict, ensure_ascii=False), encoding="utf-8")


def usable(verdict: dict | None) -> bool:
    return bool(verdict and verdict.get("usable") and verdict.get("segments"))


def transcript(verdict: dict, episode: str, duration: float | None = None) -> dict:
    """The transcript of a usable verdict: ASR's shape (docs/outputs.md), `source: subtitles`."""
    segments = [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                for i, s in enumerate(verdict["segments"])]
    return {
        "id": episode,
        "language": verdict.get("language"),
        "language_probability": None,
        "duration": duration or (segments[-1]["end"] if segments else 0.0),
        "source": "subtitles",
        "subtitle": {"origin": verdict.get("origin"), "file": verdict.get("file"),
                     "refused": verdict.get("refused") or []},
        "text": " ".join(s["text"] for s in segments),
        "segments": segments,
    }


def sampled(episode: str, share: float) -> bool:
    """Whether `episode` is among `share` of the episodes: by a hash of its id, so the same
    episodes every run and on every machine."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(episode.encode(), digest_size=8).digest(), "big") < share * 2**64


class Finder:
    """Which episodes have a usable subtitle, as a run is planned: the rules ask it per
    episode. `row(episode, column)` reads the catalogue. A verdict on local files is made
    once and kept in subtitles/ (`judge`: this process may judge; a cluster job only
    reads what the planning process found); one made by a download job (a URL, a page
    track) is taken as it is."""

    PROGRESS_EVERY = 500  # judged files between two progress calls

    def __init__(self, settings, layout, row, judge: bool = True, write=True, progress=None):
        """`write`: whether verdicts are kept (or a function that says so when asked: a
        dry run, which writes nothing to data_dir, is known only once the DAG is built).
        `progress(n)`: told every PROGRESS_EVERY files judged (a chunk's first plan judges
        its subtitles at ~11 ms each)."""
        self.settings, self.layout, self.row, self.may_judge = settings, layout, row, judge
        self.progress = progress
        self.write = write if callable(write) else (lambda: write)
        self.sub = settings.subtitles
        self._verdicts: dict[str, dict | None] = {}
        self._listing = None
        self._kept: set[str] | None = None  # the episodes with a verdict file: one directory read
        self.judged = 0

    @property
    def enabled(self) -> bool:
        return self.sub.policy != "never"

    @property
    def only(self) -> bool:
        return self.sub.policy == "only"

    def listing(self) -> dict[str, list[Path]]:
        if self._listing is None:
            self._listing = folder_listing(self.sub.folder if "folder" in self.sub.sources else None)
        return self._listing

    def language(self, episode: str) -> str:
        return self.row(episode, "language") or self.settings.transcribe.language or self.sub.languages[0]

    def verdict(self, episode: str) -> dict | None:
        if not self.enabled:
            return None
        if episode not in self._verdicts:
            self._verdicts[episode] = self._verdict(episode)
        return self._verdicts[episode]

    def _verdict(self, episode: str) -> dict | None:
        from scribeflow.config.layout import SUBTITLE_SUFFIX
        from scribeflow.files import ids_with_suffix

        if self._kept is None:
            self._kept = ids_with_suffix(self.layout.subtitles, SUBTITLE_SUFFIX)
        kept = read_verdict(self.layout.subtitle_verdict(episode)) if episode in self._kept else None
        if kept and kept.get("found_by") == "download" and kept.get("usable"):
            return kept  # found by a download job
        column = self.row(episode, "subtitle")
        if not self.listing() and not (column and not is_url(column)):
            return kept  # no local file to judge: what a planned run asks of most episodes, at once
        language = self.language(episode)
        candidates = local_candidates(episode, column, self.settings, self.listing(), language)
        if not candidates:
            return kept
        duration = self.row(episode, "duration_s")
        key = key_of(candidates, self.settings, language, duration)
        if kept and (kept.get("key") == key or not self.may_judge):
            return kept
        if not self.may_judge:
            return None
        verdict = judge(candidates, self.settings, language, duration, key)
        self.judged += 1
        if self.progress is not None and self.judged % self.PROGRESS_EVERY == 0:
            self.progress(self.judged)
        if self.write():
            try:
                write_verdict(self.layout.subtitle_verdict(episode), verdict)
            except OSError:
                pass  # a read-only data_dir: judged again next time
        return verdict

    def subtitled(self, episode: str) -> bool:
        """A usable subtitle is known: the episode's transcript is made from it."""
        return usable(self.verdict(episode))

    def source_file(self, episode: str) -> str:
        """What a subtitled episode's transcript job reads: the local subtitle file (a dry
        run writes no verdict), or the verdict a download job wrote for a URL or a track."""
        verdict = self.verdict(episode) or {}
        if verdict.get("found_by") != "download" and verdict.get("file"):
            return verdict["file"]
        return str(self.layout.subtitle_verdict(episode))

    def may_find(self, episode: str) -> bool:
        """A download job may still find one: a URL in the column, or the page's tracks."""
        column = self.row(episode, "subtitle")
        return ("column" in self.sub.sources and bool(column) and is_url(column)) or "page" in self.sub.sources


class UrlSearch:
    """A download job's look for a subtitle at a URL: the catalogue's column, then the
    page's tracks (from the extraction the download makes anyway: no page fetched twice,
    no media requested). What it finds is the episode's verdict file."""

    def __init__(self, settings, episode: str, column: str | None, language: str | None,
                 duration: float | None):
        self.settings, self.episode, self.column, self.duration = settings, episode, column, duration
        self.sub = settings.subtitles
        self.language = language or settings.transcribe.language or self.sub.languages[0]
        from scribeflow.config.layout import Layout

        self.path = Layout.from_config(settings).subtitle_verdict(episode)
        self.on = self.sub.policy != "never"
        self.found: dict | None = None
        self.refused: list[str] = list((read_verdict(self.path) or {}).get("refused") or [])

    def _judge(self, origin: str, paths: list[Path], file: str | None = None) -> dict | None:
        verdict = judge([(origin, p) for p in paths], self.settings, self.language, self.duration)
        verdict["found_by"] = "download"
        if verdict["usable"] and file:
            verdict["file"] = file
        self.refused = list(dict.fromkeys(self.refused + verdict["refused"]))  # a retry says it once
        verdict["refused"] = self.refused
        write_verdict(self.path, verdict)
        if verdict["usable"]:
            self.found = verdict
            log.info("%s: its transcript is the subtitle %s (%s, %d lines): no media is downloaded", self.episode,
                     verdict["file"], origin, len(verdict["segments"]))
        return self.found

    def from_column(self) -> dict | None:
        if not (self.on and "column" in self.sub.sources and self.column and is_url(self.column)):
            return None
        import tempfile

        from yt_dlp import YoutubeDL
        from yt_dlp.networking import Request

        with tempfile.TemporaryDirectory() as tmp:
            name = Path(self.column.split("?")[0]).name or "subtitle.srt"
            path = Path(tmp) / f"{self.episode}.{name}"
            try:
                with YoutubeDL({"quiet": True, "no_warnings": True}) as ydl, ydl.urlopen(Request(self.column)) as r:
                    path.write_bytes(r.read())
            except Exception as exc:  # yt-dlp's network errors: the subtitle is not there; the media may be
                self.refused = list(dict.fromkeys([*self.refused, f"{self.column}: could not be fetched ({exc})"]))
                log.warning("%s: its subtitle %s could not be fetched (%s)", self.episode, self.column, exc)
                return None
            return self._judge("column", [path], file=self.column)

    def from_page(self, ydl, info: dict) -> dict | None:
        """Called by the download with the page's extraction, before any media request."""
        if not (self.on and "page" in self.sub.sources and (info.get("subtitles") or (
                self.sub.automatic_captions and info.get("automatic_captions")))):
            return None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            paths = page_tracks(ydl, info, self.episode, languages_for(self.settings,
                                                                                           self.language),
                                          tmp, self.sub.automatic_captions)
            if not paths:
                tracks = ", ".join(sorted({*(info.get("subtitles") or {}), *(info.get("automatic_captions") or {})}))
                wanted = ", ".join(languages_for(self.settings, self.language))
                why = f"the page's tracks are in {tracks}: none in {wanted}"
                self.refused = list(dict.fromkeys([*self.refused, why]))
                write_verdict(self.path, {"usable": False, "found_by": "download", "language": self.language,
                                                    "refused": self.refused})
                return None
            found = self._judge("page", paths)
            if found:
                found["file"] = f"{info.get('webpage_url') or ''}#{Path(found['file']).name}"
                write_verdict(self.path, found)
            return found

    def fail_if_only(self) -> None:
        if self.on and self.sub.policy == "only" and self.found is None:
            from scribeflow.stages.download import DownloadFailed

            why = "; ".join(self.refused) or "none was found"
            raise DownloadFailed(f"{self.episode}: no usable subtitle ({why}) and policy is only: "
                                 f"not downloaded", permanent=True)
