"""The corpus index and the corpus update at scale: what one more episode costs, how fast a
search answers, and what the index weighs.

    python benchmarks/concordance.py --bulk 171881 --at 17188 42970   # the whole catalogue, in bulk
    python benchmarks/concordance.py --bulk 17188            # a tenth of it
    python benchmarks/concordance.py                         # one at a time: 2,000 / 6,000 / 12,000 episodes
    python benchmarks/concordance.py --sizes 500 1000 2000   # a quick look

Episodes: synthetic 24-min Japanese episodes as the index stores them: 450 segments of
11 words each (4,950 tokens), the words drawn from a Zipf distribution (s = 1.1) over a
vocabulary of 60,000 lemmas with readings, 57 episodes a show as in the 171,881-episode
catalogue (~3,000 shows; the per-show sums grow with the shows, not the episodes); the
segment text is the words joined, ~30 characters.

--bulk N lays the N episodes down in the index's own format without Index.add's
per-episode transaction (the workflow adds them one at a time; the file is the same),
with 40 real Japanese words (UniDic's keys) at chosen ranks among the synthetic ones, and
then, in a new process as `scribeflow search` runs: the first query's time from the
process's start, UniDic's dictionary load included (target <= 2 s), and p50/p95 of 200
Japanese queries (QUERIES: dictionary and inflected forms, readings in kana, 翼, which
UniDic reads alone as a name; a fifth within one show; 20 sentences each; target p95
<= 200 ms). It prints the index's size per table, extrapolated to 171,881 episodes below
that size (the words' tables are bounded by the vocabulary), beside the tokens files of
the same synthetic episodes (write_tokens) and the seed's budget (tokens ~5 GB, analysis
~2 GB).

Without --bulk, each episode is added with Index.add, one transaction, as the
analyse_episode job does; printed at each size: the index's bytes per episode, the time
to add one more episode (the mean over the last 200 added), search p50/p95 over 200
queries by lemma (frequent, middling and rare), and the corpus update after a chunk of
2,000 episodes (analysis.Aggregate: reading only the new episodes' lemma counts) against
a rebuild that reads them all, at the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from scribeflow.stages.concordance import Index, search  # noqa: E402
from scribeflow.stages.tokens import METADATA_KEY, SCHEMA  # noqa: E402

CATALOGUE = 171_881
VOCABULARY = 60_000
EPISODES_PER_SHOW = 57  # 171,881 episodes of ~3,000 shows
SEGMENTS = 450
WORDS_PER_SEGMENT = 11
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
KANJI = "日本語食事学校先生友達時間電話仕事天気映画音楽家族自分世界今明後前中外上下大小新古"


def vocabulary(rng: random.Random) -> list[tuple[str, str, str]]:
    """(lemma, written, katakana reading) of each rank."""
    words = []
    for rank in range(VOCABULARY):
        n = 1 + rank % 3
        written = "".join(rng.choice(KANJI) for _ in range(n)) + rng.choice(KANA)
        reading = "".join(chr(ord(rng.choice(KANA)) + 0x60) for _ in range(n + 1))
        words.append((f"{written}{rank}", written, reading))
    return words


def episode(rng: np.random.Generator, words, number: int, shows: int):
    ranks = np.minimum(rng.zipf(1.1, SEGMENTS * WORDS_PER_SEGMENT) - 1, VOCABULARY - 1)
    segment = np.repeat(np.arange(SEGMENTS, dtype=np.int32), WORDS_PER_SEGMENT)
    start = segment * 3.1
    lemma = [words[r][0] for r in ranks]
    written = [words[r][1] for r in ranks]
    reading = [words[r][2] for r in ranks]
    columns = {
        "segment": segment, "start": start, "end": start + 2.6, "surface": written, "lemma": lemma,
        "written": written, "reading": reading, "pos": ["名詞"] * len(ranks), "pos_detail": ["普通名詞-一般"] * len(ranks),
        "unknown": [False] * len(ranks), "base_reading": reading, "morae": np.full(len(ranks), 3, np.int16),
    }
    table = pa.table({name: columns.get(name, [None] * len(ranks)) for name in SCHEMA.names}, schema=SCHEMA)
    segments = [{"start": float(s * 3.1), "end": float(s * 3.1 + 2.6),
                 "text": "".join(written[s * WORDS_PER_SEGMENT:(s + 1) * WORDS_PER_SEGMENT])} for s in range(SEGMENTS)]
    meta = {"id": f"ep{number:06d}", "source": "asr", "language": "ja", "duration": 1440.0,
            "speech_seconds": SEGMENTS * 2.6, "chars": sum(len(s["text"]) for s in segments)}
    return table, meta, segments, f"show{number % shows:04d}"


def lemma_file(table, path: Path) -> None:
    from scribeflow.stages.analysis import lemma_counts

    pq.write_table(lemma_counts(table), path, compression="zstd")


def searches(index: Index, words, rng: random.Random, shows: int, n: int = 200) -> list[float]:
    times = []
    for i in range(n):
        rank = [rng.randrange(0, 50), rng.randrange(50, 5000), rng.randrange(5000, VOCABULARY)][i % 3]
        series = f"show{rng.randrange(shows):04d}" if i % 5 == 0 else None
        started = time.perf_counter()
        search(index, words[rank][0], series=series, limit=20, language="en")  # the lemma as given: no re-tokenizing
        times.append(time.perf_counter() - started)
    return times


# -- the whole catalogue, laid down in bulk ---------------------------------------------------
# Real Japanese words at chosen frequency ranks, so that real queries (tokenized by UniDic in
# the searching process, as `scribeflow search` does) find them: (rank, a text, the word's
# token in it when not the first). Particles and auxiliaries lead, as in speech.
REAL_WORDS = [
    (0, "の"), (1, "が"), (2, "食べた", 1), (3, "走って", 1), (4, "は"), (5, "に"), (6, "を"), (7, "見ない", 1),
    (8, "です"), (9, "ます"), (20, "言う"), (25, "行く"), (30, "見る"), (35, "思う"), (45, "本当"), (60, "大丈夫"),
    (80, "時間が"), (150, "学校が"), (300, "先生が"), (500, "友達が"), (700, "食べる"), (900, "走る"), (1200, "笑う"),
    (1500, "泣く"), (2000, "約束が"), (2500, "電話が"), (3000, "映画が"), (4000, "夢が"), (5000, "心が"), (6000, "守る"),
    (8000, "信じる"), (10000, "戦う"), (12000, "翼が"), (15000, "魔法が"), (20000, "冒険が"), (25000, "虹が"),
    (30000, "彼方が"), (40000, "輝く"), (50000, "勇者が"), (59000, "宿題が"),
]
# What a learner types: dictionary forms, inflected forms, readings in kana, and 翼 (read
# alone by UniDic as the name ツバサ).
QUERIES = ["翼", "食べる", "食べた", "走って", "言った", "見ない", "笑う", "泣いた", "信じて", "戦う", "守る", "がっこう",
           "せんせい", "友達", "約束", "電話", "映画", "夢", "心", "魔法", "冒険", "虹", "彼方", "輝く", "勇者", "宿題",
           "本当", "大丈夫", "時間", "つばさ"]


def real_words(words: list[tuple]) -> list[tuple]:
    """The vocabulary with REAL_WORDS at their ranks: (lemma, written, reading, pos, detail)."""
    from scribeflow.stages.tokens import tokenizer_for

    tagger = tokenizer_for("ja")
    out = [(*w, "名詞", "普通名詞-一般") for w in words]
    for rank, text, *at in REAL_WORDS:
        _surface, lemma, written, _kana, pos, detail, _unknown, base, _morae = list(tagger(text))[at[0] if at else 0]
        out[rank] = (lemma, written, base or "", pos, detail)
    return out


def _varint_blobs(ranks: np.ndarray, segment: np.ndarray):
    """Per distinct word of an episode: its id and the segment of each use as Index.add
    writes them (varint gaps, 0 for another use in the same segment)."""
    order = np.lexsort((segment, ranks))
    r, s = ranks[order], segment[order].astype(np.int64)
    words, first = np.unique(r, return_index=True)
    gaps = np.diff(s, prepend=0)
    gaps[first] = s[first]
    two = gaps >= 0x80  # segments < 16,384: one or two bytes each
    size = 1 + two.astype(np.int64)
    ends = np.cumsum(size)
    out = np.empty(int(ends[-1]), np.uint8)
    starts = ends - size
    out[starts] = np.where(two, (gaps & 0x7F) | 0x80, gaps)
    out[starts[two] + 1] = gaps[two] >> 7
    data = out.tobytes()
    bounds = [*starts[first].tolist(), len(data)]
    return words.tolist(), [data[bounds[i]:bounds[i + 1]] for i in range(len(words))]


def _bulk_episode(c, rng, vocab, number: int, show: int, counts: np.ndarray, documents: np.ndarray, occurrences):
    from scribeflow.stages import concordance as cc

    ranks = np.minimum(rng.zipf(1.1, SEGMENTS * WORDS_PER_SEGMENT) - 1, VOCABULARY - 1)
    segment = np.repeat(np.arange(SEGMENTS), WORDS_PER_SEGMENT)
    written = [vocab[r][1] for r in ranks.tolist()]
    rows = [[round(s * 3.1, 2), round(s * 3.1 + 2.6, 2), "".join(written[s * WORDS_PER_SEGMENT:(s + 1) * WORDS_PER_SEGMENT]),
             3 * WORDS_PER_SEGMENT] for s in range(SEGMENTS)]
    eid = number + 1
    words, blobs = _varint_blobs(ranks, segment)
    occurrences.extend((w + 1, eid, b) for w, b in zip(words, blobs))
    c.execute("INSERT INTO episodes (id, name, show, source, language, duration_s, speech_s, segments, chars, tokens, "
              "morae, kanji, added_at) VALUES (?, ?, ?, 'asr', 'ja', 1440.0, ?, ?, ?, ?, ?, ?, ?)",
              (eid, f"ep{number:06d}", show, *cc._sums(rows, {}, Counter(segment.tolist())), time.time()))
    c.execute("INSERT INTO texts VALUES (?, ?, NULL, ?)", (eid, cc._pack(rows), cc.varints([w + 1 for w in words], gaps=True)))
    counts += np.bincount(ranks, minlength=VOCABULARY)
    documents[words] += 1


def bulk_build(path: Path, episodes: int, vocab: list[tuple], seed: int = 1, at=(), measure=None) -> float:
    """An index of `episodes` laid down in bulk, in Index.add's format (one transaction per
    ~1,200 episodes, each word's rows in key order): what the workflow builds one episode
    at a time. `measure(done, seconds)` is called, everything committed, once `done`
    reaches each size of `at` (and at the end). Returns the seconds it took."""
    from scribeflow.stages.concordance import Index

    Index(path).close()  # the schema, as the workflow makes it
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = OFF")  # the benchmark's own file: nothing to roll back to
    c.execute("PRAGMA synchronous = OFF")
    c.execute("PRAGMA cache_size = -1000000")
    started, rng, shows = time.perf_counter(), np.random.default_rng(seed), -(-episodes // EPISODES_PER_SHOW)
    c.execute("BEGIN")
    c.executemany("INSERT INTO words (id, lemma, written, reading, pos, detail) VALUES (?, ?, ?, ?, ?, ?)",
                  ((i + 1, *w) for i, w in enumerate(vocab)))
    c.executemany("INSERT INTO shows (id, series, season) VALUES (?, ?, '')",
                  ((s + 1, f"show{s:04d}") for s in range(shows)))
    occurrences = []
    for show in range(shows):
        counts, documents = np.zeros(VOCABULARY, np.int64), np.zeros(VOCABULARY, np.int64)
        for number in range(show * EPISODES_PER_SHOW, min(episodes, (show + 1) * EPISODES_PER_SHOW)):
            _bulk_episode(c, rng, vocab, number, show + 1, counts, documents, occurrences)
        said = np.flatnonzero(documents)
        c.executemany("INSERT INTO counts VALUES (?, ?, ?, ?)",
                      zip((said + 1).tolist(), [show + 1] * len(said), counts[said].tolist(), documents[said].tolist()))
        done = min(episodes, (show + 1) * EPISODES_PER_SHOW)
        checkpoint = any(done >= size > done - EPISODES_PER_SHOW for size in at) or show == shows - 1
        if len(occurrences) > 1_500_000 or checkpoint:
            occurrences.sort(key=lambda row: (row[0], row[1]))
            c.executemany("INSERT INTO occurrences VALUES (?, ?, ?)", occurrences)
            occurrences.clear()
            c.execute("COMMIT")
            print(f"  {done:,} episodes laid down, {time.perf_counter() - started:.0f} s", flush=True)
            if checkpoint and measure:
                measure(done, time.perf_counter() - started)
            c.execute("BEGIN")
    c.execute("COMMIT")
    c.close()
    return time.perf_counter() - started


# Tables whose size follows the vocabulary and the shows' names, not the episodes.
BOUNDED = ("words", "sqlite_autoindex_words", "shows", "sqlite_autoindex_shows", "sqlite_schema")


def table_sizes(path: Path) -> dict[str, int]:
    """Bytes per table and index (SQLite's dbstat)."""
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"))
    finally:
        c.close()


def tokens_bytes(vocab, n: int = 20) -> float:
    """Bytes per episode of the tokens files (stages/tokens.py's write_tokens) of `n`
    episodes drawn as the index's: what the index is built from."""
    import tempfile

    from scribeflow.stages.tokens import write_tokens

    rng, words = np.random.default_rng(7), [w[:3] for w in vocab]
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            table, meta, _, _ = episode(rng, words, i, 1)
            path = Path(tmp) / f"{i}.parquet"
            write_tokens(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), path)
            total += path.stat().st_size
    return total / n


