"""Reading a subtitle file (ASS, SSA, SRT or VTT, by pysubs2) and keeping what was heard.

Anime ASS files mix dialogue with typesetting: signs, titles, karaoke-timed songs with
their romaji and translations, notes. A line is dropped when it is
- a comment;
- positioned or drawn (\\pos, \\move, \\clip, \\iclip, \\org, a \\p drawing): a sign;
- of a style whose name matches one of `style_patterns` (case-insensitive regular
  expressions: "sign", "title", "note", ...) and is no song style;
a karaoke-timed line (\\k, \\kf, \\ko, \\K) or one of a song style ("song", "op", "ed",
"kara", "lyric", "romaji", "insert") is kept as a `song` segment. What is left loses its
override tags; its lines are read as closed captions (captions.py: speaker labels, sound
descriptions, songs, readings and markers out of the text), joined (without a space between
two Japanese characters), and the same text shown twice over overlapping or touching
times (a line split for a layout, an outline layer) becomes one segment."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from scribeflow.stages.subtitles.captions import Cleaned, caption_lines

# Style names that mark typesetting or songs rather than dialogue, in fansub and broadcast ASS files.
STYLE_PATTERNS = (r"sign", r"song", r"\bop\b", r"\bed\b", r"^op", r"^ed", r"kara", r"lyric", r"romaji", r"title",
                  r"insert", r"note", r"typeset", r"\btl\b", r"eyecatch", r"preview", r"logo", r"credit")
# Of those, the styles of what is sung: kept as `song` segments, never counted as speech.
SONG_STYLES = re.compile(r"song|\bop\b|\bed\b|^op|^ed|kara|lyric|romaji|insert", re.I)
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
            return pysubs2.SSAFile.from_string(_vtt_markup(text))
        except Exception as exc:  # pysubs2 raises its own kinds, and ValueError, on a bad file
            failure = f"not a subtitle file pysubs2 reads ({exc})"
    raise SubtitleError(f"{path}: {failure}")


_VTT_VOICE = re.compile(r"<v(?:\.[\w.-]+)?\s+([^>]+)>")
_VTT_RUBY = re.compile(r"<rt>(.*?)</rt>")


def _vtt_markup(text: str) -> str:
    """WebVTT's voice spans and ruby, which pysubs2 drops or glues to the text, written as
    captions write them: <v 健太> as a label （健太）, <rt>かんじ</rt> as a reading (かんじ)."""
    if not text.lstrip("\ufeff").startswith("WEBVTT"):
        return text
    return _VTT_RUBY.sub(r"(\1)", _VTT_VOICE.sub(r"（\1）", text))


def join(lines: list[str]) -> str:
    out = ""
    for line in (ln.strip() for ln in lines):
        if not line:
            continue
        if out and not (is_cjk(out[-1]) and is_cjk(line[0])):
            out += " "
        out += line
    return out


def is_cjk(char: str) -> bool:
    name = unicodedata.name(char, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "FULLWIDTH")) or char in "、。「」『』…！？"


def _event_kind(event, styles) -> str | None:
    """None for a line that is dropped; "song" for a sung one; "" for a caption to read."""
    if event.is_comment or _SIGN.search(event.text):
        return None
    style = event.style or ""
    if _KARAOKE.search(event.text) or SONG_STYLES.search(style):
        return "song"
    return None if any(p.search(style) for p in styles) else ""


def dialogue(subs, style_patterns=STYLE_PATTERNS) -> list[dict]:
    """What was said in a parsed file: its speech segments [{start, end, text, speaker?}]."""
    return speech(segments(subs, style_patterns))


def segments(subs, style_patterns=STYLE_PATTERNS, cleaned: Cleaned | None = None) -> list[dict]:
    """What was heard in a parsed file: [{start, end, text, kind?, speaker?}] in seconds,
    in time order; `kind` (song, sound) only where it is not speech. `cleaned` counts what
    was taken out of the text (captions.Cleaned)."""
    styles = [re.compile(p, re.I) for p in style_patterns]
    cleaned = cleaned if cleaned is not None else Cleaned()
    kept = []
    for event in subs:
        kind = _event_kind(event, styles)
        if kind is None or event.end <= event.start:
            continue
        lines = re.split(r"\\[Nn]|\n", event.plaintext)
        times = {"start": round(event.start / 1000, 3), "end": round(event.end / 1000, 3)}
        if kind == "song":
            text = join(lines)
            if text:
                cleaned.songs += 1
                kept.append({**times, "text": text, "kind": "song"})
            continue
        for part in caption_lines(lines, (event.name or "").strip() or None, cleaned):
            text = join(part.pop("lines"))
            if text:
                kept.append({**times, "text": text, **part})
    return _merge_twins(sorted(kept, key=lambda s: (s["start"], s["end"])))


def _merge_twins(kept: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for seg in kept:
        twin = next((m for m in reversed(merged[-4:]) if m["text"] == seg["text"] and m.get("kind") == seg.get("kind")
                     and seg["start"] <= m["end"]), None)
        if twin is not None:
            twin["end"] = max(twin["end"], seg["end"])
        else:
            merged.append(seg)
    return merged


def speech(segments: list[dict]) -> list[dict]:
    """The segments that are speech (no `kind`, or `speech`): what counts as said."""
    return [s for s in segments if s.get("kind", "speech") == "speech"]


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
