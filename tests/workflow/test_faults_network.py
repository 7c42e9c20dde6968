"""Network and media faults injected by the loopback server, met by real yt-dlp downloads."""

import errno
import shutil
import subprocess
import time

import pytest
from support.server import MediaServer

from scribeflow.config import settings as cfg
from scribeflow.stages.download import DiskFull, DownloadFailed, backoff_seconds, classify, download_episode

BACKOFF = 0.2


@pytest.fixture
def config(tmp_path):
    return cfg.validate({
        "data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
        "download": {"retries": 2, "retry_backoff_seconds": BACKOFF, "socket_timeout": 1},
    })


@pytest.fixture
def out(tmp_path):
    return tmp_path / "storage" / "videos" / "ep.media"


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


@pytest.mark.parametrize("status", ["429", "500", "503"])
def test_overload_in_the_extraction_phase_is_retried_with_backoff(status, speech_dir, config, out):
    # yt-dlp does not retry its extraction phase (the first GET): our loop must.
    with MediaServer(speech_dir, faults={"GET /ep01.mp4": [status, status]}) as server:
        started = time.monotonic()
        result = download_episode("ep", server.url("ep01.mp4"), out, config)
        elapsed = time.monotonic() - started
        gets = server.served("ep01.mp4", "GET")
    assert out.read_bytes() == (speech_dir / "ep01.mp4").read_bytes()
    assert gets[:2] == [status, status] and gets[2:] and set(gets[2:]) == {"ok"}
    assert result["attempts"] == 3
    assert elapsed >= 0.8 * (BACKOFF + 2 * BACKOFF)  # waited, doubling, before each retry


def test_retry_after_of_a_rate_limit_is_honoured(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"GET /ep01.mp4": ["429:2"]}) as server:
        started = time.monotonic()
        download_episode("ep", server.url("ep01.mp4"), out, config)
        assert time.monotonic() - started >= 2.0  # the server's word, not our 0.2 s backoff
        assert server.served("ep01.mp4", "GET")[:2] == ["429:2", "ok"]


def test_overload_in_the_download_phase_is_retried(speech_dir, config, out):
    # The extractor's GET succeeds; the media GET fails twice, then works.
    with MediaServer(speech_dir, faults={"GET /ep02.mp4": ["ok", "503", "500"]}) as server:
        download_episode("ep", server.url("ep02.mp4"), out, config)
        assert server.served("ep02.mp4", "GET")[:3] == ["ok", "503", "500"]
    assert out.read_bytes() == (speech_dir / "ep02.mp4").read_bytes()


def test_an_overloaded_head_request_is_retried_not_taken_as_unknown_size(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"HEAD /ep01.mp4": ["503"]}) as server:
        result = download_episode("ep", server.url("ep01.mp4"), out, config)
        assert server.served("ep01.mp4", "HEAD") == ["503", "ok"]
    # The size came from the server, not the 600 MB default that would block a small budget.
    assert result["size_source"] == "Content-Length"


def test_a_server_that_stays_down_fails_transiently_and_leaves_nothing(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"/ep01.mp4": ["503"] * 50}) as server:
        with pytest.raises(DownloadFailed) as info:
            download_episode("ep", server.url("ep01.mp4"), out, config)
        assert server.served("ep01.mp4") == ["503"] * 3  # 1 + retries (HEAD fails first), then no more
    assert not info.value.permanent and "HTTP 503" in str(info.value)
    assert "gave up after 3 attempt(s)" in str(info.value)
    assert leftovers(out) == []


@pytest.mark.parametrize("status", ["404", "410"])
@pytest.mark.parametrize("phase", ["extraction", "download"])
def test_gone_is_permanent_and_not_retried(status, phase, speech_dir, config, out):
    plan = [status] * 5 if phase == "extraction" else ["ok"] + [status] * 5
    with MediaServer(speech_dir, faults={"GET /ep01.mp4": plan}) as server:
        with pytest.raises(DownloadFailed) as info:
            download_episode("ep", server.url("ep01.mp4"), out, config)
        gets = server.served("ep01.mp4", "GET")
    assert info.value.permanent and f"HTTP {status}" in str(info.value) and "gone" in str(info.value)
    assert gets.count(status) == 1  # asked once: retrying cannot bring it back
    assert leftovers(out) == []


def test_a_connection_cut_mid_body_is_resumed(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"GET /ep03.mp4": ["ok", "cut"]}) as server:
        download_episode("ep", server.url("ep03.mp4"), out, config)
        assert server.served("ep03.mp4", "GET")[:3] == ["ok", "cut", "ok"]
    assert out.read_bytes() == (speech_dir / "ep03.mp4").read_bytes()
    assert leftovers(out) == ["ep.media"]


