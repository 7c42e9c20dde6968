"""The jobs ledger: one SQLite file ({data_dir}/jobs.db) that every rule writes to.

Every statement on that file is written here: other modules ask a Ledger (the writer)
or a LedgerReader (a read-only look beside a live run) by name, and catch `Error`.

Many job processes write at once, so every connection sets a busy timeout and
read-then-write goes through BEGIN IMMEDIATE. The journal mode is the rollback
journal (DELETE), not WAL: the SQLite linked by Python 3.11 here (3.40) is inside
the range of SQLite's WAL-reset corruption bug, and WAL also requires all writers
on one host. SQLite's locking is not reliable over NFS: on a cluster, keep
data_dir/jobs.db on a filesystem with working POSIX locks (docs/cluster.md; a cluster
run refuses mounts whose locks stay on one node).

A ledger that is not a readable database (a disk fault, a copy cut short) is never
fatal: the first process to open it moves it aside (jobs.db.corrupt-TIME) and rebuilds
it from the files on disk (transcripts, analyses, failed markers: recovery.py), saying
so in one line. A write that meets a full disk waits for space when the opener gave
`on_full` (the steps do), and otherwise reports SQLite's own error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

from scribeflow.config.layout import Layout
from scribeflow.config.settings import Settings
from scribeflow.files import atomic_write_text, is_disk_full

log = logging.getLogger("scribeflow.state.ledger")
HOUR, DAY = 3600.0, 86400.0

STAGES = (
    "queued", "downloading", "downloaded", "extracting", "extracted",
    "transcribing", "transcribed", "tokenized", "analyzed", "failed",
)
# The stages of an episode whose transcript is done.
TRANSCRIBED = ("transcribed", "tokenized", "analyzed")
# SQL: "stage IN (...)" for them.
TRANSCRIBED_SQL = f"stage IN ({', '.join(repr(s) for s in TRANSCRIBED)})"
# An episode whose download has ended, one way or the other: every stage from downloaded on.
DOWNLOAD_ENDED = frozenset(STAGES[STAGES.index("downloaded"):])
# What a failed query raises: callers catch it without knowing the database.
Error = sqlite3.Error

# SQL: the attempts of a failed episode's failing step: its failed transcriptions when
# there are any (not the one download before them), else its downloads.
FAILED_ATTEMPTS_SQL = "COALESCE(NULLIF(transcribe_failures, 0), attempts)"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    stage TEXT NOT NULL DEFAULT 'queued' CHECK (stage IN ({", ".join(repr(s) for s in STAGES)})),
    declared_bytes INTEGER,
    video_size_bytes INTEGER,
    audio_size_bytes INTEGER,
    transcript_size_bytes INTEGER,
    video_deleted INTEGER NOT NULL DEFAULT 0,
    audio_deleted INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{s}_at REAL" for s in STAGES)},
    updated_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    transcribe_failures INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    worker_rss_bytes INTEGER,
    worker_gpu_bytes INTEGER,
    -- whose failure the last one was: episode, host or interrupted (failures.kind)
    failure_kind TEXT,
    -- what the transcript comes from: asr or subtitles (set for a subtitled one when planned)
    transcript_source TEXT,
    -- a sampled subtitled episode also transcribed: the ASR's character errors against the
    -- subtitle, and the subtitle's characters (subtitles.sample_share)
    sample_errors INTEGER,
    sample_chars INTEGER
);
-- (stage, id): the ids of the episodes in some stages come from the index alone
-- (scribeflow check reads the transcribed ones: 171,881 at month four).
CREATE INDEX IF NOT EXISTS jobs_stage_id ON jobs(stage, id);
-- The disk accounting asks which rows changed lately (disk.py): an index lookup.
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated_at);
CREATE TABLE IF NOT EXISTS pause_events (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    usage_bytes INTEGER NOT NULL,
    resume_usage_bytes INTEGER,
    reason TEXT,
    events INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    host TEXT,
    pid INTEGER
);
CREATE TABLE IF NOT EXISTS disk_samples (
    at REAL NOT NULL,
    total_bytes INTEGER NOT NULL,
    videos_bytes INTEGER, partial_bytes INTEGER, audio_bytes INTEGER,
    transcripts_bytes INTEGER, other_bytes INTEGER,
    paused INTEGER NOT NULL DEFAULT 0,
    host TEXT
);
CREATE INDEX IF NOT EXISTS disk_samples_at ON disk_samples(at);
"""

