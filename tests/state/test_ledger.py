"""The jobs ledger under many writer processes at once, as in a real run."""

import ast
import multiprocessing as mp
import os
import random
import re
import sqlite3
from collections import Counter
from unittest import mock

import pytest
from conftest import REPO

from scribeflow.budget.monitor import DiskUsage
from scribeflow.config import settings as cfg
from scribeflow.state import ledger as sf_ledger
from scribeflow.state.ledger import STAGES, TRANSCRIBED, Ledger

WORKERS, ROUNDS, EPISODES = 6, 60, 5


def _hammer(db: str, worker: int) -> None:
    # Each round: a read-then-write (attempts + 1 on a shared episode), an episode of
    # one's own through its stages, a disk sample and a pause toggle.
    with Ledger(db, timeout=60) as ledger:
        for n in range(ROUNDS):
            ledger.set_stage(f"shared{n % EPISODES}", "downloading")
            own = f"w{worker}-{n}"
            for stage in ("downloading", "downloaded", "extracted", "transcribed"):
                ledger.set_stage(own, stage, video_size_bytes=n)
            ledger.sample_disk(DiskUsage(videos=n), paused=bool(n % 2))
            ledger.start_pause(n, "usage")
            ledger.end_pause(n)


def test_concurrent_writers_lose_no_update_and_never_see_locked(tmp_path):
    db = str(tmp_path / "jobs.db")
    Ledger(db).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(db, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    # A "database is locked" escaping a worker would have ended it with an error.
    assert [p.exitcode for p in procs] == [0] * WORKERS

    conn = sqlite3.connect(db)
    attempts = dict(conn.execute("SELECT id, attempts FROM jobs WHERE id LIKE 'shared%'"))
    assert sum(attempts.values()) == WORKERS * ROUNDS  # no increment lost
    assert attempts == {f"shared{k}": WORKERS * ROUNDS // EPISODES for k in range(EPISODES)}
    own = conn.execute("SELECT COUNT(*), SUM(stage = 'transcribed'), SUM(transcribed_at >= downloading_at) "
                       "FROM jobs WHERE id LIKE 'w%'").fetchone()
    assert own == (WORKERS * ROUNDS,) * 3
    assert conn.execute("SELECT COUNT(*) FROM disk_samples").fetchone()[0] == WORKERS * ROUNDS
    # Pause events never overlap: at most one is open at a time.
    assert conn.execute("SELECT COUNT(*) FROM pause_events WHERE ended_at IS NULL").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    # The totals the triggers kept through 6 writers at once are those of the rows.
    with Ledger(db) as ledger:
        stages = Counter(stage for (stage,) in conn.execute("SELECT stage FROM jobs"))
        assert ledger.stage_counts() == stages and ledger.transcribed_count() == stages["transcribed"]
        assert ledger.throughput(0)["downloads"] == WORKERS * ROUNDS  # the shared ones only started


def test_disk_samples_are_thinned_but_pause_changes_always_recorded(tmp_path):
    with Ledger(tmp_path / "jobs.db") as ledger:
        assert ledger.sample_disk(DiskUsage(videos=1), paused=False, min_interval=60)
        assert not ledger.sample_disk(DiskUsage(videos=2), paused=False, min_interval=60)
        assert ledger.sample_disk(DiskUsage(videos=3), paused=True, min_interval=60)
        assert [s[1:] for s in ledger.disk_samples()] == [(1, 0), (3, 1)]


# SQL statements as they appear in string literals (upper case: prose says "select").
SQL = re.compile(r"\bSELECT\b[\s\S]+\bFROM\b|\bINSERT\b[\s\S]*\bINTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
                 r"|\bPRAGMA\b|\bCREATE\s+(TABLE|INDEX)\b|\bBEGIN\s+IMMEDIATE\b")
# files.is_disk_full tells SQLite's "disk full" apart from other errors: it reads an error
# code, it does not open a database.
SQLITE_ALLOWED = {"ledger.py", "files.py", "concordance.py"}
# The two databases, each spoken to by one module: the ledger (jobs.db) and the corpus index.
SQL_MODULES = {"ledger.py", "concordance.py"}


def _python_sources():
    for folder in ("src/scribeflow", "scripts"):
        yield from sorted((REPO / folder).rglob("*.py"))


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)


def test_only_the_ledger_module_speaks_sql():
    """Every statement on jobs.db lives in ledger.py, and on the corpus index in
    concordance.py; the other modules call their methods."""
    offenders = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        if "sqlite3" in imported and path.name not in SQLITE_ALLOWED:
            offenders.append(f"{path.relative_to(REPO)} imports sqlite3")
        if path.name not in SQL_MODULES:
            offenders += [f"{path.relative_to(REPO)}: {s.strip()[:60]!r}" for s in _strings(tree) if SQL.search(s)]
    assert not offenders, "SQL outside ledger.py and concordance.py:\n" + "\n".join(offenders)


# -- the totals status and plan read (kept by triggers) ------------------------------------
COLUMNS = ("stage", "downloading_at", "downloaded_at", "extracting_at", "extracted_at", "transcribing_at",
           "transcribed_at", "video_size_bytes", "audio_size_bytes", "transcript_size_bytes", "video_deleted",
           "audio_deleted", "worker_rss_bytes")


def _random_history(ledger: Ledger, rng: random.Random, ops: int) -> None:
    """What the steps, retry and a rebuild write, in a random order."""
    ids = [f"ep{k}" for k in range(25)]
    ledger.enqueue(ids[:15])
    for _ in range(ops):
        episode, op = rng.choice(ids), rng.random()
        if op < 0.2:  # one episode through the pipeline, as the steps write it
            for stage in ("downloading", "downloaded", "extracting", "extracted", "transcribing", "transcribed",
                          "analyzed"):
                ledger.set_stage(episode, stage, **({"video_size_bytes": rng.randint(1, 10**9)} if stage ==
                                                   "downloaded" else {"audio_size_bytes": rng.randint(1, 10**8)}
                                                   if stage == "extracted" else {}))
        elif op < 0.6:
            stage = rng.choice(STAGES)
            fields = {k: rng.choice([None, rng.randint(1, 10**9)])
                      for k in ("video_size_bytes", "audio_size_bytes", "transcript_size_bytes", "worker_rss_bytes")
                      if rng.random() < 0.4}
            ledger.set_stage(episode, stage, **fields)
        elif op < 0.75:
            ledger.update(episode, video_deleted=rng.randint(0, 1), audio_deleted=rng.randint(0, 1),
                          transcribed_at=rng.choice([None, rng.uniform(0, 2e9)]))
        elif op < 0.85:
            ledger.requeue([episode])
        elif op < 0.95:  # a rebuild; a transcript and a failed marker may name the same episode
            ledger.restore({episode: (rng.choice(TRANSCRIBED), rng.uniform(0, 2e9), rng.randint(1, 10**5))},
                           {episode: (rng.uniform(0, 2e9), "HTTP 404", "download", 1)} if rng.random() < 0.3 else {})
        else:
            ledger.add_transcribe_failure(episode)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_status_totals_equal_what_the_rows_say_after_any_history(tmp_path, seed):
    """status and plan read totals the database keeps as rows change (171,881 rows are not
    aggregated at every look): after a random history of writes, each equals the rows'."""
    with Ledger(tmp_path / "jobs.db") as ledger:
        _random_history(ledger, random.Random(seed), 400)
        rows = [dict(zip(COLUMNS, r)) for r in ledger.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs")]
        done = [r for r in rows if r["stage"] in TRANSCRIBED]
        timed = [r for r in done if r["transcribed_at"] is not None]

        def mean(values):
            values = [v for v in values if v is not None]
            return pytest.approx(sum(values) / len(values)) if values else None

        def speed(r, size, start, end):
            if r[end] is not None and r[start] is not None and r[end] > r[start] and r[size] is not None:
                return r[size] / (r[end] - r[start])
            return None

        assert ledger.stage_counts() == Counter(r["stage"] for r in rows)
        assert ledger.transcribed_count() == len(done)
        t = ledger.throughput(1e9)
        assert t["downloads"] == sum(r["downloaded_at"] is not None for r in rows)
        assert t["transcribed"] == len(timed)
        assert t["transcribed_since"] == sum(r["transcribed_at"] >= 1e9 for r in timed)
        assert t["transcript_bytes"] == sum(r["transcript_size_bytes"] or 0 for r in done)
        assert t["freed_avg"] == mean([r["video_deleted"] * (r["video_size_bytes"] or 0)
                                       + r["audio_deleted"] * (r["audio_size_bytes"] or 0) for r in done])
        bps = 32_000
        n, download, transcription, extraction, video, duration, transcript = ledger.job_averages(bps)
        assert n == len(timed) and None not in (download, transcription, extraction)
        assert download == mean([speed(r, "video_size_bytes", "downloading_at", "downloaded_at") for r in timed])
        seconds = [speed(r, "audio_size_bytes", "transcribing_at", "transcribed_at") for r in timed]
        assert transcription == mean([None if s is None else s / bps for s in seconds])
        seconds = [speed(r, "audio_size_bytes", "extracting_at", "extracted_at") for r in timed]
        assert extraction == mean([None if s is None else s / bps for s in seconds])
        assert (video, transcript) == (mean([r["video_size_bytes"] for r in timed]),
                                       mean([r["transcript_size_bytes"] for r in timed]))
        assert duration == mean([None if r["audio_size_bytes"] is None else r["audio_size_bytes"] / bps
                                 for r in timed])
        assert ledger.peak_memory()[0] >= max((r["worker_rss_bytes"] or 0 for r in rows), default=0)


def test_a_ledger_from_before_the_totals_counts_them_once_when_opened(tmp_path):
    db = tmp_path / "jobs.db"
    with Ledger(db) as ledger:
        _random_history(ledger, random.Random(7), 200)
        before = (ledger.stage_counts(), ledger.throughput(0), ledger.job_averages(32_000))
        with ledger.transaction() as c:  # the file as the previous format left it
            c.execute("DROP TABLE totals")
            c.execute("DROP TABLE stage_totals")
            for name in ("insert", "update", "delete"):
                c.execute(f"DROP TRIGGER jobs_totals_{name}")
            c.execute("PRAGMA user_version = 0")
    with Ledger(db) as ledger:
        stages, throughput, averages = before
        assert ledger.stage_counts() == stages
        assert ledger.throughput(0) == {k: v if v is None else pytest.approx(v) for k, v in throughput.items()}
        assert ledger.job_averages(32_000) == tuple(v if v is None else pytest.approx(v) for v in averages)
        ledger.set_stage("new", "transcribed")  # and kept from then on
        assert ledger.stage_counts()["transcribed"] == before[0].get("transcribed", 0) + 1


# -- the ledger's check at a run's start ----------------------------------------------------
def test_the_start_reads_every_page_only_when_the_last_run_did_not_end_cleanly(tmp_path):
    """quick_check reads the whole file (~1 s warm, 14 s cold at 171,881 episodes): a start
    after a clean end skips it; any other change to the file brings it back."""
    settings = cfg.validate({"data_dir": str(tmp_path), "storage_dir": str(tmp_path)})
    db = tmp_path / "jobs.db"
    with Ledger(db) as ledger:
        ledger.enqueue([f"ep{k}" for k in range(2000)])
        ledger.start_run()
    with mock.patch.object(sf_ledger, "probe", wraps=sf_ledger.probe) as probe:
        assert sf_ledger.unreadable(db) is None and probe.call_count == 1  # no clean end yet
        sf_ledger.end_run(settings)  # onsuccess / onerror: every page read there, once
        assert probe.call_count == 2
        assert sf_ledger.unreadable(db) is None and probe.call_count == 2  # as the clean end left it
        assert sf_ledger.unreadable(db, full=True) is None and probe.call_count == 3  # check --full

        with Ledger(db, verify=True) as ledger:  # a run's start after the clean end
            assert probe.call_count == 3
            ledger.set_stage("ep1", "downloading")  # then it runs, and is killed: no end
        assert sf_ledger.unreadable(db) is None and probe.call_count == 4

        sf_ledger.end_run(settings)
        size = db.stat().st_size
        with open(db, "r+b") as f:  # a disk fault in an old page; the times put back
            f.seek(size // 2)
            f.write(os.urandom(4096))
        os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns))
        assert sf_ledger.unreadable(db)  # the change time moved: every page is read
        sf_ledger.mark_clean(db)  # a damaged file is never marked clean
        assert sf_ledger.unreadable(db)
