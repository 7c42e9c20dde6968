"""The jobs ledger: one SQLite file ({data_dir}/jobs.db) that every rule writes to.

Many job processes write at once, so every connection sets a busy timeout and
read-then-write goes through BEGIN IMMEDIATE. The journal mode is the rollback
journal (DELETE), not WAL: the SQLite linked by Python 3.11 here (3.40) is inside
the range of SQLite's WAL-reset corruption bug, and WAL also requires all writers
on one host. SQLite's locking is not reliable over NFS: on a cluster, keep
data_dir/jobs.db on a filesystem with working POSIX locks (README: Running on a
Slurm cluster; a cluster run refuses mounts whose locks stay on one node).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from pathlib import Path

STAGES = (
    "queued", "downloading", "downloaded", "extracting", "extracted",
    "transcribing", "transcribed", "tokenized", "analyzed", "failed",
)
# The stages of an episode whose transcript is done.
TRANSCRIBED = ("transcribed", "tokenized", "analyzed")
# SQL: "stage IN (...)" for them.
TRANSCRIBED_SQL = f"stage IN ({', '.join(repr(s) for s in TRANSCRIBED)})"

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
    transcribe_failures INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_stage ON jobs(stage);
CREATE TABLE IF NOT EXISTS pause_events (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    usage_bytes INTEGER NOT NULL,
    resume_usage_bytes INTEGER,
    reason TEXT
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


class Ledger:
    def __init__(self, path: str | os.PathLike, timeout: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "delete":
            self.conn.execute("PRAGMA journal_mode = DELETE")
        self.conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        if "transcribe_failures" not in self._columns(self.conn):
            # A ledger from before the column; another process may add it first.
            with self.transaction() as c:
                if "transcribe_failures" not in self._columns(c):
                    c.execute("ALTER TABLE jobs ADD COLUMN transcribe_failures INTEGER NOT NULL DEFAULT 0")

    @staticmethod
    def _columns(conn) -> set[str]:
        return {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}

    @classmethod
    def for_config(cls, config: dict) -> "Ledger":
        return cls(Path(config["data_dir"]) / "jobs.db")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE: take the write lock up front, so read-then-write cannot race."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- episodes ----------------------------------------------------------------
    def enqueue(self, ids) -> int:
        now = time.time()
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO jobs (id, stage, queued_at, updated_at) VALUES (?, 'queued', ?, ?)",
                ((i, now, now) for i in ids),
            )
            return c.total_changes - before

    def set_stage(self, episode: str, stage: str, **fields) -> None:
        """Record a stage transition with its timestamp and any size/flag fields."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        allowed = {"declared_bytes", "video_size_bytes", "audio_size_bytes", "transcript_size_bytes",
                   "video_deleted", "audio_deleted", "last_error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown ledger fields {sorted(unknown)}")
        now = time.time()
        cols = {"stage": stage, f"{stage}_at": now, "updated_at": now, **fields}
        attempts = ", attempts = attempts + 1" if stage == "downloading" else ""
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO jobs (id, queued_at, updated_at) VALUES (?, ?, ?)",
                      (episode, now, now))
            c.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in cols)}{attempts} WHERE id = ?",
                (*cols.values(), episode),
            )

    def add_transcribe_failure(self, episode: str) -> int:
        """Count a failed transcription of `episode`; the count so far."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET transcribe_failures = transcribe_failures + 1 WHERE id = ?", (episode,))
            row = c.execute("SELECT transcribe_failures FROM jobs WHERE id = ?", (episode,)).fetchone()
        return row[0] if row else 0

    def update(self, episode: str, **fields) -> None:
        if not fields:
            return
        with self.transaction() as c:
            c.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                      (*fields.values(), episode))

    def job(self, episode: str) -> dict | None:
        cur = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (episode,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def stage_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT stage, COUNT(*) FROM jobs GROUP BY stage"))

    # -- pauses and disk samples -------------------------------------------------
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

    def pause_events(self) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM pause_events ORDER BY started_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

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

    def disk_samples(self, since: float | None = None) -> list[tuple]:
        """(at, total_bytes, paused) in time order."""
        return self.conn.execute(
            "SELECT at, total_bytes, paused FROM disk_samples WHERE at >= ? ORDER BY at", (since or 0,)
        ).fetchall()
