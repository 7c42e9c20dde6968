"""Per-episode statistics and lemma counts; corpus tables rebuilt from those counts.

The corpus step never reads tokens: it adds up the small per-episode lemma count
files, so adding episodes costs their own tokenization and one cheap rebuild.

Definitions (the column names of the output tables):
- tokens: words (punctuation excluded, see tokens.py); types: distinct lemmas;
  ttr: types / tokens.
- chars: non-whitespace characters of the transcript text; tokens_per_minute and
  chars_per_minute are per minute of audio (the transcript's duration).
- unknown_rate: share of tokens outside the analyser's dictionary (numbers aside);
  empty for languages tokenized without a dictionary.
- lemma: with `lemma="written"` (config analysis.lemma) the dictionary form as the
  transcripts usually write it (UniDic's orthBase: とても, この, いる), with UniDic's lemma
  beside it in lemma_unidic; with "unidic", UniDic's lemma (迚も, 此の, 居る) and
  lemma_written beside it. Words are counted by UniDic's lemma either way, so いる
  (居る, "be") and いる (要る, "need") stay two rows.
- document_frequency: episodes in which the lemma occurs; rank: by count, ties in
  lemma order; cumulative_coverage: share of all tokens covered by the lemmas of
  rank <= this one. lemmas_N: the fewest top-ranked lemmas that cover N % of tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from scribeflow.files import atomic_path, atomic_write_text

log = logging.getLogger("scribeflow.stages.analysis")

COVERAGE_TARGETS = (80, 90, 95, 98)
# Per-episode lemma counts; files written before `written` existed lack it (read as the lemma).
LEMMA_COUNTS = pa.schema([("lemma", pa.string()), ("pos", pa.string()), ("count", pa.int64())])
COUNTS = LEMMA_COUNTS.append(pa.field("written", pa.string()))
FREQUENCY_COLUMNS = ["rank", "lemma", "pos", "count", "document_frequency", "share", "cumulative_coverage"]
LEMMA_FORMS = ("written", "unidic")
NOT_SPEECH = ("song", "repeat", "sound")  # the kinds of segment (SPEC.md, Files) never counted
BATCH = 2000  # lemma count files read per aggregation step: bounds memory on a huge catalogue


# -- one episode ---------------------------------------------------------------------------
def episode_stats(table: pa.Table, meta: dict) -> dict:
    n = table.num_rows
    types = len(set(table.column("lemma").to_pylist()))
    minutes = (meta.get("duration") or 0) / 60
    unknown = sum(bool(u) for u in table.column("unknown").to_pylist()) if meta["has_lexicon"] else None
    return {
        "id": meta["id"],
        "source": meta.get("source", "asr"),
        # The share of the speech Silero VAD found that the segments cover (ASR's transcripts).
        "speech_coverage": meta.get("speech_coverage"),
        "language": meta["language"],
        "tokenizer": meta["tokenizer"],
        "duration_s": meta.get("duration"),
        "speech_s": meta["speech_seconds"],
        "segments": meta["segments"],
        "tokens": n,
        "types": types,
        "ttr": types / n if n else None,
        "chars": meta["chars"],
        "tokens_per_minute": n / minutes if minutes > 0 else None,
        "chars_per_minute": meta["chars"] / minutes if minutes > 0 else None,
        "unknown_tokens": unknown,
        "unknown_rate": unknown / n if unknown is not None and n else None,
        # Seconds left out of the counts: songs and repeats (marked in the transcript, or
        # found across the series by the corpus step) and a caption's sound descriptions.
        **{f"{kind}_s": (meta.get("kinds") or {}).get(kind, 0.0) for kind in NOT_SPEECH},
    }


def _most_frequent(pairs) -> dict:
    """{key: its most frequent value} over (key, value) pairs; ties: the first seen."""
    best: dict = {}
    for (key, value), n in Counter(pairs).items():
        if key not in best or n > best[key][0]:
            best[key] = (n, value)
    return {key: value for key, (_, value) in best.items()}


def lemma_counts(table: pa.Table) -> pa.Table:
    """One row per lemma: its count, and its most frequent part of speech and spelling in the episode."""
    lemmas = table.column("lemma").to_pylist()
    totals = Counter(lemmas)
    pos = _most_frequent(zip(lemmas, table.column("pos").to_pylist()))
    written = (_most_frequent(zip(lemmas, table.column("written").to_pylist()))
               if "written" in table.column_names else {x: x for x in totals})  # tokens before `written`
    keys = sorted(totals)
    return pa.table({"lemma": keys, "pos": [pos[x] for x in keys], "count": [totals[x] for x in keys],
                     "written": [written[x] for x in keys]}, schema=COUNTS)


def analyse_tokens(table: pa.Table, meta: dict, stats_path: str | Path, lemmas_path: str | Path) -> dict:
    """Write one episode's statistics (JSON) and lemma counts (Parquet) of its speech
    segments' tokens; return the statistics."""
    from scribeflow.stages.tokens import speech_tokens

    table = speech_tokens(table)
    stats = episode_stats(table, meta)
    with atomic_path(lemmas_path) as tmp:
        pq.write_table(lemma_counts(table), tmp, compression="zstd")
    atomic_write_text(stats_path, json.dumps(stats, ensure_ascii=False, indent=1))
    log.info("Analysed %s: %d tokens, %d types, unknown rate %s", stats["id"], stats["tokens"], stats["types"],
             "n/a" if stats["unknown_rate"] is None else f"{stats['unknown_rate']:.3f}")
    return stats


