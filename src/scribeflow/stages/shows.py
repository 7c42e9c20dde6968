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


def show_label(series, season) -> str:
    """'Series 2', 'Series' without a season (a catalogue without the column gives NaN, not
    None), '(no series)'."""
    def given(x) -> bool:
        return x is not None and x == x and str(x).strip() != ""

    name = str(series) if given(series) else "(no series)"
    if not given(season):
        return name
    if isinstance(season, float) and season.is_integer():
        season = int(season)  # a numeric column read as floats: 2, not 2.0
    return f"{name} {season}"


# Where a show's name may go around its point (points, alignment): the first that overlaps no
# name placed before and stays inside the axes is taken.
NAME_PLACES = (((3, 3), "left"), ((3, -9), "left"), ((-3, 3), "right"), ((-3, -9), "right"), ((3, 11), "left"),
               ((-3, 11), "right"), ((3, -17), "left"), ((-3, -17), "right"))


def _label_points(ax, data) -> None:
    """Name every show beside its point, where the name overlaps no other."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    for _, r in data.sort_values("difficulty", ascending=False).iterrows():
        for offset, ha in NAME_PLACES:
            name = ax.annotate(show_label(r["series"], r["season"]), (r["chars_per_minute"], r["difficulty"]),
                               xytext=offset, textcoords="offset points", fontsize=7, ha=ha)
            name.update_positions(renderer)  # where it will be drawn (an annotation places itself when drawn)
            box = Text.get_window_extent(name, renderer)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in placed):
                break
            if (offset, ha) != NAME_PLACES[-1]:
                name.remove()  # the last place is kept when none is free: named, if crowded
        placed.append(box)


def _label_row(ax, shows, y: float, longest: int = 16) -> None:
    """Name `shows` in one row at height `y`, spread evenly across the axes in the points'
    order, each with a line to its point: names of neighbouring points never overlap."""
    xs = ax.get_xlim() if len(shows) else (0, 1)
    shows = shows.sort_values("chars_per_minute")
    step = (xs[1] - xs[0]) / (len(shows) + 1)
    for k, (_, r) in enumerate(shows.iterrows(), 1):
        name = show_label(r["series"], r["season"])
        name = name if len(name) <= longest else name[:longest - 1] + "…"
        ax.annotate(name, (r["chars_per_minute"], r["difficulty"]), xytext=(xs[0] + k * step, y), fontsize=7,
                    ha="center", va="center", textcoords="data",
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.5})


def plot(table, path: str | Path, label_at_most: int = 40) -> None:
    """shows.png: `figure`, saved."""
    import matplotlib.pyplot as plt

    fig = figure(table, label_at_most)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(table, label_at_most: int = 40):
    """Difficulty against speaking speed, one point per show: every show named up to
    `label_at_most` shows; beyond, the points fade with their number and only the eight
    hardest and eight easiest are named, in a row above and below the cloud with a line to
    each point, so that 3,000 shows still read."""
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
    ax.set_ylim(-0.1, 5.1) if n <= label_at_most else ax.set_ylim(-0.85, 5.85)
    ax.set_yticks(range(6))
    ax.set_xlabel("speaking speed (characters per minute of speech)")
    ax.set_ylabel(f"difficulty (0-5: share of words outside the corpus's {TOP_WORDS:,} most frequent)")
    ax.set_title(f"Shows by difficulty and speaking speed ({n:,} show{'' if n == 1 else 's'})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())  # fixed: the names are placed in the final axes
    if n <= label_at_most:
        _label_points(ax, data)
    else:
        ordered = data.sort_values(["difficulty", "chars_per_minute"])
        _label_row(ax, ordered.iloc[-8:], 5.55)
        _label_row(ax, ordered.iloc[:8], -0.55)
    return fig
