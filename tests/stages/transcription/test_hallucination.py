"""The hallucination guard on crafted segments: loops and silence-filling phrases."""

from scribeflow.stages.transcription.hallucination import Guard, normalise


def seg(start, text, words=None):
    s = {"start": float(start), "end": float(start) + 1.5, "text": text}
    if words is not None:
        s["words"] = words
    return s


def texts(segments):
    return [s["text"] for s in segments]


def test_silence_filling_phrases_are_dropped_and_counted():
    segments = [seg(0, "お前は誰だ？"), seg(2, "ご視聴ありがとうございました"), seg(4, "Thanks for watching!"),
                seg(6, "Subtitles by the Amara.org community"), seg(8, "字幕由Amara.org社区提供"),
                seg(10, "ありがとうございました。")]  # real dialogue: thanks, not "for watching"
    kept, report = Guard().apply(segments)
    assert texts(kept) == ["お前は誰だ？", "ありがとうございました。"]
    assert report["phrase"] == 4 and report["repetition"] == 0
    assert [f["start"] for f in report["segments"]] == [2, 4, 6, 8]
    assert all(f["reason"] == "phrase" for f in report["segments"])


def test_flag_keeps_the_segments_and_marks_them():
    segments = [seg(0, "Hello there."), seg(2, "Thank you for watching.")]
    kept, report = Guard(action="flag").apply(segments)
    assert texts(kept) == texts(segments)
    assert "hallucination" not in kept[0] and kept[1]["hallucination"] == "phrase"
    assert report == {"action": "flag", "repetition": 0, "phrase": 1,
                      "segments": [{"start": 2.0, "end": 3.5, "reason": "phrase", "text": "Thank you for watching."}]}
    assert "hallucination" not in segments[1]  # the input is not changed


def test_a_looping_segment_is_cut_back_to_its_first_occurrence():
    loop = [seg(10 + i, "I'm sorry.") for i in range(8)]
    segments = [seg(0, "Where were you?"), *loop, seg(30, "Never mind.")]
    kept, report = Guard(max_repeats=4).apply(segments)
    assert texts(kept) == ["Where were you?", "I'm sorry.", "Never mind."]
    assert report["repetition"] == 7 and report["phrase"] == 0


def test_a_few_identical_segments_in_a_row_are_speech_not_a_loop():
    segments = [seg(0, "Yes."), seg(1, "yes"), seg(2, "Yes!"), seg(3, "Yes."), seg(4, "No.")]
    kept, report = Guard(max_repeats=4).apply(segments)
    assert texts(kept) == texts(segments) and report["repetition"] == 0


def test_a_phrase_looping_inside_a_segment_is_collapsed_with_its_words():
    unit = "はい、"
    words = [{"start": 0.2 * i, "end": 0.2 * i + 0.2, "word": unit, "probability": 0.5} for i in range(30)]
    words.append({"start": 6.0, "end": 6.5, "word": "行こう", "probability": 0.9})
    text = unit * 30 + "行こう"
    kept, report = Guard().apply([seg(0, text, words)])
    assert texts(kept) == ["はい、行こう"]
    assert [w["word"] for w in kept[0]["words"]] == [unit, "行こう"]
    assert report["repetition"] == 1 and report["segments"][0]["text"] == text[:200]

    english = "we will " + "go on and on " * 12 + "forever"
    kept, _ = Guard().apply([seg(0, english)])
    assert kept[0]["text"] == "we will go on and on forever"


def test_ordinary_repetition_is_left_alone():
    ordinary = ["ha ha ha ha ha", "はははははは", "Nooooo!", "It cost 1000000000000000000000 yen.",
                "no, no, no, no, no", "...................."]
    kept, report = Guard(max_repeats=4).apply([seg(i, t) for i, t in enumerate(ordinary)])
    assert texts(kept) == ordinary and report["repetition"] == 0


def test_extra_phrases_from_the_config_and_off():
    tc = {"hallucinations": {"action": "drop", "max_repeats": 4, "phrases": ["Translated by Fansub Team"]}}
    segments = [seg(0, "translated by fansub team!!"), seg(2, "Run!")]
    kept, report = Guard.from_config(tc).apply(segments)
    assert texts(kept) == ["Run!"] and report["phrase"] == 1

    loop = [seg(i, "again") for i in range(10)] + [seg(20, "Thanks for watching")]
    kept, report = Guard(action="off").apply(loop)
    assert texts(kept) == texts(loop) and report["repetition"] == report["phrase"] == 0


def test_normalise_ignores_case_width_punctuation_and_spaces():
    assert normalise("Ｔhanks  for Watching!!") == normalise("thanks for watching") == "thanksforwatching"
    assert normalise("ご視聴、ありがとうございました。") == "ご視聴ありがとうございました"
