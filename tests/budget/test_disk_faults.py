"""The disk guarantee under faults: the gate's lock between threads and processes, a full
disk while the gate or the ledger writes, unreadable state, a write that can never fit,
and size defaults on a tiny budget. Real files; a real tmpfs where the test can mount one."""

import contextlib
import gzip
import json
import multiprocessing
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from support.filesystem import fill, small_filesystem

from scribeflow.budget.gate import DownloadGate, NeverFits
from scribeflow.budget.monitor import DiskMonitor
from scribeflow.config import settings as cfg
from scribeflow.ops.check import check_consistency
from scribeflow.state import failures
from scribeflow.state.ledger import Ledger

KB, MB = 1024, 1_000_000


def make_gate(data, hard=100 * MB, pause=80 * MB, resume=50 * MB, **kw):
    monitor = DiskMonitor(data, data, hard, pause, resume, cache_duration=0, min_free_bytes=kw.pop("min_free", 0))
    kw.setdefault("check_interval", 0.05)
    return DownloadGate(monitor, Path(data) / "gate", **kw)


# -- the lock ------------------------------------------------------------------------
class CountingGate(DownloadGate):
    """The real gate; each decision also proves it is alone (an O_CREAT|O_EXCL flag file)
    and counts itself in the shared state, where a lost update would show."""

    def _decide(self, state, declared, download=True):
        flag = self.state_dir / "inside"
        try:
            fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            state["overlaps"] = state.get("overlaps", 0) + 1
            fd = None
        try:
            state["decisions"] = state.get("decisions", 0) + 1
            time.sleep(0.0005)  # widen the window two decisions at once would need
            return super()._decide(state, declared, download)
        finally:
            if fd is not None:
                os.close(fd)
                os.unlink(flag)


def _hammer(data: str, threads: int, rounds: int) -> None:
    gate = CountingGate(DiskMonitor(data, data, 100 * MB, 80 * MB, 50 * MB, cache_duration=0),
                        Path(data) / "gate", check_interval=0.05)

    def work(n):
        for i in range(rounds):
            if i % 2:
                gate.check(download=False)
            else:
                with gate.admitted(f"ep{os.getpid()}-{n}-{i}", 1000, []):
                    pass

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_the_gates_decisions_are_exclusive_across_threads_and_processes(tmp_path):
    processes, threads, rounds = 3, 4, 40
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no lock state inherited
    workers = [ctx.Process(target=_hammer, args=(str(tmp_path), threads, rounds)) for _ in range(processes)]
    for w in workers:
        w.start()
    _hammer(str(tmp_path), threads, rounds)  # and this process's threads beside them
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    state = json.loads((tmp_path / "gate" / "state.json").read_text())
    assert state.get("overlaps", 0) == 0  # never two decisions at once
    assert state["decisions"] == (processes + 1) * threads * rounds  # no lost update
    assert state["reservations"] == {} and state["consumers"] == {}
    assert not list((tmp_path / "gate").glob("*.tmp"))


# -- a full disk ---------------------------------------------------------------------
def test_a_full_disk_while_the_gate_writes_its_state_pauses_and_resumes(tmp_path):
    """A download meets ENOSPC, and so does the gate's release of its reservation: the
    download's own error is the one raised, no temp file stays, the next download waits
    at the gate (the band between pause and resume is larger than this filesystem) and
    is admitted as soon as its write fits again."""
    data = tmp_path / "fs"
    with small_filesystem(data, "2m"):
        gate = make_gate(data)
        video = data / "videos" / "a.media"
        video.parent.mkdir(parents=True)
        with pytest.raises(OSError) as raised:
            with gate.admitted("a", 100 * KB, [video]):
                ballast = fill(data)
                with open(video, "wb") as f:  # the download itself hits the full disk
                    f.write(b"\0" * (200 * KB))
                    f.flush()
                    os.fsync(f.fileno())
        assert raised.value.errno == 28  # the download's own error, not the gate's
        video.unlink()
        assert not list(data.rglob("*.tmp"))

        admitted = threading.Event()

        def download_b():
            with gate.admitted("b", 300 * KB, [data / "videos" / "b.media"]):
                admitted.set()

        waiting = threading.Thread(target=download_b)
        waiting.start()
        time.sleep(1.0)
        assert not admitted.is_set()  # paused: 300 KB cannot be written now
        decision = gate.check(300 * KB)
        assert decision.paused and "filesystem" in decision.reason
        assert "other files fill it" in decision.stalled  # not "0 GB of video and audio wait"
        ballast.unlink()  # space returns
        assert admitted.wait(10), "the download was not admitted once its write fit again"
        waiting.join()
        state = json.loads((data / "gate" / "state.json").read_text())
        assert state["reservations"] == {} and state["reasons"] == []  # a's release was recorded late
        assert not list(data.rglob("*.tmp"))


