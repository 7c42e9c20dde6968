"""After a crash: remove temporary files that no pending job needs, and check that
the ledger agrees with the files on disk (an unreadable ledger is rebuilt by rebuild.py).

Snakemake does not clean up temp() files of an interrupted run (snakemake #3742),
and a killed download leaves its .part behind. Files that a live process of a
concurrent run still holds (gate reservations) are left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from pathlib import Path

from .config import Settings
from .failures import given_up
from .files import allocated_bytes, atomic_write_text, file_entries
from .gate import DownloadGate
from .layout import (AUDIO_SUFFIX, JSON_SUFFIXES, PARTIAL_SUFFIXES, STAGING_MARK, TOKENS_SUFFIX, VIDEO_SUFFIX,
                     Layout, transcript_suffix)

log = logging.getLogger("scribeflow.recovery")
STALE_TMP_SECONDS = 600  # an atomic-write temp file this old belongs to no live writer


def clean_orphans(settings: Settings, keep=()) -> tuple[int, int]:
    """Delete orphaned videos, audio, partial downloads and temp files. Returns (files, bytes).

    `keep`: paths that pending jobs need (the inputs of the jobs Snakemake is about to
    run); they are never deleted. The videos and audio of given-up episodes are orphans.
    """
    layout = Layout.from_config(settings)
    videos, audio, transcripts = layout.videos, layout.audio, layout.transcripts
    cleanup = settings.disk_management.cleanup
    busy, anyone_busy = DownloadGate.from_config(settings).held_paths()
    busy = busy | {str(Path(p).absolute()) for p in keep}
    abandoned = given_up(layout)
    now = time.time()
    doomed: list[Path] = []

    def done(episode: str) -> bool:
        # Either form: the gzip setting may have changed since the transcript was written.
        return any((transcripts / f"{episode}{ext}").is_file() for ext in JSON_SUFFIXES)

    # yt-dlp's files for {id}.media are {id}@dl.* (layout.STAGING_MARK): partials,
    # fragments, per-format and post-processing files. Those of a live download stay.
    downloading = {Path(p).name.split(STAGING_MARK)[0] for p in busy if STAGING_MARK in Path(p).name}
    for path in _files(videos):
        if str(path.absolute()) in busy:
            continue
        if STAGING_MARK in path.name:
            if path.name.split(STAGING_MARK)[0] not in downloading:
                doomed.append(path)
        elif path.name.endswith(PARTIAL_SUFFIXES):
            doomed.append(path)
        elif path.suffix == VIDEO_SUFFIX:
            episode = path.stem
            has_audio = layout.audio_file(episode).is_file()
            if episode in abandoned or (
                    cleanup.delete_video_after_transcription and (done(episode) or has_audio)):
                doomed.append(path)
    for path in _files(audio):
        if str(path.absolute()) in busy or path.suffix != AUDIO_SUFFIX:
            continue
        if path.stem in abandoned or (cleanup.delete_audio_after_transcription and done(path.stem)):
            doomed.append(path)
    # With the corpus cleanup flags, a transcript is temporary once tokenized, and
    # tokens once analysed (rules/corpus.smk's paths).
    tokens, analysed = layout.tokens, layout.episode_stats
    if cleanup.delete_transcript_after_tokenization:
        for path in _files(transcripts):
            name = path.name.removesuffix(".gz")
            if name.endswith(".json") and layout.tokens_file(name[:-5]).is_file():
                doomed.append(path)
    if cleanup.delete_tokens_after_analysis:
        doomed += [p for p in _files(tokens) if p.suffix == TOKENS_SUFFIX and layout.stats_file(p.stem).is_file()]
    corpus_folders = (tokens, analysed, layout.lemmas, layout.corpus)
    for folder in (videos, audio, transcripts, *corpus_folders):
        for path in _temp_files(folder):
            if not anyone_busy or now - path.stat().st_mtime > STALE_TMP_SECONDS:
                doomed.append(path)

    freed = 0
    for path in doomed:
        try:
            freed += allocated_bytes(path.stat())
            path.unlink()
            log.info("Removed orphaned %s", path)
        except FileNotFoundError:
            pass
    return len(doomed), freed


def _names(folder: Path) -> list[str]:
    """The names in `folder`: one listing, no stat (171,881 transcripts at month four)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _is_temp(name: str) -> bool:
    """An atomic write's temporary file (files.atomic_path: .NAME.XXXX.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def _temp_files(folder: Path) -> list[Path]:
    """Atomic writes' temporary files in `folder`. Names only, and the hidden ones first:
    the per-episode folders hold one entry per finished episode, and this runs at every
    run's start."""
    return [folder / name for name in _names(folder) if name[:1] == "." and _is_temp(name)
            and (folder / name).is_file()]


