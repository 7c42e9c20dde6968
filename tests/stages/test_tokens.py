"""Tokens from hand-written transcripts: real fugashi + unidic-lite for Japanese, the
Unicode word tokenizer for other languages, stored as Parquet."""

import json

import pyarrow.parquet as pq
import pytest
from support import TRANSCRIPT_FIXTURES as FIXTURES  # noqa: E402

from scribeflow.stages.tokens import (SCHEMA, TokenizeError, read_tokens, speech_tokens, tokenize_file,
                                      tokenize_transcript)
from scribeflow.stages.transcription.transcript import read_transcript


def transcript(name: str) -> dict:
    return read_transcript(FIXTURES / f"{name}.json")


def test_japanese_tokens_have_lemma_reading_pos_segment_and_time(tmp_path):
    out = tmp_path / "tokens" / "ja_weather.parquet"
    tokenize_file(FIXTURES / "ja_weather.json", out)
    table, meta = read_tokens(out)
    rows = table.to_pylist()

    assert table.schema.remove_metadata() == SCHEMA
    # 今日は良い天気ですね。/ 猫が走っていた。/ 猫は魚を食べた。 -- punctuation is not a token.
    assert [r["surface"] for r in rows] == [
        "今日", "は", "良い", "天気", "です", "ね",
        "猫", "が", "走っ", "て", "い", "た",
        "猫", "は", "魚", "を", "食べ", "た",
    ]
    assert [r["segment"] for r in rows] == [0] * 6 + [1] * 6 + [2] * 6
    assert {(r["segment"], r["start"], r["end"]) for r in rows} == {(0, 0.0, 3.5), (1, 4.0, 7.0), (2, 8.0, 11.0)}
    lemma = {r["surface"]: r["lemma"] for r in rows}
    assert lemma["走っ"] == "走る" and lemma["食べ"] == "食べる" and lemma["い"] == "居る"
    written = {r["surface"]: r["written"] for r in rows}
    assert written["走っ"] == "走る" and written["い"] == "いる" and written["良い"] == "良い"
    reading = {r["surface"]: r["reading"] for r in rows}
    assert reading["今日"] == "キョウ" and reading["猫"] == "ネコ" and reading["天気"] == "テンキ"
    pos = {r["surface"]: r["pos"] for r in rows}
    assert pos["猫"] == "名詞" and pos["走っ"] == "動詞" and pos["良い"] == "形容詞" and pos["は"] == "助詞"
    assert not any(r["unknown"] for r in rows)
    assert meta["language"] == "ja" and meta["tokenizer"].startswith("fugashi/") and meta["has_lexicon"]
    assert meta["segments"] == 3 and meta["duration"] == 12.0 and meta["speech_seconds"] == 9.5
    assert meta["chars"] == 11 + 8 + 8  # non-whitespace characters, punctuation included
    assert [p.name for p in out.parent.iterdir()] == ["ja_weather.parquet"]  # no temp file left


def test_loanword_lemmas_lose_unidic_gloss_and_unknown_words_are_flagged():
    rows = tokenize_transcript(transcript("ja_tv")).to_pylist()
    assert [r["lemma"] for r in rows] == [
        "昨日", "テレビ", "で", "ニュース", "を", "見る", "ます", "た",  # UniDic: テレビ-television
        "猫", "の", "動画", "は", "面白い", "た",
    ]
    t = {"language": "ja", "segments": [{"start": 0, "end": 2, "text": "Scribeflowを2026年に作った。"}]}
    rows = tokenize_transcript(t).to_pylist()
    unknown = {r["surface"]: r["unknown"] for r in rows}
    assert unknown["Scribeflow"] is True
    assert unknown["2026"] is False  # a number is not an unknown word
    assert unknown["作っ"] is False


def test_english_words_keep_apostrophes_and_numbers():
    rows = tokenize_transcript(transcript("en_cat")).to_pylist()
    assert [r["surface"] for r in rows] == [
        "The", "cat", "sat", "on", "the", "mat",
        "Don't", "stop", "it’s", "3.5", "metres", "the", "cat", "said",
    ]
    assert [r["lemma"] for r in rows][:7] == ["the", "cat", "sat", "on", "the", "mat", "don't"]
    assert rows[8]["lemma"] == "it's"  # typographic apostrophe made plain
    assert [r["segment"] for r in rows] == [0] * 6 + [1] * 8
    assert all(r["reading"] is None and r["pos"] is None and r["unknown"] is None for r in rows)


