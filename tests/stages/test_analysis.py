"""Per-episode statistics and the corpus tables, on hand-written Japanese and English
transcripts, checked against known counts and an independent count of the tokens."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import TRANSCRIPT_FIXTURES as FIXTURES  # noqa: E402

from scribeflow.config.settings import validate
from scribeflow.stages.analysis import analyse_tokens, build_corpus, lemmas_for_coverage, read_tsv
from scribeflow.stages.tokens import read_tokens, tokenize_file

SERIES = {"ja_weather": "nihongo", "ja_tv": "nihongo", "en_cat": "english", "en_weather": None}
OUTPUTS = ("frequency", "series_frequency", "coverage", "episodes", "plot")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    entries, stats = [], {}
    for episode, series in SERIES.items():
        tokens = root / "tokens" / f"{episode}.parquet"
        tokenize_file(FIXTURES / f"{episode}.json", tokens)
        paths = root / "episodes" / f"{episode}.json", root / "lemmas" / f"{episode}.parquet"
        stats[episode] = analyse_tokens(*read_tokens(tokens), *paths)
        entries.append((episode, *paths, series))
    outputs = {name: root / "corpus" / f"{name}.{'png' if name == 'plot' else 'tsv'}" for name in OUTPUTS}
    build_corpus(entries, outputs)
    return root, stats, outputs


def lemmas_of(root: Path, episodes) -> dict[str, list[str]]:
    return {e: pq.read_table(root / "tokens" / f"{e}.parquet").column("lemma").to_pylist() for e in episodes}


def test_episode_statistics_match_the_known_counts(corpus):
    _, stats, _ = corpus
    ja, en = stats["ja_weather"], stats["en_cat"]
    # ja_weather: 18 words, 15 distinct lemmas (猫, は, た twice), 12 s of audio, 27 characters.
    assert (ja["tokens"], ja["types"], ja["chars"]) == (18, 15, 27)
    assert ja["ttr"] == pytest.approx(15 / 18)
    assert ja["tokens_per_minute"] == pytest.approx(90.0) and ja["chars_per_minute"] == pytest.approx(135.0)
    assert ja["unknown_tokens"] == 0 and ja["unknown_rate"] == 0.0
    # en_cat: 14 words, 11 distinct (the x3, cat x2), 6 s of audio, 53 characters.
    assert (en["tokens"], en["types"], en["chars"]) == (14, 11, 53)
    assert en["tokens_per_minute"] == pytest.approx(140.0)
    assert en["unknown_rate"] is None  # no dictionary for the word tokenizer
    assert (stats["ja_tv"]["tokens"], stats["en_weather"]["tokens"]) == (14, 10)


def test_corpus_frequency_matches_an_independent_count(corpus):
    root, _, outputs = corpus
    per_episode = lemmas_of(root, SERIES)
    counts = Counter(lemma for lemmas in per_episode.values() for lemma in lemmas)
    documents = Counter(lemma for lemmas in per_episode.values() for lemma in set(lemmas))
    total = sum(counts.values())
    assert total == 18 + 14 + 14 + 10

    freq = read_tsv(outputs["frequency"])
    # Counted by UniDic's lemma (lemma_unidic beside the written form the lemma column shows).
    assert dict(zip(freq["lemma_unidic"], freq["count"])) == counts
    assert dict(zip(freq["lemma_unidic"], freq["document_frequency"])) == documents
    assert list(freq["rank"]) == list(range(1, len(counts) + 1))
    assert list(freq["count"]) == sorted(counts.values(), reverse=True)
    # Across languages: 猫 in both Japanese episodes, the/cat in both English ones.
    row = freq.set_index("lemma")
    assert (row.at["猫", "count"], row.at["猫", "document_frequency"], row.at["猫", "pos"]) == (3, 2, "名詞")
    assert (row.at["the", "count"], row.at["the", "document_frequency"]) == (4, 2)
    assert row.at["た", "count"] == 4  # 走っていた, 食べた, 見ました, 面白かった
    running = 0
    for lemma, coverage in zip(freq["lemma_unidic"], freq["cumulative_coverage"]):
        running += counts[lemma]
        assert coverage == pytest.approx(running / total, abs=1e-6)

    cov = read_tsv(outputs["coverage"]).set_index("series", drop=False)
    whole = cov[cov["scope"] == "corpus"].iloc[0]
    assert (whole["episodes"], whole["tokens"], whole["types"]) == (4, total, len(counts))
    ranked = sorted(counts.values(), reverse=True)
    for target in (80, 90, 95, 98):
        needed = next(k for k in range(1, len(ranked) + 1) if sum(ranked[:k]) * 100 >= target * total)
        assert whole[f"lemmas_{target}"] == needed


def test_series_tables_match_an_independent_count(corpus):
    root, _, outputs = corpus
    series_freq = read_tsv(outputs["series_frequency"])
    assert set(series_freq["series"]) == {"nihongo", "english"}  # en_weather has no series
    cov = read_tsv(outputs["coverage"])
    for name in ("nihongo", "english"):
        episodes = [e for e, s in SERIES.items() if s == name]
        counts = Counter(x for lemmas in lemmas_of(root, episodes).values() for x in lemmas)
        part = series_freq[series_freq["series"] == name]
        assert dict(zip(part["lemma_unidic"], part["count"])) == counts
        row = cov[(cov["scope"] == "series") & (cov["series"] == name)].iloc[0]
        assert (row["episodes"], row["tokens"]) == (len(episodes), sum(counts.values()))
    episodes = read_tsv(outputs["episodes"]).set_index("id")
    assert episodes.at["ja_tv", "series"] == "nihongo" and episodes.at["ja_tv", "tokens"] == 14
    assert outputs["plot"].read_bytes().startswith(b"\x89PNG")


def test_lemmas_for_coverage_at_the_exact_boundary():
    counts = [50, 30, 10, 5, 3, 2]  # 100 tokens: 80 % is reached exactly at rank 2
    assert lemmas_for_coverage(counts) == {80: 2, 90: 3, 95: 4, 98: 5}
    assert lemmas_for_coverage([1]) == {80: 1, 90: 1, 95: 1, 98: 1}
    assert lemmas_for_coverage([]) == {80: None, 90: None, 95: None, 98: None}


def test_a_corpus_without_episodes_still_writes_every_output(tmp_path):
    outputs = {name: tmp_path / name for name in OUTPUTS}
    build_corpus([], outputs)
    assert read_tsv(outputs["frequency"]).empty
    assert read_tsv(outputs["coverage"]).iloc[0]["tokens"] == 0
    assert all(p.is_file() for p in outputs.values())


def test_the_corpus_step_covers_every_analysed_episode_of_the_whole_catalogue(corpus, tmp_path):
    """With chunks, each run analyses a slice; the corpus adds up every slice so far."""
    from scribeflow.stages import steps

    root, _, _ = corpus
    catalogue = tmp_path / "episodes.csv"
    catalogue.write_text("id,url,series\n"
                         "ja_weather,https://e.org/1,\"cats\tand\nweather\"\n"
                         "en_cat,https://e.org/2,\n"
                         "not_yet,https://e.org/3,cats and weather\n")
    outputs = {name: tmp_path / "out" / name for name in (*OUTPUTS, "shows", "shows_plot")}
    steps.corpus(settings=validate({"catalogue": str(catalogue), "chunk": "3/3", "data_dir": str(tmp_path / "data")}),
                 stats_pattern=str(root / "episodes/{episode}.json"),
                 lemmas_pattern=str(root / "lemmas/{episode}.parquet"), outputs=outputs)
    coverage = read_tsv(outputs["coverage"])
    assert list(coverage["episodes"]) == [2, 1] and coverage["tokens"][0] == 18 + 14
    assert list(coverage["series"].fillna("")) == ["", "cats and weather"]


def test_analysis_without_keeping_tokens_matches_the_one_from_the_tokens_file(corpus, tmp_path):
    """delete_tokens_after_analysis: the tokens are analysed in memory and never written."""
    root, stats, _ = corpus
    for episode in SERIES:
        table, meta = tokenize_file(FIXTURES / f"{episode}.json", None)
        paths = tmp_path / f"{episode}.json", tmp_path / f"{episode}.parquet"
        assert analyse_tokens(table, meta, *paths) == stats[episode]
        assert paths[0].read_text() == (root / "episodes" / f"{episode}.json").read_text()
        assert pq.read_table(paths[1]).equals(pq.read_table(root / "lemmas" / f"{episode}.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{episode}.{ext}" for episode in SERIES for ext in ("json", "parquet"))


# とても, この, いる, いい: UniDic's lemmas are 迚も, 此の, 居る, 良い; a reader knows the first.
LEMMA_TEXT = ["この ほんは とても おもしろい。", "ねこが にわに いる。いい てんき。", "いぬも いる。この いぬは とても いい。"]


def _lemma_corpus(tmp_path, lemma):
    from scribeflow.stages.tokens import tokenize_transcript

    entries = []
    for n, text in enumerate(LEMMA_TEXT):
        t = {"id": f"e{n}", "language": "ja", "duration": 60.0, "segments": [{"start": 0.0, "end": 5.0, "text": text}]}
        table = tokenize_transcript(t)
        meta = json.loads(table.schema.metadata[b"scribeflow"])
        paths = tmp_path / f"e{n}.json", tmp_path / f"e{n}.parquet"
        analyse_tokens(table, meta, *paths)
        entries.append((f"e{n}", *paths, "s"))
    outputs = {name: tmp_path / lemma / name for name in OUTPUTS}
    build_corpus(entries, outputs, lemma=lemma)
    return read_tsv(outputs["frequency"]), read_tsv(outputs["series_frequency"])


def test_the_corpus_shows_lemmas_as_written_or_as_unidic_writes_them(tmp_path):
    freq, series = _lemma_corpus(tmp_path, "written")
    assert list(freq.columns[:3]) == ["rank", "lemma", "lemma_unidic"]
    shown = dict(zip(freq["lemma_unidic"], freq["lemma"]))
    assert {k: shown[k] for k in ("迚も", "此の", "居る", "良い")} == {
        "迚も": "とても", "此の": "この", "居る": "いる", "良い": "いい"}
    counts = dict(zip(freq["lemma"], freq["count"]))
    assert (counts["とても"], counts["この"], counts["いる"], counts["いい"]) == (2, 2, 2, 2)
    assert list(series.columns[:4]) == ["series", "rank", "lemma", "lemma_unidic"]
    assert dict(zip(series["lemma"], series["count"]))["とても"] == 2

    unidic, _ = _lemma_corpus(tmp_path, "unidic")
    assert list(unidic.columns[:3]) == ["rank", "lemma", "lemma_written"]
    assert dict(zip(unidic["lemma"], unidic["lemma_written"]))["迚も"] == "とても"
    # Same words, same counts, same order: only the column shown as lemma differs.
    assert list(unidic["lemma"]) == list(freq["lemma_unidic"]) and list(unidic["count"]) == list(freq["count"])
    with pytest.raises(ValueError, match="analysis.lemma"):
        build_corpus([], {name: tmp_path / name for name in OUTPUTS}, lemma="orth")


def test_the_written_form_is_the_spelling_used_most(tmp_path):
    """居る written いる twice and 居る once: the table shows いる; lemma counts made before
    the written form existed (no `written` column) count under UniDic's lemma."""
    from scribeflow.stages.analysis import aggregate_counts, frequency_table

    new = tmp_path / "new.parquet"
    pq.write_table(pa.table({"lemma": ["居る"], "pos": ["動詞"], "count": [2], "written": ["いる"]}), new)
    kanji = tmp_path / "kanji.parquet"
    pq.write_table(pa.table({"lemma": ["居る"], "pos": ["動詞"], "count": [1], "written": ["居る"]}), kanji)
    old = tmp_path / "old.parquet"
    pq.write_table(pa.table({"lemma": ["猫"], "pos": ["名詞"], "count": [3]}), old)
    freq = frequency_table(aggregate_counts([(new, None), (kanji, None), (old, None)]).to_pandas())
    rows = {r["lemma_unidic"]: r for r in freq.to_dict("records")}
    assert (rows["居る"]["lemma"], rows["居る"]["count"], rows["居る"]["document_frequency"]) == ("いる", 3, 2)
    assert (rows["猫"]["lemma"], rows["猫"]["count"]) == ("猫", 3)