def test_a_full_disk_shows_sqlites_error_and_a_step_waits_for_space(tmp_path):
    data = tmp_path / "fs"
    with small_filesystem(data, "2m"):
        # 2 MiB: the waiting write needs 1 MB free besides the ledger (~60 kB of pages).
        ledger = Ledger(data / "jobs.db")
        ledger.enqueue(["a"])
        ballast = fill(data)
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            ledger.set_stage("a", "downloading")  # not "cannot rollback - no transaction is active"
        # What the steps open: a write that meets a full disk waits at the gate for space.
        gate = make_gate(data)
        waiting = Ledger(data / "jobs.db", on_full=gate.wait_for_space)
        threading.Timer(0.5, ballast.unlink).start()
        started = time.monotonic()
        waiting.set_stage("a", "downloading")
        assert time.monotonic() - started >= 0.4
        assert waiting.job("a")["stage"] == "downloading"


# -- unreadable state ----------------------------------------------------------------
def test_unreadable_gate_state_is_rebuilt_and_live_holders_register_again(tmp_path, caplog):
    gate = make_gate(tmp_path, check_interval=0.05)  # heartbeats every second
    state_file = tmp_path / "gate" / "state.json"
    held = threading.Event()
    done = threading.Event()

    def download_a():
        with gate.admitted("a", 5 * MB, [tmp_path / "videos" / "a.media"]):
            held.set()
            done.wait(20)

    holder = threading.Thread(target=download_a)
    holder.start()
    assert held.wait(10)
    state_file.write_bytes(os.urandom(300) + b"\xff\xfe")
    problem = gate.state_problem()
    assert problem and "state.json" in problem and "rebuilds" in problem
    with caplog.at_level("WARNING"):
        first = gate.check()  # no UnicodeDecodeError: the state is rebuilt
    assert "was unreadable" in caplog.text and list((tmp_path / "gate").glob("state.json.corrupt-*"))
    assert first.pending == 0
    # Until the live download is back in the state, no other download is admitted: when
    # b is admitted, a's reservation counts again.
    seen = []

    def download_b():
        with gate.admitted("b", MB, []) as decision:
            seen.append(decision.pending)

    other = threading.Thread(target=download_b)
    other.start()
    other.join(20)
    assert seen == [5 * MB]
    done.set()
    holder.join()


def _finished_files(data: Path) -> dict[Path, bytes]:
    """An episode analysed (gzip transcript), one transcribed, one given up."""
    files = {
        data / "transcripts" / "done.json.gz": gzip.compress(json.dumps({"id": "done"}).encode()),
        data / "analysis" / "episodes" / "done.json": b"{}",
        data / "transcripts" / "half.json": json.dumps({"id": "half"}).encode(),
        data / "failed" / "gone.json": json.dumps({"id": "gone", "step": "download", "permanent": True,
                                                   "attempts": 1, "reason": "DownloadFailed: HTTP 404"}).encode(),
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def test_an_unreadable_ledger_is_moved_aside_and_rebuilt_from_the_files(tmp_path, capfd):
    data = tmp_path / "data"
    files = _finished_files(data)
    with Ledger(data / "jobs.db") as ledger:
        ledger.enqueue(["done", "half", "gone", "todo"])
    (data / "jobs.db").write_bytes(os.urandom(8192))

    config = cfg.validate({"data_dir": str(data), "storage_dir": str(data)})
    problems = check_consistency(config)  # reports, never crashes, changes nothing
    assert len(problems) == 1 and "jobs.db: not a readable SQLite database" in problems[0]

    with Ledger(data / "jobs.db") as ledger:
        stages = ledger.stage_counts()
        gone = ledger.job("gone")
    assert stages == {"analyzed": 1, "transcribed": 1, "failed": 1}
    assert gone["last_error"] == "DownloadFailed: HTTP 404"
    err = capfd.readouterr().err
    assert err.count("scribeflow: the ledger") == 1 and "rebuilt it from the files on disk" in err
    assert "1 transcribed, 1 analyzed, 1 failed" in err
    assert len(list(data.glob("jobs.db.corrupt-*"))) == 1
    assert all(path.read_bytes() == content for path, content in files.items())  # nothing touched
    assert failures.given_up(data) == {"gone"}


def test_check_reads_gzip_transcripts(tmp_path):
    data = tmp_path / "data"
    config = cfg.validate({"data_dir": str(data), "storage_dir": str(data), "transcribe": {"gzip": True}})
    path = data / "transcripts" / "a.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(json.dumps({"id": "a", "language": "en", "duration": 1.0, "model": "m",
                                               "options": {}, "text": "hi", "segments": []}).encode()))
    with Ledger(data / "jobs.db") as ledger:
        ledger.set_stage("a", "transcribed")
    assert check_consistency(config) == []
    path.write_bytes(path.read_bytes()[:20])  # cut short
    assert "not valid JSON" in " ".join(check_consistency(config))


