"""`scribeflow check`: does the ledger agree with the files on disk? (An unreadable ledger
is rebuilt by state/rebuild.py; orphaned files are removed by budget/cleanup.py.)

One check, in the order it reads: the gate's state; whether the ledger is readable at
all; one listing of each folder (_list_files); the few ledger rows that need reading
(_read_rows); the transcripts those rows vouch for, parsed (_transcript_findings); the
rows the files contradict (_row_findings, _unrecorded); the mark that the transcripts
are valid up to now (_remember_valid); the files a finished run should not have left
(_leftovers)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
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

# A finding: (episode, the check's rank, message); sorted, they list each episode's
# problems together, in the order of the checks.
Finding = tuple[str, int, str]


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
    from scribeflow.state.ledger import unreadable

    layout = Layout.from_config(settings)
    cleanup = settings.disk_management.cleanup
    gate = DownloadGate.from_config(settings)
    problems = [p for p in (gate.state_problem(),) if p]
    _, running = gate.held_paths()
    ledger_problem = unreadable(layout.ledger, full=full)
    if ledger_problem:
        return [*problems, _unreadable_ledger(layout.ledger, ledger_problem)]
    markers = given_up(layout)
    since = None if full else _valid_until(layout.check_state)
    # Before the files are listed and the ledger read: a row that changes after this is
    # read by the next check.
    started = time.time()
    listing = _list_files(layout)
    rows = _read_rows(layout, listing, since, markers, cleanup.delete_transcript_after_tokenization)
    findings, invalid, parsed = _transcript_findings(layout, listing, rows)
    findings += _row_findings(layout, listing, rows, running)
    problems += [message for _, _, message in sorted(findings)]
    problems += _unrecorded(listing, rows, markers, running)
    if not invalid:
        _remember_valid(layout.check_state, started, parsed)
    if not running:
        problems += _leftovers(layout, listing, rows.transcribed, markers, cleanup)
    return problems


def _unreadable_ledger(db: Path, why: str) -> str:
    return (f"{db}: not a readable SQLite database ({why}); the next run moves it aside and rebuilds it from "
            f"the files on disk (transcripts, analyses, failed markers); the ledger's checks are skipped")


def _valid_until(state_path: Path) -> float | None:
    """When the last check that found every transcript valid started (less the clocks'
    slack), or None: then every transcribed row is read."""
    try:
        return float(json.loads(state_path.read_text())["valid_until"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_valid(state_path: Path, started: float, parsed: int) -> None:
    """From now on a transcript whose row is older than this check's start was valid; the
    slack covers the clocks of other hosts writing the same ledger (a cluster's nodes)."""
    with contextlib.suppress(OSError):
        atomic_write_text(state_path, json.dumps({"valid_until": started - 60, "parsed": parsed}))


# -- what is on disk ----------------------------------------------------------------------
@dataclass
class _Listing:
    """The episodes' files, by id: sets of names, not Paths (one Path per finished
    episode would cost seconds at month four)."""

    transcripts: Path
    configured: str  # the transcript form the settings write (.json or .json.gz)
    forms: dict[str, set[str]]  # each transcript form: the ids that have it
    present: set[str]  # the ids with a transcript in either form
    half_written: list[str]  # atomic-write temporaries among the transcripts
    video_ids: set[str]
    audio_ids: set[str]

    def transcript(self, episode: str) -> Path:
        """The transcript of `episode`: the configured form wins when both exist."""
        suffix = self.configured if episode in self.forms[self.configured] else next(
            s for s in JSON_SUFFIXES if s != self.configured)
        return self.transcripts / f"{episode}{suffix}"


def _list_files(layout: Layout) -> _Listing:
    """One listing each, names only: the transcripts (by form), the videos and the audio."""
    names = entry_names(layout.transcripts)
    hidden = [name for name in names if name[:1] == "."]  # no episode id starts with "."
    forms = {suffix: {n[:-len(suffix)] for n in names if n.endswith(suffix)}
             - {n[:-len(suffix)] for n in hidden if n.endswith(suffix)} for suffix in JSON_SUFFIXES}
    return _Listing(
        transcripts=layout.transcripts, configured=transcript_suffix("json", layout.gzip), forms=forms,
        present=set().union(*forms.values()),
        half_written=[str(layout.transcripts / name) for name in hidden if is_temp(name)],
        video_ids={n.removesuffix(VIDEO_SUFFIX) for n in entry_names(layout.videos) if n.endswith(VIDEO_SUFFIX)},
        audio_ids={n.removesuffix(AUDIO_SUFFIX) for n in entry_names(layout.audio) if n.endswith(AUDIO_SUFFIX)},
    )


# -- what the ledger says -----------------------------------------------------------------
@dataclass
class _Rows:
    """What is read of the ledger: every transcribed episode's id, from an index; the
    rows of the few episodes elsewhere (queued, in flight, failed), of those changed since
    the last clean check, and of those a listing or a marker names."""

    transcribed: set[str] = field(default_factory=set)
    others: dict[str, str] = field(default_factory=dict)  # id: stage, of the episodes not transcribed
    changed: dict[str, str] = field(default_factory=dict)  # the transcribed rows whose transcript is read
    missing: dict[str, str] = field(default_factory=dict)  # rows whose transcript must be there and is not
    flags: dict[str, tuple] = field(default_factory=dict)  # (video_deleted, audio_deleted) of files present
    marked: dict[str, str] = field(default_factory=dict)  # stage of the episodes marked failed


def _read_rows(layout: Layout, listing: _Listing, since: float | None, markers: set[str],
               transcripts_temporary: bool) -> _Rows:
    from scribeflow.state.ledger import STAGES, TRANSCRIBED, Ledger

    rows = _Rows()
    if not layout.ledger.exists():
        return rows
    with Ledger(layout.ledger) as ledger:
        if since is None:  # every transcribed row is to be read: their ids come with them
            rows.changed = ledger.stages_in(TRANSCRIBED)
            rows.transcribed = set(rows.changed)
        else:
            rows.changed = ledger.changed_since(TRANSCRIBED, since)
            rows.transcribed = ledger.ids_in(TRANSCRIBED)
        rows.others = ledger.stages_in([s for s in STAGES if s not in TRANSCRIBED])
        # Tokenized and analyzed episodes' transcripts may be gone by design.
        must_have = ledger.ids_in(["transcribed"]) if transcripts_temporary else rows.transcribed
        rows.missing = dict(ledger.rows_of(sorted(must_have - listing.present), "stage"))
        with_files = rows.transcribed & (listing.video_ids | listing.audio_ids)
        rows.flags = {row[0]: row[1:] for row in ledger.rows_of(sorted(with_files), "video_deleted",
                                                                 "audio_deleted")}
        rows.marked = dict(ledger.rows_of(sorted(markers), "stage"))
    return rows


# -- where they disagree ------------------------------------------------------------------
# Set operations rather than a Python step per ledger row (171,881 at month four).
def _transcript_findings(layout: Layout, listing: _Listing, rows: _Rows) -> tuple[list[Finding], int, int]:
    """The transcripts the ledger vouches for that are missing or not valid (only those
    changed since the last clean check are parsed). Returns (findings, how many are
    invalid, how many were parsed)."""
    found: list[Finding] = [(episode, 0, f"{episode}: ledger says {stage} but {layout.transcript(episode)} is "
                                         f"missing") for episode, stage in rows.missing.items()]
    parsed = 0
    for episode in rows.changed.keys() & listing.present:  # valid at the last check unless written since
        parsed += 1
        problem = _transcript_problem(listing.transcript(episode), episode)
        if problem:
            found.append((episode, 0, f"{episode}: ledger says {rows.changed[episode]} but {problem}"))
    return found, len(found), parsed


def _row_findings(layout: Layout, listing: _Listing, rows: _Rows, running: bool) -> list[Finding]:
    """Files the ledger says were deleted, transcripts of episodes it has elsewhere (only
    at rest: a job may be writing one), failed markers it disagrees with."""
    found = [(episode, 1, f"{episode}: ledger says the video was deleted but it is on disk")
             for episode in listing.video_ids & rows.flags.keys() if rows.flags[episode][0]]
    found += [(episode, 2, f"{episode}: ledger says the audio was deleted but it is on disk")
              for episode in listing.audio_ids & rows.flags.keys() if rows.flags[episode][1]]
    if not running:
        found += [(episode, 3, f"{episode}: a transcript exists but the ledger says {rows.others[episode]}")
                  for episode in listing.present & rows.others.keys()]
    found += [(episode, 4, f"{episode}: marked failed ({layout.failed_marker(episode)}) but the ledger says "
                           f"{stage}")
              for episode, stage in rows.marked.items() if stage != "failed"]
    return found


def _unrecorded(listing: _Listing, rows: _Rows, markers: set[str], running: bool) -> list[str]:
    """Episodes with a marker or (at rest) a transcript and no row in the ledger."""
    problems = [f"{episode}: marked failed but not in the ledger" for episode in sorted(markers - rows.marked.keys())]
    if not running:
        problems += [f"{episode}: a transcript exists but the ledger has no row for it"
                     for episode in sorted(listing.present - rows.transcribed - rows.others.keys())]
    return problems


def _leftovers(layout: Layout, listing: _Listing, transcribed: set[str], markers: set[str], cleanup) -> list[str]:
    """At rest: partial and half-written files, and the videos and audio of finished or
    failed episodes that the cleanup settings say are deleted."""
    problems = []
    for path in file_paths(layout.videos):
        episode = path.name.split(".")[0]
        if path.name.endswith(PARTIAL_SUFFIXES):
            problems.append(f"{path}: partial download left behind")
        elif episode in markers or (cleanup.delete_video_after_transcription and episode in transcribed):
            problems.append(f"{path}: video of a finished or failed episode left behind")
    for path in file_paths(layout.audio):
        episode = path.name.split(".")[0]
        if is_temp(path.name):
            problems.append(f"{path}: half-written audio left behind")
        elif episode in markers or (cleanup.delete_audio_after_transcription and episode in transcribed):
            problems.append(f"{path}: audio of a finished or failed episode left behind")
    return problems + [f"{path}: half-written transcript left behind" for path in sorted(listing.half_written)]


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