def fresh_searches(path: Path, shows: int) -> dict:
    """In a new process, as `scribeflow search` runs: the first query's time from the
    process's start (Python, the imports, UniDic's dictionary, the index), then 200 more
    (a fifth within one show): p50 and p95."""
    code = f"""
import json, random, statistics, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {str(REPO / 'src')!r})
from scribeflow.stages.concordance import Index, search
queries = {QUERIES!r}
with Index({str(path)!r}, readonly=True) as index:
    first = search(index, queries[0], limit=20)
    first_s = time.perf_counter() - t0
    rng, times, found = random.Random(3), [], 0
    for i in range(200):
        series = f"show{{rng.randrange({shows}):04d}}" if i % 5 == 0 else None
        started = time.perf_counter()
        found += len(search(index, queries[i % len(queries)], series=series, limit=20)["hits"]) > 0
        times.append(time.perf_counter() - started)
print(json.dumps({{"first_s": first_s, "first_hits": len(first["hits"]), "first_uses": first["uses"],
                  "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * statistics.quantiles(times, n=20)[18],
                  "with_hits": found}}))
"""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def bulk(episodes: int, work: Path, at=()) -> int:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "bulk-index.db"
    path.unlink(missing_ok=True)
    vocab = real_words(vocabulary(random.Random(1)))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {episodes:,} synthetic 24-min Japanese episodes in bulk "
          f"({SEGMENTS} segments, {SEGMENTS * WORDS_PER_SEGMENT:,} tokens each, Zipf over {VOCABULARY:,} words with "
          f"{len(REAL_WORDS)} real ones, {-(-episodes // EPISODES_PER_SHOW):,} shows of {EPISODES_PER_SHOW})", flush=True)
    per_token = tokens_bytes(vocab)
    print(f"the tokens the index is built from (write_tokens, the same synthetic words): {per_token:,.0f} bytes an "
          f"episode, {per_token * CATALOGUE / 1e9:.1f} GB at {CATALOGUE:,}; the seed's budget: tokens ~5 GB, "
          f"analysis ~2 GB", flush=True)
    bulk_build(path, episodes, vocab, at=at, measure=lambda done, took: report(path, done, took, per_token))
    return 0