def test_other_scripts_are_not_cut_inside_words():
    t = {"language": "hi", "segments": [{"start": 0, "end": 1, "text": "नमस्ते दुनिया!"}]}
    assert [r["surface"] for r in tokenize_transcript(t).to_pylist()] == ["नमस्ते", "दुनिया"]
    t = {"language": "fr", "segments": [{"start": 0, "end": 1, "text": "L'homme est là — «bonjour»."}]}
    rows = tokenize_transcript(t).to_pylist()
    assert [r["lemma"] for r in rows] == ["l'homme", "est", "là", "bonjour"]


def test_catalogue_language_wins_over_the_transcript_field():
    t = transcript("ja_weather") | {"language": None}
    # No language: the word tokenizer, for which unspaced Japanese is one word per sentence.
    assert tokenize_transcript(t).column("surface").to_pylist() == ["今日は良い天気ですね", "猫が走っていた", "猫は魚を食べた"]
    assert tokenize_transcript(t, "ja").num_rows == 18
    assert tokenize_transcript(t | {"language": "ja"}).num_rows == 18
    assert tokenize_transcript(t | {"language": "ja"}, "en").num_rows == 3


def test_bad_transcripts_name_the_file_and_write_nothing(tmp_path):
    out = tmp_path / "tokens" / "x.parquet"
    cases = {
        "broken.json": '{"id": "x", "segments": [',
        "nosegments.json": '{"id": "x", "language": "en"}',
        "badsegment.json": json.dumps({"segments": [{"start": 0, "text": "hi"}]}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(TokenizeError, match=name):
            tokenize_file(path, out)
    assert not out.exists() and not list(tmp_path.glob("tokens/*"))


def test_an_empty_transcript_gives_an_empty_table(tmp_path):
    source, out = tmp_path / "empty.json", tmp_path / "empty.parquet"
    source.write_text(json.dumps({"id": "e", "language": "en", "duration": 3.0, "segments": []}))
    tokenize_file(source, out)
    assert pq.read_table(out).num_rows == 0


def test_japanese_lemmas_as_unidic_writes_them_and_as_written():
    """UniDic's lemma spells とても 迚も, この 此の, いる 居る; `written` (orthBase) keeps the
    spelling of the transcript, in dictionary form (いた -> いる); kanji stay kanji."""
    t = {"segments": [{"start": 0.0, "end": 3.0, "text": "この本はとても面白い。猫がいる。犬がいた。子供が居る。"}]}
    rows = tokenize_transcript(t, "ja").to_pylist()
    pairs = {(r["surface"], r["lemma"], r["written"]) for r in rows}
    assert {("この", "此の", "この"), ("とても", "迚も", "とても"), ("いる", "居る", "いる"),
            ("い", "居る", "いる"), ("居る", "居る", "居る"), ("面白い", "面白い", "面白い")} <= pairs
    english = tokenize_transcript({"segments": [{"start": 0.0, "end": 1.0, "text": "The Cats"}]}, "en").to_pylist()
    assert [(r["lemma"], r["written"]) for r in english] == [("the", "the"), ("cats", "cats")]


def test_each_token_carries_its_segments_kind_and_only_speech_is_timed_as_said():
    transcript = {"language": "ja", "duration": 30.0, "segments": [
        {"start": 0.0, "end": 10.0, "text": "翼を広げて", "kind": "song"},
        {"start": 11.0, "end": 13.0, "text": "猫が走った。"},
        {"start": 14.0, "end": 15.0, "text": "ドアの音", "kind": "sound"},
        {"start": 16.0, "end": 19.0, "text": "魚を食べた。", "kind": "speech"}]}
    table = tokenize_transcript(transcript)
    kinds = dict(zip(table.column("surface").to_pylist(), table.column("kind").to_pylist()))
    assert kinds["翼"] == "song" and kinds["音"] == "sound" and kinds["猫"] == kinds["魚"] == "speech"
    meta = json.loads(table.schema.metadata[b"scribeflow"])
    # What the statistics count is what was said: the song and the sound are not.
    assert (meta["segments"], meta["speech_seconds"], meta["chars"]) == (2, 5.0, 12)
    assert meta["kinds"] == {"song": 10.0, "sound": 1.0}
    assert speech_tokens(table).column("surface").to_pylist() == ["猫", "が", "走っ", "た", "魚", "を", "食べ", "た"]
