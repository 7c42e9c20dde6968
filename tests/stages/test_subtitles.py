"""Subtitle files reduced to their dialogue: real pysubs2 on ASS, SRT and VTT files as
anime subtitle sets write them."""

import pytest

from scribeflow.config.layout import Layout
from scribeflow.stages import subtitles

ASS = r"""[Script Info]
ScriptType: v4.00+
PlayResX: 1920
PlayResY: 1080

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,A-OTF,60,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,40,1
Style: OP_Romaji,A-OTF,50,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,8,10,10,40,1
Style: Sign,A-OTF,50,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,8,10,10,40,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:01.00,0:00:03.50,Default,Taro,0,0,0,,{\i1}今日は{\i0}\Nいい天気だね
Dialogue: 0,0:00:02.00,0:00:04.00,Default,,0,0,0,,{\pos(960,200)\fs80}駅前商店街
Dialogue: 0,0:00:05.00,0:00:08.00,Default,,0,0,0,,{\k20}ka{\k30}ze{\k25}ni {\k40}no{\k35}tte
Dialogue: 0,0:00:05.00,0:00:08.00,OP_Romaji,,0,0,0,,kaze ni notte
Comment: 0,0:00:09.00,0:00:10.00,Default,,0,0,0,,TL note: 商店街 is a shopping street
Dialogue: 0,0:00:09.00,0:00:10.50,Sign,,0,0,0,,第一話
Dialogue: 0,0:00:11.00,0:00:13.00,Default,Hanako,0,0,0,,そうだね。\NOK、行こう！
Dialogue: 1,0:00:11.00,0:00:13.00,Default,Hanako,0,0,0,,そうだね。\NOK、行こう！
Dialogue: 0,0:00:13.00,0:00:14.20,Default,,0,0,0,,そうだね。\NOK、行こう！
Dialogue: 0,0:00:20.00,0:00:22.00,Default,,0,0,0,,{\p1}m 0 0 l 100 0 100 100 0 100{\p0}
Dialogue: 0,0:00:30.00,0:00:31.50,Default,,0,0,0,,I'll go\Nwith you
"""


def test_an_ass_file_keeps_its_dialogue_only_with_its_times(tmp_path):
    path = tmp_path / "ep01.ja.ass"
    path.write_text(ASS, encoding="utf-8")
    segments = subtitles.dialogue(subtitles.load(path))
    assert segments == [
        # tags gone, \N joined without a space; the ASS Name is the speaker
        {"start": 1.0, "end": 3.5, "text": "今日はいい天気だね", "speaker": "Taro"},
        # the sign (\pos), the karaoke line (\k), the OP style, the comment, the Sign style and the
        # drawing (\p1) are gone; the same line on two layers and repeated at once is one segment
        {"start": 11.0, "end": 14.2, "text": "そうだね。 OK、行こう！", "speaker": "Hanako"},
        {"start": 30.0, "end": 31.5, "text": "I'll go with you"},
    ]
    assert subtitles.covered_seconds(segments) == pytest.approx(2.5 + 3.2 + 1.5)
    # What was sung is kept, marked: the karaoke line and the line of its romaji style.
    cleaned = subtitles.Cleaned()
    heard = subtitles.segments(subtitles.load(path), cleaned=cleaned)
    assert [(s["start"], s["text"], s["kind"]) for s in heard if s.get("kind")] == [
        (5.0, "kazeni notte", "song"), (5.0, "kaze ni notte", "song")]
    assert cleaned.songs == 2


