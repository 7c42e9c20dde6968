"""Per-show statistics and difficulty, from the corpus index's sums (stages/concordance.py):
what learners and community sites rank anime by, computed from our own transcripts.

A show is a catalogue `series` (and a season, when the catalogue has them, with
`by_season`). Per show: episodes; minutes of speech (the transcripts' segments); characters
(without spaces); words (tokens) and unique words (UniDic lemmas); unique words used once
in the show; unique kanji; segments and their mean length in characters; speaking speed in
characters and in morae per minute of speech (morae from UniDic's pronunciation: キョウ is
2, ガッコー 4); the fewest words that cover 90, 95 and 98 % of its tokens.

Difficulty: the share of the show's tokens whose word is not among the corpus's
`top_words` (5,000) most frequent words, names left out on both sides (UniDic's 固有名詞:
a show's own characters are not vocabulary a learner lacks), mapped to 0-5:

    difficulty = 5 x min(1, outside_share / 0.20)

0: every word of the show is among the corpus's most frequent; 5: a fifth or more of its
words are not. In a small corpus the most frequent 5,000 words may be all its words, and
every show is 0: the score compares shows within one large corpus.
"""

from __future__ import annotations

from pathlib import Path

TOP_WORDS = 5000
OUTSIDE_AT_5 = 0.20
COVERAGE = (90, 95, 98)
COLUMNS = ("rank", "series", "season", "episodes", "speech_minutes", "chars", "words", "unique_words",
           "unique_words_once", "unique_kanji", "segments", "mean_segment_chars", "chars_per_minute",
           "morae_per_minute", *(f"words_{t}" for t in COVERAGE), "outside_top_share", "difficulty")


def difficulty(outside_share: float | None) -> float | None:
    return None if outside_share is None else round(5 * min(1.0, outside_share / OUTSIDE_AT_5), 2)


def show_table(index, top_words: int = TOP_WORDS, by_season: bool = False):
    """A DataFrame of COLUMNS, one row per show, ranked from the hardest."""
    import numpy as np
    import pandas as pd

    from scribeflow.stages.analysis import lemmas_for_coverage

    shows, counts = index.show_sums(by_season)
    corpus = counts.groupby("lemma")["count"].sum().sort_values(ascending=False, kind="stable")
    names = set(counts.loc[counts["name"] == 1, "lemma"])
    top = set(corpus[~corpus.index.isin(names)].index[:top_words])
    rows = []
    for (series, season_), group in counts.groupby(["series", "season"], sort=False):
        g = group.sort_values("count", ascending=False, kind="stable")
        need = lemmas_for_coverage(g["count"].to_numpy(), COVERAGE)
        words = g[g["name"] == 0]
        total = int(words["count"].sum())
        outside = int(words.loc[~words["lemma"].isin(top), "count"].sum())
        share = outside / total if total else None
        rows.append({"series": series, "season": season_, "unique_words": len(g),
                     "unique_words_once": int((g["count"] == 1).sum()),
                     **{f"words_{t}": need[t] for t in COVERAGE},
                     "outside_top_share": round(share, 4) if share is not None else None,
                     "difficulty": difficulty(share)})
    table = shows.merge(pd.DataFrame(rows, columns=["series", "season", "unique_words", "unique_words_once",
                                                    *(f"words_{t}" for t in COVERAGE), "outside_top_share",
                                                    "difficulty"]), on=["series", "season"], how="left")
    minutes = table["speech_minutes"].where(table["speech_minutes"] > 0)
    table["unique_kanji"] = table["kanji"].fillna("").map(lambda k: len(set(k)))
    table["mean_segment_chars"] = (table["chars"] / table["segments"].where(table["segments"] > 0)).round(1)
    table["chars_per_minute"] = (table["chars"] / minutes).round(1)
    table["morae_per_minute"] = (table["morae"] / minutes).round(1)
    table["speech_minutes"] = table["speech_minutes"].round(1)
    table = table.sort_values(["difficulty", "series"], ascending=[False, True], na_position="last", kind="stable")
    table["rank"] = np.arange(1, len(table) + 1)
    table["series"] = table["series"].replace("", None)
    table["season"] = table["season"].replace("", None)
    return table[list(COLUMNS)].reset_index(drop=True)


def plot(table, path: str | Path, label_at_most: int = 40) -> None:
    """Difficulty against speaking speed, one point per show: every show named up to
    `label_at_most` shows; beyond, the points fade with their number and only the eight
    hardest and eight easiest are named, so that 3,000 shows still read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scribeflow.figures import use_fonts

    use_fonts()
    data = table.dropna(subset=["difficulty", "chars_per_minute"])
    fig, ax = plt.subplots(figsize=(9, 6))
    n = len(data)
    alpha = 1.0 if n <= label_at_most else max(0.15, min(0.8, 200 / n))
    ax.scatter(data["chars_per_minute"], data["difficulty"], s=18 if n <= label_at_most else 8, alpha=alpha,
               color="#2a6fb0", linewidths=0)
    ordered = data.sort_values(["difficulty", "chars_per_minute"])
    named = data if n <= label_at_most else ordered.iloc[list(range(8)) + list(range(-8, 0))]
    for i, (_, r) in enumerate(named.sort_values("chars_per_minute").iterrows()):
        label = " ".join(str(x) for x in (r["series"] or "(no series)", r["season"] or "") if x)
        # Neighbours' names on alternating heights: shows tied on one score do not overwrite each other.
        offset = (3, 3) if n <= label_at_most else (3, (4, 14, 24)[i % 3] * (-1 if r["difficulty"] > 2.5 else 1))
        ax.annotate(label, (r["chars_per_minute"], r["difficulty"]), fontsize=7, xytext=offset,
                    textcoords="offset points", arrowprops=None if n <= label_at_most else
                    {"arrowstyle": "-", "color": "#999", "lw": 0.5})
    ax.set_xlabel("speaking speed (characters per minute of speech)")
    ax.set_ylabel(f"difficulty (0-5: share of words outside the corpus's {TOP_WORDS:,} most frequent)")
    ax.set_ylim(-0.1, 5.1)
    ax.set_title(f"Shows by difficulty and speaking speed ({n:,} shows)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
