"""The corpus as its readers use it, through the real workflow on a small Japanese corpus:
the episodes' transcripts come from their subtitles (known text and times, so that every
figure can be checked by hand), tokenized with UniDic, indexed, searched, exported for
Yomitan and ranked by difficulty."""

import csv
import io
import json
import sqlite3
import subprocess
import sys
import zipfile

import jsonschema
import pytest
from conftest import run_snakemake, scribeflow, workflow_config, write_catalogue

# Yomitan's frequency dictionary, as docs/making-yomitan-dictionaries.md of Yomitan and its
# dictionary-index and dictionary-term-meta-bank-v3 schemas describe it (written here from
# the documentation, the parts a frequency dictionary uses).
INDEX_SCHEMA = {
    "type": "object",
    "required": ["title", "revision", "format"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "revision": {"type": "string", "minLength": 1},
        "format": {"const": 3},
        "author": {"type": "string"},
        "description": {"type": "string"},
        "sourceLanguage": {"type": "string", "pattern": "^[a-z]{2,3}$"},
        "frequencyMode": {"enum": ["occurrence-based", "rank-based"]},
    },
}
FREQUENCY = {"oneOf": [
    {"type": "number"}, {"type": "string"},
    {"type": "object", "required": ["value"], "additionalProperties": False,
     "properties": {"value": {"type": "number"}, "displayValue": {"type": "string"}}}]}
TERM_META_BANK_SCHEMA = {
    "type": "array",
    "items": {
        "type": "array", "minItems": 3, "maxItems": 3,
        "prefixItems": [
            {"type": "string", "minLength": 1},
            {"const": "freq"},
            {"oneOf": [FREQUENCY, {"type": "object", "required": ["reading", "frequency"],
                                   "additionalProperties": False,
                                   "properties": {"reading": {"type": "string", "minLength": 1},
                                                  "frequency": FREQUENCY}}]},
        ],
    },
}

EPISODES = {
    # id: (series, season, [(start, end, text)])
    "a1": ("Alpha", 1, [(1.0, 3.0, "猫が魚を食べた。"), (5.0, 7.0, "明日は何も食べない。"), (9.0, 11.0, "雨が降っている。"),
                        (13.0, 15.0, "鳥の翼が光った。")]),
    "a2": ("Alpha", 1, [(2.0, 4.0, "パンを食べちゃった！"), (6.0, 8.0, "猫と一緒に走った。")]),
    # A song's line (♪) is kept in the transcript as a song: never counted, searched with --all-kinds.
    "b1": ("Beta", 1, [(0.5, 2.5, "学校に行きます。"), (3.0, 4.0, "今日は暑いね。"), (5.0, 9.0, "♪翼を広げて飛んでゆく♪")]),
    "c1": ("Gamma", 1, [(1.0, 3.0, "The fox jumped over the fence."), (4.0, 6.0, "Two foxes jump high.")]),
}
LANGUAGES = {"c1": "en"}


def _srt(lines) -> str:
    def clock(t):
        return f"00:00:{int(t):02d},{int(round(t % 1 * 1000)):03d}"

    return "".join(f"{i}\n{clock(s)} --> {clock(e)}\n{text}\n\n" for i, (s, e, text) in enumerate(lines, 1))


def _search(cwd, *args):
    """`scribeflow search` as a user runs it: (exit status, standard output, standard error)."""
    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "search", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def _catalogue(tmp_path, ids):
    rows = [{"id": e, "url": f"http://127.0.0.1:9/{e}.mp4", "language": LANGUAGES.get(e, "ja"),
             "series": EPISODES[e][0], "season": EPISODES[e][1]} for e in ids]
    return write_catalogue(tmp_path / "episodes.csv", rows)


