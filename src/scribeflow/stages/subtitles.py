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

import re
import unicodedata
from pathlib import Path

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


def page_subtitles(url: str, episode: str, languages: list[str], dest: str | Path, automatic: bool = False,
                   socket_timeout: float = 30) -> list[Path]:
    """The source page's own subtitle tracks in `languages`, fetched by yt-dlp without the
    media (skip_download): manual tracks, and automatic captions only if `automatic`.
    Written as `dest`/{episode}.{lang}.{ext}; returns their paths (none: an empty list)."""
    from yt_dlp import YoutubeDL

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob(f"{episode}.*"))
    options = {"skip_download": True, "writesubtitles": True, "writeautomaticsub": automatic,
               "subtitleslangs": list(languages), "subtitlesformat": "ass/ssa/srt/vtt/best",
               "outtmpl": str(dest / episode).replace("%", "%%") + ".%(ext)s", "noplaylist": True,
               "quiet": True, "no_warnings": True, "noprogress": True, "socket_timeout": socket_timeout}
    with YoutubeDL(options) as ydl:
        ydl.extract_info(url, download=True)
    return sorted(p for p in set(dest.glob(f"{episode}.*")) - before
                  if p.suffix.lower() in (".ass", ".ssa", ".srt", ".vtt"))


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
