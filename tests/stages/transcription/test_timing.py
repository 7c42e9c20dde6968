"""Times a reader can trust: on Japanese episodes shaped like anime (tests/support/japanese.py:
an opening, dialogue over background music with sound effects, a music-only scene change, an
ending song), every segment starts and ends within 1.0 s of the speech it holds, and no segment
joins a song to dialogue. faster-whisper's own vad_filter stamped the first line from 0:00
(the VAD's false 0.6 s of "speech" at the opening's first note, decoded in one window with
the line 31 s later); the speech is now decoded in clips no long pause crosses, each segment
stamped by its aligned words (decode.py, coverage.clips)."""

from __future__ import annotations

import pytest
from support.japanese import japanese_episode
from support.models import packaged_model

from scribeflow.config.settings import validate
from scribeflow.stages.transcription import coverage
from scribeflow.stages.transcription.decode import CLIPS, VAD_JOINED, decode_options, run_model

TOLERANCE_S = 1.0


@pytest.fixture(scope="module")
def base():
    from faster_whisper import WhisperModel

    return WhisperModel(str(packaged_model("base")), device="cpu", compute_type="int8", cpu_threads=2)


def settings(**changes) -> dict:
    """The configuration's transcribe settings (schema defaults) with the base model."""
    return validate({"transcribe": {"model": "base", "device": "cpu", **changes}}).transcribe.as_dict()


def held(segment: dict, lines) -> list:
    """The lines (dialogue and lyrics) whose voice the segment's time overlaps."""
    return [ln for ln in lines if ln.start < segment["end"] and segment["start"] < ln.end]


def mistimed(segments: list[dict], episode) -> list[str]:
    """Each segment that starts more than TOLERANCE_S before the first line it holds or ends
    more than TOLERANCE_S after the last, holds a song's lyric and a dialogue line together,
    or holds no line while lasting over 2 s (text stamped across music)."""
    bad = []
    for s in segments:
        lines = held(s, episode.lines)
        where = f"{s['start']:.2f}-{s['end']:.2f} {s['text']!r}"
        if not lines:
            if s["end"] - s["start"] > 2.0:
                bad.append(f"{where}: over no line")
            continue
        if s["start"] < lines[0].start - TOLERANCE_S or s["end"] > lines[-1].end + TOLERANCE_S:
            bad.append(f"{where}: its lines are {lines[0].start:.2f}-{lines[-1].end:.2f}")
        if len({ln.kind for ln in lines}) > 1:
            bad.append(f"{where}: a song joined to dialogue")
    return bad


@pytest.mark.slow
def test_a_line_after_an_instrumental_opening_is_stamped_where_it_is_said(base):
    episode = japanese_episode(1, opening="instrumental")
    first = episode.dialogue[0]
    assert first.start > 30  # the opening's 30 s of music come first

    raw = run_model(base, episode.wav, decode_options(settings(), "ja"))
    segments = raw["segments"]
    assert mistimed(segments, episode) == []
    opening = [s for s in segments if s["start"] < first.start - TOLERANCE_S and s["end"] > 2.0]
    assert opening == []  # nothing stamped across the opening
    heard = [s for s in segments if held(s, [first])]
    assert heard and abs(heard[0]["start"] - first.start) <= TOLERANCE_S
    # Every dialogue line is heard by some segment (none lost to the clips).
    assert all(held_by for held_by in ([s for s in segments if held(s, [ln])] for ln in episode.dialogue))
    # The transcript says how its times were made.
    timing = raw["speech"]["timing"]
    assert timing["method"] == CLIPS and timing["max_gap_s"] == coverage.MAX_GAP_S and timing["clips"] >= 3
    assert "words" not in segments[0]  # aligned to stamp the segments, not kept unless asked for

    # faster-whisper's own VAD joining, for the record: the first line stamped from the opening.
    joined = run_model(base, episode.wav, {**decode_options(settings(), "ja"), "timing": {"method": VAD_JOINED}})
    assert joined["speech"]["timing"]["method"] == VAD_JOINED
    assert any(s["start"] < first.start - 10 and held(s, [first]) for s in joined["segments"])


@pytest.mark.slow
def test_an_opening_and_ending_song_stay_apart_from_the_dialogue(base):
    episode = japanese_episode(2)
    raw = run_model(base, episode.wav, decode_options(settings(word_timestamps=True), "ja"))
    segments = raw["segments"]
    assert mistimed(segments, episode) == []
    lyrics = [s for s in segments if held(s, episode.lyrics)]
    assert len(lyrics) >= 3  # the songs are transcribed (their own segments), not dropped
    # Asked for, the words are kept, and lie inside their segment.
    assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for s in segments for w in s["words"])


