"""The analyse_episode (tokenize + statistics) and corpus rules in the real workflow.

The first test starts from hand-written transcripts already in data_dir (as after an
earlier run: their videos and audio are temporary and gone, so nothing is downloaded);
the second runs everything from speech videos with tiny.en, one episode, then two."""

import copy
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import recall, run_snakemake, scribeflow, workflow_config, write_catalogue
from support import TRANSCRIPT_FIXTURES as FIXTURES  # noqa: E402
from support.fixtures import SENTENCES

from scribeflow.config.settings import validate
from scribeflow.ops.check import check_consistency
from scribeflow.stages.analysis import read_tsv

ROWS = {
    "ja_weather": {"series": "nihongo", "language": "ja"},
    "ja_tv": {"series": "nihongo", "language": "ja"},
    "en_cat": {"series": "english", "language": "en"},
    "en_weather": {"series": "", "language": "en"},
}


def setup_episodes(tmp: Path, episodes) -> Path:
    """A catalogue of `episodes` whose transcripts exist; the URLs lead nowhere (port 9)."""
    rows = [{"id": e, "url": f"http://127.0.0.1:9/{e}.mp4", **ROWS[e]} for e in episodes]
    (tmp / "data" / "transcripts").mkdir(parents=True, exist_ok=True)
    for e in episodes:
        shutil.copy(FIXTURES / f"{e}.json", tmp / "data" / "transcripts" / f"{e}.json")
    return write_catalogue(tmp / "episodes.csv", rows)


def corpus_counts(tmp: Path) -> Counter:
    return Counter(dict(zip(*(read_tsv(tmp / "data/analysis/corpus/lemma_frequency.tsv")[c]
                              for c in ("lemma", "count")))))


def job_count(proc, rule: str) -> int:
    """The rule's line in Snakemake's job stats ('analyse_episode   1'), 0 if absent."""
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