# A Japanese closed-caption file as broadcast and streaming captions write it: speaker
# labels, sound descriptions, song lines, reading glosses and markers, full- and half-width.
CLOSED_CAPTIONS = """1
00:00:01,000 --> 00:00:03,000
（健太）一昨日(おととい)は雨だった。

2
00:00:03,500 --> 00:00:05,000
［ドアの開く音］

3
00:00:05,500 --> 00:00:07,000
(笑い声)
≪誰か来たの？

4
00:00:07,500 --> 00:00:09,000
♪～さよならは言わないで～

5
00:00:09,500 --> 00:00:11,000
〈美咲〉
－明日（あした）も行こう。

6
00:00:11,500 --> 00:00:13,000
-そうだね
-うん

7
00:00:13,500 --> 00:00:15,000
～翼を広げて～

8
00:00:15,500 --> 00:00:17,000
(健太)[笑い] じゃあね。

9
00:00:17,500 --> 00:00:19,000
＜次のニュースです＞
"""


def test_closed_captions_are_reduced_to_what_was_said(tmp_path):
    (tmp_path / "subs").mkdir()
    path = tmp_path / "subs" / "ep01.ja.srt"
    path.write_text(CLOSED_CAPTIONS, encoding="utf-8")
    verdict = subtitles.judge([("folder", path)], _settings(tmp_path), "ja", None)
    t = subtitles.transcript(verdict, "ep01")
    # The text is the dialogue only: no label, sound, song, reading or marker is "said".
    assert t["text"] == "一昨日は雨だった。 誰か来たの？ 明日も行こう。 そうだね うん じゃあね。 次のニュースです"
    for word in ("健太", "美咲", "笑い", "ドア", "おととい", "あした", "さよなら", "翼", "≪", "－", "＜"):
        assert word not in t["text"], word
    said = [(s["text"], s.get("speaker")) for s in t["segments"] if "kind" not in s]
    assert said == [("一昨日は雨だった。", "健太"), ("誰か来たの？", None), ("明日も行こう。", "美咲"),
                    ("そうだね", None), ("うん", None), ("じゃあね。", "健太"), ("次のニュースです", None)]
    # Sounds and songs stay in the transcript, with their times and their kind.
    assert [(s["start"], s["text"], s["kind"]) for s in t["segments"] if "kind" in s] == [
        (3.5, "ドアの開く音", "sound"), (5.5, "笑い声", "sound"), (7.5, "さよならは言わないで", "song"),
        (13.5, "翼を広げて", "song"), (15.5, "笑い", "sound")]
    # What was taken out, countable per file.
    assert t["subtitle"]["cleaned"] == verdict["cleaned"] == {"speakers": 3, "sounds": 3, "songs": 2, "readings": 2,
                                                              "markers": 5}


def test_english_captions_sounds_and_speakers_follow_their_own_conventions():
    cleaned = subtitles.Cleaned()
    parts = [subtitles.caption_lines(lines, None, cleaned) for lines in
             (["(sighs) Okay."], ["JOHN: Hello there."], ["[door opens]", "- Who is it?", "- Me."])]
    assert parts == [[{"kind": "sound", "lines": ["sighs"]}, {"lines": ["Okay."]}],
                     [{"speaker": "JOHN", "lines": ["Hello there."]}],
                     [{"kind": "sound", "lines": ["door opens"]}, {"lines": ["Who is it?"]}, {"lines": ["Me."]}]]
    assert (cleaned.speakers, cleaned.sounds, cleaned.markers) == (1, 2, 2)


def test_a_name_is_told_from_a_description_of_a_sound():
    """Names hold the kanji of sounds too (琴音, 鳴海); descriptions have kana or are known nouns."""
    said = {label: subtitles.caption_lines([f"（{label}）行こう"], None, subtitles.Cleaned())[0]
            for label in ("琴音", "鳴海", "アスカ", "小声で", "拍手", "着信音", "ため息")}
    assert {k for k, part in said.items() if "speaker" in part} == {"琴音", "鳴海", "アスカ"}
    assert {k for k, part in said.items() if part.get("kind") == "sound"} == {"小声で", "拍手", "着信音", "ため息"}