def test_analysis_lemma_in_the_config_reaches_the_corpus_step(corpus, tmp_path):
    from scribeflow.stages import steps

    root, _, _ = corpus
    catalogue = tmp_path / "episodes.csv"
    catalogue.write_text("id,url\nja_weather,https://e.org/1\n")
    for form, shown, other in (("unidic", "居る", "lemma_written"), ("written", "いる", "lemma_unidic")):
        outputs = {name: tmp_path / form / name for name in (*OUTPUTS, "shows", "shows_plot")}
        steps.corpus(settings=validate({"catalogue": str(catalogue), "analysis": {"lemma": form},
                                        "data_dir": str(tmp_path / form / "data")}),
                     stats_pattern=str(root / "episodes/{episode}.json"),
                     lemmas_pattern=str(root / "lemmas/{episode}.parquet"), outputs=outputs)
        freq = read_tsv(outputs["frequency"])
        assert other in freq.columns and shown in set(freq["lemma"])  # 走っていた: the い of いる


def test_songs_and_sounds_are_in_no_count_and_a_correction_takes_out_what_marks_add(tmp_path):
    from scribeflow.stages.analysis import marked_correction
    from scribeflow.stages.tokens import tokenize_transcript

    segments = [{"start": 0.0, "end": 10.0, "text": "猫が走った。", "kind": "song"},
                {"start": 11.0, "end": 13.0, "text": "猫が走った。"},
                {"start": 14.0, "end": 16.0, "text": "魚を食べた。"}]
    table = tokenize_transcript({"language": "ja", "duration": 60.0, "segments": segments})
    meta = json.loads(table.schema.metadata[b"scribeflow"])
    stats = analyse_tokens(table, {**meta, "id": "e"}, tmp_path / "e.json", tmp_path / "e.parquet")
    counts = {r["lemma"]: r["count"] for r in pq.read_table(tmp_path / "e.parquet").to_pylist()}
    assert counts["猫"] == 1 and counts["た"] == 2 and stats["tokens"] == 8 and stats["song_s"] == 10.0
    # The corpus step finds the second segment repeated across the series: what goes is its words.
    fix = marked_correction(table, {**meta, "id": "e"}, tmp_path / "e.parquet", segments,
                            ["song", "repeat", "speech"], {"repeat": 2.0})
    removed = {row[0]: (row[3], row[4]) for row in fix["rows"]}
    assert removed == {"猫": (1, 1), "が": (1, 1), "走る": (1, 1), "た": (1, 0)}  # た is still said once
    assert fix["stats"]["tokens"] == 4 and fix["stats"]["segments"] == 1 and fix["stats"]["speech_s"] == 2.0
    assert (fix["stats"]["song_s"], fix["stats"]["repeat_s"]) == (10.0, 2.0)
