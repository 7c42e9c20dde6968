"""A usable verdict shaped as a transcript: ASR's shape (docs/outputs.md), `source:
subtitles`, its segments with their `kind` (song, sound; speech when absent) and `speaker`,
and a text of the speech alone."""

from __future__ import annotations

from scribeflow.stages.subtitles.parse import speech

SEGMENT_EXTRAS = ("kind", "speaker")


def transcript(verdict: dict, episode: str, duration: float | None = None) -> dict:
    """The transcript of a usable verdict."""
    segments = [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"],
                 **{k: s[k] for k in SEGMENT_EXTRAS if s.get(k)}}
                for i, s in enumerate(verdict["segments"])]
    return {
        "id": episode,
        "language": verdict.get("language"),
        "language_probability": None,
        "duration": duration or (segments[-1]["end"] if segments else 0.0),
        "source": "subtitles",
        "subtitle": {"origin": verdict.get("origin"), "file": verdict.get("file"),
                     "refused": verdict.get("refused") or [], "cleaned": verdict.get("cleaned") or {}},
        "text": " ".join(s["text"] for s in speech(segments)),
        "segments": segments,
    }