def test_webvtt_voices_and_ruby_are_speakers_and_readings(tmp_path):
    path = tmp_path / "ep01.ja.vtt"
    path.write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.500\n<v 健太>猫が走っていた。</v>\n\n"
                    "00:00:03.000 --> 00:00:04.000\n<c.yellow>魚</c>の<ruby>漢字<rt>かんじ</rt></ruby>を書く\n",
                    encoding="utf-8")
    cleaned = subtitles.Cleaned()
    assert subtitles.segments(subtitles.load(path), cleaned=cleaned) == [
        {"start": 1.0, "end": 2.5, "text": "猫が走っていた。", "speaker": "健太"},
        {"start": 3.0, "end": 4.0, "text": "魚の漢字を書く"}]
    assert (cleaned.speakers, cleaned.readings) == (1, 1)


def test_a_file_of_songs_and_sounds_alone_is_no_transcript(tmp_path):
    path = tmp_path / "ep09.ja.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:03,000\n♪～\n\n2\n00:00:04,000 --> 00:00:05,000\n［拍手］\n",
                    encoding="utf-8")
    segments, chosen, refused = subtitles.choose([path], "ja")
    assert segments is None and "ep09.ja.srt: no dialogue" in refused[0]


def test_srt_and_vtt_in_japanese_encodings_are_read(tmp_path):
    srt = tmp_path / "a.srt"
    srt.write_bytes("1\n00:00:01,000 --> 00:00:02,500\n猫が走っていた。\n\n2\n00:00:03,000 --> 00:00:04,000\n"
                    "<i>魚を</i>\n食べた。\n\n".encode("cp932"))
    vtt = tmp_path / "a.vtt"
    vtt.write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.500\n猫が走っていた。\n", encoding="utf-8")
    assert subtitles.dialogue(subtitles.load(srt)) == [{"start": 1.0, "end": 2.5, "text": "猫が走っていた。"},
                                                       {"start": 3.0, "end": 4.0, "text": "魚を食べた。"}]
    assert subtitles.dialogue(subtitles.load(vtt)) == [{"start": 1.0, "end": 2.5, "text": "猫が走っていた。"}]


def test_a_file_that_is_no_subtitle_is_refused_by_name(tmp_path):
    bad = tmp_path / "ep02.ass"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    with pytest.raises(subtitles.SubtitleError, match="ep02.ass"):
        subtitles.dialogue(subtitles.load(bad))


def test_the_script_tells_a_translation_from_a_transcript():
    assert subtitles.script_share("今日はいい天気だね。そうだね、行こう！", "ja") == 1.0
    assert subtitles.script_share("Nice weather today. Yeah, let's go!", "ja") == 0.0
    assert subtitles.script_share("Nice weather today.", "en") == 1.0
    assert subtitles.script_share("OK、行こう！", "ja-JP") == pytest.approx(3 / 5)


VTT_JA = "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n今日はいい天気だね。\n\n00:00:04.000 --> 00:00:06.000\nそうだね、行こう！\n"
VTT_EN = "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\nNice weather today.\n\n00:00:04.000 --> 00:00:06.000\nYeah, let's go!\n"


