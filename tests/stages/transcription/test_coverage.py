"""No speech left behind: uncovered speech is found, decoded again, and the transcript says
how much of the speech it covers. Real tiny.en on real speech (espeak-ng)."""

import subprocess

import numpy as np
import pytest
from conftest import recall
from support.fixtures import SENTENCES, require_tools

from scribeflow.stages.media import SAMPLE_RATE
from scribeflow.stages.transcription import coverage
from scribeflow.stages.transcription.decode import run_model


def test_uncovered_speech_is_what_no_segment_covers():
    speech = [(1.0, 5.0), (6.0, 20.0), (30.0, 31.0)]
    segments = [{"start": 0.5, "end": 3.0}, {"start": 6.5, "end": 9.0}, {"start": 12.0, "end": 12.0},
                {"start": 15.0, "end": 40.0}]
    assert coverage.uncovered(speech, segments, slack=0) == [(3.0, 5.0), (6.0, 6.5), (9.0, 15.0)]
    # Speech within half a second of a segment (the VAD's padding, a word-timed segment's edge) is covered.
    assert coverage.uncovered(speech, segments) == [(3.5, 5.0), (9.5, 14.5)]
    assert coverage.joined([(3.0, 5.0), (6.0, 6.5), (9.0, 15.0)]) == [(3.0, 6.5), (9.0, 15.0)]
    report = coverage.report(speech, segments, [])
    assert report["speech_seconds"] == 19.0 and report["covered_seconds"] == 19.0 - 6.5
    assert report["coverage"] == pytest.approx(12.5 / 19, abs=1e-4)
    assert coverage.report([], [], [])["coverage"] == 1.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    require_tools()
    tmp = tmp_path_factory.mktemp("coverage")
    wav = tmp / "clip.wav"
    text = " ".join(SENTENCES[:6])
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    from faster_whisper import decode_audio

    return decode_audio(str(wav)), text  # 16 kHz float32, as run_model reads a WAV


def test_a_window_decoded_as_silence_is_found_and_decoded_again(clip, model_path):
    """Thresholds that make faster-whisper skip every window as silent (a no-speech
    probability over 0 with a log probability under 0): the first pass says nothing; the
    speech the VAD finds is decoded again, and the transcript says so."""
    from faster_whisper import WhisperModel

    audio, text = clip
    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    skipping = {"language": "en", "vad_filter": True, "beam_size": 1, "temperature": 0.0,
                "no_speech_threshold": 0.0, "log_prob_threshold": 0.0}
    raw = run_model(model, audio, skipping)
    speech = raw["speech"]
    assert speech["refilled"] and all(r["segments"] >= 1 for r in speech["refilled"])
    assert speech["coverage"] > 0.9 and speech["speech_seconds"] > 10
    assert recall(text, " ".join(s["text"] for s in raw["segments"])) >= 0.7
    # The same clip decoded normally: nothing to refill, the same coverage measure.
    normal = run_model(model, audio, {"language": "en", "vad_filter": True, "beam_size": 1, "temperature": 0.0})
    assert normal["speech"]["refilled"] == [] and normal["speech"]["coverage"] > 0.9
    assert normal["speech"]["speech_seconds"] == speech["speech_seconds"]


def test_silence_is_not_speech_to_refill(model_path):
    from faster_whisper import WhisperModel

    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    raw = run_model(model, np.zeros(20 * SAMPLE_RATE, np.float32), {"language": "en", "vad_filter": True})
    assert raw["segments"] == [] and raw["speech"] == {"speech_seconds": 0.0, "covered_seconds": 0.0,
                                                       "coverage": 1.0, "refilled": [], "repaired": [],
                                                       "timing": {"method": "vad-clips", "max_gap_s": 3.0,
                                                                  "preroll_s": 1.0, "clips": 0, "fitted": 0}}


def test_the_same_audio_gives_the_same_transcript_twice(clip, model_path):
    """Thresholds that fail every window (compression ratio, log probability): with
    Whisper's temperature ladder each would be sampled again (three decodes gave three
    different transcripts); with the default temperature ([0.0]) each is repaired without
    sampling, and two decodes of the same audio in one process, where CTranslate2's random
    generator has moved on, are byte-identical, repair and refill included."""
    import json

    from faster_whisper import WhisperModel

    from scribeflow.config.settings import validate
    from scribeflow.stages.transcription.decode import decode_options

    audio, _ = clip
    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    options = decode_options(validate({"transcribe": {"model": model_path}}).transcribe.as_dict(), "en")
    assert options["temperature"] == [0.0]
    failing = {**options, "compression_ratio_threshold": 0.5, "log_prob_threshold": 0.0, "beam_size": 1}
    runs = [json.dumps(run_model(model, audio, failing), sort_keys=True) for _ in range(2)]
    assert runs[0] == runs[1]
    raw = json.loads(runs[0])
    assert raw["segments"] and raw["speech"]["repaired"] and all(r["failed"] for r in raw["speech"]["repaired"])
