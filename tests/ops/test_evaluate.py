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


def _evaluate(tmp_path, folder, model: str, out, *extra: str) -> subprocess.CompletedProcess:
    """`scribeflow evaluate FOLDER --model MODEL --language ja` as a user runs it, with a config."""
    import yaml

    catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "x", "url": "http://127.0.0.1:9/x"}])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(workflow_config(tmp_path, catalogue, model)))
    return subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "evaluate", str(folder), "--model", model,
                           "--language", "ja", "--out", str(out), "--configfile", str(config), *extra],
                          capture_output=True, text=True, timeout=900)


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
    out = tmp_path / "evaluation"
    proc = _evaluate(tmp_path, media, base, out, "--vary", "temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]")
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
    # espeak-ng's kana reading: base gets 30-65 % of one clip's characters wrong (measured), under
    # half of all three's; an English-only model writes English (~200 %).
    for r in rows:
        assert 0 <= float(r["cer"]) < 0.75 and float(r["rtf"]) > 0 and float(r["coverage"]) > 0.5
    assert sum(int(r["errors"]) for r in rows) / sum(int(r["reference_chars"]) for r in rows) < 0.5
    # One pair by hand: the reference without spaces and punctuation, the transcript as written.
    from pathlib import Path

    said = (out / "transcripts" / Path(base).name / "ep1.txt").read_text()
    reference = "".join(c for c in "".join(LINES[0]) if c not in " 。")
    hypothesis = "".join(c for c in said if c not in " 。、\n？！?!.,")
    assert int(rows[0]["errors"]) == levenshtein(reference, hypothesis)
    assert int(rows[0]["reference_chars"]) == len(reference)


def test_release_names_are_matched_as_written_and_the_japanese_subtitle_is_preferred(tmp_path, caplog):
    show = "[Group] Show - 01 [1080p]"
    (tmp_path / f"{show}.mkv").write_bytes(b"x")
    for name in (f"{show}.en.srt", f"{show}.ja.srt", f"{show}.ass", "[Group] Show - 02 [1080p].ja.srt"):
        (tmp_path / name).write_text("1\n00:00:01,000 --> 00:00:02,000\nはい\n", encoding="utf-8")
    # The brackets are not a glob's character class; the Japanese file before the untagged and English ones.
    assert [(e, s.name) for e, _, s in evaluate.pairs([tmp_path])] == [(show, f"{show}.ja.srt")]
    # The configured languages' order decides: English wanted, English found.
    assert evaluate.subtitle_beside(tmp_path / f"{show}.mkv", ["en"])[0].name == f"{show}.en.srt"
    # Without a file in a wanted language, the untagged one; never another language's.
    (tmp_path / f"{show}.ja.srt").unlink()
    assert evaluate.pairs([tmp_path])[0][2].name == f"{show}.ass"
    (tmp_path / f"{show}.ass").unlink()
    with pytest.raises(evaluate.EvaluateError, match="no episode with a subtitle"):
        evaluate.pairs([tmp_path])
    assert f"{show}.mkv: its subtitles ({show}.en.srt) are in no language of ja, ja-JP, jpn" in caplog.text


def test_timing_against_the_cues_counts_strays_and_text_over_no_cue():
    cues = [{"start": 8.0, "end": 10.0, "kind": "song"}, {"start": 31.5, "end": 34.0}, {"start": 35.0, "end": 39.0}]
    segments = [{"start": 0.0, "end": 35.0, "text": "おはよう"},     # from the opening: 31.5 s early
                {"start": 35.2, "end": 37.0, "text": "うん"},         # half a line: not early
                {"start": 38.0, "end": 39.6, "text": "駅の前で"},      # 0.6 s late: within the bar
                {"start": 50.0, "end": 52.0, "text": "ご視聴ありがとう"}]  # over no cue: music or silence
    assert evaluate.timing(segments, cues[1:]) == {"timing_max_s": 31.5, "mistimed": 1, "uncued_chars": 8}
    # With the opening's lyrics subtitled, the first segment holds them too: still 8 s early.
    assert evaluate.timing(segments, cues) == {"timing_max_s": 8.0, "mistimed": 1, "uncued_chars": 8}
    assert evaluate.timing([], cues) == {"timing_max_s": None, "mistimed": 0, "uncued_chars": 0}


@pytest.mark.slow
def test_evaluate_on_a_release_named_japanese_episode(tmp_path):
    """Kokoro's Japanese voices over music, named as a release, its Japanese subtitle beside an
    English one: the CER is against the Japanese dialogue, the times within a second of it."""
    from support.japanese import japanese_episode

    episode = japanese_episode(3)
    folder = tmp_path / "Show"
    name = "[Group] Show - 03 [1080p]"
    episode.write_media(folder / f"{name}.mkv")
    episode.write_srt(folder / f"{name}.ja.srt")
    (folder / f"{name}.en.srt").write_text("1\n00:00:31,500 --> 00:00:34,000\nIs this room cold?\n")
    base = str(packaged_model("base"))
    out = tmp_path / "evaluation"
    proc = _evaluate(tmp_path, folder, base, out)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    (row,) = csv.DictReader((out / "evaluate.tsv").open(), delimiter="\t")
    assert row["episode"] == name and row["language"] == "ja"
    assert int(row["reference_chars"]) == len(evaluate.normalise(episode.text))  # the Japanese dialogue
    assert float(row["cer"]) < 0.35
    assert int(row["mistimed"]) == 0 and float(row["timing_max_s"]) <= 1.0
    assert "segment(s) more than 1 s outside their cues" in proc.stdout


def test_the_table_tells_release_named_episodes_apart():
    row = {"setting": "/models/whisper-base", "audio_seconds": 95.0, "reference_chars": 120, "errors": 12,
           "cer": 0.1, "rtf": 0.3, "repetitions": 0, "phrases": 0, "language": "ja", "vote_agreement": None,
           "coverage": 0.98, "timing_max_s": 0.7, "mistimed": 0, "uncued_chars": 3}
    table = evaluate.render([{**row, "episode": f"[Kokoro] Nichijou - {n:02d} [1080p]"} for n in (1, 2)])
    assert "- 01 [1080p]" in table and "- 02 [1080p]" in table
    assert "0 segment(s) more than 1 s outside their cues (longest 0.700 s), 6 character(s)" in table