def marked_correction(table: pa.Table, meta: dict, lemmas_path: str | Path, segments: list[dict],
                      kinds: list[str], found_seconds: dict[str, float]) -> dict:
    """What an episode's counts and statistics lose when its segments get `kinds` (the songs
    and repeats the corpus step found across its series, stages/songs.py): `rows` [lemma,
    pos, written, count, documents] to take from the sums (in the episode's lemma counts'
    keys, documents 1 where every use goes), `stats` its statistics over what stays (with
    `found_seconds` of songs and repeats found, beside the transcript's own), and a `key`
    that names both."""
    import hashlib

    import pyarrow.compute as pc

    from scribeflow.stages.tokens import SPEECH, non_space_chars, speech_tokens

    speech = speech_tokens(table)
    marked = pa.array([(kinds[i] if i < len(kinds) else SPEECH) != SPEECH for i in speech.column("segment").to_pylist()],
                      pa.bool_())
    removed = Counter(speech.filter(marked).column("lemma").to_pylist())
    counts = pq.read_table(lemmas_path).to_pylist()
    rows = [[r["lemma"], r["pos"], r.get("written") or r["lemma"], removed[r["lemma"]],
             int(removed[r["lemma"]] >= r["count"])] for r in counts if removed[r["lemma"]]]
    kept = [s for s, k in zip(segments, kinds) if k == SPEECH]
    own = meta.get("kinds") or {}
    seconds = {k: round(own.get(k, 0.0) + found_seconds.get(k, 0.0), 2) for k in NOT_SPEECH}
    stats = episode_stats(speech.filter(pc.invert(marked)), {
        **meta, "segments": len(kept), "speech_seconds": round(sum(max(0.0, s["end"] - s["start"]) for s in kept), 3),
        "chars": sum(non_space_chars(s["text"]) for s in kept), "kinds": seconds})
    key = hashlib.sha1(json.dumps([rows, stats], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
    return {"key": key, "rows": rows, "stats": stats}


# -- the corpus ----------------------------------------------------------------------------
def aggregate_counts(lemma_files: list[tuple[str | Path, str | None]]) -> pa.Table:
    """(path, series) pairs -> series, lemma, pos, count, documents, summed over the files.

    Read in batches and summed as it goes, so memory follows the vocabulary, not the
    number of episodes. Each file has one row per lemma, so summing rows gives documents.
    """
    keys = ["series", "lemma", "pos", "written"]
    total = None
    for start in range(0, len(lemma_files), BATCH):
        tables = []
        for path, series in lemma_files[start:start + BATCH]:
            t = pq.ParquetFile(path).read()  # half the time of pq.read_table
            if "written" not in t.column_names:  # counted before the written form existed
                t = t.append_column("written", t.column("lemma"))
            t = t.select(["lemma", "pos", "count", "written"])
            tables.append(t.append_column("series", pa.array([series] * t.num_rows, pa.string()))
                          .append_column("documents", pa.array([1] * t.num_rows, pa.int64())))
        if total is not None:
            tables.append(total)
        total = _sum_by(pa.concat_tables(tables, promote_options="none"), keys)
    if total is None:
        return pa.table({"lemma": [], "pos": [], "count": [], "written": [], "series": [], "documents": []},
                        schema=COUNTS.append(pa.field("series", pa.string()))
                        .append(pa.field("documents", pa.int64())))
    return total


def _sum_by(table: pa.Table, keys: list[str]) -> pa.Table:
    summed = table.group_by(keys).aggregate([("count", "sum"), ("documents", "sum")])
    return summed.rename_columns({"count_sum": "count", "documents_sum": "documents"}).select(
        ["lemma", "pos", "count", "written", "series", "documents"])


def frequency_columns(lemma: str = "written", by: tuple[str, ...] = ()) -> list[str]:
    """The columns of a frequency table: the other form of the lemma right after `lemma`."""
    other = {"written": "lemma_unidic", "unidic": "lemma_written"}[lemma]
    return [*by, "rank", "lemma", other, *FREQUENCY_COLUMNS[2:]]


def _majority(counts, keys: list[str], column: str):
    """Per key, the value of `column` with the most tokens (ties: the smallest value)."""
    summed = counts.groupby([*keys, column], sort=False, dropna=False)["count"].sum().reset_index()
    ordered = summed.sort_values(["count", column], ascending=[False, True], na_position="last", kind="stable")
    return ordered.drop_duplicates(keys).set_index(keys)[column]


def frequency_table(counts, by: tuple[str, ...] = (), lemma: str = "written"):
    """Rows of (lemma, pos, count, written, documents), several per lemma possible -> frequency_columns(),
    ranked within each group of the `by` columns (e.g. per series) or over all rows. Words are
    UniDic's lemmas; `lemma` says which form the lemma column shows (LEMMA_FORMS)."""
    import numpy as np
    import pandas as pd

    columns = frequency_columns(lemma, by)
    if counts.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("rank", "count", "document_frequency")
                                          else "float64" if c in ("share", "cumulative_coverage") else "object")
                             for c in columns})
    keys, up = [*by, "lemma"], [True] * len(by)
    freq = counts.groupby(keys, sort=False)[["count", "documents"]].sum()
    # The part of speech and the spelling a lemma has most often (per episode, its majority ones).
    freq["pos"] = _majority(counts, keys, "pos")
    freq["written"] = _majority(counts, keys, "written")
    freq = freq.reset_index().sort_values([*by, "count", "lemma"], ascending=[*up, False, True], kind="stable")
    if by:
        groups = freq.groupby(list(by), sort=False)["count"]
        freq["rank"] = groups.cumcount() + 1
        total, running = groups.transform("sum"), groups.cumsum()
    else:
        freq["rank"] = np.arange(1, len(freq) + 1)
        total, running = freq["count"].sum(), freq["count"].cumsum()
    freq["share"] = freq["count"] / total
    freq["cumulative_coverage"] = running / total
    names = ({"lemma": "lemma_unidic", "written": "lemma"} if lemma == "written" else {"written": "lemma_written"})
    return freq.rename(columns={"documents": "document_frequency", **names})[columns].reset_index(drop=True)