@pytest.mark.slow
def test_search_yomitan_and_shows_on_a_japanese_corpus(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for e, (_, _, lines) in EPISODES.items():
        (subs / f"{e}.{LANGUAGES.get(e, 'ja')}.srt").write_text(_srt(lines), encoding="utf-8")
    catalogue = _catalogue(tmp_path, ["a1", "b1"])
    config = workflow_config(tmp_path, catalogue, "tiny", subtitles={"folder": str(subs), "sources": ["folder"]})
    run_snakemake(tmp_path, config, "--cores", "2")
    data = tmp_path / "data"
    corpus = data / "analysis" / "corpus"
    cli = ["--configfile", str(tmp_path / "config.yaml")]

    # The concordance: 食べる by its dictionary form finds 食べた and 食べない, with their
    # episodes and times, the inflected word marked.
    found = json.loads(scribeflow(tmp_path, "search", "食べる", "--json", *cli))
    assert [(h["episode"], h["start"], h["marked"]) for h in found["hits"]] == [
        ("a1", 1.0, "猫が魚を【食べた】。"), ("a1", 5.0, "明日は何も【食べない】。")]
    assert found["lemmas"] == ["食べる"] and found["uses"] == 2 and found["episodes"] == 1
    text = scribeflow(tmp_path, "search", "食べる", *cli)
    assert "Alpha\ta1\t0:00:05\t明日は何も【食べない】。" in text
    exact = json.loads(scribeflow(tmp_path, "search", "食べた", "--exact", "--json", *cli))
    assert [h["marked"] for h in exact["hits"]] == ["猫が魚を【食べた】。"]
    assert _search(tmp_path, "食べる", "--series", "Beta", "--json", *cli)[0] == 1

    # A noun that UniDic reads alone as a given name (翼: ツバサ) is found as the frequency
    # table counts it; the song that sings it is not counted, and shown only when asked.
    frequency = list(csv.DictReader(io.StringIO((corpus / "lemma_frequency.tsv").read_text()), delimiter="\t"))
    assert {row["lemma"]: int(row["count"]) for row in frequency}["翼"] == 1
    found = json.loads(scribeflow(tmp_path, "search", "翼", "--json", *cli))
    assert [(h["episode"], h["start"], h["marked"]) for h in found["hits"]] == [("a1", 13.0, "鳥の【翼】が光った。")]
    assert found["uses"] == 1 and found["episodes"] == 1
    every = json.loads(scribeflow(tmp_path, "search", "翼", "--all-kinds", "--json", *cli))
    assert sorted((h["episode"], h["kind"]) for h in every["hits"]) == [("a1", "speech"), ("b1", "song")]
    assert "Beta\tb1\t0:00:05\t[song] 【翼】を広げて飛んでゆく" in scribeflow(tmp_path, "search", "翼", "--all-kinds", *cli)
    # No hits: exit 1 in text and in JSON alike, as grep.
    assert _search(tmp_path, "宇宙", *cli)[0] == _search(tmp_path, "宇宙", "--json", *cli)[0] == 1

    # Yomitan: the zip validates, holds 食べる with its reading in hiragana, and its ranks
    # and counts are the frequency table's.
    out = tmp_path / "freq.zip"
    scribeflow(tmp_path, "export", "yomitan", "--out", str(out), *cli)
    with zipfile.ZipFile(out) as z:
        info = json.loads(z.read("index.json"))
        bank = json.loads(z.read("term_meta_bank_1.json"))
        assert sorted(z.namelist()) == ["index.json", "term_meta_bank_1.json"]
    jsonschema.validate(info, INDEX_SCHEMA)
    jsonschema.validate(bank, TERM_META_BANK_SCHEMA)
    assert info["frequencyMode"] == "rank-based" and info["sourceLanguage"] == "ja"
    entries = {(term, meta["reading"]): meta["frequency"] for term, _, meta in bank}
    assert entries[("食べる", "たべる")]["displayValue"].endswith("(2)")
    assert [meta["frequency"]["value"] for _, _, meta in bank] == list(range(1, len(bank) + 1))
    frequency = list(csv.DictReader(io.StringIO((corpus / "lemma_frequency.tsv").read_text()), delimiter="\t"))
    counts = {row["lemma"]: int(row["count"]) for row in frequency}
    for term, _, meta in bank:
        assert int(meta["frequency"]["displayValue"].split("(")[1].rstrip(")")) == counts[term], term
    uses = [int(meta["frequency"]["displayValue"].split("(")[1].rstrip(")")) for _, _, meta in bank]
    assert uses == sorted(uses, reverse=True)

    # Per-show statistics, by hand for Beta's one episode: 学校に行きます。今日は暑いね。
    shows = {row["series"]: row for row in csv.DictReader(io.StringIO((corpus / "shows.tsv").read_text()),
                                                           delimiter="\t")}
    beta = shows["Beta"]
    assert beta["season"] == "1" and beta["episodes"] == "1"
    assert float(beta["speech_minutes"]) == pytest.approx(3.0 / 60, abs=0.05)  # 2.0 s + 1.0 s of segments
    assert beta["chars"] == str(len("学校に行きます今日は暑いね"))  # letters said: no punctuation
    # 学校|に|行き|ます|今日|は|暑い|ね: 8 words, 8 lemmas, each used once; kanji 学校行今日暑
    assert (beta["words"], beta["unique_words"], beta["unique_words_once"]) == ("8", "8", "8")
    assert beta["unique_kanji"] == "6" and beta["segments"] == "2"
    # Morae as pronounced: ガッコー(4) ニ(1) イキ(2) マス(2) キョー(2: キョ, ー) ワ(1) アツイ(3) ネ(1) = 16
    # in 3 s of speech; 13 letters in 3 s
    assert float(beta["morae_per_minute"]) == pytest.approx(16 / 0.05, rel=0.01)
    assert float(beta["chars_per_minute"]) == pytest.approx(13 / 0.05, rel=0.01)
    assert 0 <= float(beta["difficulty"]) <= 5
    assert (corpus / "shows.png").stat().st_size > 10_000

    # Two more episodes: the index and the tables take them without reading the others again.
    catalogue = _catalogue(tmp_path, ["a1", "b1", "a2", "c1"])
    run_snakemake(tmp_path, config, "--cores", "2")
    log = (data / "logs" / "corpus" / "corpus.log").read_text()
    assert "Corpus: read 2 new episode(s), 2 from the sums kept" in log, log
    assert "adding" not in log  # the index had it already: added by its own analysis
    found = json.loads(scribeflow(tmp_path, "search", "食べる", "--json", *cli))
    assert found["uses"] == 3 and found["hits"][-1]["marked"] == "パンを【食べちゃった】！"
    db = sqlite3.connect(corpus / "index.db")
    assert db.execute("SELECT COUNT(*) FROM episodes").fetchone() == (4,)
    db.close()
    # English words by their dictionary form; --exact as written, and it says so.
    for query in ("jumps", "jump"):
        hits = json.loads(scribeflow(tmp_path, "search", query, "--json", *cli))["hits"]
        assert [h["marked"] for h in hits] == ["The fox 【jumped】 over the fence.", "Two foxes 【jump】 high."], query
    rc, out, err = _search(tmp_path, "Fox", "--exact", *cli)
    assert (rc, out) == (1, "") and "Fox written exactly so: 0 shown; fox / foxes in any form: 2 use(s)" in err, err
    frequency = list(csv.DictReader(io.StringIO((corpus / "lemma_frequency.tsv").read_text()), delimiter="\t"))
    assert {row["lemma"]: int(row["count"]) for row in frequency}["食べる"] == 3

    # The index deleted: the next run rebuilds it from the tokens, and searches find the same.
    (corpus / "index.db").unlink()
    run_snakemake(tmp_path, config, "--cores", "2")
    assert "Rebuilt the corpus index" in (data / "logs" / "corpus" / "index.log").read_text()
    again = json.loads(scribeflow(tmp_path, "search", "食べる", "--json", *cli))
    assert [h["marked"] for h in again["hits"]] == [h["marked"] for h in found["hits"]]
