"""The corpus index: every analysed episode's segments and the words in them, in one SQLite
file ({data_dir}/analysis/corpus/index.db), added to as each episode is analysed.

What it answers, each at a cost that does not grow with the episodes already indexed:
- where a word is used (`search`): one row per word and episode using it, with the
  segments (varints), ordered by word, so that a search reads its hits and no more;
- how often each word is used, in the whole corpus and per series (`counts`), kept as sums
  that each new episode adds to (the frequency tables, the Yomitan dictionaries and the
  per-show statistics read the sums, never the episodes' files);
- each episode's figures (`episodes`: speech, characters, words, morae, kanji).

An episode is added in one transaction, after its tokens are written: one more episode
costs its own rows. Adding it again (a rerun) first takes its old rows and sums away. A
word is UniDic's lemma with the spelling and reading of its dictionary form (食べる,
タベル), so that homographs with different readings stay apart; other languages' words are
their case-folded forms. The file is a cache of the tokens: deleted or damaged, it is
rebuilt from the tokens (`complete`), which the workflow does by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import unicodedata
import zlib
from collections import Counter
from pathlib import Path

log = logging.getLogger("scribeflow.stages.concordance")

VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    series TEXT NOT NULL DEFAULT '',   -- '' when the catalogue has none
    season TEXT NOT NULL DEFAULT '',
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
CREATE INDEX IF NOT EXISTS episodes_series ON episodes(series);
-- An episode's segments, (start, end, text) each, as zlib-compressed JSON: a search shows
-- a few sentences of an episode, and a sentence alone compresses poorly.
CREATE TABLE IF NOT EXISTS texts (
    episode INTEGER PRIMARY KEY,
    segments BLOB NOT NULL,
    words BLOB NOT NULL               -- its words' ids (varints): what a rerun of it takes away
);
CREATE TABLE IF NOT EXISTS words (
    id INTEGER PRIMARY KEY,
    lemma TEXT NOT NULL,
    written TEXT NOT NULL,
    reading TEXT NOT NULL DEFAULT '',  -- katakana; '' without one
    pos TEXT,
    detail TEXT,                       -- UniDic's levels 2-4: 固有名詞-人名-一般 (a name)
    UNIQUE (lemma, written, reading)   -- also a lemma's words, by its leading column
);
-- One row per word and episode using it: its uses there and the segments (varints, each
-- the gap from the one before), so that a word's uses are one range of the key.
CREATE TABLE IF NOT EXISTS occurrences (
    word INTEGER NOT NULL,
    episode INTEGER NOT NULL,
    count INTEGER NOT NULL,
    segments BLOB NOT NULL,
    PRIMARY KEY (word, episode)
) WITHOUT ROWID;
-- Per word and series (and season): its uses and the episodes it is used in.
CREATE TABLE IF NOT EXISTS counts (
    word INTEGER NOT NULL,
    series TEXT NOT NULL,
    season TEXT NOT NULL,
    count INTEGER NOT NULL,
    documents INTEGER NOT NULL,
    PRIMARY KEY (word, series, season)
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


class CorpusIndexError(RuntimeError):
    """The index cannot be used; the message names the file and what to do."""


def is_kanji(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or char == "々"


def hiragana(katakana: str | None) -> str:
    """カタカナ -> かたかな (ー and what is not katakana stay as they are)."""
    return "".join(chr(ord(c) - 0x60) if "\u30a1" <= c <= "\u30f6" else c for c in katakana or "")


class Index:
    """The index file, opened for reading (`readonly`) or for adding episodes."""

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
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self.conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise CorpusIndexError(f"{self.path}: not a corpus index that can be read ({exc}); delete it: the next "
                                   f"run rebuilds it from the tokens") from None
        if readonly and not tables:
            self.conn.close()
            raise CorpusIndexError(f"{self.path}: an empty corpus index; it is filled as episodes are analysed")
        if tables and version != VERSION:
            self.conn.close()
            raise CorpusIndexError(f"{self.path}: a corpus index of another format ({version}; this version reads "
                                   f"{VERSION}); delete it: the next run rebuilds it from the tokens")
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
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- adding -----------------------------------------------------------------------------
    def add(self, episode: str, table, meta: dict, segments: list[dict], series: str | None = None,
            season: str | None = None) -> None:
        """One analysed episode: `table` its tokens (stages/tokens.py), `meta` their
        metadata, `segments` its transcript's segments (the sentences shown by a search)."""
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        n = table.num_rows
        readings = cols.get("base_reading") or [None] * n
        keys = [(cols["lemma"][i], cols["written"][i] or cols["lemma"][i], readings[i] or "") for i in range(n)]
        pos = dict(zip(keys, zip(cols["pos"], cols["pos_detail"])))
        uses = Counter(keys)
        in_segments: dict[tuple, set] = {}
        for key, seg in zip(keys, cols["segment"]):
            in_segments.setdefault(key, set()).add(seg)
        morae = sum(m for m in cols.get("morae") or [] if m)
        text = "".join(s["text"] for s in segments)
        kanji = "".join(sorted({c for c in text if is_kanji(c)}))
        # Characters said: letters and digits, not punctuation, symbols or spaces.
        chars = sum(1 for c in text if unicodedata.category(c)[0] in "LN")
        series, season = series or "", "" if season is None else str(season)
        packed = zlib.compress(json.dumps([[s["start"], s["end"], s["text"]] for s in segments],
                                          ensure_ascii=False).encode(), 6)
        with self.transaction() as c:
            old = self._remove(c, episode)  # an episode added again keeps its place
            cur = c.execute(
                "INSERT INTO episodes (id, name, series, season, source, language, duration_s, speech_s, segments, "
                "chars, tokens, morae, kanji, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (old, episode, series, season, meta.get("source"), meta.get("language"), meta.get("duration"),
                 meta.get("speech_seconds"), len(segments), chars, n, morae or None, kanji, time.time()))
            eid = cur.lastrowid
            c.executemany("INSERT OR IGNORE INTO words (lemma, written, reading, pos, detail) VALUES (?, ?, ?, ?, ?)",
                          ((*key, *pos[key]) for key in uses))
            ids = self._word_ids(c, list(uses))
            c.executemany("INSERT INTO occurrences VALUES (?, ?, ?, ?)",
                          ((ids[key], eid, k, varints(sorted(in_segments[key]), gaps=True))
                           for key, k in uses.items()))
            c.execute("INSERT INTO texts VALUES (?, ?, ?)", (eid, packed, varints(sorted(ids.values()))))
            c.executemany("INSERT INTO counts VALUES (?, ?, ?, ?, 1) ON CONFLICT (word, series, season) DO UPDATE "
                          "SET count = count + excluded.count, documents = documents + 1",
                          ((ids[key], series, season, k) for key, k in uses.items()))

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

    @staticmethod
    def _remove(c, episode: str) -> int | None:
        """An episode's rows and its share of the sums, before it is added again; its id."""
        row = c.execute("SELECT id, series, season FROM episodes WHERE name = ?", (episode,)).fetchone()
        if row is None:
            return None
        eid, series, season = row
        packed = c.execute("SELECT words FROM texts WHERE episode = ?", (eid,)).fetchone()
        for word in unvarints(packed[0]) if packed else []:
            found = c.execute("SELECT count FROM occurrences WHERE word = ? AND episode = ?", (word, eid)).fetchone()
            if found is None:
                continue
            c.execute("UPDATE counts SET count = count - ?, documents = documents - 1 WHERE word = ? AND series = ? "
                      "AND season = ?", (found[0], word, series, season))
            c.execute("DELETE FROM counts WHERE word = ? AND series = ? AND season = ? AND documents <= 0",
                      (word, series, season))
            c.execute("DELETE FROM occurrences WHERE word = ? AND episode = ?", (word, eid))
        c.execute("DELETE FROM texts WHERE episode = ?", (eid,))
        c.execute("DELETE FROM episodes WHERE id = ?", (eid,))
        return eid

    def segments_of(self, eid: int) -> list:
        """An episode's segments: [start, end, text] each."""
        row = self.conn.execute("SELECT segments FROM texts WHERE episode = ?", (eid,)).fetchone()
        return json.loads(zlib.decompress(row[0])) if row else []

    # -- reading ----------------------------------------------------------------------------
    def episode_count(self, series: str | None = None) -> int:
        where, args = ("WHERE series = ?", [series]) if series is not None else ("", [])
        return self.conn.execute(f"SELECT COUNT(*) FROM episodes {where}", args).fetchone()[0]

    def written_frequencies(self, series: str | None = None) -> list[tuple[str, str, int]]:
        """(written form, katakana reading, uses) of every word, summed over the corpus or
        one series (the per-lemma rows of one spelling and reading together)."""
        where, args = ("WHERE c.series = ?", [series]) if series is not None else ("", [])
        return self.conn.execute(
            f"SELECT w.written, w.reading, SUM(c.count) FROM counts c JOIN words w ON w.id = c.word {where} "
            f"GROUP BY w.written, w.reading", args).fetchall()

    def show_sums(self, by_season: bool = False):
        """Per show (series, and season or ''), two DataFrames: its episodes' sums
        (episodes, speech minutes, characters, words, segments, morae, kanji), and its
        uses per lemma with whether the lemma is a name (UniDic's 固有名詞)."""
        import pandas as pd

        season = "season" if by_season else "''"
        shows = pd.read_sql_query(
            f"SELECT series, {season} AS season, COUNT(*) AS episodes, SUM(speech_s) / 60.0 AS speech_minutes, "
            f"SUM(chars) AS chars, SUM(tokens) AS words, SUM(segments) AS segments, SUM(morae) AS morae, "
            f"GROUP_CONCAT(kanji, '') AS kanji FROM episodes GROUP BY series, {season}", self.conn)
        c_season = "c.season" if by_season else "''"
        counts = pd.read_sql_query(
            f"SELECT c.series, {c_season} AS season, w.lemma, MAX(COALESCE(w.detail, '') LIKE '固有名詞%') AS name, "
            f"SUM(c.count) AS count FROM counts c JOIN words w ON w.id = c.word "
            f"GROUP BY c.series, {c_season}, w.lemma", self.conn)
        return shows, counts

    def episode_names(self) -> set[str]:
        return {name for (name,) in self.conn.execute("SELECT name FROM episodes")}

    def words_of(self, lemma: str) -> list[int]:
        """The ids of a lemma's words (its spellings and readings)."""
        return [w for (w,) in self.conn.execute("SELECT id FROM words WHERE lemma = ?", (lemma,))]


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
    """The query's words as the index knows them: (surface, lemma) from the tokenizer the
    episodes went through (食べた -> (食べた, 食べる))."""
    return [(t[0], t[1]) for t in _tokenizer(word, language)(nfkc(word).strip())]