@pytest.mark.slow
def test_corpus_grows_without_retokenizing_and_cleanup_flags_delete(tmp_path, model_path):
    data = tmp_path / "data"
    catalogue = setup_episodes(tmp_path, ["ja_weather", "en_cat"])
    config = workflow_config(tmp_path, catalogue, model_path, disk_management={"cleanup": {
        "delete_transcript_after_tokenization": True, "delete_tokens_after_analysis": True}})
    run_snakemake(tmp_path, config, "--cores", "2")

    # Each is deleted once used; the per-episode analysis stays.
    assert list((data / "transcripts").glob("*.json")) == []
    assert list((data / "tokens").glob("*")) == []
    assert sorted(p.name for p in (data / "analysis/episodes").iterdir()) == ["en_cat.json", "ja_weather.json"]
    counts = corpus_counts(tmp_path)
    assert counts["the"] == 3 and counts["猫"] == 2 and sum(counts.values()) == 18 + 14
    assert "delete_tokens_after_analysis" in (data / "logs/analyse_episode/en_cat.log").read_text()
    stages = sqlite3.connect(data / "jobs.db").execute("SELECT DISTINCT stage FROM jobs").fetchall()
    assert stages == [("analyzed",)]
    assert len(list((data / "logs/analyse_episode").glob("*.log"))) == 2
    assert len(list((data / "benchmarks/analyse_episode").glob("*.tsv"))) == 2
    assert (data / "benchmarks/corpus/corpus.tsv").is_file()
    assert check_consistency(validate(copy.deepcopy(config))) == []  # deleted by design, not lost

    # Two new episodes: only they are tokenized and analysed (the old ones could not
    # be: their transcripts are gone and their URLs lead nowhere); the corpus grows.
    catalogue = setup_episodes(tmp_path, list(ROWS))
    proc = run_snakemake(tmp_path, config, "--cores", "2")
    assert job_count(proc, "analyse_episode") == 2 and job_count(proc, "download") == 0
    counts = corpus_counts(tmp_path)
    assert counts["the"] == 4 and counts["猫"] == 3 and sum(counts.values()) == 18 + 14 + 14 + 10
    coverage = read_tsv(data / "analysis/corpus/coverage.tsv")
    assert list(coverage["series"].fillna("")) == ["", "english", "nihongo"]
    assert list(coverage["episodes"]) == [4, 1, 2]
    assert "Building the corpus from 4 of 4" in (data / "logs/corpus/corpus.log").read_text()
    dry = run_snakemake(tmp_path, config, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    report = tmp_path / "report.html"
    run_snakemake(tmp_path, config, "--report", str(report))
    html = report.read_text(errors="replace")
    assert "Corpus" in html and "coverage.png" in html and "lemma_frequency.tsv" in html


@pytest.mark.slow
def test_speech_to_corpus(tmp_path, media_server, model_path):
    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en", "series": "demo"}
            for n in (1, 2)]
    data = tmp_path / "data"
    config = workflow_config(tmp_path, write_catalogue(tmp_path / "episodes.csv", rows[:1]), model_path)
    run_snakemake(tmp_path, config, "--cores", "2")
    first = (data / "tokens" / "ep01.parquet").stat().st_mtime_ns
    assert read_tsv(data / "analysis/corpus/coverage.tsv")["episodes"][0] == 1

    # The catalogue grows: only the new episode is downloaded, transcribed and tokenized.
    write_catalogue(tmp_path / "episodes.csv", rows)
    proc = run_snakemake(tmp_path, config, "--cores", "2")
    assert job_count(proc, "download") == 1 and job_count(proc, "analyse_episode") == 1
    assert (data / "tokens" / "ep01.parquet").stat().st_mtime_ns == first
    spoken = Counter()
    for n, row in enumerate(rows):
        table = pq.read_table(data / "tokens" / f"{row['id']}.parquet")
        heard = " ".join(table.column("surface").to_pylist())
        assert recall(SENTENCES[n], heard) >= 0.7, (SENTENCES[n], heard)
        transcript = json.loads((data / "transcripts" / f"{row['id']}.json").read_text())
        assert max(table.column("segment").to_pylist()) == len(transcript["segments"]) - 1
        spoken.update(table.column("lemma").to_pylist())
        stats = json.loads((data / "analysis/episodes" / f"{row['id']}.json").read_text())
        assert stats["tokens"] == table.num_rows > 5 and stats["tokens_per_minute"] > 30
    assert corpus_counts(tmp_path) == spoken
    series = read_tsv(data / "analysis/corpus/series_lemma_frequency.tsv")
    assert set(series["series"]) == {"demo"} and series["count"].sum() == sum(spoken.values())
    assert (data / "analysis/corpus/coverage.png").read_bytes().startswith(b"\x89PNG")


LYRICS = ("翼", "彼方", "虹", "永遠", "輝く", "さよなら")


def spoken_counts(data: Path, episodes, marks: dict) -> Counter:
    """An independent count of the speech in the transcripts: each segment tokenized alone,
    the segments the marks cover left out."""
    from scribeflow.stages.songs import segment_kinds
    from scribeflow.stages.tokens import tokenize_transcript

    counts = Counter()
    for e in episodes:
        segments = json.loads((data / "transcripts" / f"{e}.json").read_text())["segments"]
        kept = [s for s, k in zip(segments, segment_kinds(segments, marks.get(e, []))) if k == "speech"]
        counts.update(tokenize_transcript({"language": "ja", "segments": kept}).column("lemma").to_pylist())
    return counts


