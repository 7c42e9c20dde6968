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


# -- whose fault: one bad episode, or the host ------------------------------------------------
def test_one_episode_failing_on_every_try_never_pauses_a_host_that_serves_others(tmp_path):
    hosts = limiter(tmp_path)
    for n in range(12):  # a region-locked episode, tried again and again, between the others' successes
        assert not hosts.failed(URL, "HTTP 403 (Forbidden)", "locked", own=n % 2 == 0)
        hosts.succeeded(URL)
    for _ in range(10):  # and its retries within one job count once
        assert not hosts.failed(URL, "HTTP 403 (Forbidden)", "locked")
    assert hosts.paused() == {}


def test_distinct_episodes_failing_with_no_success_between_pause_the_host_and_one_success_resets(tmp_path):
    hosts = limiter(tmp_path)
    for episode in ("a", "b", "c", "d"):
        assert not hosts.failed(URL, "HTTP 500", episode)
    hosts.succeeded(URL)  # one success: the count starts again
    for episode in ("f", "g", "h", "i"):
        assert not hosts.failed(URL, "HTTP 500", episode)
    assert hosts.failed(URL, "HTTP 500", "j")
    assert "cdn.example.org" in hosts.paused()


def test_a_failure_is_the_episodes_while_the_host_serves_others_and_the_hosts_when_others_fail_too(tmp_path):
    from scribeflow.budget.hosts import EPISODE, HOST

    hosts = limiter(tmp_path)
    hosts.alone_seconds = 0.3
    assert hosts.judge(URL, "locked")[0] == HOST  # a host that never served anyone: not the episode's
    hosts.succeeded(URL)
    assert hosts.judge(URL, "locked") == (EPISODE, 1)  # it serves others: the episode's own
    # A 5xx of another episode says nothing of a ban: a 403 is still the episode's.
    hosts.failed(URL, "HTTP 500", "broken")
    assert hosts.judge(URL, "locked")[0] == EPISODE
    # A ban: another episode is refused too, so the next one is the host's.
    hosts.failed(URL, "HTTP 403 (Forbidden)", "locked", own=True, refused=True)
    assert hosts.judge(URL, "other")[0] == HOST
    assert hosts.judge(URL, "locked")[0] == EPISODE  # its own earlier failure is not "another"


def test_an_undecided_failure_waits_for_the_next_outcome_of_another_download_in_flight(tmp_path):
    from scribeflow.budget.hosts import EPISODE

    hosts = limiter(tmp_path)
    in_flight = threading.Event()

    def other_download():
        with hosts.slot(URL, "ep01"):
            in_flight.set()
            time.sleep(1.0)
        hosts.succeeded(URL)

    t = threading.Thread(target=other_download)
    t.start()
    in_flight.wait(5)
    started = time.monotonic()
    assert hosts.judge(URL, "locked")[0] == EPISODE
    assert 0.5 < time.monotonic() - started < 10
    t.join()


def test_an_episode_that_failed_on_its_own_never_probes_a_paused_host(tmp_path):
    hosts = limiter(tmp_path, probe_seconds=0.0)
    for episode in "abcde":
        hosts.failed(URL, "HTTP 500", episode)
    started = time.monotonic()
    with pytest.raises(HostPaused, match="failed on its own"):
        with hosts.slot(URL, "locked", suspect=True):
            pass
    assert time.monotonic() - started < 5
    with hosts.slot(URL, "fresh"):  # another episode probes it
        pass
    hosts.succeeded(URL)
    assert hosts.paused() == {}
