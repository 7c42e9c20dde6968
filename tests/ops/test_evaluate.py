"""`scribeflow evaluate` on Japanese episodes with known text: real espeak-ng speech, the
multilingual base model from PyPI, subtitles beside the media, the real command."""

import csv
import subprocess
import sys

import pytest
from conftest import workflow_config, write_catalogue
from support.fixtures import require_tools
from support.models import packaged_model

from scribeflow.ops import evaluate

LINES = [["きょうは とても いい てんき です。", "ねこが にわで あそんで いる。"],
         ["わたしは まいにち がっこうに いきます。", "あしたは あめが ふる でしょう。"],
         ["この ほんは とても おもしろい です。", "いぬが こうえんを はしって いる。"]]


def levenshtein(a: str, b: str) -> int:
    """Edits between two strings, by hand (the test's own, not jiwer's)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_normalised_text_is_what_was_said():
    assert evaluate.normalise("ＯＫ、行こう！ ｶﾀｶﾅ　です。") == "ok行こうカタカナです"
    assert evaluate.character_errors("今日はいい天気", "今日は良い天気。") == (1, 7)
    assert evaluate.character_errors("", "") == (0, 0)


def test_episodes_without_a_subtitle_are_named_and_skipped(tmp_path, caplog):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.ja.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nはい\n")
    (tmp_path / "b.mp4").write_bytes(b"x")
    assert [(e, s.name) for e, _, s in evaluate.pairs([tmp_path])] == [("a", "a.ja.srt")]
    assert "b.mp4: no subtitle beside it" in caplog.text
    with pytest.raises(evaluate.EvaluateError, match="no episode with a subtitle"):
        evaluate.pairs([tmp_path / "b.mp4"])


@pytest.mark.slow
def test_evaluate_prints_and_writes_the_cer_of_each_episode(tmp_path):
    require_tools()
    media = tmp_path / "episodes"
    media.mkdir()
    for n, lines in enumerate(LINES, 1):
        wav = media / f"ep{n}.wav"
        subprocess.run(["espeak-ng", "-v", "ja", "-s", "130", "-w", str(wav), "\n".join(lines)], check=True)
        cues = "".join(f"{i}\n00:00:{2 * i - 2:02d},000 --> 00:00:{2 * i:02d},000\n{text}\n\n"
                       for i, text in enumerate(lines, 1))
        (media / f"ep{n}.ja.srt").write_text(cues, encoding="utf-8")
    base = str(packaged_model("base"))
    catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "x", "url": "http://127.0.0.1:9/x"}])
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(workflow_config(tmp_path, catalogue, base)))
    out = tmp_path / "evaluation"
    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "evaluate", str(media), "--model", base,
                           "--language", "ja", "--out", str(out), "--configfile", str(config),
                           "--vary", "temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "CER" in proc.stdout and "over 3 episode(s)" in proc.stdout
    print(proc.stdout)
    rows = list(csv.DictReader((out / "evaluate.tsv").open(), delimiter="\t"))
    # Each model as configured, and with Whisper's sampling ladder (--vary).
    assert [r["setting"] for r in rows] == [base] * 3 + [f"{base} temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]"] * 3
    assert "base temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]: CER" in proc.stdout
    rows = rows[:3]
    assert [r["episode"] for r in rows] == ["ep1", "ep2", "ep3"] and all(r["language"] == "ja" for r in rows)
    assert (out / "evaluate.png").stat().st_size > 10_000
    for r in rows:
        assert 0 <= float(r["cer"]) < 0.6 and float(r["rtf"]) > 0 and float(r["coverage"]) > 0.5
    # One pair by hand: the reference without spaces and punctuation, the transcript as written.
    from pathlib import Path

    said = (out / "transcripts" / Path(base).name / "ep1.txt").read_text()
    reference = "".join(c for c in "".join(LINES[0]) if c not in " 。")
    hypothesis = "".join(c for c in said if c not in " 。、\n？！?!.,")
    assert int(rows[0]["errors"]) == levenshtein(reference, hypothesis)
    assert int(rows[0]["reference_chars"]) == len(reference)