def test_the_pages_tracks_are_fetched_without_the_media_and_a_translation_is_refused(tmp_path):
    from support.server import MediaServer

    site = tmp_path / "site"
    site.mkdir()
    (site / "video.mp4").write_bytes(b"\x00" * 100_000)
    (site / "ep.ja.vtt").write_text(VTT_JA, encoding="utf-8")
    (site / "ep.en.vtt").write_text(VTT_EN, encoding="utf-8")
    (site / "watch.html").write_text(
        '<!DOCTYPE html><html><head><title>Episode 1</title></head><body><video controls src="video.mp4">'
        '<track kind="subtitles" srclang="ja" src="ep.ja.vtt"><track kind="subtitles" srclang="en" src="ep.en.vtt">'
        "</video></body></html>", encoding="utf-8")
    with MediaServer(site) as server:
        found = subtitles.page_subtitles(server.url("watch.html"), "ep01", ["ja", "ja-JP", "jpn"], tmp_path / "subs")
        english = subtitles.page_subtitles(server.url("watch.html"), "ep02", ["en"], tmp_path / "subs")
        assert server.requests and not [p for _, p, _ in server.requests if p.endswith("video.mp4")]
    assert [p.name for p in found] == ["ep01.ja.vtt"] and [p.name for p in english] == ["ep02.en.vtt"]
    segments, path, refused = subtitles.choose(found, "ja", duration=8)
    assert path == found[0] and refused == [] and [s["text"] for s in segments] == ["今日はいい天気だね。",
                                                                                  "そうだね、行こう！"]
    # A Japanese episode's English track is a translation: refused, the episode is transcribed.
    segments, path, refused = subtitles.choose(english, "ja", duration=8)
    assert segments is None and path is None and "ep02.en.vtt: 0% of its letters are in ja's script" in refused[0]
    # Dialogue over 5 s of a 24-min episode is no transcript of it either.
    assert subtitles.choose(found, "ja", duration=1440)[0] is None


def _settings(tmp_path, download=None, **subtitles):
    from scribeflow.config.settings import validate

    return validate({"data_dir": str(tmp_path / "data"), "subtitles": {"folder": str(tmp_path / "subs"), **subtitles},
                     "download": download or {}})


def test_the_finder_takes_the_folders_files_by_language_and_judges_each_once(tmp_path):
    from scribeflow.config.layout import Layout

    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ep01.en.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nHello there.\n", encoding="utf-8")
    (subs / "ep01.ja.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\n猫が走った。\n", encoding="utf-8")
    (subs / "ep02.ass").write_text(ASS, encoding="utf-8")
    settings = _settings(tmp_path)
    rows = {("ep01", "language"): "ja", ("ep02", "language"): "ja", ("ep02", "duration_s"): 1440.0}
    row = lambda e, c: rows.get((e, c))  # noqa: E731
    finder = subtitles.Finder(settings, Layout.from_config(settings), row)
    # ep01: the Japanese file (the English one is not in the languages asked for); ep02's
    # dialogue spans 30 s of 24 min: refused, with its reason; ep03 has none.
    assert finder.subtitled("ep01") and not finder.subtitled("ep02") and finder.verdict("ep03") is None
    verdict = finder.verdict("ep01")
    assert verdict["origin"] == "folder" and verdict["file"].endswith("ep01.ja.srt")
    assert "spans 30 s of the episode's 1440 s" in subtitles.read_verdict(
        Layout.from_config(settings).subtitle_verdict("ep02"))["refused"][0]
    assert finder.judged == 2
    # A new process: the verdicts are read, not judged again, until a file changes.
    again = subtitles.Finder(settings, Layout.from_config(settings), row)
    assert again.subtitled("ep01") and not again.subtitled("ep02") and again.judged == 0
    (subs / "ep01.ja.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nThe English version.\n", encoding="utf-8")
    third = subtitles.Finder(settings, Layout.from_config(settings), row)
    assert not third.subtitled("ep01") and third.judged == 1
    # A cluster job reads what was found and judges nothing itself.
    assert not subtitles.Finder(settings, Layout.from_config(settings), row, judge=False).subtitled("ep01")


def test_a_subtitle_transcript_has_the_asr_transcripts_shape():
    verdict = {"usable": True, "language": "ja", "origin": "page", "file": "http://x/watch#ep.ja.vtt",
               "segments": [{"start": 1.0, "end": 2.5, "text": "猫が走った。"}], "refused": ["x: why"]}
    t = subtitles.transcript(verdict, "ep01", duration=1440.0)
    assert t["source"] == "subtitles" and t["duration"] == 1440.0 and t["text"] == "猫が走った。"
    assert t["segments"] == [{"id": 0, "start": 1.0, "end": 2.5, "text": "猫が走った。"}]
    assert t["subtitle"] == {"origin": "page", "file": "http://x/watch#ep.ja.vtt", "refused": ["x: why"],
                             "cleaned": {}}