@contextlib.contextmanager
def _deadline(seconds: float):
    """TimeoutError in this thread after `seconds` (a wait that must still be waiting)."""
    def expire(*_):
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- a write that can never fit ----------------------------------------------------------
def test_a_download_larger_than_the_budget_fails_at_once_as_permanent(tmp_path):
    gate = make_gate(tmp_path, hard=4 * MB, pause=3 * MB, resume=2 * MB, audio_headroom=250_000,
                     stall_timeout=900)
    started = time.monotonic()
    with pytest.raises(NeverFits) as raised:
        with gate.admitted("huge", 3_900_000, []):
            pass
    assert time.monotonic() - started < 5  # at once, not after stall_timeout (900 s)
    message = str(raised.value)
    assert "huge" in message and "3.9 MB declared + 250 kB audio headroom" in message
    assert "exceeds the hard limit of 4 MB" in message
    assert "hard_limit_gb" in message and "scribeflow retry huge" in message
    assert failures.is_permanent(raised.value)
    assert gate.held_paths() == (set(), False)  # nothing held
    with gate.admitted("fits", 3_700_000, []):  # hard - headroom still fits
        pass


def test_a_download_that_cannot_fit_beside_the_kept_files_fails_at_once_and_one_that_waits_for_videos_waits(
        tmp_path):
    """Under the budget's largest, but not beside the 500 kB of transcripts the pipeline
    keeps (no transcription frees them): given up at once, not DiskStalled after
    stall_timeout in every run. A video in flight is another matter: it will be freed."""
    gate = make_gate(tmp_path, hard=4 * MB, pause=3 * MB, resume=2 * MB, audio_headroom=250_000,
                     stall_timeout=900)
    (tmp_path / "transcripts").mkdir()
    (tmp_path / "transcripts" / "kept.json").write_bytes(b"x" * 500_000)
    started = time.monotonic()
    with pytest.raises(NeverFits, match=r"3.33 MB declared.*beside the 5\d\d kB the pipeline keeps.*4 MB") as raised:
        with gate.admitted("later", 3_330_000, []):
            pass
    assert time.monotonic() - started < 5 and failures.is_permanent(raised.value)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "other.media").write_bytes(b"v" * 1_000_000)  # freed once transcribed
    with pytest.raises(TimeoutError):
        with _deadline(1.0), gate.admitted("waits", 3_000_000, []):
            pass