def search(index: Index, word: str, series: str | None = None, limit: int = 20, exact: bool = False,
           language: str | None = None) -> dict:
    """Every use of `word` by its dictionary form (食べる finds 食べた and 食べない; a query of
    several words finds the segments that use them all), or with `exact` only where it is
    written as given. Returns {"query", "lemmas", "uses", "episodes", "hits": [{series,
    episode, start, end, text, marked, spans}]}, at most `limit` hits."""
    words = query_words(word, language)
    if not words:
        raise CorpusIndexError(f"{word!r} has no word the index could hold (punctuation and symbols are not indexed)")
    lemmas = list(dict.fromkeys(lemma for _, lemma in words))
    c = index.conn
    ids = {lemma: index.words_of(lemma) for lemma in lemmas}
    result = {"query": word, "lemmas": lemmas, "uses": 0, "episodes": 0, "hits": []}
    if not all(ids.values()):
        return result
    where_series = "AND series = ?" if series is not None else ""
    args = [series] if series is not None else []

    def uses_of(wids):
        q = ",".join("?" * len(wids))
        return c.execute(f"SELECT COALESCE(SUM(count), 0), COALESCE(SUM(documents), 0) FROM counts "
                         f"WHERE word IN ({q}) {where_series}", [*wids, *args]).fetchone()

    rarest = min(lemmas, key=lambda lemma: uses_of(ids[lemma])[0])
    result["uses"], result["episodes"] = uses_of(ids[rarest]) if len(lemmas) == 1 else (None, None)
    others = [ids[lemma] for lemma in lemmas if lemma != rarest]
    needle = nfkc(word).strip()
    texts: dict[int, list] = {}
    for eid, idx in _postings(c, ids[rarest], series):
        if others and not all(any(idx in _segments_using(c, w, eid) for w in wids) for wids in others):
            continue
        if eid not in texts:
            texts = {eid: index.segments_of(eid)}  # one episode's text at a time: hits come by episode
        start, end, text = texts[eid][idx]
        if exact and needle not in nfkc(text):
            continue
        name, ep_series = c.execute("SELECT name, series FROM episodes WHERE id = ?", (eid,)).fetchone()
        spans = _spans(text, needle if exact else None, set(lemmas), language)
        result["hits"].append({"series": ep_series or None, "episode": name, "start": start, "end": end,
                               "text": text, "marked": _marked(text, spans), "spans": spans})
        if len(result["hits"]) >= limit:
            break
    return result


