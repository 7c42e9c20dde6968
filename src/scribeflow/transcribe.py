"""Transcription with faster-whisper, and the transcript files of SPEC.md."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .files import atomic_write_text
from .media import SAMPLE_RATE, read_wav

log = logging.getLogger("scribeflow.transcribe")

# Keys of the `transcribe` config that are faster-whisper transcribe() options.
DECODE_OPTIONS = ("beam_size", "vad_filter", "condition_on_previous_text")


class ModelError(ValueError):
    pass


def check_model_dir(model: str) -> None:
    """A local model directory must be complete: without tokenizer.json faster-whisper
    silently fetches one from the hub, which fails (or leaks) offline."""
    path = Path(model)
    if not (path.is_dir() or "/" in model or model.startswith(".")):
        return  # a model name, e.g. large-v3
    if not path.is_dir():
        raise ModelError(f"transcribe.model: {model} is not a directory")
    missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (path / f).is_file()]
    if missing:
        raise ModelError(f"transcribe.model: {model} lacks {', '.join(missing)}")


def load_model(tc: dict):
    from faster_whisper import WhisperModel

    check_model_dir(tc["model"])
    started = time.monotonic()
    model = WhisperModel(tc["model"], device=tc["device"], compute_type=tc["compute_type"],
                         cpu_threads=tc.get("cpu_threads", 0))
    log.info("Loaded model %s (%s, %s) in %.1f s", tc["model"], tc["device"], tc["compute_type"],
             time.monotonic() - started)
    return model


def transcribe_audio(model, audio_path: str | Path, episode: str, tc: dict, language: str | None) -> dict:
    """The canonical transcript dict of SPEC.md for one audio file."""
    audio = read_wav(audio_path)
    options = {k: tc[k] for k in DECODE_OPTIONS if k in tc}
    options["language"] = language
    segments, info = model.transcribe(audio, **options)
    out = []
    for seg in segments:  # a generator: decoding happens here
        out.append({"start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text.strip()})
    return {
        "id": episode,
        "language": info.language,
        "duration": round(len(audio) / SAMPLE_RATE, 3),
        "model": tc["model"],
        "options": {**options, "device": tc["device"], "compute_type": tc["compute_type"]},
        "text": " ".join(s["text"] for s in out if s["text"]),
        "segments": out,
    }


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(t: dict) -> str:
    return "".join(
        f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text']}\n\n"
        for i, s in enumerate(t["segments"], 1)
    )


def to_vtt(t: dict) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text']}\n\n" for s in t["segments"]
    )


def to_txt(t: dict) -> str:
    return "".join(f"{s['text']}\n" for s in t["segments"])


RENDERERS = {"srt": to_srt, "vtt": to_vtt, "txt": to_txt}


def write_transcript(t: dict, json_path: str | Path, formats=()) -> int:
    """Write the extra formats, then the JSON last (it is the target: its presence
    means the episode is done). Each file is written atomically. Returns JSON bytes."""
    json_path = Path(json_path)
    for fmt in formats:
        atomic_write_text(json_path.with_suffix(f".{fmt}"), RENDERERS[fmt](t))
    text = json.dumps(t, ensure_ascii=False, indent=1)
    atomic_write_text(json_path, text)
    return len(text.encode())
