"""Subtitle files reduced to their dialogue: real pysubs2 on ASS, SRT and VTT files as
anime subtitle sets write them."""

import pytest

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
        {"start": 1.0, "end": 3.5, "text": "今日はいい天気だね"},  # tags gone, \N joined without a space
        # the sign (\pos), the karaoke line (\k), the OP style, the comment, the Sign style and the
        # drawing (\p1) are gone; the same line on two layers and repeated at once is one segment
        {"start": 11.0, "end": 14.2, "text": "そうだね。 OK、行こう！"},
        {"start": 30.0, "end": 31.5, "text": "I'll go with you"},
    ]
    assert subtitles.covered_seconds(segments) == pytest.approx(2.5 + 3.2 + 1.5)


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