def test_a_stalled_body_arrives_whole_once_released(speech_dir):
    import threading
    import urllib.request

    got = {}
    with MediaServer(speech_dir, faults={"GET /ep03.mp4": ["stall"]}) as server:
        def fetch():
            with urllib.request.urlopen(server.url("ep03.mp4"), timeout=30) as response:
                got["body"] = response.read()

        reader = threading.Thread(target=fetch)
        reader.start()
        reader.join(1.0)
        assert reader.is_alive() and "body" not in got  # the last 16 KiB wait for release()
        server.release()
        reader.join(30)
    assert got["body"] == (speech_dir / "ep03.mp4").read_bytes()


def test_a_connection_cut_every_time_fails_and_removes_the_partial_file(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"GET /ep03.mp4": ["ok"] + ["cut", "cut", "cut", "ok"] * 3}) as server:
        with pytest.raises(DownloadFailed) as info:
            download_episode("ep", server.url("ep03.mp4"), out, config)
    assert not info.value.permanent and "more expected" in str(info.value)
    assert leftovers(out) == []


def test_a_server_that_never_answers_times_out_and_is_retried(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"GET /ep04.mp4": ["hang"]}) as server:
        started = time.monotonic()
        download_episode("ep", server.url("ep04.mp4"), out, config)
        assert time.monotonic() - started >= 1.0  # socket_timeout
        assert server.served("ep04.mp4", "GET")[:2] == ["hang", "ok"]
    assert out.read_bytes() == (speech_dir / "ep04.mp4").read_bytes()


def test_a_server_that_never_answers_fails_within_the_timeouts(speech_dir, config, out):
    config = cfg.updated(config, {"download": {"retries": 1}})
    with MediaServer(speech_dir, faults={"/ep04.mp4": ["hang"] * 10}) as server:
        started = time.monotonic()
        with pytest.raises(DownloadFailed, match="timed out") as info:
            download_episode("ep", server.url("ep04.mp4"), out, config)
    # 2 attempts x (HEAD + GET) x 1 s socket timeout, plus a short backoff: not hours.
    assert time.monotonic() - started < 15
    assert not info.value.permanent and leftovers(out) == []


def test_a_web_page_instead_of_media_is_permanent(speech_dir, config, out):
    with MediaServer(speech_dir, faults={"/ep01.mp4": ["html"] * 10}) as server:
        with pytest.raises(DownloadFailed, match="no media at this address") as info:
            download_episode("ep", server.url("ep01.mp4"), out, config)
        assert server.served("ep01.mp4", "GET") == ["html"]
    assert info.value.permanent and leftovers(out) == []


def test_a_file_larger_than_declared_is_stopped_then_tried_once_with_what_was_measured(
        speech_dir, config, out, caplog):
    with MediaServer(speech_dir, faults={"/ep05.mp4": ["understated"] * 10}) as server:
        result = download_episode("ep", server.url("ep05.mp4"), out, config)
    assert "past its declared" in caplog.text and "trying once more" in caplog.text
    assert result["size_source"] == "measured by the attempt that was stopped"
    assert out.read_bytes() == (speech_dir / "ep05.mp4").read_bytes()
    assert leftovers(out) == [out.name]


def test_garbage_bytes_are_permanent_and_removed(tmp_path, config, out):
    served = tmp_path / "served"
    served.mkdir()
    (served / "junk.mp4").write_bytes(bytes(range(256)) * 400)
    with MediaServer(served) as server, pytest.raises(DownloadFailed, match="not a readable media file") as info:
        download_episode("ep", server.url("junk.mp4"), out, config)
    assert info.value.permanent and leftovers(out) == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to build the fixture")
def test_a_video_without_audio_is_permanent_and_removed(tmp_path, config, out):
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=d=1:s=64x48",
                    "-c:v", "libx264", str(served / "silent.mp4")], check=True)
    with MediaServer(served) as server, pytest.raises(DownloadFailed, match="no audio stream") as info:
        download_episode("ep", server.url("silent.mp4"), out, config)
    assert info.value.permanent and leftovers(out) == []


def test_backoff_doubles_is_capped_and_honours_retry_after():
    dl = cfg.validate({"download": {"retry_backoff_seconds": 1, "max_backoff_seconds": 30}}).download
    waits = [backoff_seconds(dl, n) for n in (1, 2, 3, 4)]
    for n, wait in enumerate(waits):
        assert 0.8 * 2**n <= wait <= 1.2 * 2**n
    assert backoff_seconds(dl, 20) == 30
    assert backoff_seconds(dl, 1, retry_after=12) == 12
    assert backoff_seconds(dl, 1, retry_after=3600) == 30


def test_a_full_disk_is_transient():
    failure = classify(OSError(errno.ENOSPC, "No space left on device"), "ep")
    assert isinstance(failure, DiskFull) and failure.transient and not failure.permanent