@pytest.mark.slow
def test_songs_a_series_shares_are_marked_and_left_out(tmp_path):
    """Four Japanese episodes of a series shaped like anime (tests/support/japanese.py: the
    same opening and ending in each, their own dialogue), through the real workflow with the
    multilingual base model, in three runs: the first alone in its series keeps its songs;
    once siblings arrive, the songs are marked in each, the first included, and counted
    nowhere; a fourth, later, is marked too and the others stay as they were."""
    from support.japanese import japanese_series
    from support.models import packaged_model
    from support.server import MediaServer

    from scribeflow.config.layout import Layout
    from scribeflow.ops import export
    from scribeflow.stages import concordance, songs

    episodes = japanese_series(4)
    media = tmp_path / "media"
    for ep in episodes:
        ep.write_media(media / f"ep{ep.number:02d}.m4a")
    data, layout = tmp_path / "data", Layout(tmp_path / "data")
    names = [f"ep{ep.number:02d}" for ep in episodes]
    with MediaServer(media) as server:
        rows = [{"id": e, "url": server.url(f"{e}.m4a"), "series": "anime", "language": "ja"} for e in names]
        config = workflow_config(tmp_path, write_catalogue(tmp_path / "episodes.csv", rows[:1]),
                                 str(packaged_model("base")))
        run_snakemake(tmp_path, config, "--cores", "2", timeout=900)
        # Alone in its series: nothing shared, nothing lost (its lyrics are counted as said).
        assert songs.series_marks(layout.marks, "anime") == {"ep01": []}
        alone = Counter(dict(zip(*(read_tsv(data / "analysis/corpus/lemma_frequency.tsv")[c]
                                   for c in ("lemma_unidic", "count")))))
        assert alone == spoken_counts(data, ["ep01"], {}) and any(alone[w] for w in LYRICS), alone
        for upto in (3, 4):  # its siblings, then a later episode
            write_catalogue(tmp_path / "episodes.csv", rows[:upto])
            run_snakemake(tmp_path, config, "--cores", "2", timeout=900)
            if upto == 3:
                first = songs.series_marks(layout.marks, "anime")
    marks = songs.series_marks(layout.marks, "anime")
    assert {e: marks[e] for e in first} == first  # the earlier episodes stay as they were
    for ep, e in zip(episodes, names):
        size = layout.fingerprint_file(e).stat().st_size
        assert 4 * 7.5 * ep.duration < size < 4 * 8.2 * ep.duration
        # The opening and the ending found where they lie (to a few seconds), as songs.
        found = [(round(s), round(t)) for s, t, kind in marks[e] if kind == "song"]
        assert len(found) == 2 and all(abs(s - a) <= 3 and abs(t - b) <= 3
                                       for (s, t), (a, b) in zip(found, ep.songs)), (e, marks[e], ep.songs)
        # Kept in the transcript, marked.
        segments = json.loads((data / "transcripts" / f"{e}.json").read_text())["segments"]
        kinds = songs.segment_kinds(segments, marks[e])
        assert any(k == "song" and s["text"].strip() for s, k in zip(segments, kinds)), segments

    frequency = read_tsv(data / "analysis/corpus/lemma_frequency.tsv")
    # Each use of the dialogue once (UniDic's lemmas, as the independent count has them).
    assert Counter(dict(zip(frequency["lemma_unidic"], frequency["count"]))) == spoken_counts(data, names, marks)
    assert not set(frequency["lemma"]) & set(LYRICS), set(frequency["lemma"]) & set(LYRICS)
    by_series = read_tsv(data / "analysis/corpus/series_lemma_frequency.tsv")
    assert not set(by_series["lemma"]) & set(LYRICS)
    with concordance.Index(layout.corpus_index, readonly=True) as index:
        yomitan = {term: uses for term, _, uses in export.frequencies(index)}
        assert not set(yomitan) & set(LYRICS)
        for word in LYRICS:
            assert concordance.search(index, word)["hits"] == []
        # Still there for a reader who asks for every kind.
        assert any(concordance.search(index, w, kinds=None)["hits"] for w in LYRICS)
    coverage = read_tsv(data / "analysis/corpus/coverage.tsv").set_index("scope")
    assert coverage.loc["series", "song_s"] == pytest.approx(52 * len(names), abs=4 * len(names))
    status = scribeflow(tmp_path, "status", "--configfile", str(tmp_path / "config.yaml"))
    assert "Songs and repeats" in status and "anime" in status, status