# -- totals: what status and plan read, kept by the database as rows change ------------
# Each sum is one expression of a row ({r}: NEW or OLD in the triggers, jobs in a
# recount), so that status and plan read one row instead of aggregating 171,881: the
# triggers add a row's new value and take its old one away on every write, inside the
# writer's transaction, whichever process writes. "Transcribed" (A) is a row with its
# transcription time in one of the TRANSCRIBED stages.
_T = "{r}.stage IN (" + ", ".join(repr(s) for s in TRANSCRIBED) + ")"
_A = f"({{r}}.transcribed_at IS NOT NULL AND {_T})"
_SPEED = "CASE WHEN {a} AND {{r}}.{end} > {{r}}.{start} THEN {{r}}.{size} * 1.0 / ({{r}}.{end} - {{r}}.{start}) END"
_MEANS = {  # name: a value whose mean over the transcribed rows status or plan shows (NULL: not counted)
    "download_bps": _SPEED.format(a=_A, end="downloaded_at", start="downloading_at", size="video_size_bytes"),
    "transcribe_audio_bps": _SPEED.format(a=_A, end="transcribed_at", start="transcribing_at",
                                          size="audio_size_bytes"),
    "extract_audio_bps": _SPEED.format(a=_A, end="extracted_at", start="extracting_at", size="audio_size_bytes"),
    "video_bytes": f"CASE WHEN {_A} THEN {{r}}.video_size_bytes END",
    "audio_bytes": f"CASE WHEN {_A} THEN {{r}}.audio_size_bytes END",
    "transcript_bytes": f"CASE WHEN {_A} THEN {{r}}.transcript_size_bytes END",
}
_SUMS = {  # name: a row's share of a total
    "downloads": "({r}.downloaded_at IS NOT NULL)",
    "transcribed": _A,
    # Transcripts made from subtitles (no transcribed_at: the ASR's rates leave them out),
    # and those planned but not made yet.
    "subtitled": f"(COALESCE({{r}}.transcript_source, '') = 'subtitles' AND {_T})",
    "subtitled_todo": f"(COALESCE({{r}}.transcript_source, '') = 'subtitles' AND NOT {_T} AND {{r}}.stage != 'failed')",
    # The running CER of the ASR on the sampled subtitled episodes.
    "sampled": "(COALESCE({r}.sample_chars, 0) > 0)",
    "sample_errors_sum": "COALESCE({r}.sample_errors, 0)",
    "sample_chars_sum": "COALESCE({r}.sample_chars, 0)",
    "in_transcribed_stages": f"({_T})",
    "transcribed_stage_bytes": f"CASE WHEN {_T} THEN COALESCE({{r}}.transcript_size_bytes, 0) ELSE 0 END",
    "freed_bytes": f"""CASE WHEN {_T} THEN {{r}}.video_deleted * COALESCE({{r}}.video_size_bytes, 0)
                       + {{r}}.audio_deleted * COALESCE({{r}}.audio_size_bytes, 0) ELSE 0 END""",
    **{f"{name}_sum": f"COALESCE({expr}, 0)" for name, expr in _MEANS.items()},
    **{f"{name}_n": f"(({expr}) IS NOT NULL)" for name, expr in _MEANS.items()},
}
_PEAKS = {"max_rss": ("MAX", "worker_rss_bytes"), "max_gpu": ("MAX", "worker_gpu_bytes"),
          "first_download": ("MIN", "downloading_at")}  # over every value ever written
