"""An episode's language, by vote over windows spread over its audio."""

from __future__ import annotations

import contextlib

from scribeflow.stages.media import SAMPLE_RATE
from scribeflow.stages.transcription import stand_in

# Windows that vote on an episode's language: an anime episode opens with a song (often
# with lyrics in English or sung too fast to tell) and may close with one; 7 windows spread
# over 24 minutes leave at most 2 of them on songs.
LANGUAGE_WINDOWS = 7
WINDOW_SECONDS = 30  # what Whisper's encoder sees at once
MIN_SPEECH_SECONDS = 5  # a window with less speech than this (music, silence) does not vote


def vote_windows(length: int, windows: int) -> list[tuple[int, int]]:
    """(start, end) in samples of the `windows` 30-s windows spread evenly over `length`
    samples: no more than fit side by side."""
    size = WINDOW_SECONDS * SAMPLE_RATE
    n = max(1, min(windows, -(-length // size)))
    spans = []
    for i in range(n):
        centre = int(length * (i + 0.5) / n)
        start = max(0, min(centre - size // 2, length - size))
        spans.append((start, min(length, start + size)))
    return spans


def vote_language(model, audio, windows: int = LANGUAGE_WINDOWS, model_lock=None) -> dict:
    """The episode's language by vote over `windows` 30-s windows spread evenly over the audio.

    faster-whisper's own detection (1.2.1) reads the start of the audio (after VAD when
    batched) and stops at the first window that passes 0.5: an opening song decides. Here
    each window keeps only what Silero VAD calls speech (run on the window alone: a VAD pass
    over a whole 24-min episode costs 4-6 s of CPU), a window with under 5 s of speech
    abstains, and the language with most votes wins (ties: the higher summed probability).
    The windows go through the encoder as one batch, holding `model_lock` (the worker's:
    the model's work, apart from the CPU's).
    Returns {"language", "probability" (its mean over the voting windows), "method": "vote",
    "votes": [{start, end, speech, language, probability}]} (abstaining windows: language null)."""
    import numpy as np
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if not model.model.is_multilingual:
        return {"language": "en", "probability": 1.0, "method": "english-only model", "votes": []}
    votes, pieces = [], []
    for start, end in vote_windows(len(audio), windows):
        window = audio[start:end]
        speech = get_speech_timestamps(window, VadOptions())
        voiced = np.concatenate([window[c["start"]:c["end"]] for c in speech]) if speech else window[:0]
        votes.append({"start": round(start / SAMPLE_RATE, 3), "end": round((start + len(window)) / SAMPLE_RATE, 3),
                      "speech": round(len(voiced) / SAMPLE_RATE, 3), "language": None, "probability": None})
        pieces.append(voiced if len(voiced) >= min(MIN_SPEECH_SECONDS * SAMPLE_RATE, len(window) // 2) else None)
    if not any(p is not None for p in pieces):  # no window has speech enough: all vote, as they are
        pieces = [audio[int(v["start"] * SAMPLE_RATE):int(v["end"] * SAMPLE_RATE)] for v in votes]
    voting = [i for i, p in enumerate(pieces) if p is not None]
    frames = model.feature_extractor.nb_max_frames
    features = np.stack([pad_or_trim(model.feature_extractor(pieces[i])[..., :frames], frames) for i in voting])
    with model_lock or contextlib.nullcontext():
        results = stand_in.detect_language(features) if stand_in.active() else \
            model.model.detect_language(model.encode(features))
    probs = []
    for i, result in zip(voting, results):
        ranked = [(token[2:-2], p) for token, p in result]  # "<|ja|>" -> "ja"
        probs.append(dict(ranked))
        votes[i]["language"], votes[i]["probability"] = ranked[0][0], round(ranked[0][1], 4)
    counts: dict[str, int] = {}
    for vote in votes:
        if vote["language"]:
            counts[vote["language"]] = counts.get(vote["language"], 0) + 1
    winner = max(counts, key=lambda lang: (counts[lang], sum(p.get(lang, 0.0) for p in probs)))
    return {"language": winner, "probability": round(sum(p.get(winner, 0.0) for p in probs) / len(probs), 4),
            "method": "vote", "votes": votes}
