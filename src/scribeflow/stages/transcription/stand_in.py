"""What benchmarks/cpu_budget.py puts in place of the model's own work on a machine without
a GPU (SCRIBEFLOW_STAND_IN_DECODE=1 in the run's environment; its jobs and the worker
inherit it): the language vote's encoder and the decoding return at once. Everything else
of a transcription runs as it is (the WAV read, the VAD, the chunking, the features, made
with 128 mel bins as large-v3 and turbo take), so that what the CPU side costs can be
measured. Never set in a real run: its transcripts are placeholder text."""

from __future__ import annotations

import os
from types import SimpleNamespace

ENV = "SCRIBEFLOW_STAND_IN_DECODE"
MEL_BINS = 128
CHARS_PER_SECOND = 8  # of speech: Japanese dialogue, roughly, so the stages after see realistic text
TEXT = ("今日はとても良い天気ですね。猫が庭で走っていた。先生は明日の朝に来ると言いました。"
        "この町はとても静かです。みんなで駅の前の店に行きましょう。")


def active() -> bool:
    return os.environ.get(ENV) == "1"


def feature_extractor():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=MEL_BINS)


def detect_language(features) -> list[list[tuple[str, float]]]:
    return [[("<|ja|>", 0.98), ("<|en|>", 0.01)] for _ in range(len(features))]


def segments(spans: list[tuple[float, float]]) -> list:
    """One segment per stretch of speech (seconds), with text of its length."""
    out = []
    for start, end in spans:
        n = max(1, int((end - start) * CHARS_PER_SECOND))
        text = (TEXT * (n // len(TEXT) + 1))[:n]
        out.append(SimpleNamespace(start=start, end=end, text=text, words=None))
    return out
