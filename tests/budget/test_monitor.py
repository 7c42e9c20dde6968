import os
import time

import pytest

from scribeflow.budget.monitor import DiskMonitor

KB = 1024


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def monitor(data, storage=None, **kw):
    kw.setdefault("cache_duration", 0)
    return DiskMonitor(data, storage or data, kw.pop("hard", 1000 * KB), kw.pop("pause", 800 * KB),
                       kw.pop("resume", 600 * KB), **kw)


def test_breakdown_by_kind_in_allocated_bytes(tmp_path):
    data = tmp_path / "data"
    write(data / "videos" / "a.media", 100 * KB)
    write(data / "videos" / "b.media.part", 40 * KB)
    write(data / "audio" / "a.wav", 32 * KB)
    write(data / "transcripts" / "a.json", 10)  # 10 bytes occupy a whole block
    write(data / "jobs.db", 8 * KB)
    write(data / "logs" / "download" / "a.log", 100)
    u = monitor(data).current_usage()
    assert u.videos == 100 * KB and u.partial == 40 * KB and u.audio == 32 * KB
    assert u.transcripts == os.stat(data / "transcripts" / "a.json").st_blocks * 512 >= 512
    assert u.db == 8 * KB and u.logs >= 100
    assert u.temporary == 172 * KB
    assert u.total == sum(v for k, v in u.as_dict().items() if k != "total")


def test_sparse_files_count_what_they_occupy(tmp_path):
    path = tmp_path / "data" / "videos" / "s.media"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(50 * 1024 * KB)  # 50 MB apparent, nothing allocated
    assert monitor(tmp_path / "data").current_usage().videos < 50 * 1024 * KB / 10


def test_two_roots_are_both_counted(tmp_path):
    data, storage = tmp_path / "ssd", tmp_path / "hdd"
    write(storage / "videos" / "a.media", 200 * KB)
    write(storage / "unrelated" / "big.bin", 300 * KB)  # not ours: not counted
    write(data / "transcripts" / "a.json", 4 * KB)
    u = monitor(data, storage).current_usage()
    assert u.videos == 200 * KB and u.transcripts == 4 * KB and u.total == 204 * KB


def test_storage_nested_inside_data_is_not_counted_twice(tmp_path):
    data = tmp_path / "data"
    write(data / "bulk" / "videos" / "a.media", 100 * KB)
    write(data / "bulk" / "notes.txt", 4 * KB)
    u = monitor(data, data / "bulk").current_usage()
    assert u.videos == 100 * KB and u.other == 4 * KB and u.total == 104 * KB


class _Clock:
    """The time module with a monotonic clock the test moves: whether a reading is still
    cached never depends on how fast a busy machine runs the lines between two looks."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_cache_expires_after_cache_duration(tmp_path, monkeypatch):
    from scribeflow.budget import monitor as monitor_module

    clock = _Clock()
    monkeypatch.setattr(monitor_module, "time", clock)
    data = tmp_path / "data"
    m = monitor(data, cache_duration=0.3)
    assert m.current_usage().total == 0
    write(data / "videos" / "a.media", 64 * KB)
    clock.now += 0.29
    assert m.current_usage().total == 0  # cached
    assert m.current_usage(fresh=True).total == 64 * KB
    write(data / "videos" / "b.media", 64 * KB)
    clock.now += 0.29
    assert m.current_usage().total == 64 * KB  # the fresh reading is cached in turn
    clock.now += 0.02
    assert m.current_usage().total == 128 * KB


def test_thresholds(tmp_path):
    data = tmp_path / "data"
    m = monitor(data)
    assert not m.should_pause_downloads() and m.can_resume_downloads()
    write(data / "videos" / "a.media", 700 * KB)
    assert not m.should_pause_downloads() and not m.can_resume_downloads()
    write(data / "videos" / "b.media", 100 * KB)
    assert m.should_pause_downloads()
    b = m.get_breakdown()
    assert b.percentage == pytest.approx(80.0) and not b.can_download and b.available_bytes == 200 * KB


def test_statvfs_guard_sees_the_filesystem(tmp_path):
    m = monitor(tmp_path / "missing-yet")
    fs = m.filesystem_available()
    st = os.statvfs(tmp_path)
    assert list(fs.values())[0] == pytest.approx(st.f_bavail * st.f_frsize, rel=0.01)
    assert not m.filesystem_low()
    huge = monitor(tmp_path, min_free_bytes=st.f_bavail * st.f_frsize * 2)
    assert huge.filesystem_low() and not huge.get_breakdown().can_download


def test_files_deleted_during_a_scan_are_tolerated(tmp_path):
    import threading

    data = tmp_path / "data"
    paths = [write(data / "videos" / f"{i}.media", KB) for i in range(2000)]
    m = monitor(data)
    deleter = threading.Thread(target=lambda: [p.unlink() for p in paths])
    deleter.start()
    totals = [m.current_usage(fresh=True).videos for _ in range(5)]  # must not raise
    deleter.join()
    assert m.current_usage(fresh=True).videos == 0
    assert all(t <= 2000 * 4 * KB for t in totals)
