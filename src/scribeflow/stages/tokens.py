"""Per-episode tokens from a transcript, stored as Parquet.

Japanese goes through a morphological analyser (fugashi, a MeCab binding, with the
UniDic dictionary of unidic-lite): surface, lemma (UniDic's, and as written), reading and
part of speech. Other languages go through a Unicode word tokenizer (the `regex` module's \\w, which unlike
`re` keeps combining marks inside words, so Devanagari or Thai words are not cut);
their lemma is the case-folded word form and they have no reading or part of speech.

Tokens are words only: punctuation and symbols are dropped, so that counts, type-token
ratios and coverage are about words. Each token keeps the index and the start/end
time of its transcript segment (whisper gives times per segment, not per word), and the
segment's kind (speech, or a subtitle's song or sound description): only speech is counted
(analysis.py); the songs and repeats found across a series later are marked by the corpus step.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import regex

from scribeflow.files import atomic_path

log = logging.getLogger("scribeflow.stages.tokens")

SCHEMA = pa.schema([
    ("segment", pa.int32()),       # index into the transcript's segments
    ("start", pa.float64()),       # the segment's start, seconds
    ("end", pa.float64()),
    ("surface", pa.string()),      # as written in the transcript
    ("lemma", pa.string()),        # dictionary form (Japanese: UniDic's lemma, 迚も) or case-folded form
    ("written", pa.string()),      # dictionary form as this word is written (UniDic's orthBase: とても)
    ("reading", pa.string()),      # katakana reading (Japanese only)
    ("pos", pa.string()),          # UniDic part of speech, level 1 (Japanese only)
    ("pos_detail", pa.string()),   # UniDic levels 2-4, e.g. 普通名詞-一般
    ("unknown", pa.bool_()),       # not in the analyser's dictionary (numbers aside); null without one
    ("base_reading", pa.string()),  # katakana reading of `written` (UniDic's kanaBase): 食べる -> タベル
    ("morae", pa.int16()),         # morae as pronounced (UniDic's pron): 食べた -> 3 (Japanese only)
    ("kind", pa.string()),         # the segment's kind in the transcript: speech, song, repeat, sound
])
SPEECH = "speech"  # a segment's kind when it has none (SPEC.md, Files): the only kind counted
METADATA_KEY = b"scribeflow"

# Words with inner apostrophes (don't, l'homme, rock'n'roll) and numbers with inner
# separators (3.5, 1,000) are one token; a quote around a word is not part of it.
WORD = regex.compile(r"\d+(?:[.,]\d+)+|\w+(?:['\u2019]\w+)*")
# UniDic parts of speech that are not words.
NOT_WORDS = frozenset({"補助記号", "空白"})
# UniDic lemmas of loanwords carry an English gloss (ライブ-live); the gloss is not the word.
GLOSS = regex.compile(r"(?<=.)-[A-Za-z][A-Za-z ._'-]*$")


class TokenizeError(ValueError):
    """A transcript cannot be tokenized; the message names the file and the problem."""


def is_japanese(language: str | None) -> bool:
    return (language or "").strip().lower().replace("_", "-").split("-")[0] in ("ja", "jpn", "japanese")


class WordTokenizer:
    """Unicode words; lemma = NFKC case-folded form with a typographic apostrophe made plain."""

    name = f"regex-words/{regex.__version__}"
    has_lexicon = False

    def __call__(self, text: str):
        for word in WORD.findall(unicodedata.normalize("NFC", text)):
            lemma = unicodedata.normalize("NFKC", word).casefold().replace("\u2019", "'")
            yield word, lemma, lemma, None, None, None, None, None, None


class JapaneseTokenizer:
    """fugashi + unidic-lite. The tagger loads the dictionary once per process."""

    has_lexicon = True

    def __init__(self):
        from importlib.metadata import version

        import fugashi
        import unidic_lite

        # Named explicitly: fugashi would prefer the full `unidic` package, whose
        # dictionary is a separate download, if that were installed.
        self.tagger = fugashi.Tagger(f'-d "{unidic_lite.DICDIR}"')
        self.name = f"fugashi/{version('fugashi')}+unidic-lite/{version('unidic-lite')}"

    def __call__(self, text: str):
        for word in self.tagger(text):
            f = word.feature
            if f.pos1 in NOT_WORDS:
                continue
            lemma = word.surface if word.is_unk or not f.lemma else GLOSS.sub("", f.lemma)
            # UniDic's lemma is one spelling per word, often not the usual one (とても -> 迚も,
            # この -> 此の, いる -> 居る); orthBase is the dictionary form in the spelling used here.
            written = word.surface if word.is_unk or not f.orthBase else f.orthBase
            detail = "-".join(p for p in (f.pos2, f.pos3, f.pos4) if p and p != "*") or None
            # Digits are outside UniDic but are numbers, not unknown words.
            unknown = bool(word.is_unk) and f.pos2 != "数詞"
            base = None if word.is_unk else (f.kanaBase or None)
            yield word.surface, lemma, written, f.kana or None, f.pos1, detail, unknown, base, morae(f.pron)


SMALL_KANA = frozenset("ァィゥェォャュョヮヵヶぁぃぅぇぉゃゅょゎ")


def morae(pron: str | None) -> int | None:
    """Morae of a katakana pronunciation: every kana, ッ and ー included, but a small kana
    (ャ, ュ, ョ, ァ, ...) with the one before it (キョ is one)."""
    if not pron or pron == "*":
        return None
    return sum(1 for c in pron if ("\u30a0" <= c <= "\u30ff" or "\u3040" <= c <= "\u309f") and c not in SMALL_KANA)


@lru_cache(maxsize=None)
def tokenizer_for(language: str | None):
    return JapaneseTokenizer() if is_japanese(language) else WordTokenizer()


def checked_transcript(path: str | Path) -> dict:
    """A transcript (transcribe.read_transcript: gzip-compressed or not), checked for what
    tokenization needs."""
    from scribeflow.stages.transcription.transcript import read_transcript

    path = Path(path)
    try:
        t = read_transcript(path)
    except (OSError, EOFError, ValueError) as exc:  # gzip, UTF-8 and JSON errors included
        raise TokenizeError(f"transcript {path}: cannot be read as JSON: {exc}") from exc
    if not isinstance(t, dict) or not isinstance(t.get("segments"), list):
        raise TokenizeError(f"transcript {path}: no 'segments' list")
    for i, seg in enumerate(t["segments"]):
        if not (isinstance(seg, dict) and isinstance(seg.get("text"), str)
                and all(isinstance(seg.get(k), (int, float)) for k in ("start", "end"))):
            raise TokenizeError(f"transcript {path}: segment {i} lacks a text, start or end")
    return t


def non_space_chars(text: str) -> int:
    return sum(not c.isspace() for c in text)


def tokenize_transcript(transcript: dict, language: str | None = None) -> pa.Table:
    """A table of SCHEMA; its metadata holds what analysis needs once the transcript is gone."""
    language = language or transcript.get("language")
    tokenizer = tokenizer_for(language)
    columns = {name: [] for name in SCHEMA.names}
    for index, seg in enumerate(transcript["segments"]):
        kind = segment_kind(seg)
        for word in tokenizer(seg["text"]):  # surface, lemma, written, reading, pos, detail, unknown
            for name, value in zip(SCHEMA.names, (index, seg["start"], seg["end"], *word, kind)):
                columns[name].append(value)
    every = transcript["segments"]
    segments = [s for s in every if segment_kind(s) == SPEECH]
    meta = {
        "id": transcript.get("id"),
        # asr or subtitles (a transcript from before sources were recorded: asr)
        "source": transcript["source"] if isinstance(transcript.get("source"), str) else "asr",
        "speech_coverage": (transcript.get("speech") or {}).get("coverage"),
        "language": language,
        "tokenizer": tokenizer.name,
        "has_lexicon": tokenizer.has_lexicon,
        "duration": transcript.get("duration"),
        # Of the speech segments: what a song or a sound description holds is not said.
        "segments": len(segments),
        "speech_seconds": _seconds(segments),
        "chars": sum(non_space_chars(s["text"]) for s in segments),
        "kinds": {k: _seconds([s for s in every if segment_kind(s) == k])
                  for k in sorted({segment_kind(s) for s in every} - {SPEECH})},
    }
    table = pa.table(columns, schema=SCHEMA)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, ensure_ascii=False).encode()})


def segment_kind(segment: dict) -> str:
    return segment.get("kind") or SPEECH


def _seconds(segments: list[dict]) -> float:
    return round(sum(max(0.0, s["end"] - s["start"]) for s in segments), 3)


def speech_tokens(table: pa.Table) -> pa.Table:
    """The tokens of speech segments (tokens written before kinds existed: all of them)."""
    if "kind" not in table.column_names:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.fill_null(pc.equal(table.column("kind"), SPEECH), True))


def write_tokens(table: pa.Table, path: str | Path) -> int:
    """Atomically; zstd with dictionary-encoded strings (lemmas and POS repeat a lot)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path).stat().st_size


def read_tokens(path: str | Path) -> tuple[pa.Table, dict]:
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise TokenizeError(f"tokens {path}: not written by scribeflow (no '{METADATA_KEY.decode()}' metadata)")
    return table, json.loads(raw)


def tokenize_file(transcript_path: str | Path, tokens_path: str | Path | None,
                  language: str | None = None, transcript: dict | None = None) -> tuple[pa.Table, dict]:
    """Tokenize one transcript file into a table and its metadata; written to `tokens_path`
    unless None (tokens not kept). `language` (the catalogue's) wins over the transcript's.
    `transcript`: the file, already read with checked_transcript."""
    table = tokenize_transcript(transcript or checked_transcript(transcript_path), language)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    written = f", {write_tokens(table, tokens_path) / 1e3:.1f} kB" if tokens_path else ", not kept"
    log.info("Tokenized %s (%s, %s): %d tokens in %d segments%s",
             transcript_path, meta["language"], meta["tokenizer"], table.num_rows, meta["segments"], written)
    return table, meta
