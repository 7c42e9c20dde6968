"""The circuit breaker per host (hosts.py): shared state, pause, probes with backoff, resume."""

import threading
import time

import pytest

from scribeflow.budget.hosts import HostLimiter, HostPaused

URL = "https://cdn.example.org/ep.mp4"


def limiter(tmp_path, **kw):
    kw = {"probe_seconds": 0.3, "max_probe_seconds": 2.0, "wait_seconds": 30.0, "breaker_failures": 5,
          "min_interval": 0.0, **kw}
    return HostLimiter(tmp_path / "hosts", **kw)


def test_a_host_failing_five_times_in_a_row_is_paused_probed_and_resumed(tmp_path):
    hosts = limiter(tmp_path)
    for n in range(4):
        assert not hosts.failed(URL, "HTTP 403 (Forbidden)")
    assert hosts.failed(URL, "HTTP 403 (Forbidden)")
    paused = hosts.paused()
    assert list(paused) == ["cdn.example.org"] and "403" in paused["cdn.example.org"]["reason"]
    # Another process's view is the same (the state file), and other hosts go on at once.
    assert list(limiter(tmp_path).paused()) == ["cdn.example.org"]
    with limiter(tmp_path).slot("https://other.example.net/x.mp4", "other"):
        pass
    # Two downloads wait; one at a time probes, after probe_seconds.
    entered, order = [], threading.Lock()

    def download(name):
        with hosts.slot(URL, name):
            with order:
                entered.append((name, time.monotonic()))

    started = time.monotonic()
    first = threading.Thread(target=download, args=("a",))
    first.start()
    first.join(5)
    assert entered and entered[0][1] - started >= 0.25  # waited for the probe time
    # That probe failed: the host stays paused and the next probe waits twice as long.
    assert hosts.failed(URL, "HTTP 403 (Forbidden)")
    waits = [threading.Thread(target=download, args=(n,)) for n in ("b", "c")]
    probe_after = time.monotonic()
    for t in waits:
        t.start()
    time.sleep(0.2)
    assert len(entered) == 1  # nobody passes before the next probe
    deadline = time.monotonic() + 5
    while len(entered) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(entered) == 2 and entered[1][1] - probe_after >= 0.5  # the doubled wait
    time.sleep(0.2)
    assert len(entered) == 2  # the other still waits behind the probe
    hosts.succeeded(URL)  # the probe went through: resumed, the last one passes at once
    for t in waits:
        t.join(5)
    assert len(entered) == 3 and hosts.paused() == {}


def test_half_of_the_last_twenty_failing_pauses_a_host(tmp_path):
    hosts = limiter(tmp_path)
    for n in range(20):  # one in three goes through
        if n % 3 == 0:
            hosts.succeeded(URL)
        elif hosts.failed(URL, "HTTP 503"):
            break
    assert n == 10 and hosts.paused()  # 7 of the last 11 failed, never 5 in a row


def test_a_download_that_waits_too_long_for_its_host_is_deferred_and_retry_host_resumes_it(tmp_path):
    hosts = limiter(tmp_path, probe_seconds=60, wait_seconds=0.5)
    for _ in range(5):
        hosts.failed(URL, "HTTP 500")
    with pytest.raises(HostPaused, match="deferred to the next run") as raised:
        with hosts.slot(URL, "ep"):
            pass
    assert raised.value.kind == "host"
    assert hosts.resume("cdn.example.org") and hosts.paused() == {}
    with hosts.slot(URL, "ep"):
        pass


def test_a_burst_of_extractor_errors_pauses_the_host_saying_to_update_yt_dlp(tmp_path):
    from yt_dlp.utils import ExtractorError
    from yt_dlp.version import __version__

    from scribeflow.stages.download import breaker_reason, classify

    failure = classify(ExtractorError("Unable to extract video data; please report this issue"), "ep")
    assert failure.kind == "host" and not failure.permanent and __version__ in str(failure)
    hosts = limiter(tmp_path)
    for _ in range(5):
        hosts.failed(URL, breaker_reason(failure))
    reason = hosts.paused()["cdn.example.org"]["reason"]
    assert reason.startswith("its pages no longer parse: update yt-dlp") and __version__ in reason
