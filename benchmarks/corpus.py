"""Benchmark of tokens and the corpus rebuild (issue 8).

    python benchmarks/corpus.py [--episodes 5000] [--tokens 3000] [--catalogue 171881]

Prints:
- tokenization speed of real Japanese (fugashi + unidic-lite) and English text, and
  the Parquet size of one episode's tokens (the seed budgets ~5 GB of tokens for the
  catalogue);
- the time to rebuild the corpus tables from per-episode lemma counts of --episodes
  synthetic episodes (--tokens Zipf-distributed lemmas each, 40 series), and that time
  extrapolated to --catalogue episodes. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scribeflow.stages.analysis import LEMMA_COUNTS, build_corpus  # noqa: E402
from scribeflow.stages.tokens import tokenize_transcript, write_tokens  # noqa: E402

JAPANESE = [
    "今日は良い天気ですね。", "猫が走っていた。", "昨日テレビでニュースを見ました。",
    "駅の前で友達と待ち合わせをしました。", "このラーメンはとても美味しいです。",
    "明日の会議は午後三時から始まります。", "雨が降りそうなので、傘を持って行きましょう。",
    "彼女は毎朝公園でジョギングをしている。", "新しい仕事にはまだ慣れていません。",
    "週末に家族と一緒に映画を見に行く予定です。",
]
ENGLISH = [
    "The weather is nice today.", "I don't think it'll rain before the evening.",
    "She has been running in the park every morning.", "We're meeting at the station at three.",
    "This is the best noodle soup I've ever had.", "The meeting starts at three in the afternoon.",
]


def transcript(sentences: list[str], language: str, tokens_wanted: int) -> dict:
    per_sentence = len(tokenize_transcript({"language": language, "segments": [
        {"start": 0, "end": 1, "text": " ".join(sentences)}]})) / len(sentences)
    n = int(tokens_wanted / per_sentence) + 1
    segments = [{"start": 2.0 * i, "end": 2.0 * i + 1.8, "text": sentences[i % len(sentences)]} for i in range(n)]
    return {"id": "bench", "language": language, "duration": 2.0 * n, "segments": segments}


def tokenization(tmp: Path, tokens: int) -> None:
    for language, sentences in (("ja", JAPANESE), ("en", ENGLISH)):
        t = transcript(sentences, language, tokens)
        tokenize_transcript(t)  # load the dictionary first: once per job
        started = time.perf_counter()
        table = tokenize_transcript(t)
        seconds = time.perf_counter() - started
        size = write_tokens(table, tmp / f"{language}.parquet")
        print(f"tokenize {language}: {table.num_rows / seconds:,.0f} tokens/s "
              f"({table.num_rows} tokens in {seconds * 1000:.0f} ms); Parquet {size / 1000:.1f} kB "
              f"= {size / table.num_rows:.1f} bytes/token")


def synthetic_episodes(folder: Path, episodes: int, tokens: int, vocabulary: int = 50_000):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(8)
    weights = 1 / np.arange(1, vocabulary + 1) ** 1.1
    weights /= weights.sum()
    lemmas = np.array([f"lemma{i}" for i in range(vocabulary)], dtype=object)
    entries = []
    folder.mkdir(parents=True)
    for e in range(episodes):
        ids, counts = np.unique(rng.choice(vocabulary, size=tokens, p=weights), return_counts=True)
        table = pa.table({"lemma": lemmas[ids].tolist(), "pos": ["名詞"] * len(ids), "count": counts},
                         schema=LEMMA_COUNTS)
        lemmas_path, stats_path = folder / f"e{e}.parquet", folder / f"e{e}.json"
        pq.write_table(table, lemmas_path, compression="zstd")
        stats_path.write_text(json.dumps({"id": f"e{e}", "tokens": tokens, "types": len(ids)}))
        entries.append((f"e{e}", stats_path, lemmas_path, f"series{e % 40}"))
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--tokens", type=int, default=3000, help="tokens per episode (~20 min of speech)")
    parser.add_argument("--catalogue", type=int, default=171_881)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenization(tmp, args.tokens)
        entries = synthetic_episodes(tmp / "episodes", args.episodes, args.tokens)
        outputs = {name: tmp / "corpus" / name for name in
                   ("frequency", "series_frequency", "coverage", "episodes", "plot")}
        started = time.perf_counter()
        coverage = build_corpus(entries, outputs)
        seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
    per_episode = seconds / args.episodes
    print(f"corpus rebuild: {args.episodes} episodes in {seconds:.1f} s ({per_episode * 1000:.2f} ms/episode), "
          f"{coverage[0]['types']:,} lemmas, peak RSS {rss_mb:.0f} MB")
    print(f"extrapolated to {args.catalogue:,} episodes: {per_episode * args.catalogue / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
