"""Subtitles first, through the real workflow: a catalogue whose episodes' transcripts come
from a subtitle file of the column, one of a folder, a page's own track, or ASR (no
subtitle, or only a translation). Real Snakemake, yt-dlp against a server on 127.0.0.1,
faster-whisper tiny.en for the ASR ones."""

import json
import shutil
import sqlite3

import pytest
from conftest import run_snakemake, scribeflow, workflow_config, write_catalogue
from support.server import MediaServer

ASS_JA = r"""[Script Info]
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,60,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,40,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:00.50,0:00:02.00,Default,,0,0,0,,猫が魚を食べた。
Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\pos(960,100)}駅前
Dialogue: 0,0:00:02.20,0:00:04.00,Default,,0,0,0,,明日も食べたい。
"""
SRT_JA = "1\n00:00:00,500 --> 00:00:02,000\n今日は雨が降っている。\n\n2\n00:00:02,500 --> 00:00:04,000\n傘を持って行こう。\n"
VTT_JA = "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\n犬と一緒に走った。\n\n00:00:02.500 --> 00:00:04.000\nとても楽しかった。\n"
VTT_EN = "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nI ran with the dog.\n\n00:00:02.500 --> 00:00:04.000\nIt was fun.\n"


def _page(name: str, video: str, tracks: dict[str, str]) -> str:
    track = "".join(f'<track kind="subtitles" srclang="{lang}" src="{src}">' for lang, src in tracks.items())
    return (f"<!DOCTYPE html><html><head><title>{name}</title></head><body>"
            f'<video controls src="{video}">{track}</video></body></html>')


