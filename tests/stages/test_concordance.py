"""The corpus index: episodes added, added again, searched; lost or damaged and rebuilt from
the tokens. Real fugashi + UniDic on Japanese text."""

import json

import pytest

from scribeflow.stages import concordance
from scribeflow.stages.concordance import Index, complete, search
from scribeflow.stages.tokens import METADATA_KEY, tokenize_transcript, write_tokens

LINES = {"e1": ["猫が魚を食べた。", "犬も食べない。"], "e2": ["パンを食べちゃった！", "学校に行く。"]}


def _episode(name):
    segments = [{"start": 2.0 * i, "end": 2.0 * i + 1.5, "text": t} for i, t in enumerate(LINES[name])]
    table = tokenize_transcript({"id": name, "segments": segments}, "ja")
    return table, json.loads(table.schema.metadata[METADATA_KEY]), segments


def _counts(index):
    return sorted(index.conn.execute("SELECT w.lemma, s.series, c.count, c.documents FROM counts c "
                                     "JOIN words w ON w.id = c.word JOIN shows s ON s.id = c.show"))


def test_an_episode_added_again_replaces_its_rows_and_its_share_of_the_sums(tmp_path):
    with Index(tmp_path / "index.db") as index:
        for name in ("e1", "e2"):
            index.add(name, *_episode(name), series="S")
        before = _counts(index)
        index.add("e1", *_episode("e1"), series="S")
        assert _counts(index) == before
        assert ("食べる", "S", 3, 2) in before  # 食べた, 食べない, 食べちゃった in two episodes
        assert [h["marked"] for h in search(index, "食べる")["hits"]] == [
            "猫が魚を【食べた】。", "犬も【食べない】。", "パンを【食べちゃった】！"]
        # Moved to another series: the old series' sums lose it.
        index.add("e2", *_episode("e2"), series="T")
        counts = _counts(index)
        assert ("食べる", "S", 2, 1) in counts and ("食べる", "T", 1, 1) in counts
        assert search(index, "食べる", series="T")["hits"][0]["episode"] == "e2"


def test_several_words_find_the_segments_that_use_them_all(tmp_path):
    with Index(tmp_path / "index.db") as index:
        index.add("e1", *_episode("e1"))
        hits = search(index, "魚を食べる")["hits"]
    assert [h["text"] for h in hits] == ["猫が魚を食べた。"] and hits[0]["marked"] == "猫が【魚】【を】【食べた】。"


def test_a_lost_or_damaged_index_is_rebuilt_from_the_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for name in LINES:
        table, meta, _ = _episode(name)
        write_tokens(table, tokens / f"{name}.parquet")
    path = tmp_path / "index.db"
    entries = [("e1", "S", "1"), ("e2", "S", "1")]
    tokens_of, transcript_of = (lambda e: tokens / f"{e}.parquet"), (lambda e: tmp_path / f"{e}.json")
    assert complete(path, entries, tokens_of, transcript_of) == 2
    with Index(path, readonly=True) as index:
        # Without the transcripts, a sentence is its words joined (no punctuation).
        assert [h["text"] for h in search(index, "食べる")["hits"]] == ["猫が魚を食べた", "犬も食べない", "パンを食べちゃった"]
    assert complete(path, entries, tokens_of, transcript_of) == 0  # nothing missing: nothing read
    path.write_bytes(b"not a database" * 100)
    assert complete(path, entries, tokens_of, transcript_of) == 2
    assert len(list(tmp_path.glob("index.db.damaged-*"))) == 1
    with pytest.raises(concordance.CorpusIndexError, match="no corpus index yet"):
        Index(tmp_path / "none.db", readonly=True)


def test_varints_round_trip():
    numbers = [0, 1, 5, 127, 128, 300, 70000]
    assert concordance.unvarints(concordance.varints(numbers)) == numbers
    assert concordance.unvarints(concordance.varints(numbers, gaps=True), gaps=True) == numbers
    assert len(concordance.varints(range(0, 400, 3), gaps=True)) == len(range(0, 400, 3))  # a byte each


