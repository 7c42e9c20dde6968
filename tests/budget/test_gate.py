import multiprocessing
import os
import threading
import time

import pytest

from scribeflow.budget.gate import DiskStalled, DownloadGate
from scribeflow.budget.monitor import DiskMonitor
from scribeflow.state.ledger import Ledger

KB = 1024
HARD, PAUSE, RESUME = 1000 * KB, 800 * KB, 600 * KB


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\1" * size)
    return path


def make_gate(data, ledger=None, **kw):
    monitor = DiskMonitor(data, data, kw.pop("hard", HARD), kw.pop("pause", PAUSE), kw.pop("resume", RESUME),
                          cache_duration=0, min_free_bytes=kw.pop("min_free", 0))
    kw.setdefault("check_interval", 0.02)
    return DownloadGate(monitor, data / "gate", ledger=ledger, **kw)


def test_admits_below_pause_and_holds_a_reservation(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data)
    out = data / "videos" / "a.media"
    with gate.admitted("a", 100 * KB, [out]) as decision:
        assert decision.admitted and decision.usage.total < PAUSE
        paths, busy = gate.held_paths()
        assert str(out.absolute()) in paths and busy
        assert gate.check().pending == 100 * KB
        write(out, 60 * KB)
        assert gate.check().pending == 40 * KB  # what it has written no longer counts twice
    assert gate.held_paths() == (set(), False)


def test_hysteresis_pause_at_threshold_resume_only_at_resume_threshold(tmp_path):
    data = tmp_path / "data"
    ledger = Ledger(data / "jobs.db")
    gate = make_gate(data, ledger)
    video = write(data / "videos" / "big.media", 800 * KB)
    d = gate.check()
    assert d.paused and not d.admitted and "pause threshold" in d.reason
    write(video, 700 * KB)  # below pause, above resume: still paused
    assert gate.check().paused
    write(video, 500 * KB)  # at or below resume, with the ledger's ~80 kB
    assert not gate.check().paused
    events = ledger.pause_events()
    assert len(events) == 1 and events[0]["ended_at"] is not None
    assert events[0]["usage_bytes"] >= PAUSE and events[0]["resume_usage_bytes"] <= RESUME


def test_waiting_download_resumes_when_transcription_frees_space(tmp_path, caplog):
    data = tmp_path / "data"
    gate = make_gate(data)
    video = write(data / "videos" / "big.media", 850 * KB)
    threading.Timer(0.3, video.unlink).start()
    start = time.monotonic()
    with caplog.at_level("INFO"), gate.consumer("big", "transcribe"), gate.admitted("b", 10 * KB, []):
        waited = time.monotonic() - start
    assert 0.25 < waited < 5
    text = caplog.text
    assert "pausing downloads" in text
    assert "Waiting for transcriber to free up space (current: " in text
    assert "resuming downloads" in text


def test_reservations_keep_the_hard_limit(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data, audio_headroom=50 * KB)
    write(data / "transcripts" / "t.json", 500 * KB)
    with gate.admitted("a", 200 * KB, [data / "videos" / "a.media"]):
        used = gate.check().usage.total
        room = HARD - used - 200 * KB - 50 * KB  # hard - usage - reserved - audio headroom
        assert gate.check(room).admitted
        d = gate.check(room + 1)
        assert not d.admitted and "does not fit" in d.reason


def test_extraction_ignores_the_pause_but_not_the_hard_limit(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data, audio_headroom=100 * KB, stall_timeout=0.1)
    write(data / "videos" / "v.media", 850 * KB)
    assert not gate.check(10 * KB).admitted
    with gate.admitted("v", 100 * KB, [data / "audio" / "v.wav"], download=False) as d:
        assert d.admitted and d.paused
    write(data / "transcripts" / "t.json", 850 * KB)
    (data / "videos" / "v.media").unlink()
    with pytest.raises(DiskStalled, match="can never fit"):
        with gate.admitted("v", 200 * KB, [], download=False):
            pass


def test_stalls_with_a_clear_message_when_nothing_can_free_space(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data, stall_timeout=0.3)
    write(data / "transcripts" / "all.json", 820 * KB)  # permanent data above the pause threshold
    start = time.monotonic()
    with pytest.raises(DiskStalled) as info:
        with gate.admitted("a", 10 * KB, []):
            pass
    assert 0.25 < time.monotonic() - start < 5
    assert "above the resume threshold" in str(info.value) and "transcripts" in str(info.value)


def test_stalls_when_no_job_is_left_to_free_the_videos(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data, stall_timeout=0.3)
    write(data / "videos" / "v.media", 820 * KB)  # a failed transcription left its video
    with pytest.raises(DiskStalled, match="no download, extraction or transcription is running"):
        with gate.admitted("a", 10 * KB, []):
            pass


def test_filesystem_guard_pauses_downloads(tmp_path):
    data = tmp_path / "data"
    st = os.statvfs(tmp_path)
    gate = make_gate(data, min_free=st.f_bavail * st.f_frsize * 2)
    d = gate.check(KB)
    assert d.paused and "filesystem" in d.reason


def test_reservations_of_dead_processes_are_dropped(tmp_path):
    data = tmp_path / "data"
    gate = make_gate(data)
    proc = multiprocessing.get_context("fork").Process(target=_reserve_and_die, args=(str(data),))
    proc.start()
    proc.join()
    assert proc.exitcode == 0
    assert gate.check().pending == 0
    assert gate.held_paths() == (set(), False)


