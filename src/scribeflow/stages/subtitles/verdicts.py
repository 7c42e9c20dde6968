"""An episode's subtitles judged, and the verdict remembered.

subtitles/{id}.subtitle.json (Layout.subtitle_verdict) holds what was found: the chosen
file, its segments and what was cleaned out of its text, or why each candidate was refused
(a file that is no transcript, a track that could not be fetched). Local files are judged
once, when a run is planned (the key says which files and which settings the verdict is
for); URLs and page tracks by the download job, which writes the same file. Every write is
told to the disk accounting first (budget.monitor.note_written): a planning process writes
verdicts of episodes no job has started, which the gate would otherwise see only at its
next reconciliation."""

from __future__ import annotations

import json
from pathlib import Path

from scribeflow.stages.subtitles.captions import Cleaned
from scribeflow.stages.subtitles.parse import STYLE_PATTERNS, SubtitleError, load, script_share, segments, speech


def _refusal(path: Path, segments: list[dict], language: str, duration: float | None, min_coverage: float,
             min_script_share: float) -> str | None:
    """Why a parsed file is no transcript of the episode, or None when it is one."""
    said = speech(segments)
    if not said:
        return f"{path.name}: no dialogue (only signs, songs, sounds or comments)"
    share = script_share(" ".join(s["text"] for s in said), language)
    if share < min_script_share:
        return f"{path.name}: {share:.0%} of its letters are in {language}'s script: a translation, not a transcript"
    span = said[-1]["end"] - said[0]["start"]
    if duration and span < min_coverage * duration:
        return f"{path.name}: its dialogue spans {span:.0f} s of the episode's {duration:.0f} s"
    return None


def choose(candidates: list[str | Path], language: str, duration: float | None = None, min_coverage: float = 0.5,
           min_script_share: float = 0.5, style_patterns=STYLE_PATTERNS,
           cleaned: Cleaned | None = None) -> tuple[list[dict] | None, Path | None, list[str]]:
    """The first usable subtitle of `candidates`: (its segments, its path, why each one
    before it was refused). Usable: it reads, it has dialogue, its dialogue is written in
    `language`'s script (a Japanese show's English subtitles are a translation, not a
    transcript), and, when the episode's `duration` is known, spans at least
    `min_coverage` of it. None when none is: the episode is transcribed. `cleaned`: what
    was taken out of the chosen file's text."""
    refused = []
    for path in map(Path, candidates):
        counts = Cleaned()
        try:
            found = segments(load(path), style_patterns, counts)
        except SubtitleError as exc:
            refused.append(str(exc))
            continue
        why = _refusal(path, found, language, duration, min_coverage, min_script_share)
        if why:
            refused.append(why)
            continue
        if cleaned is not None:
            cleaned.__dict__.update(counts.__dict__)
        return found, path, refused
    return None, None, refused


def key_of(candidates: list[tuple[str, Path]], settings, language: str, duration: float | None) -> str:
    """What a verdict on local files depends on: the files as they are and the settings."""
    files = []
    for origin, path in candidates:
        try:
            st = path.stat()
            files.append([origin, str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([origin, str(path), None, None])
    sub = settings.subtitles
    return json.dumps([files, language, duration, sub.min_coverage, sub.min_script_share,
                       list(sub.style_patterns or STYLE_PATTERNS), VERSION], ensure_ascii=False)


# What a verdict's segments are made by: a kept verdict of another version is judged again.
VERSION = 2  # 2: captions cleaned (speakers, sounds, songs, readings, markers)


def judge(candidates: list[tuple[str, Path | str]], settings, language: str, duration: float | None,
          key: str | None = None) -> dict:
    """The verdict on `candidates` ([(origin, path)]): the first usable one's segments and
    what was cleaned out of them, or why each was refused."""
    sub = settings.subtitles
    origins = {str(path): origin for origin, path in candidates}
    cleaned = Cleaned()
    segments, path, refused = choose([p for _, p in candidates], language, duration, sub.min_coverage,
                                     sub.min_script_share, sub.style_patterns or STYLE_PATTERNS, cleaned)
    verdict = {"key": key, "usable": segments is not None, "language": language, "refused": refused}
    if segments is not None:
        verdict.update(origin=origins.get(str(path)), file=str(path), segments=segments, cleaned=cleaned.as_dict())
    return verdict


def read_verdict(path: str | Path) -> dict | None:
    """A verdict file, or None when there is none (or it is damaged: it is judged again)."""
    try:
        verdict = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and "usable" in verdict else None


def write_verdict(path: str | Path, verdict: dict) -> None:
    """Written atomically, its bytes told to the disk accounting first (a verdict of a
    planned episode is written before any job of it starts)."""
    from scribeflow.budget.monitor import note_written
    from scribeflow.files import atomic_path

    path = Path(path)
    data = json.dumps(verdict, ensure_ascii=False).encode("utf-8")
    note_written(path.parent.parent, path.parent, len(data))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def usable(verdict: dict | None) -> bool:
    return bool(verdict and verdict.get("usable") and verdict.get("segments"))
