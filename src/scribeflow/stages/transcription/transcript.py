"""The transcript files (docs/outputs.md): build_transcript() turns the decoder's plain
dict into the canonical JSON (after the hallucination guard); write_transcript() writes it
and the extra formats, atomically, optionally gzip-compressed; read_transcript() reads it."""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
from pathlib import Path

from scribeflow.files import atomic_path
from scribeflow.stages.transcription.hallucination import Guard

log = logging.getLogger(__name__)


def build_transcript(raw: dict, episode: str, tc: dict, options: dict) -> dict:
    """The canonical transcript (docs/outputs.md), after the hallucination guard."""
    segments, report = Guard.from_config(tc).apply(raw["segments"])
    if report["repetition"] or report["phrase"]:
        log.warning("%s: hallucination guard (%s): %d repetition(s), %d phrase(s)", episode,
                    report["action"], report["repetition"], report["phrase"])
    return {
        "id": episode,
        "source": "asr",  # or "subtitles" (stages/subtitles/transcript.py)
        "language": raw["language"],
        "language_probability": raw["language_probability"],
        # How the language was chosen: given, or the windows' votes (start, end, speech, language, probability).
        "language_detection": raw.get("language_detection"),
        "duration": raw["duration"],
        "model": tc["model"],
        "options": {**options, "device": raw.get("device", tc["device"]),
                    "compute_type": raw.get("compute_type", tc["compute_type"]),
                    "batch_size": raw.get("batch_size", tc.get("batch_size", 0))},
        "text": " ".join(s["text"] for s in segments if s["text"]),
        "segments": segments,
        "hallucinations": report,
        # Speech found by the VAD and covered by the segments, and what was decoded again (coverage.py).
        "speech": raw.get("speech"),
    }


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(t: dict):
    return [s for s in t["segments"] if s["text"]]  # an empty cue is invalid in SRT


def to_srt(t: dict) -> str:
    return "".join(
        f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text']}\n\n"
        for i, s in enumerate(_cues(t), 1)
    )


def to_vtt(t: dict) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text']}\n\n" for s in _cues(t)
    )


def to_txt(t: dict) -> str:
    return "".join(f"{s['text']}\n" for s in _cues(t))


RENDERERS = {"srt": to_srt, "vtt": to_vtt, "txt": to_txt}


def _write(path: Path, text: str) -> int:
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip_module.compress(data, mtime=0)  # mtime 0: same transcript, same bytes
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def write_transcript(t: dict, paths: dict[str, str | Path]) -> int:
    """Write the transcript to `paths` ({"json": ..., "srt": ..., ...}; a name ending in .gz is
    compressed), the extra formats first and the JSON last: it is the target, its presence means
    the episode is done. Each file is written atomically. Returns the bytes written in all."""
    size = 0
    for fmt, path in paths.items():
        if fmt != "json":
            size += _write(Path(path), RENDERERS[fmt](t))
    return size + _write(Path(paths["json"]), json.dumps(t, ensure_ascii=False, indent=1))


def read_transcript(path: str | Path) -> dict:
    """A transcript JSON, gzip-compressed or not."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip_module.decompress(data)
    return json.loads(data)