# -- defaults that scale -----------------------------------------------------------------
def test_size_defaults_scale_with_a_tiny_budget():
    tiny = cfg.validate({"disk_management": {"hard_limit_gb": 0.004, "pause_threshold_gb": 0.003,
                                             "resume_threshold_gb": 0.002}}).disk_management
    assert tiny.audio_headroom_mb == pytest.approx(0.25)
    assert tiny.default_video_size_mb == pytest.approx(0.75)
    assert tiny.min_free_gb == pytest.approx(0.00004)
    big = cfg.validate({}).disk_management
    assert (big.audio_headroom_mb, big.default_video_size_mb, big.min_free_gb) == (200, 600, 1)
    with pytest.raises(cfg.ConfigError, match=r"audio_headroom_mb \(200\).*leave it out"):
        cfg.validate({"disk_management": {"hard_limit_gb": 0.004, "pause_threshold_gb": 0.003,
                                          "resume_threshold_gb": 0.002, "audio_headroom_mb": 200}})
    with pytest.raises(cfg.ConfigError, match=r"default_video_size_mb \(600\)"):
        cfg.validate({"disk_management": {"hard_limit_gb": 0.004, "pause_threshold_gb": 0.003,
                                          "resume_threshold_gb": 0.002, "default_video_size_mb": 600}})


# -- the real workflow ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_4_mb_budget_with_damaged_state_runs_and_gives_up_what_never_fits(tmp_path, speech_dir, model_path):
    """config.yaml's keys alone on a 4 MB budget; the ledger and the gate's state are random
    bytes when the run starts; one episode declares 50 MB. The run rebuilds both, gives the
    big episode up at once (permanent, sizes in the reason), transcribes the other, and the
    disk samples never cross 4 MB."""
    from conftest import run_snakemake, workflow_config, write_catalogue
    from support.server import MediaServer

    data = tmp_path / "data"
    (data / "gate").mkdir(parents=True)
    (data / "jobs.db").write_bytes(os.urandom(4096))
    (data / "gate" / "state.json").write_bytes(os.urandom(512))
    (data / "failed").mkdir()
    (data / "failed" / "gone.json").write_text(json.dumps({"id": "gone", "step": "download", "permanent": True,
                                                          "attempts": 1, "reason": "DownloadFailed: HTTP 404"}))
    with MediaServer(speech_dir) as server:
        rows = [{"id": "ep01", "url": server.url("ep01.mp4"), "expected_size_mb": ""},
                {"id": "huge", "url": server.url("ep02.mp4"), "expected_size_mb": 50},
                {"id": "gone", "url": server.url("missing.mp4"), "expected_size_mb": ""}]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path, disk_management={
            "hard_limit_gb": 0.004, "pause_threshold_gb": 0.003, "resume_threshold_gb": 0.002,
            "check_interval_seconds": 0.2, "cache_duration_seconds": 0})
        proc = run_snakemake(tmp_path, config, "--cores", "2", check=False)
    out = proc.stdout + proc.stderr
    assert out.count("scribeflow: the ledger") == 1 and "(1 failed)" in out, out[-4000:]
    assert list(data.glob("jobs.db.corrupt-*")) and list((data / "gate").glob("state.json.corrupt-*"))
    source = json.loads((data / "transcripts" / "ep01.json").read_text())["download"]
    assert source["bytes"] == (speech_dir / "ep01.mp4").stat().st_size and source["size_source"]
    assert proc.returncode == 1  # huge failed (keep-going carried on with ep01)
    marker = json.loads((data / "failed" / "huge.json").read_text())
    assert marker["permanent"] and re.search(r"50(\.\d)? MB declared", marker["reason"])
    assert "hard limit of 4 MB" in marker["reason"]
    db = sqlite3.connect(data / "jobs.db")
    started, failed = db.execute("SELECT downloading_at, failed_at FROM jobs WHERE id = 'huge'").fetchone()
    assert failed - started < 120  # not after stall_timeout_seconds (900 s); the job's start is load-bound
    # At once: from its declaration to its failure, without the seconds a busy machine
    # takes to start the job and extract the page.
    log = (data / "logs" / "download" / "huge.log").read_text()
    assert _logged_at(log, "huge failed") - _logged_at(log, "Declared size of huge") < 5, log[-3000:]
    assert db.execute("SELECT stage FROM jobs WHERE id = 'gone'").fetchone() == ("failed",)
    peak = db.execute("SELECT MAX(total_bytes) FROM disk_samples").fetchone()[0]
    assert peak and peak <= 4_000_000