def _segments_using(c, word: int, eid: int) -> list[int]:
    row = c.execute("SELECT segments FROM occurrences WHERE word = ? AND episode = ?", (word, eid)).fetchone()
    return unvarints(row[0], gaps=True) if row else []


def _postings(c, wids: list[int], series: str | None):
    """(episode, segment) of each use of the words, a word's range at a time; with a series,
    through that series' episodes."""
    if series is not None:
        episodes = [e for (e,) in c.execute("SELECT id FROM episodes WHERE series = ? ORDER BY id", (series,))]
        for eid in episodes:
            for wid in wids:
                for idx in _segments_using(c, wid, eid):
                    yield eid, idx
        return
    for wid in wids:
        for eid, packed in c.execute("SELECT episode, segments FROM occurrences WHERE word = ?", (wid,)):
            for idx in unvarints(packed, gaps=True):
                yield eid, idx


def _spans(text: str, needle: str | None, lemmas: set[str], language: str | None) -> list[list[int]]:
    """[start, end) character offsets of the uses in `text`: the needle's, or the words
    whose lemma is one of `lemmas` (the segment tokenized again)."""
    if needle:
        spans, at = [], text.find(needle)
        while at >= 0:
            spans.append([at, at + len(needle)])
            at = text.find(needle, at + len(needle))
        return spans
    spans, pos, extending = [], 0, False
    for surface, lemma, _written, _reading, part, *_ in _tokenizer(text, language)(text):
        at = text.find(surface, pos)
        if at < 0:
            continue
        pos = at + len(surface)
        if lemma in lemmas:
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
    """A transcript's segments as far as its tokens tell (words only, no punctuation): what
    a search shows when the transcript itself is gone."""
    by: dict[int, dict] = {}
    japanese = None
    for seg, start, end, surface in zip(*(table.column(c).to_pylist() for c in ("segment", "start", "end", "surface"))):
        s = by.setdefault(seg, {"start": start, "end": end, "words": []})
        s["words"].append(surface)
        japanese = japanese if japanese is not None else _japanese(surface)
    last = max(by, default=-1)
    return [{"start": by[i]["start"], "end": by[i]["end"], "text": ("" if japanese else " ").join(by[i]["words"])}
            if i in by else {"start": 0.0, "end": 0.0, "text": ""} for i in range(last + 1)]