_TOTALS_TABLES = f"""
-- Status counts the episodes through each stage in the last hour, and finds the last
-- download and transcription: index lookups.
CREATE INDEX IF NOT EXISTS jobs_downloaded ON jobs(downloaded_at);
CREATE INDEX IF NOT EXISTS jobs_extracted ON jobs(extracted_at);
CREATE INDEX IF NOT EXISTS jobs_transcribed ON jobs(transcribed_at);
DROP INDEX IF EXISTS jobs_stage;  -- jobs_stage_id does its work
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    {", ".join(f"{name} REAL NOT NULL DEFAULT 0" for name in _SUMS)},
    {", ".join(f"{name} REAL" for name in _PEAKS)}
);
CREATE TABLE IF NOT EXISTS stage_totals (stage TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""


def _totals_trigger(event: str, signs: dict[str, int]) -> str:
    sets = [f"{name} = {name}" + "".join(f" {'+' if sign > 0 else '-'} ({expr.format(r=row)})"
                                         for row, sign in signs.items())
            for name, expr in _SUMS.items()]
    if "NEW" in signs:
        sets += [f"{name} = COALESCE({fn}({name}, NEW.{col}), {name}, NEW.{col})"
                 for name, (fn, col) in _PEAKS.items()]
    stages = [f"UPDATE stage_totals SET n = n {'+' if sign > 0 else '-'} 1 WHERE stage = {row}.stage;"
              for row, sign in signs.items()]
    return (f"CREATE TRIGGER IF NOT EXISTS jobs_totals_{event.lower()} AFTER {event} ON jobs BEGIN "
            f"UPDATE totals SET {', '.join(sets)}; {' '.join(stages)} END;")


TOTALS_SCHEMA = [s.strip() for s in _TOTALS_TABLES.split(";") if s.strip()] + [
    _totals_trigger("INSERT", {"NEW": 1}),
    _totals_trigger("UPDATE", {"NEW": 1, "OLD": -1}),
    _totals_trigger("DELETE", {"OLD": -1}),
]
# The ledger's format: PRAGMA user_version. 1: totals kept by triggers; 2: failure_kind;
# 3: transcript_source.
VERSION = 3


def thin_peaks(samples: list, max_points: int) -> list:
    """Disk samples (at, bytes, ...) thinned to about `max_points`, keeping each bucket's
    highest: a peak near the hard limit must still show in a plot or on the dashboard."""
    step = max(1, len(samples) // max_points)
    return [max(samples[i:i + step], key=lambda s: s[1]) for i in range(0, len(samples), step)]


def end_run(settings: Settings) -> None:
    """The run's end (onsuccess, onerror): recorded when the ledger can take it, and the
    file marked as this clean end left it (mark_clean)."""
    path = Layout.from_config(settings).ledger
    try:
        with Ledger(path) as ledger:
            ledger.end_run()
    except sqlite3.Error as exc:
        log.warning("Could not record the run's end: %s", exc)
        return
    mark_clean(path)


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is not a database, or a damaged one."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def probe(path: str | os.PathLike) -> str | None:
    """Why the ledger at `path` is unreadable, or None (also when it does not exist).
    Reads only; checks every page's structure (PRAGMA quick_check)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            result = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        return str(exc)
    return None if result == "ok" else f"damaged: {result}"


# Beside the ledger: the file's identity when the last run ended cleanly (mark_clean).
CLEAN_SUFFIX = ".clean"


def _identity(path: Path) -> list[int] | None:
    """What any write to the file changes: inode, size, and modification and change
    times in nanoseconds (a copy, a truncation or bytes written from outside too)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _journal(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def _clean_mark(path: Path) -> Path:
    return path.with_name(path.name + CLEAN_SUFFIX)


def mark_clean(path: str | os.PathLike) -> None:
    """At a run's clean end, after its last write: read every page (PRAGMA quick_check)
    and, when they are sound, remember the file's identity. The next start then need not
    read them again (about 1 s warm and 14 s cold at 171,881 episodes; the end of a run
    of hours does not feel it, a start does) unless the file is no longer what this end
    verified: a run killed before its end, a write from another tool, a copy, a hot
    journal. A damaged file is not marked: the next start finds it and rebuilds it."""
    path = Path(path)
    identity = _identity(path)
    if identity is None or _journal(path).exists():  # a write in flight or a hot journal
        return
    problem = probe(path)
    if problem is not None:
        log.warning("The ledger %s is damaged (%s): the next run rebuilds it", path, problem)
        return
    if _identity(path) != identity:  # written meanwhile: the next start checks it
        return
    with contextlib.suppress(OSError):
        atomic_write_text(_clean_mark(path), json.dumps(identity))


def unreadable(path: str | os.PathLike, full: bool = False) -> str | None:
    """Why the ledger at `path` is unreadable, or None: `probe` reads every page, unless
    the file is exactly as a run's clean end left it (mark_clean) and not `full`."""
    path = Path(path)
    if not full and not _journal(path).exists():
        try:
            marked = json.loads(_clean_mark(path).read_text())
        except (OSError, ValueError):
            marked = None
        if marked is not None and marked == _identity(path):
            return None
    return probe(path)


def _declared_columns() -> dict[str, str]:
    """{name: declaration} of the jobs table as SCHEMA declares it: what an older
    ledger that lacks a column gains when opened."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA)
        return {name: f"{kind}{' NOT NULL' if notnull else ''}{'' if default is None else f' DEFAULT {default}'}"
                for _, name, kind, notnull, default, _ in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()


STAGE_TIME_COLUMNS = frozenset(f"{s}_at" for s in STAGES)


def _stage_time(column: str) -> str:
    """A column that holds when episodes reached a stage: the only names a query takes."""
    if column not in STAGE_TIME_COLUMNS:
        raise ValueError(f"not a stage time column: {column!r}")
    return column


def _stage_list(stages) -> str:
    """SQL: the stages, quoted, for "stage IN (...)"; only names from STAGES."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}")
    return ", ".join(repr(s) for s in stages)


