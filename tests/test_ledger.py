"""The jobs ledger under many writer processes at once, as in a real run."""

import ast
import multiprocessing as mp
import re
import sqlite3

from conftest import REPO
from scribeflow.disk import DiskUsage
from scribeflow.ledger import Ledger

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
SQLITE_ALLOWED = {"ledger.py", "files.py"}


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
    """Every statement on jobs.db lives in ledger.py; the other modules call its methods."""
    offenders = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        if "sqlite3" in imported and path.name not in SQLITE_ALLOWED:
            offenders.append(f"{path.relative_to(REPO)} imports sqlite3")
        if path.name != "ledger.py":
            offenders += [f"{path.relative_to(REPO)}: {s.strip()[:60]!r}" for s in _strings(tree) if SQL.search(s)]
    assert not offenders, "SQL outside ledger.py:\n" + "\n".join(offenders)