def report(path: Path, episodes: int, took: float, per_token: float) -> None:
    """The index's size per table and the searches in a fresh process, at `episodes`."""
    size, tables = path.stat().st_size, table_sizes(path)
    fixed = sum(n for name, n in tables.items() if name.startswith(BOUNDED))
    full = fixed + (size - fixed) * CATALOGUE / episodes
    print(f"at {episodes:,} episodes ({took:.0f} s): index {size / 1e9:.2f} GB: {(size - fixed) / episodes:,.0f} bytes "
          f"an episode and {fixed / 1e6:.0f} MB of words (bounded by the vocabulary); {full / 1e9:.1f} GB at "
          f"{CATALOGUE:,} episodes" + (" (extrapolated)" if episodes < CATALOGUE else "")
          + f"; without the words, {(size - fixed) / episodes / per_token:.0%} of the tokens")
    for name, n in tables.items():
        grows = not name.startswith(BOUNDED)
        print(f"  {name:<26} {n / 1e6:9.1f} MB" + (f" {n / episodes:8,.0f} bytes an episode" if grows else ""))
    r = fresh_searches(path, max(1, episodes // EPISODES_PER_SHOW))
    print(f"fresh process: first query ({QUERIES[0]}, {r['first_hits']} hits of {r['first_uses']:,} uses) "
          f"{r['first_s']:.2f} s from the process's start (UniDic's dictionary loaded, target <= 2 s; the process, "
          f"with the 200 below, {r['process_s']:.2f} s); then 200 Japanese queries: p50 {r['p50_ms']:.1f} ms, "
          f"p95 {r['p95_ms']:.1f} ms (target <= 200 ms), {r['with_hits']} with hits", flush=True)

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 12000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/scribeflow-concordance-bench"))
    parser.add_argument("--bulk", type=int, default=None, metavar="EPISODES",
                        help="lay down this many episodes in bulk (171881: the whole catalogue) and measure the "
                        "search with Japanese queries in a fresh process, and the index's size")
    parser.add_argument("--at", type=int, nargs="*", default=[], metavar="EPISODES",
                        help="with --bulk, measure on the way too, at these sizes")
    args = parser.parse_args()
    if args.bulk:
        return bulk(args.bulk, args.work, args.at)
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "lemmas").mkdir(parents=True)
    rng, nprng = random.Random(1), np.random.default_rng(1)
    words = vocabulary(rng)
    path = args.work / "index.db"
    shows = max(1, args.sizes[-1] // EPISODES_PER_SHOW)
    print(f"{time.strftime('%Y-%m-%d')}: synthetic 24-min Japanese episodes ({SEGMENTS} segments, "
          f"{SEGMENTS * WORDS_PER_SEGMENT:,} tokens each, Zipf over {VOCABULARY:,} words, {shows:,} shows)")
    print(f"{'episodes':>9} {'bytes/ep':>9} {'at 171,881':>11} {'add ms/ep':>10} {'search p50':>11} {'p95 ms':>7}")
    done, entries, rows = 0, [], []
    with Index(path) as index:
        # The lemma matching a search does is by lemma as stored: search() re-tokenizes
        # the query with the word tokenizer for these synthetic lemmas (language "en").
        for size in args.sizes:
            adds = []
            while done < size:
                table, meta, segments, series = episode(nprng, words, done, shows)
                started = time.perf_counter()
                index.add(meta["id"], table, meta, segments, series=series)
                adds.append(time.perf_counter() - started)
                lemmas = args.work / "lemmas" / f"{meta['id']}.parquet"
                lemma_file(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), lemmas)
                stats = args.work / "lemmas" / f"{meta['id']}.json"
                stats.write_text(json.dumps({"id": meta["id"], "tokens": table.num_rows}))
                entries.append((meta["id"], stats, lemmas, series))
                done += 1
            size_bytes = path.stat().st_size
            times = searches(index, words, rng, shows)
            q = statistics.quantiles(times, n=20)
            row = {"episodes": size, "bytes_per_episode": size_bytes / size,
                   "extrapolated_gb": size_bytes / size * CATALOGUE / 1e9, "add_ms": 1000 * statistics.fmean(adds[-200:]),
                   "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * q[18]}
            rows.append(row)
            print(f"{size:9,d} {row['bytes_per_episode']:9,.0f} {row['extrapolated_gb']:9.1f} GB "
                  f"{row['add_ms']:10.1f} {row['p50_ms']:9.1f} ms {row['p95_ms']:7.1f}")
    p95 = rows[-1]["p95_ms"]
    print(f"search p95 at {rows[-1]['episodes']:,} episodes: {p95:.0f} ms (target <= 200 ms: "
          f"{'met' if p95 <= 200 else 'MISSED'}); index {rows[-1]['extrapolated_gb']:.1f} GB at {CATALOGUE:,} episodes "
          f"(seed's permanent budget: tokens ~5 GB, analysis ~2 GB)")

    # The corpus update after a chunk of 2,000 episodes, at the largest size.
    from scribeflow.stages.analysis import Aggregate

    chunk = min(2000, len(entries) // 2)
    keep = args.work / "sums"
    Aggregate(keep).update([e for e in entries[:-chunk]])  # what earlier chunks left
    started = time.perf_counter()
    aggregate = Aggregate(keep)
    aggregate.update(entries)
    incremental = time.perf_counter() - started
    shutil.rmtree(keep)
    started = time.perf_counter()
    Aggregate(keep).update(entries)
    full = time.perf_counter() - started
    print(f"corpus sums after a chunk of {chunk:,} with {len(entries) - chunk:,} episodes done: {incremental:.1f} s, "
          f"{aggregate.read:,} episodes read; reading all {len(entries):,}: {full:.1f} s")
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