def _dicts(cursor) -> list[dict]:
    """A query's rows as {column: value}."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


class _Queries:
    """What the ledger answers; shared by the writer (Ledger) and LedgerReader."""

    conn: sqlite3.Connection | None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def job(self, episode: str) -> dict | None:
        rows = _dicts(self.conn.execute("SELECT * FROM jobs WHERE id = ?", (episode,)))
        return rows[0] if rows else None

    def stage_counts(self) -> dict[str, int]:
        """{stage: episodes in it}, the stages no episode is in left out (kept by triggers)."""
        return dict(self.conn.execute("SELECT stage, n FROM stage_totals WHERE n > 0"))

    def sampled_cer(self) -> tuple[int, float | None]:
        """(sampled subtitled episodes, the ASR's CER over them: errors over characters)."""
        try:
            n, errors, chars = self._totals("sampled", "sample_errors_sum", "sample_chars_sum")
        except sqlite3.OperationalError:
            return 0, None
        return int(n or 0), (errors / chars if chars else None)

    def subtitled_counts(self) -> tuple[int, int]:
        """(transcripts made from subtitles, subtitled episodes planned and not made yet);
        (0, 0) from a ledger of an older format (a read-only reader cannot update it)."""
        try:
            done, todo = self._totals("subtitled", "subtitled_todo")
        except sqlite3.OperationalError:
            return 0, 0
        return int(done or 0), int(todo or 0)

    def _totals(self, *names: str) -> tuple:
        return self.conn.execute(f"SELECT {', '.join(names)} FROM totals").fetchone() or (None,) * len(names)

    def ids_in(self, stages) -> set[str]:
        """The ids of the episodes in one of `stages`: from the index (jobs_stage_id)."""
        return {row[0] for row in self.conn.execute(
            f"SELECT id FROM jobs WHERE stage IN ({_stage_list(stages)})")}

    def stages_in(self, stages) -> dict[str, str]:
        """{id: stage} of the episodes in one of `stages`."""
        return dict(self.conn.execute(f"SELECT id, stage FROM jobs WHERE stage IN ({_stage_list(stages)})"))

    def changed_since(self, stages, since: float) -> dict[str, str]:
        """{id: stage} of the episodes in one of `stages` whose row changed at or after
        `since`: an index range (jobs_updated)."""
        return dict(self.conn.execute(
            f"SELECT id, stage FROM jobs WHERE updated_at >= ? AND +stage IN ({_stage_list(stages)})", (since,)))

    def rows_of(self, ids, *columns: str) -> list[tuple]:
        """(id, *columns) of those of `ids` that have a row."""
        if not columns or not all(c.isidentifier() for c in columns):
            raise ValueError(f"not column names: {columns}")
        ids, rows = list(ids), []
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            batch = ids[start:start + 500]
            rows += self.conn.execute(f"SELECT id, {', '.join(columns)} FROM jobs "
                                      f"WHERE id IN ({','.join('?' * len(batch))})", batch).fetchall()
        return rows

    def stages_of(self, ids: list[str]) -> list[tuple]:
        """(stage, updated_at) of those of `ids` that have a row."""
        return [row[1:] for row in self.rows_of(ids, "stage", "updated_at")]

    def active_rows(self, stages, changed_since: float) -> list[tuple]:
        """(id, stage, updated_at) of the rows in one of `stages`, or changed at or after
        `changed_since` once started (a row queued and never started has written nothing;
        one put back to queued, an interrupted download, has). Two index lookups."""
        return self.conn.execute(f"SELECT id, stage, updated_at FROM jobs WHERE stage IN ({_stage_list(stages)}) "
                                 f"UNION SELECT id, stage, updated_at FROM jobs WHERE updated_at >= ? "
                                 f"AND NOT (stage = 'queued' AND downloading_at IS NULL)",
                                 (changed_since,)).fetchall()

    def failed(self) -> list[tuple]:
        """(id, attempts, last_error, failed_at, failure_kind) of the failed episodes, by id;
        attempts are those of the failing step (FAILED_ATTEMPTS_SQL)."""
        return self.conn.execute(f"SELECT id, {FAILED_ATTEMPTS_SQL}, last_error, failed_at, failure_kind FROM jobs "
                                 "WHERE stage = 'failed' ORDER BY id").fetchall()

    def failed_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM jobs WHERE stage = 'failed'").fetchone()[0]

    def transcribed_count(self) -> int:
        return int(self._totals("in_transcribed_stages")[0] or 0)

    def transcribed_since(self, since: float) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM jobs WHERE transcribed_at >= ?", (since,)).fetchone()[0]

    def last_update(self) -> float | None:
        return self.conn.execute("SELECT MAX(updated_at) FROM jobs").fetchone()[0]

    def peak_memory(self) -> tuple:
        """(largest resident peak, largest GPU memory) of the processes that transcribed."""
        return tuple(None if v is None else int(v) for v in self._totals("max_rss", "max_gpu"))

    def stage_times(self, column: str) -> list[float]:
        """When episodes reached a stage (`column`: e.g. transcribed_at), in time order."""
        column = _stage_time(column)
        return [r[0] for r in self.conn.execute(
            f"SELECT {column} FROM jobs WHERE {column} IS NOT NULL ORDER BY {column}")]

    def reached_since(self, columns, since: float) -> tuple:
        """How many episodes reached each stage (`columns`: stage time columns) at or after
        `since`: an index range each (jobs_downloaded, ...), the last hour's rows alone."""
        return tuple(self.conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {_stage_time(c)} >= ?",
                                       (since,)).fetchone()[0] for c in columns)

    def throughput(self, since: float) -> dict:
        """The totals status measures rates from: the first download's start, the last
        download and transcription, downloads and transcriptions in all and at or after
        `since`, the transcripts' bytes and the mean bytes freed per transcription."""
        q = self.conn.execute
        first, downloads, done, stage_bytes, in_stages, freed = self._totals(
            "first_download", "downloads", "transcribed", "transcribed_stage_bytes", "in_transcribed_stages",
            "freed_bytes")
        last_dl = q("SELECT MAX(downloaded_at) FROM jobs").fetchone()[0]
        last_tr = q("SELECT MAX(transcribed_at) FROM jobs").fetchone()[0]
        downloads_since = q("SELECT COUNT(*) FROM jobs WHERE downloaded_at >= ?", (since,)).fetchone()[0]
        # "+stage": SQLite would otherwise walk every transcribed row through jobs_stage.
        done_since = q(f"SELECT COUNT(*) FROM jobs WHERE transcribed_at >= ? AND +{TRANSCRIBED_SQL}",
                       (since,)).fetchone()[0]
        return {"first": first, "last_download": last_dl, "last_transcription": last_tr,
                "downloads": int(downloads or 0), "downloads_since": downloads_since, "transcribed": int(done or 0),
                "transcribed_since": done_since, "transcript_bytes": int(stage_bytes) if in_stages else None,
                "freed_avg": freed / in_stages if in_stages else None}

    def job_averages(self, audio_bytes_per_second: float) -> tuple:
        """Over the transcribed episodes: their count, the mean download speed (bytes/s),
        transcription and extraction speed (x real time; audio seconds from its bytes),
        video bytes, audio seconds and transcript bytes."""
        names = list(_MEANS)
        row = self._totals("transcribed", *(f"{n}_sum" for n in names), *(f"{n}_n" for n in names))
        means = dict(zip(names, (total / n if n else None for total, n in zip(row[1:], row[1 + len(names):]))))
        per_second = {"transcribe_audio_bps", "extract_audio_bps", "audio_bytes"}  # to seconds of audio
        return (int(row[0] or 0), *(None if means[n] is None else means[n] / audio_bytes_per_second
                                    if n in per_second else means[n] for n in names))

    def run_start(self, ended_since: float) -> float | None:
        """The start of the earliest run still going or ended at or after `ended_since`."""
        try:
            return self.conn.execute("SELECT MIN(started_at) FROM runs WHERE ended_at IS NULL OR ended_at >= ?",
                                     (ended_since,)).fetchone()[0]
        except sqlite3.OperationalError:  # a ledger read before the table existed
            return None

    def latest_run(self) -> tuple | None:
        """(started_at, ended_at) of the run that started last; ended_at None while it goes
        on (or when it was killed before it could record its end)."""
        try:
            return self.conn.execute("SELECT started_at, ended_at FROM runs ORDER BY started_at DESC LIMIT 1"
                                     ).fetchone()
        except sqlite3.OperationalError:  # a ledger read before the table existed
            return None

    # -- pauses and disk samples -------------------------------------------------
    def pause_events(self) -> list[dict]:
        return _dicts(self.conn.execute("SELECT * FROM pause_events ORDER BY started_at"))

    def disk_samples(self, since: float | None = None) -> list[tuple]:
        """(at, total_bytes, paused) in time order."""
        return self.conn.execute(
            "SELECT at, total_bytes, paused FROM disk_samples WHERE at >= ? ORDER BY at", (since or 0,)
        ).fetchall()

    def last_sample(self) -> tuple | None:
        """(total_bytes, paused) of the latest disk sample."""
        return self.conn.execute("SELECT total_bytes, paused FROM disk_samples ORDER BY at DESC LIMIT 1").fetchone()

    def first_sample_at(self) -> float | None:
        return self.conn.execute("SELECT MIN(at) FROM disk_samples").fetchone()[0]

    def usage_sums(self, since: float) -> tuple:
        """(n, sum x, sum y, sum x², sum xy) of the disk samples at or after `since`, x in
        hours from `since` (centred there so that the sums stay small enough for doubles),
        y in MB: a least-squares slope's sums."""
        return self.conn.execute(
            """SELECT COUNT(*), SUM(x), SUM(y), SUM(x * x), SUM(x * y) FROM
               (SELECT (at - ?) / 3600.0 AS x, total_bytes / 1e6 AS y FROM disk_samples WHERE at >= ?)""",
            (since, since)).fetchone()

    def transcriptions_per_hour(self, since: float) -> list[tuple]:
        """(hour since the epoch, episodes transcribed in it) from `since` on."""
        return self.conn.execute("SELECT CAST(transcribed_at / 3600 AS INTEGER), COUNT(*) FROM jobs "
                                 "WHERE transcribed_at >= ? GROUP BY 1 ORDER BY 1", (since,)).fetchall()