def test_speech_is_grouped_into_clips_no_long_pause_crosses():
    speech = [(0.0, 0.6), (31.4, 34.0), (35.0, 39.0), (41.0, 46.9), (55.7, 57.9)]
    assert coverage.clips(speech, max_gap=3.0, preroll=1.0) == [(0.0, 0.6), (30.4, 46.9), (54.7, 57.9)]
    # The preroll never reaches back into the previous clip.
    assert coverage.clips([(0.0, 5.0), (5.5 + 3.1, 9.0)], max_gap=3.0, preroll=1.0) == [(0.0, 5.0), (7.6, 9.0)]
    assert coverage.clips([(0.0, 5.0), (8.2, 9.0)], max_gap=3.0, preroll=4.0) == [(0.0, 5.0), (5.0, 9.0)]
    # The batched pipeline's 30-s limit per clip starts a new one.
    dense = [(float(t), t + 4.0) for t in range(0, 60, 5)]
    found = coverage.clips(dense, max_gap=3.0, max_seconds=30.0, preroll=1.0)
    assert found == [(0.0, 29.0), (29.0, 59.0)]  # the second's preroll: 1 s before its speech at 30 s
    assert coverage.clips([]) == []


def test_a_segment_is_fitted_onto_the_speech_it_holds():
    speech = [(10.0, 12.0), (13.0, 15.0), (40.0, 42.0)]
    segments = [{"start": 8.0, "end": 15.8, "text": "a", "words": [{"start": 8.0, "end": 9.0, "word": "a"}]},
                {"start": 39.5, "end": 41.0, "text": "b"},
                {"start": 20.0, "end": 22.0, "text": "c"},  # over no speech: kept as it is
                {"start": 11.0, "end": 41.0, "text": "d"}]  # across a 25-s pause: cannot tell, kept
    fitted, moved = coverage.fit([dict(s) for s in segments], speech, max_gap=3.0)
    assert [(s["start"], s["end"]) for s in fitted] == [(10.0, 15.0), (40.0, 41.0), (20.0, 22.0), (11.0, 41.0)]
    assert fitted[0]["words"][0] == {"start": 10.0, "end": 10.0, "word": "a"} and moved == 2
    # A clip's preroll is speech a segment may start in: the VAD hears a line's first word late.
    assert coverage.widened(speech, [(9.0, 15.0), (39.0, 42.0)]) == [(9.0, 12.0), (13.0, 15.0), (39.0, 42.0)]
    assert coverage.fit([{"start": 9.2, "end": 11.0, "text": "e"}], coverage.widened(speech, [(9.0, 15.0)]))[1] == 0


@pytest.mark.slow
def test_faster_whispers_own_language_detection_hears_the_speech_not_the_first_clip(base):
    """language_detection.windows: 0 leaves the language to faster-whisper, which would read
    it from the first clip alone (here the opening's first note): it hears the speech joined."""
    episode = japanese_episode(1, opening="instrumental")
    raw = run_model(base, episode.wav, decode_options(settings(language_detection={"windows": 0}), None))
    assert raw["language"] == "ja" and raw["language_detection"]["method"] == "faster-whisper"
    assert raw["language_probability"] > 0.5 and raw["speech"]["timing"]["clips"] >= 3


def test_a_scrap_of_music_alone_in_its_clip_is_dropped_when_whisper_doubts_it():
    from types import SimpleNamespace as Seg

    found = [(0.0, 1.36), (30.4, 46.9), (54.7, 57.9)]
    speech = [(0.0, 1.36), (31.4, 46.9), (55.7, 57.9)]
    decoded = [Seg(start=0.0, end=1.34, text="うううう", no_speech_prob=0.83),   # the opening's first note
               Seg(start=31.5, end=34.3, text="おはよう", no_speech_prob=0.9),   # in a long clip: kept
               Seg(start=55.8, end=57.4, text="はい", no_speech_prob=0.1)]       # short, but heard as speech
    assert coverage.scraps(decoded, found, speech, 0.6) == {0}
    assert coverage.scraps(decoded, found, speech, None) == set()  # no_speech_threshold off: nothing dropped
    decoded[0].no_speech_prob = 0.3
    assert coverage.scraps(decoded, found, speech, 0.6) == set()


def test_speech_to_the_very_last_sample_is_decoded_in_batches(model_path, tmp_path):
    """A clip that runs to the audio's end is rounded to the millisecond: it never asks
    faster-whisper's batched pipeline for more than the audio holds (which it refuses with
    'non-negative timestamp expected')."""
    import subprocess

    from faster_whisper import WhisperModel, decode_audio
    from support.fixtures import SENTENCES, require_tools

    require_tools()
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(tmp_path / "en.wav"), " ".join(SENTENCES[:2])],
                   check=True)
    audio = decode_audio(str(tmp_path / "en.wav"))
    voiced = abs(audio) > 0.01
    audio = audio[: len(audio) - int(voiced[::-1].argmax()) - 4000]  # cut inside the last words
    audio = audio[: len(audio) - len(audio) % 16 - 1]  # ... at a sample the millisecond rounds up past
    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    out = run_model(model, audio, {"language": "en", "vad_filter": True, "beam_size": 1, "batch_size": 4,
                                   "temperature": 0.0})
    assert out["segments"] and out["segments"][-1]["end"] <= len(audio) / 16000 + 0.001
