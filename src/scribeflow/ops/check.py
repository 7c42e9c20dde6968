"""`scribeflow check`: does the ledger agree with the files on disk? (An unreadable ledger
is rebuilt by state/rebuild.py; orphaned files are removed by budget/cleanup.py.)"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from pathlib import Path

from scribeflow.budget.gate import DownloadGate
from scribeflow.config.layout import (
    AUDIO_SUFFIX,
    JSON_SUFFIXES,
    PARTIAL_SUFFIXES,
    VIDEO_SUFFIX,
    Layout,
    transcript_suffix,
)
from scribeflow.config.settings import Settings
from scribeflow.files import atomic_write_text, entry_names, file_paths, is_temp
from scribeflow.state.failures import given_up

log = logging.getLogger(__name__)


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
    from scribeflow.state.ledger import STAGES, TRANSCRIBED, Ledger, unreadable

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
    names = entry_names(transcripts)
    hidden = [name for name in names if name[:1] == "."]  # no episode id starts with "."
    half_written = [str(transcripts / name) for name in hidden if is_temp(name)]
    forms = {suffix: {n[:-len(suffix)] for n in names if n.endswith(suffix)}
             - {n[:-len(suffix)] for n in hidden if n.endswith(suffix)} for suffix in JSON_SUFFIXES}
    present = set().union(*forms.values())
    configured = transcript_suffix("json", layout.gzip)

    def transcript(episode: str) -> Path:  # the configured form wins when both exist
        suffix = configured if episode in forms[configured] else next(s for s in JSON_SUFFIXES if s != configured)
        return transcripts / f"{episode}{suffix}"

    video_ids = {n.removesuffix(VIDEO_SUFFIX) for n in entry_names(videos) if n.endswith(VIDEO_SUFFIX)}
    audio_ids = {n.removesuffix(AUDIO_SUFFIX) for n in entry_names(audio) if n.endswith(AUDIO_SUFFIX)}

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
        for path in file_paths(videos):
            episode = path.name.split(".")[0]
            if path.name.endswith(PARTIAL_SUFFIXES):
                problems.append(f"{path}: partial download left behind")
            elif episode in markers or (cleanup.delete_video_after_transcription and episode in transcribed):
                problems.append(f"{path}: video of a finished or failed episode left behind")
        for path in file_paths(audio):
            episode = path.name.split(".")[0]
            if is_temp(path.name):
                problems.append(f"{path}: half-written audio left behind")
            elif episode in markers or (cleanup.delete_audio_after_transcription and episode in transcribed):
                problems.append(f"{path}: audio of a finished or failed episode left behind")
        problems += [f"{path}: half-written transcript left behind" for path in sorted(half_written)]
    return problems


def _transcript_problem(path: Path, episode: str) -> str | None:
    """Why `path` is not a complete transcript of `episode`, or None."""
    from scribeflow.stages.transcription.transcript import read_transcript

    try:
        t = read_transcript(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        return f"{path} is not valid JSON ({exc})"
    if not isinstance(t, dict) or t.get("id") != episode:
        return f"{path} is not the transcript of {episode}"
    # A transcript made from a subtitle has no model or options: it says where it came from.
    needed = ("subtitle",) if t.get("source") == "subtitles" else ("model", "options")
    missing = [k for k in ("language", "duration", *needed, "text", "segments") if k not in t]
    if missing:
        return f"{path} lacks {', '.join(missing)}"
    return None