class LedgerReader(_Queries):
    """A read-only connection: never creates, migrates or rebuilds the file, and can be
    opened beside a live run. Raises Error when the file is missing or unreadable."""

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0, check_same_thread: bool = True):
        self.path = Path(path)
        self.conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout,
                                    check_same_thread=check_same_thread)



class Ledger(_Queries):
    def __init__(self, path: str | os.PathLike, timeout: float = 120.0, on_full=None, verify: bool = False):
        """`on_full(exc)`: called when a write meets a full disk; returns when the write
        may be tried again (or raises). `verify`: check the file first (a run's start:
        every page unless the last run ended cleanly, `unreadable`)."""
        self.path = Path(path)
        self.on_full = on_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = None
        problem = unreadable(self.path) if verify else None
        if problem is None:
            try:
                self._open(timeout)
                return
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                problem = str(exc)
        self._recover(problem, timeout)

    def _open(self, timeout: float) -> None:
        self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "delete":
            self.conn.execute("PRAGMA journal_mode = DELETE")
        self.conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        if self.conn.execute("PRAGMA user_version").fetchone()[0] < VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """A new ledger, or one from before the current format: it gains the columns it
        lacks, the indexes and the totals, counted once. Another process may do it first."""
        declared = _declared_columns()
        with self.transaction() as c:
            if c.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
                return
            for name in declared.keys() - self._columns(c):
                c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declared[name]}")
            # The totals of an older format lack the newer sums: made again, then counted.
            for event in ("insert", "update", "delete"):
                c.execute(f"DROP TRIGGER IF EXISTS jobs_totals_{event}")
            c.execute("DROP TABLE IF EXISTS totals")
            for statement in TOTALS_SCHEMA:
                c.execute(statement)
            self._recount(c)
            c.execute(f"PRAGMA user_version = {VERSION}")

    def _recover(self, problem: str, timeout: float) -> None:
        """Move the unreadable ledger aside and rebuild it from the files on disk; one
        process does it while the others wait, then find the rebuilt one."""
        from scribeflow.state.rebuild import rebuild_ledger

        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        with open(self.path.with_name(self.path.name + ".recover.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if probe(self.path) is None:  # another process rebuilt it meanwhile
                self._open(timeout)
                return
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            journal = self.path.with_name(self.path.name + "-journal")
            if journal.exists():
                os.replace(journal, aside.with_name(aside.name + "-journal"))
            self._open(timeout)
            counts = rebuild_ledger(self, self.path.parent)
        summary = ", ".join(f"{counts[stage]} {stage}" for stage in STAGES if counts.get(stage)) or "no finished episode"
        message = (f"the ledger {self.path} was unreadable ({problem}): moved it to {aside.name} and rebuilt it "
                   f"from the files on disk ({summary}); pause history and disk samples start afresh")
        log.warning(message)
        print(f"scribeflow: {message}", file=sys.stderr)

    @staticmethod
    def _recount(c) -> None:
        """The totals counted from every row (the triggers keep them from then on)."""
        c.execute("DELETE FROM totals")
        c.execute(f"INSERT INTO totals (one, {', '.join([*_SUMS, *_PEAKS])}) SELECT 1, "
                  + ", ".join([*(f"COALESCE(SUM({expr.format(r='jobs')}), 0)" for expr in _SUMS.values()),
                               *(f"{fn}({col})" for fn, col in _PEAKS.values())]) + " FROM jobs")
        c.execute("DELETE FROM stage_totals")
        c.execute("INSERT INTO stage_totals SELECT stage, COUNT(*) FROM jobs GROUP BY stage")
        c.executemany("INSERT OR IGNORE INTO stage_totals VALUES (?, 0)", ((s,) for s in STAGES))

    @staticmethod
    def _columns(conn) -> set[str]:
        return {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}

    @classmethod
    def for_config(cls, settings: Settings, **kwargs) -> "Ledger":
        return cls(Layout.from_config(settings).ledger, **kwargs)

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE: take the write lock up front, so read-then-write cannot race."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): then a ROLLBACK
            # would fail and hide the real error.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise

    def _write(self, fn):
        """Run a write; on a full disk, wait with on_full (when given) and try again."""
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if self.on_full is None or not is_disk_full(exc):
                    raise
                self.on_full(exc)

    # -- episodes ----------------------------------------------------------------
    def enqueue(self, ids) -> int:
        now, ids = time.time(), list(ids)

        def write():
            with self.transaction() as c:
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO jobs (id, stage, queued_at, updated_at) VALUES (?, 'queued', ?, ?)",
                    ((i, now, now) for i in ids),
                )
                return c.total_changes - before

        return self._write(write)

    def plan_subtitled(self, ids) -> None:
        """Mark episodes whose transcripts will come from subtitles (status and plan leave
        them out of the ASR's ETA); a transcribed one keeps what it was made from."""
        ids = list(ids)

        def write():
            with self.transaction() as c:
                c.executemany(f"UPDATE jobs SET transcript_source = 'subtitles' WHERE id = ? AND NOT {TRANSCRIBED_SQL} "
                              f"AND transcript_source IS NOT 'subtitles'", ((i,) for i in ids))

        if ids:
            self._write(write)

    def set_stage(self, episode: str, stage: str, **fields) -> None:
        """Record a stage transition with its timestamp and any size/flag fields."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        allowed = {"declared_bytes", "video_size_bytes", "audio_size_bytes", "transcript_size_bytes",
                   "video_deleted", "audio_deleted", "last_error", "source", "worker_rss_bytes",
                   "worker_gpu_bytes", "failure_kind", "transcript_source", "transcribed_at", "sample_errors",
                   "sample_chars"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown ledger fields {sorted(unknown)}")
        now = time.time()
        cols = {"stage": stage, f"{stage}_at": now, "updated_at": now, **fields}
        attempts = ", attempts = attempts + 1" if stage == "downloading" else ""

        def write():
            with self.transaction() as c:
                c.execute("INSERT OR IGNORE INTO jobs (id, queued_at, updated_at) VALUES (?, ?, ?)",
                          (episode, now, now))
                c.execute(
                    f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in cols)}{attempts} WHERE id = ?",
                    (*cols.values(), episode),
                )

        self._write(write)

    def add_transcribe_failure(self, episode: str) -> int:
        """Count a failed transcription of `episode`; the count so far."""
        def write():
            with self.transaction() as c:
                c.execute("UPDATE jobs SET transcribe_failures = transcribe_failures + 1 WHERE id = ?", (episode,))
                return c.execute("SELECT transcribe_failures FROM jobs WHERE id = ?", (episode,)).fetchone()

        row = self._write(write)
        return row[0] if row else 0

    def update(self, episode: str, **fields) -> None:
        if not fields:
            return

        def write():
            with self.transaction() as c:
                c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                          (*fields.values(), episode))

        self._write(write)

    def uncount_attempt(self, episode: str) -> None:
        """Take back the attempt counted when the download started: its failure was not the
        episode's (the host's, the environment's, an interruption)."""
        def write():
            with self.transaction() as c:
                c.execute("UPDATE jobs SET attempts = MAX(0, attempts - 1) WHERE id = ?", (episode,))

        self._write(write)

    def requeue(self, ids) -> None:
        """Make episodes eligible again: queued, no attempts, no error."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "UPDATE jobs SET stage = 'queued', attempts = 0, transcribe_failures = 0, last_error = NULL, "
                "updated_at = ? WHERE id = ?",
                ((now, i) for i in ids))

    def restore(self, reached: dict, failed: dict) -> None:
        """Rows rebuilt from the files: `reached` {id: (stage, at, transcript bytes)},
        `failed` {id: (at, reason, step, attempts)}; step "transcribe" counts the attempts
        as failed transcriptions."""
        with self.transaction() as c:
            def replace(episode: str, columns: str, values: tuple) -> None:
                # DELETE, then INSERT: a REPLACE fires no delete trigger, and the totals
                # would count the old row twice (an episode both transcribed and marked
                # failed is in `reached` and in `failed`: the failed row wins).
                c.execute("DELETE FROM jobs WHERE id = ?", (episode,))
                c.execute(f"INSERT INTO jobs (id, {columns}) VALUES (?, {', '.join('?' * len(values))})",
                          (episode, *values))

            for episode, (stage, at, size) in reached.items():
                replace(episode, f"stage, {_stage_time(f'{stage}_at')}, updated_at, transcript_size_bytes",
                        (stage, at, at, size))
            for episode, (at, reason, step, attempts) in failed.items():
                column = "transcribe_failures" if step == "transcribe" else "attempts"
                replace(episode, f"stage, failed_at, updated_at, last_error, {column}",
                        ("failed", at, at, reason, attempts))

    # -- runs: when each Snakemake run started and ended (status measures rates from there) --
    def start_run(self, at: float | None = None) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO runs (started_at, host, pid) VALUES (?, ?, ?)",
                      (at or time.time(), socket.gethostname(), os.getpid()))

    def end_run(self, at: float | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET ended_at = ? WHERE host = ? AND pid = ? AND ended_at IS NULL",
                      (at or time.time(), socket.gethostname(), os.getpid()))

    def start_pause(self, usage_bytes: int, reason: str, at: float | None = None) -> None:
        with self.transaction() as c:
            open_ = c.execute("SELECT 1 FROM pause_events WHERE ended_at IS NULL").fetchone()
            if not open_:
                c.execute("INSERT INTO pause_events (started_at, usage_bytes, reason) VALUES (?, ?, ?)",
                          (at or time.time(), usage_bytes, reason))

    def end_pause(self, usage_bytes: int, at: float | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE pause_events SET ended_at = ?, resume_usage_bytes = ? WHERE ended_at IS NULL",
                      (at or time.time(), usage_bytes))

    def thin_history(self, now: float | None = None) -> dict[str, int]:
        """Thin old disk samples and pause events so that the tables stop growing with the
        months of a run (status, plan and plots read them whole). Samples: all of the last
        2 days, one per hour up to 30 days, one per day before; each bucket keeps its
        highest sample (a peak near the hard limit must still show). Pause events older
        than 7 days: one row per day, from the day's first start, as long as that day's
        pauses together, `events` counting them. Returns the rows deleted per table."""
        now = now or time.time()
        deleted = {"disk_samples": 0, "pause_events": 0}
        if "events" not in {r[1] for r in self.conn.execute("PRAGMA table_info(pause_events)")}:
            with self.transaction() as c:  # a ledger from before the column
                if "events" not in {r[1] for r in c.execute("PRAGMA table_info(pause_events)")}:
                    c.execute("ALTER TABLE pause_events ADD COLUMN events INTEGER NOT NULL DEFAULT 1")
        with self.transaction() as c:
            for older_than, bucket in ((2 * DAY, HOUR), (30 * DAY, DAY)):
                cut = now - older_than
                before = c.total_changes
                c.execute(
                    """DELETE FROM disk_samples WHERE at < ? AND rowid NOT IN (
                           SELECT keep FROM (SELECT rowid AS keep, MAX(total_bytes) FROM disk_samples
                                             WHERE at < ? GROUP BY CAST(at / ? AS INTEGER)))""",
                    (cut, cut, bucket))
                deleted["disk_samples"] += c.total_changes - before
            cut = now - 7 * DAY
            days = c.execute(
                """SELECT CAST(started_at / ? AS INTEGER) AS day, MIN(started_at), SUM(ended_at - started_at),
                          MAX(usage_bytes), MIN(resume_usage_bytes), SUM(events), COUNT(*),
                          GROUP_CONCAT(DISTINCT reason)
                   FROM pause_events WHERE ended_at IS NOT NULL AND ended_at < ?
                   GROUP BY day HAVING COUNT(*) > 1""", (DAY, cut)).fetchall()
            for day, start, seconds, usage, resume, events, rows, reasons in days:
                c.execute("DELETE FROM pause_events WHERE ended_at IS NOT NULL AND ended_at < ? "
                          "AND CAST(started_at / ? AS INTEGER) = ?", (cut, DAY, day))
                c.execute("INSERT INTO pause_events (started_at, ended_at, usage_bytes, resume_usage_bytes, reason, "
                          "events) VALUES (?, ?, ?, ?, ?, ?)",
                          (start, start + seconds, usage, resume, reasons, events))
                deleted["pause_events"] += rows - 1
        return deleted

    def sample_disk(self, usage, paused: bool, min_interval: float = 0.0) -> bool:
        """Record one disk sample, unless another process recorded one less than
        `min_interval` seconds ago with the same pause state (months of checks every few
        seconds would otherwise grow the table without adding information)."""
        with self.transaction() as c:
            # The time is read under the write lock: read before it, another process's
            # later sample could make this one look like a duplicate.
            now = time.time()
            last = c.execute("SELECT at, paused FROM disk_samples ORDER BY at DESC LIMIT 1").fetchone()
            if min_interval > 0 and last and now - last[0] < min_interval and bool(last[1]) == bool(paused):
                return False
            c.execute(
                "INSERT INTO disk_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, usage.total, usage.videos, usage.partial, usage.audio, usage.transcripts,
                 usage.total - usage.temporary - usage.transcripts, int(paused), socket.gethostname()),
            )
        return True