@pytest.mark.slow
def test_mixed_sources_in_one_run_and_no_media_for_the_subtitled(tmp_path, speech_dir, model_path):
    site = tmp_path / "site"
    site.mkdir()
    for n in range(1, 7):
        shutil.copy(speech_dir / f"ep{n:02d}.mp4", site / f"ep{n:02d}.mp4")
    (site / "ep02.ja.vtt").write_text(VTT_JA, encoding="utf-8")
    (site / "ep03.en.vtt").write_text(VTT_EN, encoding="utf-8")
    (site / "watch02.html").write_text(_page("Episode 2", "ep02.mp4", {"ja": "ep02.ja.vtt"}), encoding="utf-8")
    # English subtitles labelled Japanese (as sites do): the script tells the translation.
    (site / "watch03.html").write_text(_page("Episode 3", "ep03.mp4", {"ja": "ep03.en.vtt"}), encoding="utf-8")
    # A page whose subtitle track is gone (404): its media is fine, so it is transcribed by ASR.
    (site / "watch06.html").write_text(_page("Episode 6", "ep06.mp4", {"ja": "ep06.ja.vtt"}), encoding="utf-8")
    subs = tmp_path / "subs"
    subs.mkdir()
    (tmp_path / "ep01.ass").write_text(ASS_JA, encoding="utf-8")
    (subs / "ep05.ja.srt").write_text(SRT_JA, encoding="utf-8")
    (subs / "ep04.fr.srt").write_text(VTT_EN, encoding="utf-8")  # a language not asked for: not taken

    with MediaServer(site) as server:
        rows = [
            # the column: a file beside the catalogue (a relative path)
            {"id": "ep01", "url": server.url("ep01.mp4"), "language": "ja", "subtitle": "ep01.ass"},
            {"id": "ep02", "url": server.url("watch02.html"), "language": "ja"},  # the page's Japanese track
            # a Japanese episode whose page has English subtitles only: a translation, so ASR
            # (tiny.en transcribes English whatever it is told: the test's speech is English)
            {"id": "ep03", "url": server.url("watch03.html"), "language": "ja"},
            {"id": "ep04", "url": server.url("ep04.mp4"), "language": "en"},  # nothing: ASR
            {"id": "ep05", "url": server.url("ep05.mp4"), "language": "ja"},  # the folder's ep05.ja.srt
            {"id": "ep06", "url": server.url("watch06.html"), "language": "ja"},  # its track answers 404: ASR
        ]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path, subtitles={"folder": str(subs)},
                                 disk_management={"check_interval_seconds": 1})
        config["subtitles"]["languages"] = ["ja"]
        # The plan knows the local ones: no download, no audio for them.
        dry = run_snakemake(tmp_path, config, "-n", "--cores", "2")
        plan = dry.stdout + dry.stderr
        assert "download" in plan and "ep01.media" not in plan and "ep05.media" not in plan, plan[-3000:]
        assert not (tmp_path / "data").exists()  # a plan writes nothing to data_dir
        run_snakemake(tmp_path, config, "--cores", "2")
        requested = [path for _, path, _ in server.requests]

    data = tmp_path / "data"
    t = {e: json.loads((data / "transcripts" / f"{e}.json").read_text()) for e in ("ep01", "ep02", "ep03", "ep04",
                                                                                  "ep05", "ep06")}
    # The column's ASS: dialogue only (the sign is gone), with its times.
    assert t["ep01"]["source"] == "subtitles" and t["ep01"]["subtitle"]["origin"] == "column"
    assert [(s["start"], s["end"], s["text"]) for s in t["ep01"]["segments"]] == [
        (0.5, 2.0, "猫が魚を食べた。"), (2.2, 4.0, "明日も食べたい。")]
    assert t["ep02"]["source"] == "subtitles" and t["ep02"]["subtitle"]["origin"] == "page"
    assert t["ep02"]["text"] == "犬と一緒に走った。 とても楽しかった。"
    assert t["ep05"]["source"] == "subtitles" and t["ep05"]["subtitle"]["file"].endswith("ep05.ja.srt")
    assert t["ep03"]["source"] == t["ep04"]["source"] == t["ep06"]["source"] == "asr"
    assert "I ran with the dog" not in t["ep03"]["text"] and t["ep03"]["model"] == model_path
    # The server never saw a request for a subtitled episode's media; the ASR ones were fetched.
    assert not [p for p in requested if p.endswith(("ep01.mp4", "ep02.mp4", "ep05.mp4"))], requested
    assert [p for p in requested if p.endswith("ep03.mp4")] and [p for p in requested if p.endswith("ep04.mp4")]
    assert any(p.endswith("ep02.ja.vtt") for p in requested)
    # ep03's translation was refused, with its reason, in its verdict.
    verdict = json.loads((data / "subtitles" / "ep03.subtitle.json").read_text())
    assert not verdict["usable"] and "ep03.ja.vtt: 0% of its letters are in ja's script" in verdict["refused"][0]
    # ep06's track could not be fetched: the download went on to the media, the reason kept.
    assert [p for p in requested if p.endswith("ep06.ja.vtt")] and [p for p in requested if p.endswith("ep06.mp4")]
    verdict = json.loads((data / "subtitles" / "ep06.subtitle.json").read_text())
    assert not verdict["usable"] and "the page's ja track" in verdict["refused"][0] and "404" in verdict["refused"][0]

    # The budget: the subtitled episodes reserved nothing and had no audio; no download job
    # ran for the local ones at all.
    db = sqlite3.connect(data / "jobs.db")
    rows_db = dict(db.execute("SELECT id, transcript_source FROM jobs"))
    assert rows_db == {"ep01": "subtitles", "ep02": "subtitles", "ep03": "asr", "ep04": "asr", "ep05": "subtitles",
                       "ep06": "asr"}
    attempts = dict(db.execute("SELECT id, attempts FROM jobs"))
    assert attempts["ep06"] <= 1, attempts  # not a failure of the episode
    sizes = dict(db.execute("SELECT id, COALESCE(video_size_bytes, 0) + COALESCE(declared_bytes, 0) FROM jobs"))
    assert sizes["ep01"] == sizes["ep02"] == sizes["ep05"] == 0 and sizes["ep04"] > 10_000
    assert not (data / "logs" / "download" / "ep01.log").exists()
    assert not (data / "logs" / "extract_audio" / "ep05.log").exists()
    ep02_log = (data / "logs" / "download" / "ep02.log").read_text()
    assert "no media is downloaded" in ep02_log and "Declared size" not in ep02_log

    # Tokens and the corpus include them, by source.
    episodes = (data / "analysis" / "corpus" / "episodes.tsv").read_text().splitlines()
    header = episodes[0].split("\t")
    by_id = {line.split("\t")[header.index("id")]: line.split("\t") for line in episodes[1:]}
    assert set(by_id) == {"ep01", "ep02", "ep03", "ep04", "ep05", "ep06"}
    assert by_id["ep01"][header.index("source")] == "subtitles" and by_id["ep04"][header.index("source")] == "asr"
    coverage = (data / "analysis" / "corpus" / "coverage.tsv").read_text().splitlines()
    corpus_row = dict(zip(coverage[0].split("\t"), coverage[1].split("\t")))
    assert corpus_row["scope"] == "corpus" and corpus_row["subtitle_episodes"] == "3" and corpus_row["episodes"] == "6"
    frequency = (data / "analysis" / "corpus" / "lemma_frequency.tsv").read_text()
    assert "食べる" in frequency and "猫" in frequency

    # Status counts by source.
    cli = ["--configfile", str(tmp_path / "config.yaml")]
    snap = json.loads(scribeflow(tmp_path, "status", "--json", *cli))
    assert snap["sources"] == {"subtitles": 3, "asr": 3, "subtitles_planned": 0}
    assert "3 from subtitles, 3 by ASR" in scribeflow(tmp_path, "status", *cli)
    assert 'scribeflow_transcripts{source="subtitles"} 3.0' in scribeflow(tmp_path, "metrics", *cli)
    assert "3 transcripts from subtitles" in scribeflow(tmp_path, "plan", *cli)
    # The ledger agrees with the files: a transcript from a subtitle is a complete one.
    scribeflow(tmp_path, "check", "--full", *cli)


