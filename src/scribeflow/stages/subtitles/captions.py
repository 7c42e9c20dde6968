"""Closed captions reduced to what was said: the conventions of Japanese broadcast and
streaming captions (and of fansubs), full-width and half-width alike.

- A speaker label at a line's start, （健太） (健太) 〈健太〉 <健太>, or on a line of its own
  before the lines it names, becomes the segment's `speaker` (an ASS event's Name field
  too; in English captions, a name in capitals before a colon, JOHN:).
- A sound description, ［ドアの開く音］ [笑い声] 〔拍手〕 【銃声】, or a parenthesis that is no
  label and no reading, (笑い声) （ため息）, becomes a segment of kind `sound`.
- A line with ♪ ♬ ♫, or lyrics wrapped in ～ ～ (〜, ~), becomes a segment of kind `song`.
- A reading gloss after kanji, 一昨日(おととい) 明日（あした）, is dropped from the text.
- Markers that are never spoken go: ≪ (an off-screen voice), a line wrapped in ＜ ＞ (a voice
  through a speaker or a phone), leading dashes － ― - (a change of speaker).
What was taken out is counted per file (Cleaned)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

KANJI = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヶ"
KANA = r"ぁ-ゖァ-ヺー・ｦ-ﾟ"
_READING = re.compile(rf"(?<=[{KANJI}])[（(][{KANA}]+[）)]")
_BRACKETED = re.compile(r"[［\[〔【]([^］\]〕】]*)[］\]〕】]")
_LABEL = re.compile(r"^[（(〈<]([^）)〉>（(〈<]{1,16})[）)〉>]\s*")
_CAPS_NAME = re.compile(r"^([A-Z][A-Z0-9 .'-]{0,24}):\s+(?=\S)")  # English captions' "JOHN: ..."
_PAREN = re.compile(r"[（(]([^）)]*)[）)]")
_SONG = re.compile(r"[♪♬♫🎵🎶]")
_WAVE = "～〜~"
_DASHES = re.compile(r"^[-－―—‐‑–]+\s*(?=\S)")
_OFFSCREEN = re.compile(r"[≪≫]")
_WRAPPED = re.compile(r"^＜(.+)＞$")
# Words of a description of a sound: a parenthesis holding one and some kana (ドアの開く音,
# 笑い声, ため息) is a sound. Names hold such kanji too (琴音, 鳴海, 歌子), so a parenthesis
# of kanji alone is a sound only when it is one of SOUND_NOUNS or a longer noun in 音 or 声.
SOUND_WORDS = ("音", "声", "笑", "拍手", "息", "泣", "咳", "叫", "悲鳴", "歓声", "鳴", "ノック", "チャイム", "着信",
               "ざわめき", "BGM", "音楽", "歌", "爆発", "銃", "ブザー", "ベル", "アナウンス", "ナレーション", "サイレン")
SOUND_NOUNS = {"拍手", "悲鳴", "歓声", "足音", "物音", "銃声", "爆音", "雷鳴", "咳", "笑", "汽笛", "音楽", "寝息", "鐘",
               "警報", "歌声", "笑声", "泣声", "水音", "雨音", "波音", "風音", "嗚咽", "喝采", "BGM"}


@dataclass
class Cleaned:
    """What was taken out of a file's text: labels made speakers, sound descriptions, song
    lines, reading glosses and markers."""

    speakers: int = 0
    sounds: int = 0
    songs: int = 0
    readings: int = 0
    markers: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _is_sound(label: str) -> bool:
    """A description rather than a name (above), or no Japanese at all: English captions
    put sounds and manners in parentheses, (sighs), and names before a colon."""
    if not re.search(rf"[{KANJI}{KANA}]", label):
        return True
    if label in SOUND_NOUNS or (len(label) >= 3 and label[-1] in "音声" and re.fullmatch(rf"[{KANJI}]+", label)):
        return True
    return bool(re.search(rf"[{KANA}]", label)) and any(word in label for word in SOUND_WORDS)


def _strip_markers(line: str, cleaned: Cleaned) -> str:
    stripped = _OFFSCREEN.sub("", line).strip()
    wrapped = _WRAPPED.match(stripped)
    stripped = wrapped.group(1).strip() if wrapped else re.sub(r"^＜\s*", "", stripped)
    stripped = _DASHES.sub("", stripped)
    cleaned.markers += stripped != line.strip()
    return stripped


def _song(line: str) -> str | None:
    """The lyric of a sung line, or None when the line is not sung."""
    if _SONG.search(line):
        return _SONG.sub("", line).strip(_WAVE + " 　") or "♪"
    if len(line) > 2 and line[0] in _WAVE and line[-1] in _WAVE:
        return line.strip(_WAVE + " 　")
    return None


def _label(line: str, more_follows: bool, cleaned: Cleaned) -> tuple[str | None, str, str | None]:
    """(a speaker named at the line's start, the rest of the line, a sound the label was)."""
    match = _LABEL.match(line)
    if not match:
        named = _CAPS_NAME.match(line)
        if named:
            cleaned.speakers += 1
            return named.group(1).strip(), line[named.end():], None
        return None, line, None
    label, rest = match.group(1).strip(), line[match.end():]
    if _is_sound(label) or not (rest or more_follows):
        return None, rest, label  # a description, or a parenthesis alone: a sound
    cleaned.speakers += 1
    return label, rest, None


def _items(line: str, speaker: str | None, more_follows: bool, cleaned: Cleaned):
    """(kind, speaker, text) of one caption line, in order, and the speaker after it."""
    line = _strip_markers(line, cleaned)
    if not line:
        return [], speaker
    lyric = _song(line)
    if lyric is not None:
        cleaned.songs += 1
        return [("song", None, lyric)], speaker
    items = [("sound", None, m.group(1).strip()) for m in _BRACKETED.finditer(line)]
    line = _BRACKETED.sub(" ", line).strip()
    line, readings = _READING.subn("", line)
    cleaned.readings += readings
    named, line, sound = _label(line, more_follows, cleaned)
    speaker = named or speaker
    if sound is not None:
        items.append(("sound", None, sound))
    items += [("sound", None, m.group(1).strip()) for m in _PAREN.finditer(line)]
    line = _PAREN.sub(" ", line).strip()
    cleaned.sounds += sum(kind == "sound" for kind, _, _ in items)
    if line:
        items.append(("speech", speaker, line))
    return items, speaker


def caption_lines(lines: list[str], speaker: str | None, cleaned: Cleaned) -> list[dict]:
    """The parts of one caption event: [{"lines": [...], "kind"?: sound|song, "speaker"?}],
    consecutive lines of the same kind and speaker together. `speaker`: the event's own
    (an ASS Name), until a label names another."""
    lines = [ln.strip() for ln in lines if ln.strip()]
    parts: list[dict] = []
    for n, line in enumerate(lines):
        turn = bool(_DASHES.match(_OFFSCREEN.sub("", line).strip()))  # a dash: another speaker's line
        items, speaker = _items(line, speaker, n + 1 < len(lines), cleaned)
        for kind, who, text in items:
            if not text:
                continue
            key = {**({"kind": kind} if kind != "speech" else {}), **({"speaker": who} if who else {})}
            if parts and not turn and {k: v for k, v in parts[-1].items() if k != "lines"} == key:
                parts[-1]["lines"].append(text)
            else:
                parts.append({**key, "lines": [text]})
    return parts