def _logged_at(log: str, text: str) -> float:
    """When the first line of the log `log` that contains `text` was written."""
    from datetime import datetime

    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_unreadable_host_state_is_rebuilt(tmp_path):
    from scribeflow.budget.hosts import HostLimiter

    limiter = HostLimiter(tmp_path / "hosts", max_per_host=1, min_interval=0)
    with limiter.slot("https://video.example/ep1"):
        pass
    (tmp_path / "hosts" / "state.json").write_bytes(os.urandom(200) + b"\xff")
    with limiter.slot("https://video.example/ep2"):  # no UnicodeDecodeError
        assert limiter.snapshot()["video.example"]["holders"]
    assert list((tmp_path / "hosts").glob("state.json.corrupt-*"))
    assert not list((tmp_path / "hosts").glob("*.tmp"))


def test_check_reads_only_the_transcripts_written_since_its_last_clean_run(tmp_path):
    import json as _json

    data = tmp_path / "data"
    config = cfg.validate({"data_dir": str(data), "storage_dir": str(data)})
    good = {"language": "en", "duration": 1.0, "model": "m", "options": {}, "text": "hi", "segments": []}
    hour_ago = time.time() - 3600
    with Ledger(data / "jobs.db") as ledger, mock.patch("scribeflow.state.ledger.time.time", return_value=hour_ago):
        for episode in ("a", "b", "c"):  # transcribed an hour ago
            path = data / "transcripts" / f"{episode}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_json.dumps({"id": episode, **good}))
            os.utime(path, (hour_ago, hour_ago))
            ledger.set_stage(episode, "transcribed")
    state = data / "check.json"
    assert check_consistency(config) == [] and _json.loads(state.read_text())["parsed"] == 3
    assert check_consistency(config) == [] and _json.loads(state.read_text())["parsed"] == 0  # nothing new
    (data / "transcripts" / "d.json").write_text("{not json")  # a new, broken one
    with Ledger(data / "jobs.db") as ledger:
        ledger.set_stage("d", "transcribed")
    assert "d: ledger says transcribed but" in " ".join(check_consistency(config))
    # A disk fault that rewrites an old file without touching its mtime: --full finds it.
    old = data / "transcripts" / "a.json"
    stamp = old.stat().st_mtime
    old.write_text("garbage")
    os.utime(old, (stamp, stamp))
    (data / "transcripts" / "d.json").write_text(_json.dumps({"id": "d", **good}))
    assert check_consistency(config) == []
    assert "a: ledger says transcribed but" in " ".join(check_consistency(config, full=True))


def test_the_starts_orphan_cleanup_frees_space_on_a_disk_too_full_to_write_the_gates_state(tmp_path):
    """A run's start on a full disk: the gate's state cannot be written (it holds a dead
    download to prune), yet the cleanup of the orphans an interrupted run left goes on
    and frees them, and a live download's files are left alone."""
    import socket

    from scribeflow.budget.cleanup import clean_orphans

    data = tmp_path / "fs"
    with small_filesystem(data, "2m"):
        settings = cfg.validate({"data_dir": str(data), "storage_dir": str(data)})
        videos = data / "videos"
        videos.mkdir()
        orphans = [videos / "dead.media", videos / "gone@dl.mp4.part", videos / "gone@dl.mp4.part-Frag3.part"]
        for path in orphans:
            path.write_bytes(os.urandom(150 * KB))
        (data / "transcripts").mkdir()
        (data / "transcripts" / "dead.json").write_text("{}")  # transcribed: its video is an orphan
        live = videos / "busy@dl.mp4.part"
        live.write_bytes(os.urandom(50 * KB))
        now = time.time()
        holder = {"host": socket.gethostname(), "since": now, "beat": now, "kind": "download"}
        (data / "gate").mkdir()
        (data / "gate" / "state.json").write_text(json.dumps({"reasons": [], "paused_since": None, "consumers": {},
            "reservations": {"dead": {**holder, "pid": 2**22 + 7, "id": "x", "bytes": 1, "paths": []},
                             "live": {**holder, "pid": os.getpid(), "id": "busy", "bytes": 1,
                                      "paths": [str(live)]}}}))
        ballast = fill(data)
        with pytest.raises(OSError):  # the disk is full: the gate's state cannot be written
            (data / "gate" / "probe").write_bytes(b"x" * 65536)
        files, freed = clean_orphans(settings)
        assert files == 3 and freed >= 3 * 150 * KB
        assert not any(p.exists() for p in orphans) and live.exists()
        ballast.unlink()