def test_policy_only_skips_the_unsubtitled_and_never_downloads_them_all(tmp_path, model_path):
    """Plans only (-n): which episodes would be downloaded under each policy."""
    (tmp_path / "ep01.srt").write_text(SRT_JA, encoding="utf-8")
    rows = [{"id": "ep01", "url": "http://127.0.0.1:9/ep01.mp4", "language": "ja", "subtitle": "ep01.srt"},
            {"id": "ep02", "url": "http://127.0.0.1:9/ep02.mp4", "language": "ja"}]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)

    def plan(**subtitles):
        config = workflow_config(tmp_path, catalogue, model_path, subtitles=subtitles)
        proc = run_snakemake(tmp_path, config, "-n", "--cores", "2")
        return proc.stdout + proc.stderr

    first = plan(policy="first")
    assert "ep02.media" in first and "ep01.media" not in first and "ep01.srt" in first
    # Before any run, scribeflow plan names the subtitle it has not judged (a dry run judged it, wrote nothing).
    estimate = scribeflow(tmp_path, "plan", "--configfile", str(tmp_path / "config.yaml"))
    assert "2 still to transcribe; 1 have a subtitle file not judged yet" in estimate, estimate
    only = plan(policy="only", sources=["column", "folder"])
    assert "ep02" not in only.split("Job stats")[1] and "ep01.srt" in only
    assert "1 episode(s) have no usable subtitle and subtitles.policy is only" in only
    never = plan(policy="never")
    assert "ep01.media" in never and "ep02.media" in never and "ep01.srt" not in never