def _files(folder: Path):
    return [Path(e.path) for e in file_entries(folder)]


def check_consistency(settings: Settings, full: bool = False) -> list[str]:
    """What disagrees between the ledger (jobs.db), the failed markers and the files on
    disk; an empty list when all agree. Checks that need the pipeline at rest
    (leftover partial files, a transcript the ledger has not caught up with) are
    skipped while a job holds the gate. `scribeflow check` prints the result.

    Every transcript is found (one listing of the folder, names only), but only those
    whose ledger row changed since the last check that found them all valid are read and
    parsed, unless `full`: a month-four check costs what the month's new transcripts cost,
    not the catalogue's (no stat per transcript either: from a cold disk 171,881 of them
    took 15 s). A transcript changed outside the pipeline is read by `full` alone, and
    the ledger's every page only by `full` or after a run that did not end cleanly
    (ledger.unreadable)."""
    from .ledger import STAGES, TRANSCRIBED, Ledger, unreadable

    layout = Layout.from_config(settings)
    videos, audio, transcripts = layout.videos, layout.audio, layout.transcripts
    cleanup = settings.disk_management.cleanup
    problems: list[str] = []
    gate = DownloadGate.from_config(settings)
    state_problem = gate.state_problem()
    if state_problem:
        problems.append(state_problem)
    _, running = gate.held_paths()
    db = layout.ledger
    ledger_problem = unreadable(db, full=full)
    if ledger_problem:
        problems.append(f"{db}: not a readable SQLite database ({ledger_problem}); the next run moves it aside and "
                        f"rebuilds it from the files on disk (transcripts, analyses, failed markers); the ledger's "
                        f"checks are skipped")
        return problems
    markers = given_up(layout)
    state_path = layout.check_state
    try:
        since = None if full else float(json.loads(state_path.read_text())["valid_until"])
    except (OSError, ValueError, KeyError, TypeError):
        since = None
    # Before the files are listed and the ledger read: a row that changes after this is
    # read by the next check.
    started = time.time()
    # One listing each, names only: the transcripts (by form: .json, .json.gz), and the
    # videos and audio present. Sets of names, not Paths: one Path per finished episode
    # would cost seconds at month four.
    names = _names(transcripts)
    hidden = [name for name in names if name[:1] == "."]  # no episode id starts with "."
    half_written = [str(transcripts / name) for name in hidden if _is_temp(name)]
    forms = {suffix: {n[:-len(suffix)] for n in names if n.endswith(suffix)}
             - {n[:-len(suffix)] for n in hidden if n.endswith(suffix)} for suffix in JSON_SUFFIXES}
    present = set().union(*forms.values())
    configured = transcript_suffix("json", layout.gzip)

    def transcript(episode: str) -> Path:  # the configured form wins when both exist
        suffix = configured if episode in forms[configured] else next(s for s in JSON_SUFFIXES if s != configured)
        return transcripts / f"{episode}{suffix}"

    video_ids = {n.removesuffix(VIDEO_SUFFIX) for n in _names(videos) if n.endswith(VIDEO_SUFFIX)}
    audio_ids = {n.removesuffix(AUDIO_SUFFIX) for n in _names(audio) if n.endswith(AUDIO_SUFFIX)}

    # What is read of every row is the transcribed episodes' ids, from an index; the rest
    # is the rows of the few episodes elsewhere (queued, in flight, failed), those changed
    # since the last clean check, and those a listing or a marker names.
    transcribed: set[str] = set()
    others: dict[str, str] = {}
    must_have, changed, flags, marked = set(), {}, {}, {}
    if db.exists():
        with Ledger(db) as ledger:
            if since is None:  # every transcribed row is to be read: their ids come with them
                changed = ledger.stages_in(TRANSCRIBED)
                transcribed = set(changed)
            else:
                changed = ledger.changed_since(TRANSCRIBED, since)
                transcribed = ledger.ids_in(TRANSCRIBED)
            others = ledger.stages_in([s for s in STAGES if s not in TRANSCRIBED])
            # Tokenized and analyzed episodes' transcripts may be gone by design.
            must_have = (ledger.ids_in(["transcribed"]) if cleanup.delete_transcript_after_tokenization
                         else transcribed)
            missing = dict(ledger.rows_of(sorted(must_have - present), "stage"))
            flags = {row[0]: row[1:] for row in ledger.rows_of(sorted(transcribed & (video_ids | audio_ids)),
                                                                 "video_deleted", "audio_deleted")}
            marked = dict(ledger.rows_of(sorted(markers), "stage"))
    parsed = transcript_problems = 0

    # Set operations rather than a Python step per ledger row (171,881 at month four);
    # the problems are then listed by episode, in the order of the checks below.
    found: list[tuple[str, int, str]] = []
    for episode, stage in missing.items():
        transcript_problems += 1
        found.append((episode, 0, f"{episode}: ledger says {stage} but {layout.transcript(episode)} is missing"))
    for episode in changed.keys() & present:  # valid at the last check unless written since
        parsed += 1
        problem = _transcript_problem(transcript(episode), episode)
        if problem:
            transcript_problems += 1
            found.append((episode, 0, f"{episode}: ledger says {changed[episode]} but {problem}"))
    found += [(episode, 1, f"{episode}: ledger says the video was deleted but it is on disk")
              for episode in video_ids & flags.keys() if flags[episode][0]]
    found += [(episode, 2, f"{episode}: ledger says the audio was deleted but it is on disk")
              for episode in audio_ids & flags.keys() if flags[episode][1]]
    if not running:
        found += [(episode, 3, f"{episode}: a transcript exists but the ledger says {others[episode]}")
                  for episode in present & others.keys()]
    found += [(episode, 4, f"{episode}: marked failed ({layout.failed_marker(episode)}) but the ledger says "
                           f"{stage}")
              for episode, stage in marked.items() if stage != "failed"]
    problems += [message for _, _, message in sorted(found)]
    for episode in sorted(markers - marked.keys()):
        problems.append(f"{episode}: marked failed but not in the ledger")
    if not running:
        for episode in sorted(present - transcribed - others.keys()):
            problems.append(f"{episode}: a transcript exists but the ledger has no row for it")
    if not transcript_problems:
        # From now on a transcript whose row is older than this start was valid; the slack
        # covers the clocks of other hosts writing the same ledger (a cluster's nodes).
        with contextlib.suppress(OSError):
            atomic_write_text(state_path, json.dumps({"valid_until": started - 60, "parsed": parsed}))

    if not running:
        for path in _files(videos):
            episode = path.name.split(".")[0]
            if path.name.endswith(PARTIAL_SUFFIXES):
                problems.append(f"{path}: partial download left behind")
            elif episode in markers or (cleanup.delete_video_after_transcription and episode in transcribed):
                problems.append(f"{path}: video of a finished or failed episode left behind")
        for path in _files(audio):
            episode = path.name.split(".")[0]
            if _is_temp(path.name):
                problems.append(f"{path}: half-written audio left behind")
            elif episode in markers or (cleanup.delete_audio_after_transcription and episode in transcribed):
                problems.append(f"{path}: audio of a finished or failed episode left behind")
        problems += [f"{path}: half-written transcript left behind" for path in sorted(half_written)]
    return problems


def _transcript_problem(path: Path, episode: str) -> str | None:
    """Why `path` is not a complete transcript of `episode`, or None."""
    from .transcribe import read_transcript

    try:
        t = read_transcript(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        return f"{path} is not valid JSON ({exc})"
    if not isinstance(t, dict) or t.get("id") != episode:
        return f"{path} is not the transcript of {episode}"
    missing = [k for k in ("language", "duration", "model", "options", "text", "segments") if k not in t]
    if missing:
        return f"{path} lacks {', '.join(missing)}"
    return None
