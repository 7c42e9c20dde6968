"""The speech found at extraction (Silero VAD's output, saved beside the WAV) stands in for
the VAD in the transcription: the same transcript, the same language vote, and no VAD run
in the transcription's path. Real faster-whisper, real speech (espeak-ng)."""

import subprocess

import numpy as np
import pytest
from support.fixtures import SENTENCES, require_tools
from support.models import packaged_model

from scribeflow.stages.media import SAMPLE_RATE, read_wav
from scribeflow.stages.transcription import speech
from scribeflow.stages.transcription.decode import run_model


def spoken(tmp_path, text: str, voice: str, name: str) -> np.ndarray:
    require_tools()
    wav = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
    from faster_whisper import decode_audio

    return decode_audio(str(wav))


def write_wav(path, audio: np.ndarray):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def english_wav(tmp_path_factory):
    """48 s: speech, four seconds of silence, speech, silence, speech."""
    tmp = tmp_path_factory.mktemp("speech")
    parts = [spoken(tmp, " ".join(SENTENCES[i::3]), "en-us", f"part{i}") for i in range(3)]
    gap = np.zeros(4 * SAMPLE_RATE, np.float32)
    return write_wav(tmp / "episode.wav", np.concatenate([parts[0], gap, parts[1], gap, parts[2]]))


def test_saved_speech_answers_the_vad_with_the_same_timestamps(english_wav):
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio = read_wav(english_wav)
    saved = speech.compute(audio, windows=7)
    assert len(saved) == 1 + 2  # the whole audio, and the vote's windows (2 fit in its 48 s)
    for options in (VadOptions(), VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)):
        ran = get_speech_timestamps(audio, options)
        with speech.precomputed(saved) as calls:
            answered = get_speech_timestamps(audio, options)
        assert answered == ran and len(ran) >= 3 and calls == {"saved": 1, "ran": 0}
    with speech.precomputed(saved) as calls:  # audio it was not computed from: the real VAD
        get_speech_timestamps(audio[:-SAMPLE_RATE], VadOptions())
    assert calls == {"saved": 0, "ran": 1}


def test_a_saved_file_round_trips_and_a_damaged_one_is_ignored(tmp_path, english_wav):
    saved = speech.compute(read_wav(english_wav), windows=0)
    path = tmp_path / "ep.speech.npz"
    assert speech.save(saved, path) == path.stat().st_size < 100_000
    loaded = speech.load(path)
    assert loaded.keys() == saved.keys() and all(np.array_equal(loaded[k], saved[k]) for k in saved)
    path.write_bytes(b"not a zip")
    assert speech.load(path) is None and speech.load(tmp_path / "missing.npz") is None


@pytest.mark.parametrize("batch_size", [0, 4])
def test_the_transcript_is_the_same_with_the_speech_found_at_extraction(english_wav, model_path, batch_size):
    from faster_whisper import WhisperModel

    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    # Temperature 0 alone: the fallback's random sampling would make two runs differ anyway.
    options = {"language": "en", "vad_filter": True, "beam_size": 1, "batch_size": batch_size, "temperature": 0.0}
    in_worker = run_model(model, english_wav, options)
    found = speech.load(speech.save(speech.compute(read_wav(english_wav), 0), english_wav.with_suffix(".npz"))
                        and english_wav.with_suffix(".npz"))
    ahead = run_model(model, english_wav, options, speech=found)
    # The decoding's VAD, then the coverage check's (answered from the first, or from the saved).
    assert in_worker.pop("vad_calls") == {"saved": 1, "ran": 1}
    assert ahead.pop("vad_calls") == {"saved": 2, "ran": 0}
    assert ahead == in_worker and len(in_worker["segments"]) >= 2


@pytest.mark.slow
def test_the_language_vote_is_the_same_with_the_speech_found_at_extraction(tmp_path):
    """Japanese after a silent intro and an English opening, the multilingual base model:
    the vote's windows and the decoding both answered from the saved speech."""
    from faster_whisper import WhisperModel

    from support import japanese as kokoro

    # Japanese as Japanese speakers say it (Kokoro's voices; espeak-ng's kana reading was
    # voted English on some CPUs).
    lines = ["今日はとてもいい天気ですね。", "猫が庭で昼寝をしています。", "私は毎日学校に行きます。",
             "明日の朝、駅の前で会いましょう。", "この本はとても面白かったです。"]
    japanese = np.concatenate([np.concatenate([kokoro.speech(line, voice), np.zeros(SAMPLE_RATE // 2, np.float32)])
                               for _ in range(3) for line, voice in zip(lines, kokoro.VOICES)])
    english = spoken(tmp_path, " ".join(SENTENCES), "en-us", "en")[:30 * SAMPLE_RATE]
    audio = np.concatenate([np.zeros(30 * SAMPLE_RATE, np.float32), english, japanese[:60 * SAMPLE_RATE]])
    wav = write_wav(tmp_path / "ja-episode.wav", audio)
    model = WhisperModel(str(packaged_model("base")), device="cpu", compute_type="int8", cpu_threads=2)
    options = {"language": None, "language_windows": 4, "vad_filter": True, "beam_size": 1, "batch_size": 4,
               "temperature": 0.0}
    in_worker = run_model(model, wav, options)
    ahead = run_model(model, wav, options, speech=speech.compute(read_wav(wav), 4))
    assert in_worker.pop("vad_calls") == {"saved": 1, "ran": 5}  # four windows, the episode, its coverage
    assert ahead.pop("vad_calls") == {"saved": 6, "ran": 0}
    assert ahead == in_worker and in_worker["language"] == "ja"
    assert [v["speech"] for v in ahead["language_detection"]["votes"]][0] < 5  # the silent intro abstains