@pytest.mark.slow
def test_a_sampled_share_of_subtitled_episodes_measures_the_asr(tmp_path, speech_dir, model_path):
    """subtitles.sample_share 1.0: every subtitled episode is also downloaded and transcribed
    (tiny.en, English speech), its CER against the subtitle recorded; the transcript stays the
    subtitle, and status shows the running CER."""
    from support.fixtures import SENTENCES

    subs = tmp_path / "subs"
    subs.mkdir()
    for n in (1, 2):
        (subs / f"ep{n:02d}.en.srt").write_text(f"1\n00:00:00,500 --> 00:00:04,000\n{SENTENCES[n - 1]}\n",
                                                encoding="utf-8")
    with MediaServer(speech_dir) as server:
        rows = [{"id": f"ep{n:02d}", "url": server.url(f"ep{n:02d}.mp4"), "language": "en"} for n in (1, 2)]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path,
                                 subtitles={"folder": str(subs), "sample_share": 1.0, "languages": ["en"]})
        run_snakemake(tmp_path, config, "--cores", "2")
        requested = [path for _, path, _ in server.requests]
    assert [p for p in requested if p.endswith("ep01.mp4")]  # sampled: its media downloaded after all
    data = tmp_path / "data"
    for n in (1, 2):
        t = json.loads((data / "transcripts" / f"ep{n:02d}.json").read_text())
        assert t["source"] == "subtitles" and t["text"] == SENTENCES[n - 1]
        q = json.loads((data / "quality" / f"ep{n:02d}.json").read_text())
        assert q["reference_chars"] > 20 and 0 <= q["cer"] < 0.3, q
        assert q["model"] == model_path and q["asr_text"]
    db = sqlite3.connect(data / "jobs.db")
    assert dict(db.execute("SELECT id, stage FROM jobs")) == {"ep01": "analyzed", "ep02": "analyzed"}
    cli = ["--configfile", str(tmp_path / "config.yaml")]
    snap = json.loads(scribeflow(tmp_path, "status", "--json", *cli))
    assert snap["sampled_asr"]["episodes"] == 2 and 0 <= snap["sampled_asr"]["cer"] < 0.3
    assert "ASR quality: CER" in scribeflow(tmp_path, "status", *cli)
    assert "scribeflow_sampled_asr_cer" in scribeflow(tmp_path, "metrics", *cli)
    assert not list((data / "audio").glob("*.wav")) and not list((tmp_path / "storage" / "videos").glob("*.media"))


# Japanese closed captions as broadcast and streaming write them.
CAPTIONS_JA = """1
00:00:01,000 --> 00:00:03,000
（健太）一昨日(おととい)は雨だった。

2
00:00:03,500 --> 00:00:05,000
［ドアの開く音］
≪誰か来たの？

3
00:00:05,500 --> 00:00:07,000
♪～さよならは言わないで～

4
00:00:07,500 --> 00:00:09,000
(美咲)明日も行こう。
"""


@pytest.mark.slow
def test_a_closed_caption_file_becomes_a_transcript_of_what_was_said(tmp_path, model_path):
    """Through the real workflow: the transcript's text is the dialogue only, the speakers
    are kept as `speaker`, the sound and the song are kept as segments of their kind, and
    what was taken out is counted."""
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "cc01.ja.srt").write_text(CAPTIONS_JA, encoding="utf-8")
    catalogue = write_catalogue(tmp_path / "episodes.csv",
                                [{"id": "cc01", "url": "http://127.0.0.1:9/cc01.mp4", "language": "ja"}])
    config = workflow_config(tmp_path, catalogue, model_path, subtitles={"folder": str(subs), "languages": ["ja"]})
    run_snakemake(tmp_path, config, "--cores", "2")
    t = json.loads((tmp_path / "data" / "transcripts" / "cc01.json").read_text())
    assert t["source"] == "subtitles" and t["text"] == "一昨日は雨だった。 誰か来たの？ 明日も行こう。"
    assert [(s["text"], s.get("kind"), s.get("speaker")) for s in t["segments"]] == [
        ("一昨日は雨だった。", None, "健太"), ("ドアの開く音", "sound", None), ("誰か来たの？", None, None),
        ("さよならは言わないで", "song", None), ("明日も行こう。", None, "美咲")]
    assert t["subtitle"]["cleaned"] == {"speakers": 2, "sounds": 1, "songs": 1, "readings": 1, "markers": 1}