def set_aside(path: Path, why) -> None:
    """An index that cannot be used, moved aside (not deleted: it may be looked into); the
    corpus step rebuilds one from the tokens."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    log.warning("The corpus index %s cannot be used (%s): moved aside to %s; the corpus step rebuilds it from the "
                "tokens", path, why, aside.name)
    with contextlib.suppress(FileNotFoundError):  # another job may have moved it first
        path.rename(aside)


def adding(path: str | Path) -> Index:
    """The index opened to add an episode; one that cannot be used is set aside and a new
    one begun (an analysis never fails for the index: the corpus step completes it)."""
    try:
        return Index(path)
    except (CorpusIndexError, sqlite3.DatabaseError) as exc:
        set_aside(Path(path), exc)
        return Index(path)


def complete(path: str | Path, entries: list[tuple[str, str | None, str | None]], tokens_of, transcript_of,
             ) -> int:
    """Add to the index at `path` the analysed episodes it lacks, from their tokens (and
    their transcripts' segments when they are kept): a deleted or damaged index is rebuilt,
    one that missed episodes is completed. `entries`: (episode, series, season);
    `tokens_of(e)`/`transcript_of(e)`: the files' paths. Returns how many were added."""
    from scribeflow.stages.tokens import checked_transcript, read_tokens

    path = Path(path)
    try:
        with Index(path) as index:
            have = index.episode_names()
    except (CorpusIndexError, sqlite3.DatabaseError) as exc:
        set_aside(path, exc)
        have = set()
    missing = [e for e in entries if e[0] not in have]
    if not missing:
        return 0
    log.info("Corpus index: adding %d analysed episode(s) it lacks, from their tokens", len(missing))
    added = 0
    with Index(path) as index:
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
