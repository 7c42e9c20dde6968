"""The corpus index and the corpus update at scale: what one more episode costs, how fast a
search answers, and what the index weighs, at growing sizes.

    python benchmarks/concordance.py                         # 2,000 / 6,000 / 12,000 episodes
    python benchmarks/concordance.py --sizes 500 1000 2000   # a quick look

Episodes: synthetic 24-min Japanese episodes as the index stores them: 450 segments of
~11 words each (~5,000 tokens), the words drawn from a Zipf distribution (s = 1.1) over a
vocabulary of 60,000 lemmas with readings, 57 episodes a show as in the 171,881-episode
catalogue (~3,000 shows; the per-show sums grow with the shows, not the episodes); the
segment text is the words joined, ~30 characters. Each is added with Index.add, one transaction, as the
analyse_episode job does.

Printed at each size: the index's bytes per episode and the total extrapolated to the
171,881-episode catalogue (against the seed's permanent budget: tokens ~5 GB, analysis
~2 GB); the time to add one more episode (the mean over the last 200 added); search
latency p50/p95 over 200 queries (words drawn by frequency rank: frequent, middling and
rare, a fifth of them within one series; 20 sentences each), target p95 <= 200 ms; and
the corpus update after a chunk of 2,000 episodes (analysis.Aggregate: reading only the
new episodes' lemma counts) against a rebuild that reads them all, at the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
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
    table = pa.table({
        "segment": segment, "start": start, "end": start + 2.6, "surface": written, "lemma": lemma,
        "written": written, "reading": reading, "pos": ["名詞"] * len(ranks), "pos_detail": ["普通名詞-一般"] * len(ranks),
        "unknown": [False] * len(ranks), "base_reading": reading, "morae": np.full(len(ranks), 3, np.int16),
    }, schema=SCHEMA)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000, 12000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/scribeflow-concordance-bench"))
    args = parser.parse_args()
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
