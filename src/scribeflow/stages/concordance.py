"""The corpus index: every analysed episode's segments and the words in them, in one SQLite
file ({data_dir}/analysis/corpus/index.db), added to as each episode is analysed.

What it answers, each at a cost that does not grow with the episodes already indexed:
- where a word is used (`search`): one row per word and episode using it, with the
  segment of each use (varints), ordered by word, so that a search reads its hits and no
  more; a one-word query is looked up by lemma, written form and reading (`query_groups`);
- how often each word is said, per show (`counts`), kept as sums that each new episode
  adds to (the frequency tables, the Yomitan dictionaries and the per-show statistics
  read the sums, never the episodes' files);
- each episode's figures (`episodes`: speech, characters, words, morae, kanji).

A segment's kind (SPEC.md: speech, song, repeat, sound) is kept with its episode; only
speech is counted in the sums and the figures, and searched by default. `Index.mark`
re-marks an indexed episode's segments (the song and repeat detection finds them once the
series' other episodes arrive) in one transaction, at one episode's cost.

An episode is added in one transaction, after its tokens are written: one more episode
costs its own rows. Adding it again (a rerun) first takes its old rows and sums away. A
word is UniDic's lemma with the spelling and reading of its dictionary form (食べる,
タベル), so that homographs with different readings stay apart; other languages' words are
their case-folded forms, searched by their Snowball stem. The file is a cache of the
tokens: deleted, damaged (SQLite says so) or of an earlier format, it is rebuilt from the
tokens (`complete`), which the workflow does by itself; a lock or a full disk never sets a
sound file aside (the ledger's rule, state/ledger.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import logging
import os
import sqlite3
import time
import unicodedata
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path

from scribeflow.stages.tokens import is_japanese
from scribeflow.state.ledger import is_corrupt

log = logging.getLogger("scribeflow.stages.concordance")

VERSION = 3
# A segment's kind (SPEC.md, Files): only speech counts in the sums and the default search.
KINDS = ("speech", "song", "repeat", "sound")
SPEECH = "speech"
SCHEMA = """
-- A show: a series and a season ('' each when the catalogue has none), named once here
-- rather than in each of the per-show sums' rows.
CREATE TABLE IF NOT EXISTS shows (
    id INTEGER PRIMARY KEY,
    series TEXT NOT NULL,
    season TEXT NOT NULL,
    UNIQUE (series, season)
);
-- An episode's figures count its speech segments only (its songs and repeats are not said
-- by the show's characters): they feed the per-show statistics (stages/shows.py).
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    show INTEGER NOT NULL,             -- shows.id
    source TEXT,
    language TEXT,
    duration_s REAL,
    speech_s REAL,
    segments INTEGER,
    chars INTEGER,                     -- letters and digits said (no punctuation, symbols, spaces)
    tokens INTEGER,
    morae INTEGER,
    kanji TEXT,                        -- the distinct kanji used, in code-point order
    added_at REAL
);
CREATE INDEX IF NOT EXISTS episodes_show ON episodes(show);
-- An episode's segments, [start, end, text, morae] each, as compressed JSON in blocks
-- of 64 (BLOCK): a search shows a few sentences of an episode, and a sentence alone
-- compresses poorly.
CREATE TABLE IF NOT EXISTS texts (
    episode INTEGER PRIMARY KEY,
    segments BLOB NOT NULL,
    kinds TEXT,                        -- JSON {segment: kind} of those not speech; NULL: all speech
    words BLOB NOT NULL                -- its words' ids (varint gaps): what a rerun of it takes away
);
CREATE TABLE IF NOT EXISTS words (
    id INTEGER PRIMARY KEY,
    lemma TEXT NOT NULL,
    written TEXT NOT NULL,
    reading TEXT NOT NULL DEFAULT '',  -- katakana; '' without one
    pos TEXT,
    detail TEXT,                       -- UniDic's levels 2-4: 固有名詞-人名-一般 (a name)
    stem TEXT,                         -- Snowball's stem of a word without a lexicon (jumps -> jump)
    UNIQUE (lemma, written, reading)   -- also a lemma's words, by its leading column
);
-- A one-word query is looked up by its written form and reading too (翼 alone is read as
-- the name ツバサ by UniDic, while the 翼 of sentences is the noun).
CREATE INDEX IF NOT EXISTS words_written ON words(written);
CREATE INDEX IF NOT EXISTS words_reading ON words(reading) WHERE reading != '';
CREATE INDEX IF NOT EXISTS words_stem ON words(stem) WHERE stem IS NOT NULL;
-- One row per word and episode using it: the segment of each use (varints, each the gap
-- from the one before, 0 for a second use in the same segment), so that a word's uses are
-- one range of the key and its uses per kind can be counted again when kinds change.
CREATE TABLE IF NOT EXISTS occurrences (
    word INTEGER NOT NULL,
    episode INTEGER NOT NULL,
    segments BLOB NOT NULL,
    PRIMARY KEY (word, episode)
) WITHOUT ROWID;
-- Per word and show: its uses in speech and the episodes it is said in.
CREATE TABLE IF NOT EXISTS counts (
    word INTEGER NOT NULL,
    show INTEGER NOT NULL,
    count INTEGER NOT NULL,
    documents INTEGER NOT NULL,
    PRIMARY KEY (word, show)
) WITHOUT ROWID;
"""


def varints(numbers, gaps: bool = False) -> bytes:
    """Non-negative integers as LEB128 varints; with `gaps`, each as its gap from the one
    before (sorted segment numbers: mostly one byte each)."""
    out, last = bytearray(), 0
    for n in numbers:
        v, last = (n - last, n) if gaps else (n, last)
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def unvarints(data: bytes, gaps: bool = False) -> list[int]:
    out, v, shift, last = [], 0, 0, 0
    for b in data:
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            last = last + v if gaps else v
            out.append(last)
            v, shift = 0, 0
    return out


# What a reader of the index may meet besides CorpusIndexError (a lock held past the
# timeout, a journal a crashed writer left): for callers that do not speak SQLite.
DATABASE_ERRORS = (sqlite3.Error,)


class CorpusIndexError(RuntimeError):
    """The index cannot be used; the message names the file and what to do."""


class Damaged(CorpusIndexError):
    """SQLite says the file is corrupt, or it is an index of another format: what is set
    aside (as index.db.{aside}-TIME) and rebuilt from the tokens."""

    def __init__(self, message: str, aside: str = "damaged"):
        super().__init__(message)
        self.aside = aside


def is_kanji(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or char == "々"


def hiragana(katakana: str | None) -> str:
    """カタカナ -> かたかな (ー and what is not katakana stay as they are)."""
    return "".join(chr(ord(c) - 0x60) if "\u30a1" <= c <= "\u30f6" else c for c in katakana or "")


class Index:
    """The index file, opened for reading (`readonly`) or for adding episodes.

    Opening it raises CorpusIndexError for a file that is not an index of this format, and
    lets SQLite's other errors through (a lock held past `timeout`, a full disk, an I/O
    error): those say nothing of the file, which `adding`/`complete` set aside only when
    SQLite says it is corrupt (`is_corrupt`)."""

    def __init__(self, path: str | Path, readonly: bool = False, timeout: float = 120.0):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise CorpusIndexError(f"{self.path}: no corpus index yet; it is built as episodes are analysed "
                                       f"(run the workflow), and rebuilt from the tokens if it was deleted")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            self._check(readonly)
        except BaseException:
            self.conn.close()
            raise

    def _check(self, readonly: bool) -> None:
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            raise Damaged(f"{self.path}: not a corpus index that can be read ({exc}); delete it: the next "
                          f"run rebuilds it from the tokens") from exc
        if readonly and not tables:
            raise CorpusIndexError(f"{self.path}: an empty corpus index; it is filled as episodes are analysed")
        if tables and version != VERSION:
            raise Damaged(f"{self.path}: a corpus index of another format ({version}; this version reads "
                          f"{VERSION}); delete it: the next run rebuilds it from the tokens", aside=f"format{version}")
        if not readonly:
            # The rollback journal, as the ledger: safe on a shared filesystem.
            self.conn.execute("PRAGMA journal_mode = DELETE")
            self.conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            self.conn.execute(f"PRAGMA user_version = {VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- adding -----------------------------------------------------------------------------
    def add(self, episode: str, table, meta: dict, segments: list[dict], series: str | None = None,
            season: str | None = None) -> None:
        """One analysed episode: `table` its tokens (stages/tokens.py), `meta` their
        metadata, `segments` its transcript's segments (the sentences shown by a search;
        a segment's `kind`, speech when absent, decides whether it counts). SQLite's
        errors come as Damaged (corrupt) or CorpusIndexError (what to do)."""
        try:
            self._add(episode, table, meta, segments, series, season)
        except sqlite3.Error as exc:
            raise _failed(self.path, exc) from exc

    def _add(self, episode, table, meta, segments, series, season) -> None:
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        n = table.num_rows
        readings = cols.get("base_reading") or [None] * n
        keys = [(cols["lemma"][i], cols["written"][i] or cols["lemma"][i], readings[i] or "") for i in range(n)]
        pos = dict(zip(keys, zip(cols["pos"], cols["pos_detail"])))
        uses: dict[tuple, list[int]] = {}
        for key, seg in zip(keys, cols["segment"]):
            uses.setdefault(key, []).append(seg)
        kinds = {i: s["kind"] for i, s in enumerate(segments) if s.get("kind", SPEECH) != SPEECH}
        stem = stemmer(meta.get("language")) if not meta.get("has_lexicon") else None
        words = [(*key, *pos[key], stem(key[0]) if stem else None) for key in uses]
        with self.transaction() as c:
            old = self._remove(c, episode)  # an episode added again keeps its place
            show = self._show(c, series or "", "" if season is None else str(season))
            c.execute("INSERT INTO episodes (id, name, show, source, language, duration_s, added_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", (old, episode, show, meta.get("source"), meta.get("language"),
                                                       meta.get("duration"), time.time()))
            eid = c.execute("SELECT id FROM episodes WHERE name = ?", (episode,)).fetchone()[0]
            c.executemany("INSERT OR IGNORE INTO words (lemma, written, reading, pos, detail, stem) "
                          "VALUES (?, ?, ?, ?, ?, ?)", words)
            ids = self._word_ids(c, list(uses))
            c.executemany("INSERT INTO occurrences VALUES (?, ?, ?)",
                          ((ids[key], eid, varints(sorted(segs), gaps=True)) for key, segs in uses.items()))
            rows = _segment_rows(segments, cols["segment"], cols.get("morae"))
            tokens = Counter(cols["segment"])
            c.execute("INSERT INTO texts VALUES (?, ?, ?, ?)", (eid, _pack(rows), _kinds_json(kinds),
                                                                varints(sorted(ids.values()), gaps=True)))
            self._count(c, show, {ids[key]: _spoken(segs, kinds) for key, segs in uses.items()}, +1)
            self._set_sums(c, eid, rows, kinds, tokens)

    def added_since(self, since: float) -> list[tuple[str, float]]:
        """(episode, when it was added) of the episodes added to the index after `since`."""
        return list(self.conn.execute("SELECT name, added_at FROM episodes WHERE added_at > ?", (since,)))

    def mark(self, episode: str, kinds: dict[int, str]) -> bool:
        """Give segments of an indexed episode a kind: `kinds` maps a segment's number (its
        place in the transcript's `segments`, from 0) to `speech`, `song`, `repeat` or
        `sound`; segments not named keep theirs (name one `speech` to count it again).
        Segments past the index's last (an index rebuilt from the tokens lacks the last
        segments without words) are ignored.

        One transaction updates the stored kinds, the per-show sums (`counts`: only speech
        is counted) and the episode's figures (speech seconds, segments, characters,
        words, morae, kanji: speech only), so the frequency tables, the per-show
        statistics and the default search leave the segments out from then on. Costs
        one episode's rows, whatever the index holds. Idempotent: kinds already stored
        change nothing and write nothing. Returns whether anything changed.

        Raises CorpusIndexError for an episode not in the index (it is added by its
        analysis, with its transcript's kinds) and ValueError for an unknown kind or a
        segment number that is not one (negative, not an int)."""
        with self.transaction() as c:
            row = c.execute("SELECT e.id, e.show, t.segments, t.kinds, t.words FROM episodes e JOIN texts t "
                            "ON t.episode = e.id WHERE e.name = ?", (episode,)).fetchone()
            if row is None:
                raise CorpusIndexError(f"{self.path}: episode {episode!r} is not in the corpus index; its analysis "
                                       f"adds it, with its transcript's segment kinds")
            eid, show, packed, stored, words = row
            rows = _unpack(packed)
            old = _kinds_of(stored)
            new = _merged(old, kinds, len(rows), episode)
            if new == old:
                return False
            before, after, tokens = {}, {}, Counter()
            for word, segs in self._uses(c, eid, unvarints(words, gaps=True)):
                before[word], after[word] = _spoken(segs, old), _spoken(segs, new)
                tokens.update(segs)
            self._count(c, show, before, -1)
            self._count(c, show, after, +1)
            c.execute("UPDATE texts SET kinds = ? WHERE episode = ?", (_kinds_json(new), eid))
            self._set_sums(c, eid, rows, new, tokens)
            return True

    def kinds_of(self, episode: str) -> dict[int, str]:
        """{segment: kind} of an indexed episode's segments that are not speech."""
        row = self.conn.execute("SELECT t.kinds FROM episodes e JOIN texts t ON t.episode = e.id WHERE e.name = ?",
                                (episode,)).fetchone()
        return _kinds_of(row[0]) if row else {}

    @staticmethod
    def _show(c, series: str, season: str) -> int:
        c.execute("INSERT OR IGNORE INTO shows (series, season) VALUES (?, ?)", (series, season))
        return c.execute("SELECT id FROM shows WHERE series = ? AND season = ?", (series, season)).fetchone()[0]

    @staticmethod
    def _count(c, show: int, spoken: dict[int, int], sign: int) -> None:
        """Add (sign +1) or take away (-1) an episode's speech uses of words in a show's sums."""
        said = [(sign * k, sign, wid, show) for wid, k in spoken.items() if k]
        if sign > 0:
            c.executemany("INSERT INTO counts (count, documents, word, show) VALUES (?, ?, ?, ?) ON CONFLICT "
                          "(word, show) DO UPDATE SET count = count + excluded.count, "
                          "documents = documents + excluded.documents", said)
            return
        c.executemany("UPDATE counts SET count = count + ?, documents = documents + ? WHERE word = ? AND show = ?",
                      said)
        c.executemany("DELETE FROM counts WHERE word = ? AND show = ? AND documents <= 0",
                      [(wid, show) for _, _, wid, _ in said])

    @staticmethod
    def _set_sums(c, eid: int, rows: list, kinds: dict[int, str], tokens: Counter) -> None:
        c.execute("UPDATE episodes SET speech_s = ?, segments = ?, chars = ?, tokens = ?, morae = ?, kanji = ? "
                  "WHERE id = ?", (*_sums(rows, kinds, tokens), eid))

    @staticmethod
    def _uses(c, eid: int, words: list[int]):
        """(word, the segment of each use) of an episode's words."""
        for i in range(0, len(words), 500):
            batch = words[i:i + 500]
            yield from ((w, unvarints(packed, gaps=True)) for w, packed in c.execute(
                f"SELECT word, segments FROM occurrences WHERE episode = ? AND word IN ({','.join('?' * len(batch))})",
                [eid, *batch]))

    @staticmethod
    def _word_ids(c, keys: list[tuple]) -> dict[tuple, int]:
        ids = {}
        for i in range(0, len(keys), 300):
            batch = keys[i:i + 300]
            where = " OR ".join(["(lemma = ? AND written = ? AND reading = ?)"] * len(batch))
            for wid, *key in c.execute(f"SELECT id, lemma, written, reading FROM words WHERE {where}",
                                       [v for key in batch for v in key]):
                ids[tuple(key)] = wid
        return ids

    @classmethod
    def _remove(cls, c, episode: str) -> int | None:
        """An episode's rows and its share of the sums, before it is added again; its id."""
        row = c.execute("SELECT e.id, e.show, t.kinds, t.words FROM episodes e LEFT JOIN texts t ON t.episode = e.id "
                        "WHERE e.name = ?", (episode,)).fetchone()
        if row is None:
            return None
        eid, show, stored, words = row
        kinds = _kinds_of(stored)
        words = unvarints(words, gaps=True) if words else []
        cls._count(c, show, {w: _spoken(segs, kinds) for w, segs in cls._uses(c, eid, words)}, -1)
        c.executemany("DELETE FROM occurrences WHERE word = ? AND episode = ?", [(w, eid) for w in words])
        c.execute("DELETE FROM texts WHERE episode = ?", (eid,))
        c.execute("DELETE FROM episodes WHERE id = ?", (eid,))
        return eid

    def segments_of(self, eid: int) -> list:
        """An episode's segments: [start, end, text, morae] each."""
        row = self.conn.execute("SELECT segments FROM texts WHERE episode = ?", (eid,)).fetchone()
        return _unpack(row[0]) if row else []

    def text_of(self, eid: int) -> tuple[Segments | list, dict[int, str]]:
        """An episode's segments (read a block at a time) and the kinds of those that are not speech."""
        row = self.conn.execute("SELECT segments, kinds FROM texts WHERE episode = ?", (eid,)).fetchone()
        return (Segments(row[0]), _kinds_of(row[1])) if row else ([], {})

    # -- reading ----------------------------------------------------------------------------
    def episode_count(self, series: str | None = None) -> int:
        where, args = ("WHERE s.series = ?", [series]) if series is not None else ("", [])
        return self.conn.execute(f"SELECT COUNT(*) FROM episodes e JOIN shows s ON s.id = e.show {where}",
                                 args).fetchone()[0]

    def written_frequencies(self, series: str | None = None) -> list[tuple[str, str, int]]:
        """(written form, katakana reading, uses in speech) of every word, summed over the
        corpus or one series (the per-lemma rows of one spelling and reading together)."""
        where, args = ("JOIN shows s ON s.id = c.show WHERE s.series = ?", [series]) if series is not None else ("", [])
        return self.conn.execute(
            f"SELECT w.written, w.reading, SUM(c.count) FROM counts c JOIN words w ON w.id = c.word {where} "
            f"GROUP BY w.written, w.reading", args).fetchall()

    def show_sums(self, by_season: bool = False):
        """Per show (series, and season or ''), two DataFrames: its episodes' sums
        (episodes, speech minutes, characters, words, segments, morae, kanji; speech
        only), and its uses per lemma in speech with whether the lemma is a name (UniDic's
        固有名詞)."""
        import pandas as pd

        season = "s.season" if by_season else "''"
        shows = pd.read_sql_query(
            f"SELECT s.series, {season} AS season, COUNT(*) AS episodes, SUM(e.speech_s) / 60.0 AS speech_minutes, "
            f"SUM(e.chars) AS chars, SUM(e.tokens) AS words, SUM(e.segments) AS segments, SUM(e.morae) AS morae, "
            f"GROUP_CONCAT(e.kanji, '') AS kanji FROM episodes e JOIN shows s ON s.id = e.show "
            f"GROUP BY s.series, {season}", self.conn)
        counts = pd.read_sql_query(
            f"SELECT s.series, {season} AS season, w.lemma, MAX(COALESCE(w.detail, '') LIKE '固有名詞%') AS name, "
            f"SUM(c.count) AS count FROM counts c JOIN words w ON w.id = c.word JOIN shows s ON s.id = c.show "
            f"GROUP BY s.series, {season}, w.lemma", self.conn)
        return shows, counts

    def episode_names(self) -> set[str]:
        return {name for (name,) in self.conn.execute("SELECT name FROM episodes")}

    def words_of(self, lemma: str) -> list[int]:
        """The ids of a lemma's words (its spellings and readings)."""
        return [w for (w,) in self.conn.execute("SELECT id FROM words WHERE lemma = ?", (lemma,))]

    def words_written(self, text: str, stems: list[str] = ()) -> list[int]:
        """The ids of the words whose lemma, written form or reading is `text` (kana: its
        katakana reading), or whose stem is one of `stems`."""
        reading = katakana(text) if all(_kana(ch) for ch in text) else None
        stems = list(stems)
        found = self.conn.execute(
            f"SELECT id FROM words WHERE lemma = ? UNION SELECT id FROM words WHERE written = ? "
            f"{'UNION SELECT id FROM words WHERE reading = ? AND reading != ' + repr('') if reading else ''} "
            f"{'UNION SELECT id FROM words WHERE stem IN (' + ','.join('?' * len(stems)) + ')' if stems else ''}",
            [text, text, *([reading] if reading else []), *stems])
        return [w for (w,) in found]

    def word_keys(self, ids: list[int]) -> list[tuple[str, str, str]]:
        """(lemma, written, reading) of words, by id."""
        q = ",".join("?" * len(ids))
        return self.conn.execute(f"SELECT lemma, written, reading FROM words WHERE id IN ({q})", ids).fetchall()


def _kana(ch: str) -> bool:
    return "\u3041" <= ch <= "\u309f" or "\u30a0" <= ch <= "\u30ff"


def katakana(text: str) -> str:
    """ひらがな -> ヒラガナ (what is not hiragana stays as it is)."""
    return "".join(chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in text)


def _spoken(segments: list[int], kinds: dict[int, str]) -> int:
    """How many of the uses (their segments) are in speech."""
    return sum(1 for s in segments if s not in kinds) if kinds else len(segments)


def _segment_rows(segments: list[dict], token_segments: list[int], morae: list | None) -> list:
    """[start, end, text, morae] of each segment: what an episode's figures are counted
    from again when its kinds change (its tokens per segment: from its uses)."""
    said = Counter()
    for seg, m in zip(token_segments, morae or []):
        said[seg] += m or 0
    return [[s["start"], s["end"], s["text"], said[i]] for i, s in enumerate(segments)]


def _sums(rows: list, kinds: dict[int, str], tokens: Counter) -> tuple:
    """speech seconds, segments, characters said, tokens, morae (None without) and kanji of
    the speech segments; `tokens`: the tokens of each segment."""
    speech = [r for i, r in enumerate(rows) if i not in kinds]
    text = "".join(r[2] for r in speech)
    kanji = "".join(sorted({c for c in text if is_kanji(c)}))
    # Characters said: letters and digits, not punctuation, symbols or spaces.
    chars = sum(1 for c in text if unicodedata.category(c)[0] in "LN")
    morae = sum(r[3] for r in speech)
    spoken = sum(n for seg, n in tokens.items() if seg not in kinds)
    return round(sum(max(0.0, r[1] - r[0]) for r in speech), 3), len(speech), chars, spoken, morae or None, kanji


# Segments are compressed in blocks of BLOCK, so that a search's hit decompresses one block
# of its episode rather than the whole episode (a sentence alone compresses poorly).
BLOCK = 64


def _pack(rows: list) -> bytes:
    """varint(blocks), varint(each block's length), then the blocks: raw deflate of the
    JSON of BLOCK segments each."""
    blocks = [_deflate(json.dumps(rows[i:i + BLOCK], ensure_ascii=False, separators=(",", ":")).encode())
              for i in range(0, len(rows), BLOCK)]
    return varints([len(blocks), *map(len, blocks)]) + b"".join(blocks)


def _deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


class Segments:
    """An episode's packed segments, a block decompressed when one of its segments is read."""

    def __init__(self, packed: bytes):
        self.packed, self.blocks = packed, {}
        n, pos = _varint_at(packed, 0)
        self.bounds = []
        for _ in range(n):
            length, pos = _varint_at(packed, pos)
            self.bounds.append(length)
        starts = [pos]
        for length in self.bounds:
            starts.append(starts[-1] + length)
        self.starts = starts

    def block(self, b: int) -> list:
        if b not in self.blocks:
            raw = zlib.decompress(self.packed[self.starts[b]:self.starts[b + 1]], -15)
            self.blocks[b] = json.loads(raw)
        return self.blocks[b]

    def __getitem__(self, i: int) -> list:
        return self.block(i // BLOCK)[i % BLOCK]

    def all(self) -> list:
        return [row for b in range(len(self.bounds)) for row in self.block(b)]


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def _unpack(packed: bytes) -> list:
    return Segments(packed).all()


def _kinds_of(stored: str | None) -> dict[int, str]:
    return {int(i): kind for i, kind in json.loads(stored).items()} if stored else {}


def _kinds_json(kinds: dict[int, str]) -> str | None:
    return json.dumps({str(i): kinds[i] for i in sorted(kinds)}) if kinds else None


def _merged(old: dict[int, str], kinds: dict[int, str], segments: int, episode: str) -> dict[int, str]:
    new = dict(old)
    for i, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"episode {episode}: segment {i}: kind {kind!r} is none of {', '.join(KINDS)}")
        if not (isinstance(i, int) and i >= 0):
            raise ValueError(f"episode {episode}: no segment {i!r} (segments are numbered from 0)")
        if i >= segments:
            continue  # a last segment without words that an index rebuilt from the tokens lacks
        if kind == SPEECH:
            new.pop(i, None)
        else:
            new[i] = kind
    return new


# Snowball's stemmers by the language codes transcripts carry.
STEMMERS = {"en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian", "pt": "portuguese",
            "nl": "dutch", "sv": "swedish", "no": "norwegian", "nb": "norwegian", "da": "danish", "fi": "finnish",
            "ru": "russian", "pl": "polish", "tr": "turkish", "hu": "hungarian", "ro": "romanian", "cs": "czech",
            "el": "greek", "id": "indonesian", "ca": "catalan"}


@lru_cache(maxsize=None)
def stemmer(language: str | None):
    """The stem of a word of `language` (English when not known), or None for a language
    Snowball has no stemmer for: words without a lexicon (the word tokenizer's case-folded
    forms) are matched by it, so that jumps finds jump."""
    import snowballstemmer

    code = (language or "en").strip().lower().replace("_", "-").split("-")[0]
    name = STEMMERS.get(code)
    return snowballstemmer.stemmer(name).stemWord if name else None


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


# -- searching ------------------------------------------------------------------------------
def _japanese(text: str) -> bool:
    return any(unicodedata.name(c, "").startswith(("HIRAGANA", "KATAKANA", "CJK")) for c in text)


def _tokenizer(text: str, language: str | None):
    """The tokenizer the episodes went through: `language`'s, else Japanese for kana and kanji."""
    from scribeflow.stages.tokens import tokenizer_for

    return tokenizer_for(language or ("ja" if _japanese(text) else None))


def query_words(word: str, language: str | None = None) -> list[tuple[str, str]]:
    """The query's words as the tokenizer the episodes went through reads them: (surface,
    lemma) each (食べた -> (食べた, 食べる))."""
    return [(t[0], t[1]) for t in _tokenizer(word, language)(nfkc(word).strip())]


def _stems(word: str, language: str | None, japanese: bool) -> list[str]:
    stem = None if japanese else stemmer(language)
    return [stem(word)] if stem else []


def query_groups(index: Index, word: str, language: str | None = None) -> list[tuple[str, list[int]]]:
    """The query as the index's words: (label, word ids) for each word a segment must use.

    A query that is one word (one token, or a lemma, written form or reading the index
    knows as it is) is matched by all of these: its lemma as tokenized alone, and the
    words whose lemma, written form or reading it is (翼 alone is the name ツバサ to UniDic,
    the noun 翼 in a sentence; つばさ finds 翼 by its reading); for a language without a
    lexicon, by Snowball's stem (jumps finds jump, jumped). A query of several words is
    one group per word (a segment must use them all)."""
    needle = nfkc(word).strip()
    japanese = is_japanese(language) if language else _japanese(needle)
    tokens = [(t[0], t[1]) for t in _tokenizer(needle, language)(needle)]
    plain = needle if japanese else needle.casefold()
    direct = index.words_written(plain, _stems(plain, language, japanese)) if needle else []
    if len(tokens) <= 1 or direct:
        ids = dict.fromkeys(direct)
        for _, lemma in tokens[:1] if len(tokens) == 1 else []:
            ids.update(dict.fromkeys(_lemma_ids(index, lemma, language, japanese)))
        return [(plain, list(ids))] if ids or tokens else []
    lemmas = dict.fromkeys(lemma for _, lemma in tokens)
    return [(lemma, _lemma_ids(index, lemma, language, japanese)) for lemma in lemmas]


def _lemma_ids(index: Index, lemma: str, language: str | None, japanese: bool) -> list[int]:
    if japanese:
        return index.words_of(lemma)
    return index.words_written(lemma, _stems(lemma, language, False))


def search(index: Index, word: str, series: str | None = None, limit: int = 20, exact: bool = False,
           language: str | None = None, kinds: tuple[str, ...] | None = (SPEECH,)) -> dict:
    """Every use of `word` by its dictionary form (食べる finds 食べた and 食べない; a query of
    several words finds the segments that use them all; query_groups), or with `exact`
    only where it is written as given, in segments of `kinds` (None: every kind; by
    default speech only). Returns {"query", "lemmas", "uses", "episodes", "kinds",
    "hits": [{series, episode, start, end, text, kind, marked, spans}]}, at most `limit`
    hits; "uses" counts the word's uses in speech in any form, "episodes" the episodes
    saying it when the query matched one word of the index (None for several words)."""
    groups = query_groups(index, word, language)
    if not groups:
        raise CorpusIndexError(f"{word!r} has no word the index could hold (punctuation and symbols are not indexed)")
    ids = {label: wids for label, wids in groups}
    result = {"query": word, "lemmas": _labels(index, groups), "uses": 0, "episodes": 0,
              "kinds": list(kinds) if kinds else "all", "hits": []}
    if not all(ids.values()):
        return result
    c = index.conn
    rarest = min(ids, key=lambda label: _uses_of(c, ids[label], series)[0])
    result["uses"], result["episodes"] = _uses_of(c, ids[rarest], series) if len(ids) == 1 else (None, None)
    others = [wids for label, wids in ids.items() if label != rarest]
    keys = set(index.word_keys([w for wids in ids.values() for w in wids]))
    needle = nfkc(word).strip()
    current, rows, marks, seen, using = None, [], {}, set(), {}
    for eid, idx in _postings(c, ids[rarest], series):
        if eid != current:  # one episode's text at a time: hits come by episode
            current, seen, using = eid, set(), {}
            rows, marks = index.text_of(eid)
        kind = marks.get(idx, SPEECH)
        if idx in seen or (kinds and kind not in kinds) or not _uses_all(c, others, eid, idx, using):
            continue
        seen.add(idx)
        start, end, text = rows[idx][:3]
        if exact and needle not in nfkc(text):
            continue
        name, ep_series = c.execute("SELECT e.name, s.series FROM episodes e JOIN shows s ON s.id = e.show "
                                    "WHERE e.id = ?", (eid,)).fetchone()
        spans = _spans(text, needle if exact else None, keys, language)
        result["hits"].append({"series": ep_series or None, "episode": name, "start": start, "end": end,
                               "text": text, "kind": kind, "marked": _marked(text, spans), "spans": spans})
        if len(result["hits"]) >= limit:
            break
    return result


def _labels(index: Index, groups) -> list[str]:
    """The lemmas a query matched: the distinct lemmas of a one-word query's words, the
    tokenized lemma of each word of a longer one."""
    if len(groups) > 1:
        return [label for label, _ in groups]
    found = [lemma for lemma, _, _ in index.word_keys(groups[0][1])] if groups[0][1] else []
    return list(dict.fromkeys(found)) or [groups[0][0]]


def _uses_of(c, wids: list[int], series: str | None) -> tuple[int, int | None]:
    """The words' uses in speech, and the episodes saying them for one word (None for
    several: an episode may say more than one of them, and the sums do not tell)."""
    q = ",".join("?" * len(wids))
    join, args = ("JOIN shows s ON s.id = c.show AND s.series = ?", [series]) if series is not None else ("", [])
    uses, episodes = c.execute(f"SELECT COALESCE(SUM(c.count), 0), COALESCE(SUM(c.documents), 0) FROM counts c "
                               f"{join} WHERE c.word IN ({q})", [*args, *wids]).fetchone()
    return uses, episodes if len(wids) == 1 or not uses else None


def _uses_all(c, others: list[list[int]], eid: int, idx: int, using: dict) -> bool:
    """Whether segment `idx` of episode `eid` uses a word of each of `others`; `using`: the
    segments each word is used in, read once per episode."""
    for wids in others:
        if not any(idx in (using[w] if w in using else using.setdefault(w, set(_segments_using(c, w, eid))))
                   for w in wids):
            return False
    return True


def _segments_using(c, word: int, eid: int) -> list[int]:
    row = c.execute("SELECT segments FROM occurrences WHERE word = ? AND episode = ?", (word, eid)).fetchone()
    return unvarints(row[0], gaps=True) if row else []


def _postings(c, wids: list[int], series: str | None):
    """(episode, segment) of each use of the words, in the episodes' order (each word's
    uses are one range of the key); with a series, through that series' episodes."""
    if series is not None:
        episodes = c.execute("SELECT e.id FROM episodes e JOIN shows s ON s.id = e.show WHERE s.series = ? "
                             "ORDER BY e.id", (series,)).fetchall()
        for (eid,) in episodes:
            for wid in wids:
                for idx in _segments_using(c, wid, eid):
                    yield eid, idx
        return

    def of(wid):
        for eid, packed in c.execute("SELECT episode, segments FROM occurrences WHERE word = ?", (wid,)):
            for idx in unvarints(packed, gaps=True):
                yield eid, idx

    yield from heapq.merge(*(of(wid) for wid in wids))


def _spans(text: str, needle: str | None, keys: set[tuple], language: str | None) -> list[list[int]]:
    """[start, end) character offsets of the uses in `text`: the needle's, or the words
    whose (lemma, written, reading) is one of `keys` (the segment tokenized again)."""
    if needle:
        spans, at = [], text.find(needle)
        while at >= 0:
            spans.append([at, at + len(needle)])
            at = text.find(needle, at + len(needle))
        return spans
    spans, pos, extending = [], 0, False
    for surface, lemma, written, _reading, part, _detail, _unknown, base, *_ in _tokenizer(text, language)(text):
        at = text.find(surface, pos)
        if at < 0:
            continue
        pos = at + len(surface)
        if (lemma, written or lemma, base or "") in keys:
            spans.append([at, pos])
            extending = True
        elif extending and part == "助動詞" and spans[-1][1] == at:  # the inflection: 食べ|た, 食べ|ちゃっ|た
            spans[-1][1] = pos
        else:
            extending = False
    return spans


def _marked(text: str, spans: list[list[int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], "【", text[start:end], "】"]
        last = end
    return "".join(out) + text[last:]


# -- rebuilding ---------------------------------------------------------------------------------
def segments_from_tokens(table) -> list[dict]:
    """A transcript's segments as far as its tokens tell (words only, no punctuation; a
    segment's kind when the tokens carry one): what a search shows when the transcript
    itself is gone."""
    by: dict[int, dict] = {}
    japanese = None
    names = ("segment", "start", "end", "surface")
    kinds = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * table.num_rows
    for (seg, start, end, surface), kind in zip(zip(*(table.column(c).to_pylist() for c in names)), kinds):
        s = by.setdefault(seg, {"start": start, "end": end, "words": [], "kind": kind or SPEECH})
        s["words"].append(surface)
        japanese = japanese if japanese is not None else _japanese(surface)
    last = max(by, default=-1)
    return [{"start": by[i]["start"], "end": by[i]["end"], "kind": by[i]["kind"],
             "text": ("" if japanese else " ").join(by[i]["words"])}
            if i in by else {"start": 0.0, "end": 0.0, "text": ""} for i in range(last + 1)]


def unavailable(path: Path, exc: sqlite3.Error) -> CorpusIndexError:
    """SQLite's error on a sound file (a lock held too long, a full disk, an I/O error) as
    what to do; the index is left where it is."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        what = ("another process held its write lock longer than the timeout; the index is left as it is (not "
                "damaged): try again once that process is done")
    elif code == sqlite3.SQLITE_READONLY_ROLLBACK:
        what = ("a write was cut short (its journal is beside the file) and only a writer can roll it back: run "
                "the workflow, whose next write does, and try again")
    elif code == sqlite3.SQLITE_FULL:
        what = ("the disk (or the index's size limit) is full; the index is left as it is (not damaged): free "
                "space on its disk and run the workflow again")
    else:
        what = ("SQLite could not read or write it (an I/O error, permissions); the index is left as it is: check "
                "the disk and the file's permissions and run the workflow again")
    return CorpusIndexError(f"{path}: {exc}: {what}")


def _failed(path: Path, exc: sqlite3.Error) -> CorpusIndexError:
    if is_corrupt(exc):
        return Damaged(f"{path}: SQLite says it is damaged ({exc})")
    return unavailable(path, exc)


def set_aside(path: Path, why) -> bool:
    """A damaged index (SQLite says it is corrupt, or another format), moved aside with its
    journal (not deleted: it may be looked into) as the ledger does; the corpus step
    rebuilds one from the tokens. One process moves it while the others wait, then find
    the new one: a file that opens soundly by then is left alone. Returns whether it was
    moved."""
    with open(path.with_name(path.name + ".aside.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists() or _sound(path):
            return False
        stem = f"{path.name}.{getattr(why, 'aside', 'damaged')}-{time.strftime('%Y%m%d-%H%M%S')}"
        aside = next(path.with_name(f"{stem}{f'-{n}' if n else ''}") for n in range(1000)  # never over another
                     if not path.with_name(f"{stem}{f'-{n}' if n else ''}").exists())
        os.replace(path, aside)
        journal = path.with_name(path.name + "-journal")
        if journal.exists():  # a hot journal belongs to the damaged file, never to a new one
            os.replace(journal, aside.with_name(aside.name + "-journal"))
    log.warning("The corpus index %s cannot be used (%s): moved aside to %s; the corpus step rebuilds it from the "
                "tokens", path, why, aside.name)
    return True


def _sound(path: Path) -> bool:
    """Whether the index at `path` opens as an index of this format (an empty one too) and
    its pages are sound (PRAGMA quick_check: read only when damage was reported, rarely)."""
    try:
        with Index(path, readonly=True, timeout=30) as index:
            return index.conn.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok"
    except Damaged:
        return False
    except CorpusIndexError:
        return True  # empty: one begun by another process
    except sqlite3.Error as exc:
        # A hot journal left beside it that SQLite could not roll back is the damaged
        # file's; a lock is another process using a sound file.
        return not (is_corrupt(exc) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY_ROLLBACK)


def adding(path: str | Path, timeout: float = 120.0) -> Index:
    """The index opened to add an episode. A damaged one is set aside and a new one begun
    (the corpus step fills it from the tokens); a lock held past `timeout`, a full disk or
    an I/O error raise CorpusIndexError saying what to do, and leave the index as it is."""
    path = Path(path)
    try:
        return Index(path, timeout=timeout)
    except Damaged as exc:
        set_aside(path, exc)
    except sqlite3.Error as exc:
        raise _failed(path, exc) from exc
    try:
        return Index(path, timeout=timeout)
    except sqlite3.Error as exc:
        raise _failed(path, exc) from exc


def add_episode(path: str | Path, episode: str, table, meta: dict, segments: list[dict], series: str | None = None,
                season: str | None = None, timeout: float = 120.0) -> bool:
    """Index.add on the index at `path`, for an analysis, which never fails for the index:
    a damaged index is set aside and the episode added to a new one; a lock held too long,
    a full disk or an I/O error is logged with what to do and the episode left to the
    corpus step (`complete` adds what the index lacks). Returns whether it was added."""
    path = Path(path)
    for _ in range(2):
        try:
            with adding(path, timeout) as index:
                index.add(episode, table, meta, segments, series, season)
            return True
        except Damaged as exc:
            set_aside(path, exc)
        except CorpusIndexError as exc:
            log.warning("%s: not in the corpus index yet (the corpus step adds it): %s", episode, exc)
            return False
    return False


def complete(path: str | Path, entries: list[tuple[str, str | None, str | None]], tokens_of, transcript_of,
             timeout: float = 120.0) -> int:
    """Add to the index at `path` the analysed episodes it lacks, from their tokens (and
    their transcripts' segments when they are kept): a deleted or damaged index is rebuilt,
    one that missed episodes is completed. `entries`: (episode, series, season);
    `tokens_of(e)`/`transcript_of(e)`: the files' paths. Returns how many were added.
    Raises CorpusIndexError, the index left as it is, when SQLite cannot use a sound file
    (a lock held past `timeout`, a full disk, an I/O error)."""
    path = Path(path)
    try:
        return _complete(path, entries, tokens_of, transcript_of, timeout)
    except Damaged as exc:
        set_aside(path, exc)
    except sqlite3.Error as exc:
        if not is_corrupt(exc):
            raise unavailable(path, exc) from exc
        set_aside(path, exc)
    try:
        return _complete(path, entries, tokens_of, transcript_of, timeout)
    except sqlite3.Error as exc:
        raise _failed(path, exc) from exc


def _complete(path: Path, entries, tokens_of, transcript_of, timeout: float) -> int:
    from scribeflow.stages.tokens import checked_transcript, read_tokens

    with Index(path, timeout=timeout) as index:
        have = index.episode_names()
    missing = [e for e in entries if e[0] not in have]
    if not missing:
        return 0
    log.info("Corpus index: adding %d analysed episode(s) it lacks, from their tokens", len(missing))
    added = 0
    with Index(path, timeout=timeout) as index:
        for episode, series, season in missing:
            tokens = Path(tokens_of(episode))
            if not tokens.is_file():
                continue  # delete_tokens_after_analysis: nothing to rebuild it from
            table, meta = read_tokens(tokens)
            transcript = Path(transcript_of(episode))
            try:
                segments = checked_transcript(transcript)["segments"] if transcript.is_file() else None
            except ValueError:
                segments = None
            index.add(episode, table, meta, segments or segments_from_tokens(table), series, season)
            added += 1
    if added < len(missing):
        log.warning("Corpus index: %d episode(s) have no tokens left (delete_tokens_after_analysis) and are not in "
                    "it", len(missing) - added)
    return added