def _reserve_and_die(data):
    from pathlib import Path

    gate = make_gate(Path(data))
    ctx = gate.admitted("x", 500 * KB, [Path(data) / "videos" / "x.media"])
    ctx.__enter__()
    os._exit(0)  # killed while holding the reservation


def _downloader(data, name, size, results):
    """A download process: admitted through the shared gate, writes its file slowly."""
    from pathlib import Path

    gate = make_gate(Path(data))
    out = Path(data) / "videos" / f"{name}.media"
    with gate.admitted(name, size, [out]):
        with open(out, "wb") as f:
            for _ in range(size // (8 * KB)):
                f.write(b"\1" * 8 * KB)
                f.flush()
                time.sleep(0.002)
    results.put(name)


def test_several_processes_share_one_gate_and_never_cross_the_hard_limit(tmp_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    gate = make_gate(data)
    procs = [ctx.Process(target=_downloader, args=(str(data), f"d{i}", 160 * KB, results)) for i in range(12)]
    peak, done = 0, []
    stop = threading.Event()

    def transcriber():  # deletes finished videos slowly, as transcription would
        while not stop.is_set():
            while not results.empty():
                done.append(results.get())
            for name in done[:1]:
                time.sleep(0.15)
                (data / "videos" / f"{name}.media").unlink()
                done.remove(name)
            time.sleep(0.01)

    t = threading.Thread(target=transcriber)
    t.start()
    with gate.consumer("t", "transcribe"):
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            peak = max(peak, gate.monitor.current_usage(fresh=True).total)
            time.sleep(0.005)
    stop.set()
    t.join()
    assert all(p.exitcode == 0 for p in procs)
    assert peak <= HARD, f"peak {peak} > hard {HARD}"
    assert peak >= RESUME  # the budget was actually used


def test_status_and_the_gate_share_one_pause_rule_and_one_stored_state(tmp_path):
    """Between the thresholds a pause holds: the breakdown `scribeflow status` shows asks
    the gate's rule with the gate's reasons, so both say the same; the state stores only
    the reasons."""
    import json

    from scribeflow.budget.gate import is_paused

    data = tmp_path / "data"
    gate = make_gate(data)
    video = write(data / "videos" / "big.media", 800 * KB)
    assert gate.check().paused
    write(video, 700 * KB)  # below pause, above resume
    assert gate.check().paused and gate.pause_reasons() == ["usage"]
    assert not gate.monitor.get_breakdown(paused_for=gate.pause_reasons()).can_download
    assert gate.monitor.get_breakdown().can_download  # no pause to hold: below the pause threshold
    state = json.loads(gate.state_path.read_text())
    assert "paused" not in state and is_paused(state)
    write(video, 560 * KB)
    assert not gate.check().paused and gate.pause_reasons() == []
    assert gate.monitor.get_breakdown(paused_for=gate.pause_reasons()).can_download


def test_an_extraction_that_waits_for_space_nothing_can_free_stalls_instead_of_waiting_for_ever(
        tmp_path, speech_dir):
    """Another episode's video fills the budget and no job of it runs: the extraction
    cannot be admitted, and since a waiting extraction frees nothing, nothing in flight
    can free space: it fails after stall_timeout_seconds instead of holding its job slot
    for ever (which deadlocked a run that an over-size download had filled)."""
    import shutil

    from scribeflow.config import settings as cfg
    from scribeflow.stages import steps

    settings = cfg.validate({"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "data"),
                             "disk_management": {"hard_limit_gb": 0.001, "pause_threshold_gb": 0.0008,
                                                 "resume_threshold_gb": 0.0005, "stall_timeout_seconds": 1,
                                                 "check_interval_seconds": 0.1, "cache_duration_seconds": 0}})
    video = tmp_path / "data" / "videos" / "ep.media"
    video.parent.mkdir(parents=True)
    shutil.copy(speech_dir / "ep01.mp4", video)
    (video.parent / "other.media").write_bytes(os.urandom(900_000))  # waiting for an extraction that never comes
    raised = []

    def extract():
        try:
            steps.extract_audio(settings=settings, episode="ep", video=str(video),
                                audio=str(tmp_path / "data" / "audio" / "ep.wav"))
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=extract, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the extraction waited for space that nothing in flight could free"
    assert isinstance(raised[0], DiskStalled) and "nothing in flight can free space" in str(raised[0])
    assert not (tmp_path / "data" / "audio" / "ep.wav").exists()


def test_a_holder_whose_pid_was_given_to_another_process_is_not_alive():
    """A holder records its pid and its start time (psutil): a pid the kernel has since
    given to another process does not keep a dead job's reservation alive."""
    import socket

    from scribeflow.budget.statefile import alive, this_process

    host = socket.gethostname()
    me = {**this_process(), "host": host}
    assert alive(me, host, 60)
    assert not alive({**me, "created": me["created"] - 3600}, host, 60)  # same pid, another process
    assert alive({"pid": os.getpid(), "host": host}, host, 60)  # an older state file: pid only
    assert not alive({"pid": 2**22 + 11, "host": host}, host, 60)
    assert alive({"pid": 1, "host": "elsewhere", "beat": time.time()}, host, 60)  # another host: its beat