def test_an_index_of_another_format_is_named_and_set_aside(tmp_path):
    import sqlite3

    path = tmp_path / "index.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE episodes (name TEXT)")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    with pytest.raises(concordance.CorpusIndexError, match="another format .1; this version reads"):
        Index(path, readonly=True)
    with concordance.adding(path) as index:  # an analysis meets it: set aside, a new one begun
        index.add("e1", *_episode("e1"))
    assert len(list(tmp_path.glob("index.db.format1-*"))) == 1
    with Index(path, readonly=True) as index:
        assert index.episode_names() == {"e1"}


def _sums(index, name):
    return index.conn.execute("SELECT speech_s, segments, chars, tokens, morae, kanji FROM episodes WHERE name = ?",
                              (name,)).fetchone()


def test_segments_marked_as_song_leave_the_sums_and_the_default_search_and_come_back(tmp_path):
    song = {"start": 4.0, "end": 9.0, "text": "翼を広げて飛ぶ", "kind": "song"}
    with Index(tmp_path / "index.db") as index:
        table, meta, segments = _episode("e1")
        index.add("e1", table, meta, segments, series="S")
        spoken = _sums(index, "e1")
        assert spoken == (3.0, 2, len("猫が魚を食べた犬も食べない"), 10, spoken[4], "犬猫食魚")
        # A transcript whose song is marked: the song's words are indexed, never counted.
        lines = [*segments, song]
        table = tokenize_transcript({"id": "e2", "segments": lines}, "ja")
        index.add("e2", table, json.loads(table.schema.metadata[METADATA_KEY]), lines, series="S")
        assert _sums(index, "e2")[:4] == (3.0, 2, len("猫が魚を食べた犬も食べない"), 10)
        assert "翼" not in {lemma for lemma, *_ in _counts(index)}
        assert search(index, "翼")["hits"] == [] and search(index, "翼")["uses"] == 0
        everything = search(index, "翼", kinds=None)["hits"]
        assert [(h["episode"], h["kind"], h["marked"]) for h in everything] == [("e2", "song", "【翼】を広げて飛ぶ")]
        # Marked speech again after it was indexed: counted, found; then a song again.
        assert index.mark("e2", {2: "speech"}) is True
        assert ("翼", "S", 1, 1) in _counts(index) and _sums(index, "e2")[1] == 3
        assert [h["episode"] for h in search(index, "翼")["hits"]] == ["e2"]
        assert index.mark("e2", {2: "song"}) is True
        assert index.mark("e2", {2: "song"}) is False  # idempotent: nothing written
        assert _sums(index, "e2")[:4] == (3.0, 2, len("猫が魚を食べた犬も食べない"), 10)
        # The first episode's dialogue marked a repeat: its words leave the sums.
        before = dict(((lemma, n) for lemma, _, n, _ in _counts(index)))
        index.mark("e1", {0: "repeat", 1: "repeat"})
        after = dict(((lemma, n) for lemma, _, n, _ in _counts(index)))
        assert after["食べる"] == before["食べる"] - 2 and _sums(index, "e1")[:4] == (0.0, 0, 0, 0)
        assert index.kinds_of("e1") == {0: "repeat", 1: "repeat"}
        # An episode added again from its transcript takes the transcript's kinds.
        index.add("e1", *_episode("e1"), series="S")
        assert dict(((lemma, n) for lemma, _, n, _ in _counts(index))) == before
        with pytest.raises(ValueError, match="kind 'lyrics' is none of"):
            index.mark("e1", {0: "lyrics"})
        with pytest.raises(ValueError, match="no segment -1"):
            index.mark("e1", {-1: "song"})
        assert index.mark("e1", {7: "song"}) is False  # past its last segment: nothing there to count
        with pytest.raises(concordance.CorpusIndexError, match="'e9' is not in the corpus index"):
            index.mark("e9", {0: "song"})