def test_the_finder_says_how_far_its_judging_has_got(tmp_path):
    from scribeflow.config.layout import Layout

    subs = tmp_path / "subs"
    subs.mkdir()
    for n in range(5):
        (subs / f"e{n}.ja.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\n猫が走った。\n", encoding="utf-8")
    settings = _settings(tmp_path)
    told = []
    finder = subtitles.Finder(settings, Layout.from_config(settings), lambda e, c: "ja" if c == "language" else None,
                              progress=told.append)
    finder.PROGRESS_EVERY = 2
    assert all(finder.subtitled(f"e{n}") for n in range(5)) and told == [2, 4]


def _extracted(url: str):
    from yt_dlp import YoutubeDL

    ydl = YoutubeDL({"quiet": True, "no_warnings": True, "socket_timeout": 2})
    return ydl, ydl.extract_info(url, download=False)


def test_a_track_or_url_that_cannot_be_fetched_falls_back_with_its_reason(tmp_path):
    """404, 403 and a timeout: the next track, the next source, or the ASR; never an error."""
    from support.server import MediaServer

    site = tmp_path / "site"
    site.mkdir()
    (site / "video.mp4").write_bytes(b"\x00" * 1000)
    (site / "ep.ja.vtt").write_text(VTT_JA, encoding="utf-8")
    (site / "gone.html").write_text(  # its ja track is gone; its ja-JP one is there
        '<!DOCTYPE html><html><body><video src="video.mp4"><track kind="subtitles" srclang="ja" src="missing.vtt">'
        '<track kind="subtitles" srclang="ja-JP" src="ep.ja.vtt"></video></body></html>', encoding="utf-8")
    (site / "locked.html").write_text(  # its only track answers 403 (a region lock)
        '<!DOCTYPE html><html><body><video src="video.mp4"><track kind="subtitles" srclang="ja" src="locked.vtt">'
        "</video></body></html>", encoding="utf-8")
    (site / "locked.vtt").write_text(VTT_JA, encoding="utf-8")
    settings = _settings(tmp_path, download={"socket_timeout": 1}, languages=["ja", "ja-JP"])
    with MediaServer(site, faults={"/locked.vtt": ["403"] * 5, "/slow.srt": ["hang"] * 5}) as server:
        found = subtitles.UrlSearch(settings, "ep01", None, "ja", None)
        assert found.from_page(*_extracted(server.url("gone.html")))["usable"]
        locked = subtitles.UrlSearch(settings, "ep02", None, "ja", None)
        assert locked.from_page(*_extracted(server.url("locked.html"))) is None
        column = subtitles.UrlSearch(settings, "ep03", server.url("nothing.srt"), "ja", None)
        assert column.from_column() is None
        slow = subtitles.UrlSearch(settings, "ep04", server.url("slow.srt"), "ja", None)
        assert slow.from_column() is None
        server.release()
    verdict = {e: subtitles.read_verdict(Layout.from_config(settings).subtitle_verdict(e))
               for e in ("ep01", "ep02", "ep03", "ep04")}
    # The next track: ja-JP's, with why ja's was not taken.
    assert verdict["ep01"]["file"].endswith("#ep01.ja-JP.vtt") and verdict["ep01"]["segments"]
    assert "the page's ja track" in verdict["ep01"]["refused"][0] and "404" in verdict["ep01"]["refused"][0]
    # Nothing usable: the episode goes to the ASR, the reason in its verdict.
    assert not verdict["ep02"]["usable"] and "403" in verdict["ep02"]["refused"][0]
    assert not verdict["ep03"]["usable"] and "nothing.srt: could not be fetched" in verdict["ep03"]["refused"][0]
    assert "404" in verdict["ep03"]["refused"][0]
    assert not verdict["ep04"]["usable"] and "slow.srt: could not be fetched" in verdict["ep04"]["refused"][0]
