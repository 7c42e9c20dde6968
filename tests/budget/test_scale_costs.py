"""Month four costs what day one costs: the gate's looks walk no folder that grows with
the finished episodes, the accounting they use instead is never below the truth, and
the ledger's history stays bounded. Structural assertions, no timing."""

import gzip
import json
import os
import time

import pytest

from scribeflow.budget import monitor as disk
from scribeflow.budget.gate import DownloadGate
from scribeflow.budget.monitor import PER_EPISODE, DiskMonitor
from scribeflow.config import layout as sf_layout
from scribeflow.config.settings import validate
from scribeflow.state import logs
from scribeflow.state.ledger import Ledger

KB = 1024
HARD, PAUSE, RESUME = 10**9, 8 * 10**8, 6 * 10**8
MARGIN = 64 * KB
# What one finished episode leaves with the default config, before the logs' roll-up.
EPISODE_FILES = ("transcripts/{}.json", "tokens/{}.parquet", "analysis/episodes/{}.json",
                 "analysis/lemmas/{}.parquet",
                 *(f"logs/{r}/{{}}.log" for r in sf_layout.EPISODE_RULES),
                 *(f"benchmarks/{r}/{{}}.tsv" for r in sf_layout.EPISODE_RULES))


def write(path, size=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def finished_episodes(data, n, start=0, age=86400.0, files=EPISODE_FILES):
    """n episodes as a run leaves them: their files, and analyzed ledger rows `age` s old."""
    ids = [f"ep{i:06d}" for i in range(start, start + n)]
    for episode in ids:
        for pattern in files:
            write(data / pattern.format(episode))
    with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
        at = time.time() - age
        c.executemany("INSERT OR REPLACE INTO jobs (id, stage, analyzed_at, updated_at) VALUES (?, 'analyzed', ?, ?)",
                      ((e, at, at) for e in ids))
    return ids


def accounted(data, **kw):
    return DiskMonitor(data, data, HARD, PAUSE, RESUME, cache_duration=0, reconcile_interval=600,
                       margin_bytes=MARGIN, **kw)


def walked(data):
    return DiskMonitor(data, data, HARD, PAUSE, RESUME, cache_duration=0).current_usage(fresh=True)


class ScandirSpy:
    """Records every folder os.scandir lists, and whether the gate's lock was held."""

    def __init__(self, monkeypatch, gate):
        self.calls = []
        self.locked = False
        real_scandir, real_locked = os.scandir, gate._locked_state
        spy = self

        def scandir(path="."):
            spy.calls.append((os.path.abspath(os.fspath(path)), spy.locked))
            return real_scandir(path)

        import contextlib

        @contextlib.contextmanager
        def locked_state():
            with real_locked() as state:
                spy.locked = True
                try:
                    yield state
                finally:
                    spy.locked = False

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(gate, "_locked_state", locked_state)

    def per_episode_under_lock(self, data):
        folders = [str(data / rel) for rel in PER_EPISODE]
        return [p for p, locked in self.calls if locked and any(p == f or p.startswith(f + os.sep) for f in folders)]


def test_no_admission_walks_a_per_episode_folder_under_the_lock(tmp_path, monkeypatch):
    data = tmp_path / "data"
    finished_episodes(data, 300)
    gate = DownloadGate(accounted(data), data / "gate", check_interval=0.01)
    spy = ScandirSpy(monkeypatch, gate)
    with gate.admitted("new", 10 * KB, [data / "videos" / "new.media"]):  # reconciles first, outside the lock
        pass
    gate.check(download=False)  # the end-of-transcription look
    assert spy.calls, "the spy saw nothing"
    assert spy.per_episode_under_lock(data) == []
    walked_outside = [p for p, locked in spy.calls if not locked and p == str(data / "transcripts")]
    assert walked_outside, "the reconciliation walks the per-episode folders, outside the lock"
    # A later admission, with the record fresh, lists no per-episode folder at all.
    spy.calls.clear()
    with gate.admitted("next", 10 * KB, [data / "videos" / "next.media"]):
        pass
    folders = [str(data / rel) for rel in PER_EPISODE]
    assert [p for p, _ in spy.calls if p in folders] == []


def test_an_admission_costs_the_same_with_20_times_more_finished_episodes(tmp_path, monkeypatch):
    """Counts the directory entries and stat() calls of one admission: the same for 100
    and for 2,000 finished episodes (the old walk grew twentyfold)."""
    costs = []
    for n in (100, 2000):
        data = tmp_path / f"n{n}" / "data"
        finished_episodes(data, n, files=EPISODE_FILES[:1] + EPISODE_FILES[-1:])
        gate = DownloadGate(accounted(data), data / "gate", check_interval=0.01)
        gate.check()  # reconciles
        entries = []
        real_scandir, real_stat = os.scandir, os.stat

        def scandir(path=".", entries=entries, real=real_scandir):
            listed = list(real(path))
            entries.extend(listed)
            return iter(listed)

        def stat(path, *a, entries=entries, real=real_stat, **k):
            entries.append(path)
            return real(path, *a, **k)

        monkeypatch.setattr(os, "scandir", scandir)
        monkeypatch.setattr(os, "stat", stat)
        with gate.admitted("new", 10 * KB, [data / "videos" / "new.media"]):
            pass
        monkeypatch.undo()
        costs.append(len(entries))
    assert costs[1] < 1.2 * costs[0] + 10, costs


def test_the_accounting_is_never_below_a_full_walk(tmp_path):
    data = tmp_path / "data"
    finished_episodes(data, 50)
    monitor = accounted(data)
    first = monitor.current_usage(fresh=True)
    assert first.total - MARGIN == walked(data).total  # right after the reconciliation: exact
    assert first.margin == MARGIN
    # An episode starts and writes after the reconciliation: counted at the next look.
    with Ledger(data / "jobs.db") as ledger:
        ledger.set_stage("live", "transcribing")
    write(data / "transcripts" / "live.json", 300 * KB)
    write(data / "logs" / "transcribe" / "live.log", 9 * KB)
    u = monitor.current_usage(fresh=True)
    assert u.total - MARGIN == walked(data).total
    # A finished episode analysed again (its row changes): its files counted fresh, maybe twice.
    with Ledger(data / "jobs.db") as ledger:
        ledger.set_stage("ep000001", "tokenized")
    write(data / "tokens" / "ep000001.parquet", 200 * KB)
    assert monitor.current_usage(fresh=True).total - MARGIN >= walked(data).total
    # Files removed (a roll-up, `scribeflow retry`): counted until the next reconciliation, never less.
    for path in (data / "logs" / "download").iterdir():
        path.unlink()
    assert monitor.current_usage(fresh=True).total - MARGIN >= walked(data).total
    # Temporary files are walked at every look.
    write(data / "videos" / "v.media", 500 * KB)
    write(data / "audio" / "a.wav", 100 * KB)
    u = monitor.current_usage(fresh=True)
    assert u.videos == 500 * KB and u.audio == 100 * KB
    monitor.reconcile()
    assert monitor.current_usage(fresh=True).total - MARGIN == walked(data).total


def test_a_rebuilt_ledger_and_a_missing_record_reconcile_first(tmp_path):
    data = tmp_path / "data"
    finished_episodes(data, 20)
    monitor = accounted(data)
    monitor.current_usage(fresh=True)
    assert not monitor.reconcile_due()
    # A ledger replaced by another file (the corrupt-ledger rebuild does that): the record's
    # times no longer mean anything.
    os.replace(data / "jobs.db", data / "old.db")
    finished_episodes(data, 5, start=100)
    assert monitor.reconcile_due()
    assert monitor.current_usage(fresh=True).total - MARGIN == walked(data).total
    monitor.accounting_path.unlink()
    assert monitor.reconcile_due()
    assert monitor.current_usage(fresh=True).total - MARGIN == walked(data).total


def test_only_one_process_reconciles_at_a_time(tmp_path):
    import fcntl

    data = tmp_path / "data"
    finished_episodes(data, 5)
    monitor = accounted(data, state_dir=data / "gate")
    (data / "gate").mkdir(parents=True)
    with open(data / "gate" / disk.RECONCILE_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is walking
        assert monitor.reconcile_if_due() is False
    assert monitor.reconcile_if_due() is True
    assert monitor.reconcile_if_due() is False  # fresh now


def test_walk_everything_mode_is_unchanged(tmp_path):
    data = tmp_path / "data"
    finished_episodes(data, 5)
    m = DiskMonitor(data, data, HARD, PAUSE, RESUME, cache_duration=0)
    assert m.current_usage(fresh=True).margin == 0 and not m.accounting_path.exists()


def test_history_is_thinned_to_a_bounded_size(tmp_path):
    from scribeflow.budget.monitor import DiskUsage
    from scribeflow.ops.status import snapshot

    data = tmp_path / "data"
    now = time.time()
    with Ledger(data / "jobs.db") as ledger:
        with ledger.transaction() as c:
            days = 120
            c.executemany("INSERT INTO disk_samples (at, total_bytes, paused) VALUES (?, ?, 0)",
                          ((now - days * 86400 + k * 30, (k % 100) * 1000) for k in range(days * 2880)))
            # A pause every 20 minutes for 120 days, 5 minutes each.
            c.executemany("INSERT INTO pause_events (started_at, ended_at, usage_bytes, reason) "
                          "VALUES (?, ?, 1, 'usage')",
                          ((now - days * 86400 + k * 1200, now - days * 86400 + k * 1200 + 300)
                           for k in range(days * 72)))
        before_pauses = len(ledger.pause_events())
        ledger.thin_history(now)
        samples = ledger.conn.execute("SELECT COUNT(*) FROM disk_samples").fetchone()[0]
        pauses = ledger.pause_events()
        assert samples <= 2 * 2880 + 28 * 24 + days + 2
        assert len(pauses) <= 7 * 72 + days + 2
        assert sum(p["events"] for p in pauses) == before_pauses
        assert sum(p["ended_at"] - p["started_at"] for p in pauses) == pytest.approx(before_pauses * 300)
        # The peak of every bucket stays.
        assert ledger.conn.execute("SELECT MAX(total_bytes) FROM disk_samples WHERE at < ?",
                                   (now - 40 * 86400,)).fetchone()[0] == 99_000
        again = ledger.thin_history(now)
        assert again == {"disk_samples": 0, "pause_events": 0}
        ledger.sample_disk(DiskUsage(videos=1), paused=False)
    catalogue = tmp_path / "episodes.csv"
    catalogue.write_text("id,url\n")
    config = validate({"data_dir": str(data), "storage_dir": str(data), "catalogue": str(catalogue),
                       "disk_management": {"hard_limit_gb": 1, "pause_threshold_gb": 0.8, "resume_threshold_gb": 0.6,
                                           "cache_duration_seconds": 0, "min_free_gb": 0,
                                           "reconcile_interval_seconds": 600, "accounting_margin_mb": 1}})
    assert snapshot(config, now)["pauses"]["count"] == before_pauses


def test_the_reconciling_download_thins_the_history(tmp_path):
    data = tmp_path / "data"
    now = time.time()
    with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
        c.executemany("INSERT INTO disk_samples (at, total_bytes, paused) VALUES (?, 1, 0)",
                      ((now - 10 * 86400 + k * 30, ) for k in range(2880)))
    gate = DownloadGate(accounted(data), data / "gate", check_interval=0.01)
    with gate.admitted("ep", 1000, [data / "videos" / "ep.media"]):  # the first look reconciles, then thins
        pass
    with Ledger(data / "jobs.db") as ledger:
        assert ledger.conn.execute("SELECT COUNT(*) FROM disk_samples").fetchone()[0] <= 25
    assert json.loads((data / "gate" / "accounting.json").read_text())["files"] == 0  # it walked


def test_logs_of_finished_episodes_are_rolled_up(tmp_path):
    data = tmp_path / "data"
    done = finished_episodes(data, 3)
    # An episode still under way and a failed one keep their files where they are.
    for rule in ("download", "extract_audio"):
        write(data / "logs" / rule / "busy.log")
        write(data / "benchmarks" / rule / "busy.tsv")
    write(data / "logs" / "download" / "bad.log", 10)
    write(data / "benchmarks" / "analyse_episode" / "bad.tsv")
    write(data / "analysis" / "episodes" / "bad.json")
    write(data / "failed" / "bad.json")
    for episode in done:
        for rule in sf_layout.EPISODE_RULES:
            (data / "logs" / rule / f"{episode}.log").write_text(f"{rule} of {episode}\nsecond line\n")
            (data / "benchmarks" / rule / f"{episode}.tsv").write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t80\n")
    before = walked(data).total
    episodes, files, freed = logs.rollup(data)
    assert (episodes, files) == (3, 3 * len(sf_layout.EPISODE_RULES) * 2) and freed > 0
    assert walked(data).total == before - freed
    left = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and "rollup" not in str(p))
    per_episode = [p for p in left if done[0] in p]
    assert per_episode == ["analysis/episodes/ep000000.json", "analysis/lemmas/ep000000.parquet",
                           "tokens/ep000000.parquet", "transcripts/ep000000.json"]
    assert "logs/download/busy.log" in left and "logs/download/bad.log" in left
    found = dict(logs.episode_logs(data, done[1]))
    assert found["logs/transcribe/ep000001.log"] == f"transcribe of {done[1]}\nsecond line\n"
    assert len(found) == len(sf_layout.EPISODE_RULES)
    marks = [b for b in logs.benchmarks(data) if b["episode"] == done[2]]
    assert sorted(b["rule"] for b in marks) == sorted(sf_layout.EPISODE_RULES) and marks[0]["max_rss"] == "80"
    archive = next(sf_layout.Layout.of(data).rollup.glob("*.log.gz"))
    assert f"==> logs/download/{done[0]}.log <==" in gzip.open(archive, "rt").read()  # zless reads it
    assert logs.rollup(data) == (0, 0, 0)


def test_active_episodes_are_the_started_and_recent_ones(tmp_path):
    data = tmp_path / "data"
    finished_episodes(data, 3)
    monitor = accounted(data)
    monitor.reconcile()
    since = monitor._record()["scanned_at"]
    with Ledger(data / "jobs.db") as ledger:
        ledger.enqueue([f"next{i}" for i in range(50)])  # a run's start: nothing written yet
        ledger.set_stage("running", "downloading")
        ledger.set_stage("stopped", "downloading")
        ledger.set_stage("stopped", "queued", last_error="interrupted")  # Ctrl-C: its log was written
        ledger.set_stage("ep000000", "failed", last_error="x")  # a failure just now
    assert monitor._active(since) == {"running", "stopped", "ep000000"}


def test_an_episode_transcribed_long_ago_is_active_once_its_analysis_starts(tmp_path):
    """A resumed run (or a rebuilt ledger) may hold 100,000 rows transcribed long ago:
    each costs one stat of its analysis log, until that job starts."""
    data = tmp_path / "data"
    finished_episodes(data, 2)
    with Ledger(data / "jobs.db") as ledger:
        ledger.set_stage("old", "transcribed")
        ledger.update("old", updated_at=time.time() - 86400)
    write(data / "transcripts" / "old.json", 50 * KB)
    monitor = accounted(data)
    monitor.reconcile()
    since = monitor._record()["scanned_at"]
    assert "old" not in monitor._active(since)
    assert monitor.current_usage(fresh=True).total - MARGIN == walked(data).total
    write(data / "logs" / "analyse_episode" / "old.log", 0)  # the analysis job starts
    write(data / "tokens" / "old.parquet", 80 * KB)  # and writes its tokens before the ledger
    assert "old" in monitor._active(since)
    assert monitor.current_usage(fresh=True).total - MARGIN >= walked(data).total


@pytest.mark.slow
def test_a_finished_chunk_keeps_five_files_per_episode_through_the_real_workflow(tmp_path, media_server,
                                                                                 model_path):
    """Two chunks through the real workflow: the second run's start rolls up the first
    chunk's logs and benchmark records; each finished episode keeps its transcript, tokens,
    two analyses and its audio's fingerprint (default config), and its logs stay readable."""
    from conftest import run_snakemake, scribeflow, workflow_config, write_catalogue

    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en"} for n in range(1, 5)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path)
    data = tmp_path / "data"
    run_snakemake(tmp_path, {**config, "chunk": "1/2"}, "--cores", "2")
    assert len(list((data / "logs" / "transcribe").glob("*.log"))) == 2
    proc = run_snakemake(tmp_path, {**config, "chunk": "2/2"}, "--cores", "2")
    assert "rolling up the logs of finished episodes" in proc.stdout + proc.stderr
    deadline = time.monotonic() + 60
    while logs.finished(data) - {"ep03", "ep04"} and time.monotonic() < deadline:
        time.sleep(0.2)
    for episode in ("ep01", "ep02"):
        kept = sorted(str(p.relative_to(data)) for p in data.rglob(f"{episode}.*"))
        assert kept == [f"analysis/episodes/{episode}.json", f"analysis/fingerprints/{episode}.chromaprint",
                        f"analysis/lemmas/{episode}.parquet", f"tokens/{episode}.parquet",
                        f"transcripts/{episode}.json"]
        found = dict(logs.episode_logs(data, episode))
        assert "Freed" in found[f"logs/transcribe/{episode}.log"] and len(found) == 4
    assert {b["episode"] for b in logs.benchmarks(data)} >= {"ep01", "ep02"}
    assert json.loads((data / "gate" / sf_layout.ACCOUNTING_FILE).read_text())["files"] > 0
    scribeflow(tmp_path, "check", "--configfile", str(tmp_path / "config.yaml"))


def test_a_damaged_record_is_walked_again(tmp_path):
    data = tmp_path / "data"
    finished_episodes(data, 3)
    monitor = accounted(data)
    monitor.reconcile()
    for damage in (b"{not json", b'{"scanned_at": 1, "base": {"bogus": 5}}', b"[]"):
        monitor.accounting_path.write_bytes(damage)
        assert monitor.reconcile_due()
        assert monitor.current_usage(fresh=True).total - MARGIN == walked(data).total


# -- status and check read no table that grows with the finished episodes whole -------------
def _query_plans(monkeypatch, db, fn):
    """Run fn(); the query plan of every statement it sent to the ledger."""
    import sqlite3

    from scribeflow.state import ledger as sf_ledger

    sent, connect = [], sqlite3.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(sent.append)
        return conn

    monkeypatch.setattr(sf_ledger.sqlite3, "connect", traced)
    fn()
    monkeypatch.undo()
    plans, conn = {}, sqlite3.connect(db)
    for statement in {s for s in sent if s.lstrip().upper().startswith("SELECT")}:
        plans[statement] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
    conn.close()
    return plans


def test_status_and_check_never_scan_the_jobs_table(tmp_path, monkeypatch):
    """status aggregates nothing over the jobs table (totals kept by triggers, indexes for
    the last hour), and check reads the transcribed ids from an index: no query plan has
    "SCAN jobs", the step that reads every row."""
    from scribeflow.ops.check import check_consistency
    from scribeflow.ops.status import snapshot

    settings = validate({"data_dir": str(tmp_path), "storage_dir": str(tmp_path)})
    db = tmp_path / "jobs.db"
    with Ledger(db) as ledger:
        ledger.enqueue([f"ep{k}" for k in range(300)])
        for k in range(200):
            for stage in ("downloading", "downloaded", "extracted", "transcribed"):
                ledger.set_stage(f"ep{k}", stage, video_size_bytes=1000, worker_rss_bytes=k)
        ledger.update("ep3", transcribed_at=None)
    plans = {**_query_plans(monkeypatch, db, lambda: snapshot(settings)),
             **_query_plans(monkeypatch, db, lambda: check_consistency(settings))}
    assert len(plans) > 10
    scans = {s: p for s, p in plans.items() if any(step.startswith("SCAN jobs") for step in p)}
    assert not scans, scans


def test_a_few_targets_are_looked_up_one_by_one_not_by_listing_the_folder(tmp_path, monkeypatch):
    """A run's start on a 3-episode catalogue (or a 2,000-episode chunk) asks which of its
    episodes are done: one stat each, not a listing of 171,881 names; many candidates:
    one listing. Both give the same answer."""
    from scribeflow import files

    for k in range(50):
        write(tmp_path / f"ep{k}.json")
    write(tmp_path / "other.parquet")
    among = [f"ep{k}" for k in range(45, 60)]
    expected = {f"ep{k}" for k in range(45, 50)}
    listed = files.ids_with_suffix(tmp_path, ".json")
    assert listed == {f"ep{k}" for k in range(50)}

    def no_listing(*args):
        raise AssertionError("listed the folder")

    with monkeypatch.context() as m:
        m.setattr(files.os, "scandir", no_listing)
        assert files.ids_with_suffix(tmp_path, ".json", among=among) == expected
    monkeypatch.setattr(files, "STAT_AT_MOST", 10)  # more candidates than that: one listing
    assert files.ids_with_suffix(tmp_path, ".json", among=among) == expected