def _tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.mkdir(exist_ok=True)
    for name in LINES:
        write_tokens(_episode(name)[0], tokens / f"{name}.parquet")
    return ([("e1", "S", "1"), ("e2", "S", "1")], lambda e: tokens / f"{e}.parquet", lambda e: tmp_path / f"{e}.json")


def test_a_corrupt_index_is_set_aside_and_rebuilt(tmp_path):
    import sqlite3

    path = tmp_path / "index.db"
    entries, tokens_of, transcript_of = _tokens(tmp_path)
    complete(path, entries, tokens_of, transcript_of)
    with sqlite3.connect(path) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    data = bytearray(path.read_bytes())
    size = len(data) // pages
    data[size:] = b"\xff" * (len(data) - size)  # every page but the first (the header) damaged
    path.write_bytes(bytes(data))
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        sqlite3.connect(path).execute("SELECT COUNT(*) FROM episodes").fetchone()
    assert complete(path, entries, tokens_of, transcript_of) == 2
    assert len(list(tmp_path.glob("index.db.damaged-*"))) == 1
    with Index(path, readonly=True) as index:
        assert index.episode_names() == {"e1", "e2"}


def test_a_damaged_index_moves_aside_with_its_journal_and_a_sound_one_stays(tmp_path):
    path = tmp_path / "index.db"
    path.write_bytes(b"not a database" * 100)
    (tmp_path / "index.db-journal").write_bytes(b"\x01" * 4096)  # what a crashed writer left
    assert concordance.set_aside(path, "file is not a database") is True
    aside = sorted(p.name for p in tmp_path.glob("index.db.damaged-*"))
    assert len(aside) == 2 and aside[1] == aside[0] + "-journal"  # a journal never meets a new index
    assert not path.exists() and not (tmp_path / "index.db-journal").exists()
    # Another job reported the same damage after the first moved it and began a new index.
    with concordance.adding(path) as index:
        index.add("e1", *_episode("e1"))
    assert concordance.set_aside(path, "file is not a database") is False
    with Index(path, readonly=True) as index:
        assert index.episode_names() == {"e1"}
    # An analysis that meets a damaged index sets it aside and adds its episode to a new one.
    path.write_bytes(b"not a database" * 100)
    assert concordance.add_episode(path, "e2", *_episode("e2")) is True
    assert len(list(tmp_path.glob("index.db.damaged-*"))) == 3  # each kept, the first with its journal
    with Index(path, readonly=True) as index:
        assert index.episode_names() == {"e2"}


def test_a_locked_index_is_reported_and_never_set_aside(tmp_path):
    import sqlite3

    path = tmp_path / "index.db"
    entries, tokens_of, transcript_of = _tokens(tmp_path)
    complete(path, entries[:1], tokens_of, transcript_of)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than the timeout
    try:
        with pytest.raises(concordance.CorpusIndexError, match="another process held its write lock.*not damaged"):
            concordance.adding(path, timeout=0.2)
        with pytest.raises(concordance.CorpusIndexError, match="another process held its write lock"):
            complete(path, entries, tokens_of, transcript_of, timeout=0.2)
        # An analysis goes on without it: the corpus step adds the episode later.
        assert concordance.add_episode(path, "e2", *_episode("e2"), series="S", timeout=0.2) is False
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not list(tmp_path.glob("index.db.damaged-*"))
    assert complete(path, entries, tokens_of, transcript_of) == 1  # the lock gone, it goes on where it was
    with Index(path, readonly=True) as index:
        assert index.episode_names() == {"e1", "e2"}