def lemmas_for_coverage(counts_by_rank, targets=COVERAGE_TARGETS) -> dict[int, int | None]:
    """For each target %, the fewest top lemmas whose counts cover it (None without tokens)."""
    import numpy as np

    cumulative = np.cumsum(np.asarray(counts_by_rank, dtype=np.int64))
    total = int(cumulative[-1]) if len(cumulative) else 0
    # Integer arithmetic: cumulative * 100 >= target * total, no rounding at the edges.
    return {t: (int(np.searchsorted(cumulative * 100, t * total, side="left")) + 1 if total else None)
            for t in targets}


def coverage_row(scope: str, series: str | None, episodes: int, freq) -> dict:
    needed = lemmas_for_coverage(freq["count"].to_numpy())
    return {"scope": scope, "series": series, "episodes": episodes, "tokens": int(freq["count"].sum()),
            "types": len(freq), **{f"lemmas_{t}": needed[t] for t in COVERAGE_TARGETS}}


class Aggregate:
    """The corpus's sums kept between rebuilds, so that a rebuild reads only the episodes
    analysed since the last one: the lemma counts summed over the episodes included
    (aggregate_counts' table), their statistics, and which episodes they are with the
    identity of their files when they were read. An episode whose files changed (analysed
    again) or left (the catalogue changed) makes the next rebuild read everything again."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.counts_path, self.stats_path = self.folder / "aggregate_counts.parquet", self.folder / "aggregate_stats.parquet"
        self.read = 0  # episodes whose files this rebuild read

    def load(self):
        try:
            counts = pq.read_table(self.counts_path)
            stats = pq.read_table(self.stats_path)
            included = json.loads(counts.schema.metadata[b"scribeflow_included"])
            return counts.replace_schema_metadata(None), stats.to_pandas(), included
        except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
            return None  # none yet, or damaged: everything is read

    def save(self, counts: pa.Table, stats, included: dict) -> None:
        from scribeflow.files import atomic_path

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.stats_path) as tmp:
            pq.write_table(pa.Table.from_pandas(stats, preserve_index=False), tmp, compression="zstd")
        meta = {b"scribeflow_included": json.dumps(included).encode()}
        with atomic_path(self.counts_path) as tmp:  # last: its list says what the sums hold
            pq.write_table(counts.replace_schema_metadata(meta), tmp, compression="zstd")

    def update(self, entries, found=None):
        """(counts, stats) over `entries`, reading only the new episodes' files. `found`
        (stages/songs.Found): the songs and repeats found; an episode whose marks changed is
        taken out of the sums with its old correction and put in with its new one."""
        import pandas as pd

        current = {episode: [_identity(lemmas), _identity(stats), series] for episode, stats, lemmas, series in entries}
        cached = self.load()
        if cached is not None:
            counts, stats, included = cached
            if any(current.get(e) != v[:3] for e, v in included.items()):
                log.info("Corpus: episodes analysed again or left since the last rebuild: reading every episode")
                cached = None
        if cached is None:
            counts, stats, included = None, pd.DataFrame(), {}
        new = [entry for entry in entries if entry[0] not in included]
        self.read = len(new)
        added, rows = read_episodes(new)
        if counts is not None and counts.num_rows:
            added = _sum_by(pa.concat_tables([counts, added], promote_options="none"),
                            ["series", "lemma", "pos", "written"]) if added.num_rows else counts
        stats = pd.concat([stats, rows], ignore_index=True) if not stats.empty else rows
        included.update({episode: current[episode] for episode, *_ in new})
        if found is not None:
            corrected = _corrected(added, stats, included, entries, found, everything=cached is None)
            if corrected is None:  # the sums hold a correction no longer known: read everything
                log.warning("Corpus: the songs and repeats in the kept sums are not the ones found: reading every "
                            "episode")
                with contextlib.suppress(FileNotFoundError):
                    self.counts_path.unlink()
                return self.update(entries, found)
            added, stats = corrected
        self.save(added, stats, included)
        log.info("Corpus: read %d new episode(s), %d from the sums kept", len(new), len(included) - len(new))
        return added, stats


def _corrected(counts: pa.Table, stats, included: dict, entries, found, everything: bool):
    """The sums and statistics with each episode's songs and repeats taken out (its
    correction, analysis.marked_correction) as `found` has them now: `included[e][3]` is
    the key of the correction the sums hold. None when the sums hold one that `found` does
    not know (then everything is read again)."""
    import pandas as pd

    changes = found.changes
    targets = found.corrections() if everything else {e: change[2] for e, change in changes.items()}
    paths = {episode: (stats_path, series) for episode, stats_path, _, series in entries}
    delta, replaced = [], {}
    for episode, new in targets.items():
        if episode not in included:
            continue
        held = included[episode][3] if len(included[episode]) > 3 else None
        if held == (new or {}).get("key"):
            continue
        series = paths[episode][1]
        if held is not None:
            old = changes.get(episode, (None, None))[1]
            if not old or old["key"] != held:
                return None
            delta += [(series, *row, +1) for row in old["rows"]]
        if new:
            delta += [(series, *row, -1) for row in new["rows"]]
        replaced[episode] = new["stats"] if new else json.loads(Path(paths[episode][0]).read_text(encoding="utf-8"))
        included[episode] = [*included[episode][:3], (new or {}).get("key")]
    if delta:
        table = pa.table({"lemma": [d[1] for d in delta], "pos": [d[2] for d in delta],
                          "count": pa.array([d[4] * d[6] for d in delta], pa.int64()),
                          "written": [d[3] for d in delta], "series": pa.array([d[0] for d in delta], pa.string()),
                          "documents": pa.array([d[5] * d[6] for d in delta], pa.int64())})
        summed = _sum_by(pa.concat_tables([counts, table.cast(counts.schema)], promote_options="none"),
                         ["series", "lemma", "pos", "written"])
        counts = summed.filter(pa.compute.greater(summed.column("count"), 0))
    if replaced:
        log.info("Corpus: %d episode(s) whose songs or repeats changed, corrected in the sums (%d taken out again)",
                 len(replaced), sum(1 for e in replaced if changes.get(e, (None, None))[1]))
        rows = pd.DataFrame([{**row, "id": episode, "series": paths[episode][1]} for episode, row in replaced.items()])
        stats = pd.concat([stats[~stats["id"].isin(list(replaced))], rows], ignore_index=True)
    return counts, stats


def read_episodes(entries):
    """(their lemma counts summed, their statistics as a DataFrame) of the episodes
    `entries` ((episode, stats path, lemma counts path, series))."""
    import pandas as pd

    counts = aggregate_counts([(lemmas, series) for _, _, lemmas, series in entries])
    stats = pd.DataFrame([{**json.loads(Path(path).read_text(encoding="utf-8")), "series": series}
                          for _, path, _, series in entries])
    return counts, stats


def _identity(path) -> list:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def build_corpus(entries: list[tuple[str, str | Path, str | Path, str | None]], outputs: dict,
                 lemma: str = "written", keep: str | Path | None = None, found=None) -> dict:
    """entries: (episode, stats path, lemma counts path, series or None).

    outputs: paths for frequency, series_frequency, coverage, episodes (TSV) and plot (PNG).
    lemma: what the tables' lemma column shows (config analysis.lemma: written or unidic).
    keep: a folder where the sums are kept between rebuilds (Aggregate): a rebuild then
    reads only the episodes analysed since. found: the songs and repeats found across the
    series (stages/songs.Found), left out of every table. Returns the coverage rows.
    """
    import pandas as pd

    if lemma not in LEMMA_FORMS:
        raise ValueError(f"analysis.lemma: {lemma!r} is not one of {', '.join(LEMMA_FORMS)}")
    if keep is not None:
        table, stats = Aggregate(keep).update(entries, found)
    else:
        table, stats = read_episodes(entries)
        if found is not None:
            table, stats = _corrected(table, stats, {e: [None] * 3 for e, *_ in entries}, entries, found, True)
    counts = table.to_pandas()
    # The entries' order (the catalogue's), whatever order the sums were kept in.
    if not stats.empty:
        order = {episode: i for i, (episode, *_) in enumerate(entries)}
        stats = stats.sort_values("id", key=lambda ids: ids.map(order), kind="stable").reset_index(drop=True)
    freq = frequency_table(counts, lemma=lemma)
    # Episodes whose transcripts are subtitles, per scope (the rest are ASR's).
    subtitled = Counter(series for (*_, series), source in zip(entries, stats.get("source", [])) if
                        source == "subtitles")
    coverage = [{**coverage_row("corpus", None, len(entries), freq), "subtitle_episodes": sum(subtitled.values()),
                 **_left_out(stats)}]

    episodes_per_series = Counter(series for *_, series in entries if series is not None)
    curves = {"corpus": freq["cumulative_coverage"].to_numpy()}
    series_freq = frequency_table(counts[counts["series"].notna()], by=("series",), lemma=lemma)
    for name, sf in series_freq.groupby("series", sort=True):
        coverage.append({**coverage_row("series", name, episodes_per_series[name], sf),
                         "subtitle_episodes": subtitled.get(name, 0), **_left_out(stats, name)})
        curves[name] = sf["cumulative_coverage"].to_numpy()

    coverage_df = pd.DataFrame(coverage)
    write_tsv(freq, outputs["frequency"])
    write_tsv(series_freq, outputs["series_frequency"])
    write_tsv(coverage_df, outputs["coverage"])
    write_tsv(stats, outputs["episodes"])
    plot_coverage(curves, coverage_df, outputs["plot"])
    log.info("Corpus of %d episodes: %d tokens, %d lemmas; lemmas for %s",
             len(entries), coverage[0]["tokens"], coverage[0]["types"],
             ", ".join(f"{t} %: {coverage[0][f'lemmas_{t}']}" for t in COVERAGE_TARGETS))
    return coverage


def _left_out(stats, series: str | None = None) -> dict:
    """Seconds of songs and repeats left out of the counts, in the corpus or one series."""
    rows = stats if series is None or stats.empty else stats[stats["series"] == series]
    return {f"{kind}_s": round(float(rows[f"{kind}_s"].fillna(0).sum()), 1) if f"{kind}_s" in rows else 0.0
            for kind in ("song", "repeat")}


# Count columns that may have gaps: nullable integers, or pandas would print 12.0.
INTEGER_COLUMNS = ("segments", "tokens", "types", "chars", "unknown_tokens", "episodes", "subtitle_episodes",
                   "words", "unique_words", "unique_words_once", "unique_kanji", "rank", "words_90", "words_95",
                   "words_98", *(f"lemmas_{t}" for t in COVERAGE_TARGETS))


def write_tsv(df, path: str | Path) -> None:
    """Arrow's CSV writer: pandas' takes minutes for the tables of a whole catalogue.
    Unquoted; a value with a tab or newline is refused (tokens never have one)."""
    import pyarrow.csv as csv

    df = df.astype({c: "Int64" for c in INTEGER_COLUMNS if c in df.columns})
    df = df.round({c: 8 for c in df.columns if df[c].dtype.kind == "f"})
    options = csv.WriteOptions(delimiter="\t", quoting_style="none", quoting_header="none")
    with atomic_path(path) as tmp:
        csv.write_csv(pa.Table.from_pandas(df, preserve_index=False), tmp, options)


def read_tsv(path: str | Path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


MAX_SERIES_PLOTTED = 8  # more lines would be unreadable; the TSVs have every series


def _log_sample(cumulative, points: int = 2000):
    """(ranks, %) at log-spaced ranks: a log axis shows no more, and 10^5 points are slow."""
    import numpy as np

    ranks = np.unique(np.geomspace(1, len(cumulative), points).astype(int))
    return ranks, 100 * np.asarray(cumulative)[ranks - 1]


def plot_coverage(curves: dict, coverage, path: str | Path) -> None:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from scribeflow.figures import use_fonts  # Agg, and a font with kana and kanji for series names

    use_fonts()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    series_rows = coverage[coverage["scope"] == "series"].sort_values("tokens", ascending=False)
    for name in series_rows["series"].head(MAX_SERIES_PLOTTED):
        ax.plot(*_log_sample(curves[name]), linewidth=1, alpha=0.7, label=f"series {name}")
    if len(curves["corpus"]):
        ax.plot(*_log_sample(curves["corpus"]), color="black", linewidth=2, label="whole corpus")
    corpus = coverage.iloc[0]
    needed = []
    for t in COVERAGE_TARGETS:
        ax.axhline(t, color="grey", linestyle=":", linewidth=0.8)
        n = corpus[f"lemmas_{t}"]
        if n == n and n is not None:  # not NaN: the corpus has tokens
            ax.plot([n], [t], "o", color="black", markersize=4)
            needed.append(f"{t} %: {int(n):,}")
    if needed:  # one box in the empty upper left: labels beside the close targets overlapped
        ax.text(0.02, 0.97, "lemmas to cover\n" + "\n".join(needed), transform=ax.transAxes, va="top",
                fontsize=8, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#ccc"})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))  # 1,000, not 10^3
    ax.set_xlabel("lemmas, most frequent first (log scale)")
    ax.set_ylabel("tokens covered (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Lemma coverage: {int(corpus['episodes']):,} episodes, {int(corpus['tokens']):,} tokens")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