def test_a_full_index_is_reported_and_never_set_aside(tmp_path):
    path = tmp_path / "index.db"
    entries, tokens_of, transcript_of = _tokens(tmp_path)
    complete(path, entries[:1], tokens_of, transcript_of)
    with concordance.adding(path) as index:
        # SQLite's own "database or disk is full" (SQLITE_FULL), as on a full disk: no page more.
        pages = index.conn.execute("PRAGMA page_count").fetchone()[0]
        index.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(concordance.CorpusIndexError, match="is full; the index is left as it is.*free space"):
            for n in range(100):  # until a page more is needed
                index.add(f"e2-{n}", *_episode("e2"), series="S")
    assert not list(tmp_path.glob("index.db.damaged-*"))
    with Index(path, readonly=True) as index:  # the episodes before stay, the one that did not fit is not half in
        assert index.episode_names() == {"e1", *(f"e2-{i}" for i in range(n))}
        assert search(index, "食べる", limit=1000)["uses"] == 2 + n


def _add(index, name, lines, language, series):
    segments = [{"start": 2.0 * i, "end": 2.0 * i + 1.5, "text": t} for i, t in enumerate(lines)]
    table = tokenize_transcript({"id": name, "segments": segments}, language)
    index.add(name, table, json.loads(table.schema.metadata[METADATA_KEY]), segments, series=series)


def test_a_word_alone_is_found_by_its_lemma_written_form_and_reading(tmp_path):
    with Index(tmp_path / "index.db") as index:
        _add(index, "j1", ["翼を広げて空を飛ぶ。", "つばさが折れた。", "鳥の翼は白い。"], "ja", "J")
        # Tokenized alone, 翼 is the given name ツバサ, which no sentence uses.
        assert concordance.query_words("翼") == [("翼", "ツバサ")]
        for query in ("翼", "つばさ"):
            found = search(index, query)
            assert [h["marked"] for h in found["hits"]] == [
                "【翼】を広げて空を飛ぶ。", "【つばさ】が折れた。", "鳥の【翼】は白い。"], query
            assert found["uses"] == 3 and found["lemmas"] == ["翼"]
        assert [h["marked"] for h in search(index, "翼", exact=True)["hits"]] == ["【翼】を広げて空を飛ぶ。", "鳥の【翼】は白い。"]


def test_english_words_are_found_in_any_form_and_exact_only_as_written(tmp_path):
    with Index(tmp_path / "index.db") as index:
        _add(index, "en1", ["The fox jumped.", "A fox jumps over the dog.", "Jumping is fun.", "A jumper."], "en", "E")
        for query in ("jumps", "jump", "Jumped"):
            assert [h["marked"] for h in search(index, query)["hits"]] == [
                "The fox 【jumped】.", "A fox 【jumps】 over the dog.", "【Jumping】 is fun."], query
        exact = search(index, "Fox", exact=True)
        assert exact["hits"] == [] and exact["uses"] == 2  # fox in any form, Fox never written so
        assert [h["marked"] for h in search(index, "fox", exact=True)["hits"]] == [
            "The 【fox】 jumped.", "A 【fox】 jumps over the dog."]


def test_every_word_the_tokens_count_is_found_alone_by_its_written_form(tmp_path):
    """What the frequency table lists (a word's written form, counted from the tokens) is
    what a reader types: each finds at least the uses counted, however UniDic reads it alone."""
    from collections import Counter

    lines = ["翼を広げて空を飛ぶ。", "とてもおいしいライブだった！", "健太は三時に学校へ行った。", "虹が輝いて、彼方へ消えた。",
             "一昨日の夢を見たよ。", "明日は雨だって。"]
    with Index(tmp_path / "index.db") as index:
        _add(index, "e1", lines, "ja", "S")
        table = tokenize_transcript({"id": "e1", "segments": [{"start": 0, "end": 1, "text": t} for t in lines]}, "ja")
    counted = Counter(table.column("written").to_pylist())
    with Index(tmp_path / "index.db", readonly=True) as index:
        missed = {w: n for w, n in counted.items() if search(index, w, limit=100)["uses"] < n}
    assert not missed, missed
