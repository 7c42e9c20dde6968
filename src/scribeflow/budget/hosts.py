"""Politeness per host, shared by every download process like the gate.

Real sites throttle or ban clients that open many connections at once or start
downloads back to back. A download holds a slot of its URL's host from the start of
its extraction to the end of its download:

- at most `download.max_per_host` downloads of one host at a time (0: no limit);
- starts on one host at least `download.min_start_interval_seconds` apart;
- an HTTP 429 (Too Many Requests) from a host sets that host's backoff: no download
  of that host starts before it ends (the server's Retry-After, else exponential in
  the host's recent 429s); other hosts are not slowed. A completed download of the
  host clears its count of 429s.

A circuit breaker per host (every host, exempt or not). It counts *episodes*, not
attempts: each download reports its outcome once, however often it was retried. When
`breaker_failures` distinct episodes of a host fail with no success of the host between
them, or more than half of its last 20 downloads failed for the host's reasons, the host
is *paused*: its downloads wait (the run goes on with other hosts), and one of them at a
time probes it, the first after `probe_seconds`, then each after twice the wait before
(at most `max_probe_seconds`). One success resets the count; a probe that succeeds
resumes the host; one that fails keeps it paused. An episode that failed on its own
before (a region lock, say) never probes: it is deferred at once. A download that waits
longer than `wait_seconds` is deferred (HostPaused: the host's failure, never counted;
the next run tries it again). `scribeflow status` shows each paused host, since when and
why; `scribeflow retry --host H` resumes one.

Whose fault (judge). A 401/403, a region lock, "video unavailable" or "private" could be
the episode's or the host's (a ban, expired cookies, a site-wide block). The host's own
record decides: when its last outcome of another episode was a success, the episode
fails on its own (counted); when other episodes of the host are failing too, or it has
never served one, the host does (never counted, fed to the breaker). With no outcome to
go by, a download waits for the next one of another episode in flight (at most
JUDGE_SECONDS). A ban that starts with one episode charges that one episode once. Only
refusals of other episodes (401/403, "unavailable") say "ban"; a 5xx elsewhere does not.
A 5xx or timeout on one episode while the host serves others (serves_others) ends that
episode's retries early (stages/download.py).

Hosts in `download.exempt_hosts` (the loopback addresses by default: your own
server) are not limited by the politeness rules. The state is one JSON file under {data_dir}/hosts/, read
and written under an exclusive lock (statefile.py, as the gate's). A holder
whose process died (same machine) or whose heartbeat stopped (another machine) is
dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from scribeflow.budget.statefile import StateFile, alive, this_process
from scribeflow.config.layout import HOSTS_LOCK_FILE, STATE_FILE, Layout
from scribeflow.config.settings import Settings

log = logging.getLogger("scribeflow.budget.hosts")

BEAT_SECONDS = 30.0
POLL_SECONDS = 0.5
RECENT = 20  # outcomes the breaker remembers per host
JUDGE_SECONDS = 120.0  # the longest a download waits for another episode's outcome to judge its failure
ALONE_SECONDS = 10.0  # ... and how long it waits with no other download of the host in flight
SERVED_MEMORY_SECONDS = 30 * 86400  # a host that served an episode within this is known to serve
EPISODE, HOST = "episode", "host"  # failures.EPISODE/HOST: whose fault (judge)


class HostPaused(RuntimeError):
    """The host has been paused by its circuit breaker for longer than this download may
    wait: deferred to the next run, never counted against the episode."""

    kind = "host"


def host_of(url: str) -> str:
    """The host name of `url`, lower case, without port ('' when there is none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class HostLimiter:
    def __init__(self, state_dir: str | os.PathLike, max_per_host: int = 2, min_interval: float = 2.0,
                 exempt=(), backoff_base: float = 2.0, max_backoff: float = 300.0,
                 heartbeat_timeout: float = 4 * BEAT_SECONDS, breaker_failures: int = 5,
                 probe_seconds: float = 60.0, max_probe_seconds: float = 3600.0, wait_seconds: float = 1800.0):
        self.state_dir = Path(state_dir)
        self.max_per_host = int(max_per_host)
        self.min_interval = float(min_interval)
        self.exempt = {h.lower().strip("[]") for h in exempt}
        self.backoff_base = float(backoff_base)
        self.max_backoff = float(max_backoff)
        self.heartbeat_timeout = heartbeat_timeout
        self.breaker_failures = int(breaker_failures)
        self.probe_seconds, self.max_probe_seconds = float(probe_seconds), float(max_probe_seconds)
        self.wait_seconds = float(wait_seconds)
        self.judge_seconds, self.alone_seconds = JUDGE_SECONDS, ALONE_SECONDS
        self.machine = socket.gethostname()

    @classmethod
    def from_config(cls, settings: Settings) -> "HostLimiter":
        dl = settings.download
        return cls(Layout.from_config(settings).hosts, max_per_host=dl.max_per_host,
                   min_interval=dl.min_start_interval_seconds,
                   exempt=dl.exempt_hosts, backoff_base=dl.retry_backoff_seconds,
                   max_backoff=dl.max_backoff_seconds, breaker_failures=dl.host_breaker_failures,
                   probe_seconds=dl.host_probe_seconds, max_probe_seconds=dl.host_max_probe_seconds,
                   wait_seconds=dl.host_wait_seconds)

    def limited(self, host: str) -> bool:
        return bool(host) and host not in self.exempt

    # -- shared state ----------------------------------------------------------------
    @contextlib.contextmanager
    def _state(self):
        """The shared state, exclusive across threads, processes and hosts (statefile.py)."""
        with StateFile(self.state_dir, STATE_FILE, HOSTS_LOCK_FILE).locked() as (state, _):
            self._prune(state)
            yield state

    def _alive(self, holder: dict) -> bool:
        return alive(holder, self.machine, self.heartbeat_timeout, host_key="machine")

    def _prune(self, state: dict) -> None:
        for host, entry in list(state.items()):
            holders = entry.setdefault("holders", {})
            for token in [t for t, h in holders.items() if not self._alive(h)]:
                del holders[token]
            now = time.time()
            idle = not holders and entry.get("backoff_until", 0) < now \
                and entry.get("last_start", 0) < now - max(self.min_interval, 3600) \
                and not entry.get("paused_since") and not any(entry.get("recent") or ()) \
                and not _failing(entry) and not _failing(entry, "refused") \
                and entry.get("served_at", 0) < now - SERVED_MEMORY_SECONDS
            probe = entry.get("probe")
            if probe and not self._alive(probe):  # the probe's process died: the next one may go
                entry["probe"] = None
            if idle:
                del state[host]

    @staticmethod
    def _entry(state: dict, host: str) -> dict:
        if not isinstance(state.get(host), dict):
            state[host] = {}
        entry = state.setdefault(host, {})
        entry.setdefault("holders", {})
        entry.setdefault("last_start", 0.0)
        entry.setdefault("backoff_until", 0.0)
        entry.setdefault("strikes", 0)
        return entry

    # -- the API ---------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self, url: str, episode: str = "", waiting_since: float | None = None, suspect: bool = False):
        """Hold one of the host's slots for the block; wait for the host's circuit
        breaker (a paused host: until this download may probe it, or HostPaused after
        wait_seconds), its backoff, its start interval and a free slot first. `suspect`:
        the episode failed on its own before; it never probes a paused host."""
        host = host_of(url)
        probing = self._pass_breaker(host, episode, waiting_since, suspect)
        try:
            with self._polite_slot(host, episode):
                yield
        finally:
            if probing:
                with contextlib.suppress(OSError), self._state() as state:
                    entry = state.get(host)
                    if entry and (entry.get("probe") or {}).get("pid") == os.getpid():
                        entry["probe"] = None

    def _pass_breaker(self, host: str, episode: str, waiting_since: float | None = None,
                      suspect: bool = False) -> bool:
        """Return at once when the host is not paused (False); when it is, wait until this
        download may probe it (True) or it resumes (False); HostPaused once it has waited
        wait_seconds since `waiting_since` (its first wait for this host), or at once for
        a suspect episode (one bad episode must not be the probe that keeps a host paused)."""
        if not host:
            return False
        started, told = waiting_since or time.time(), False
        while True:
            with self._state() as state:
                entry = state.get(host)
                if not entry or not entry.get("paused_since"):
                    return False
                if suspect:
                    raise HostPaused(f"{episode}: the host {host} is paused ({entry.get('paused_reason')}) and this "
                                     f"episode failed on its own before, so it does not probe the host: deferred to "
                                     f"the next run, not counted")
                now = time.time()
                if not entry.get("probe") and now >= entry.get("probe_at", 0):
                    entry["probe"] = {**this_process(), "machine": self.machine, "id": episode, "since": now,
                                      "beat": now}
                    log.warning("%s probes the paused host %s (paused since %s: %s)", episode, host,
                                time.strftime("%H:%M:%S", time.localtime(entry["paused_since"])),
                                entry.get("paused_reason"))
                    return True
                next_probe = entry.get("probe_at", now)
            waited = time.time() - started
            if waited >= self.wait_seconds:
                raise HostPaused(f"{episode}: the host {host} is paused ({entry.get('paused_reason')}); waited "
                                 f"{waited:.0f} s (download.host_wait_seconds): deferred to the next run, not "
                                 f"counted against the episode")
            if not told:
                told = True
                log.warning("%s waits: the host %s is paused (%s); next probe in %.0f s", episode, host,
                            entry.get("paused_reason"), max(0.0, next_probe - time.time()))
            time.sleep(min(max(next_probe - time.time(), POLL_SECONDS), 5.0, self.wait_seconds - waited))

    @contextlib.contextmanager
    def _polite_slot(self, host: str, episode: str):
        """Every download registers as a holder of its host (the judge asks who else is in
        flight); only limited hosts wait for the politeness rules."""
        if not host:
            yield
            return
        token = uuid.uuid4().hex
        limited, told = self.limited(host), False
        while True:
            with self._state() as state:
                entry = self._entry(state, host)
                now = time.time()
                wait = max(entry["backoff_until"] - now, entry["last_start"] + self.min_interval - now, 0.0) \
                    if limited else 0.0
                full = limited and self.max_per_host > 0 and len(entry["holders"]) >= self.max_per_host
                if wait <= 0 and not full:
                    entry["holders"][token] = {**this_process(), "machine": self.machine, "id": episode,
                                               "since": now, "beat": now}
                    entry["last_start"] = now
                    break
            if not told and (full or entry["backoff_until"] > now):
                told = True
                why = (f"{len(entry['holders'])} download(s) of {host} running (max_per_host "
                       f"{self.max_per_host})" if full else
                       f"{host} asked us to slow down (HTTP 429): backing off {entry['backoff_until'] - now:.1f} s")
                log.info("%s waits: %s", episode, why)
            time.sleep(min(max(wait, POLL_SECONDS if full else 0.01), 5.0))
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(host, token, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            with self._state() as state:
                self._entry(state, host)["holders"].pop(token, None)

    def _beat(self, host: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(BEAT_SECONDS):
            with contextlib.suppress(OSError), self._state() as state:
                holder = self._entry(state, host)["holders"].get(token)
                if holder:
                    holder["beat"] = time.time()

    def slow_down(self, url: str, retry_after: float | None = None) -> float:
        """A 429 from the host of `url`: no download of that host starts for the
        returned number of seconds (Retry-After, else doubling with each 429)."""
        host = host_of(url)
        if not self.limited(host):
            return 0.0
        with self._state() as state:
            entry = self._entry(state, host)
            entry["strikes"] += 1
            delay = min(self.backoff_base * 2 ** (entry["strikes"] - 1), self.max_backoff)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.max_backoff)
            entry["backoff_until"] = max(entry["backoff_until"], time.time() + delay)
            log.warning("HTTP 429 from %s: no download of it starts for %.1f s (429 number %d)",
                        host, entry["backoff_until"] - time.time(), entry["strikes"])
            return entry["backoff_until"] - time.time()

    def succeeded(self, url: str) -> None:
        """A download of the host went through: its count of 429s and of failing episodes
        starts again, it is known to serve (judge), and a paused host resumes."""
        host = host_of(url)
        if not host:
            return
        with self._state() as state:
            entry = self._entry(state, host)
            entry["strikes"] = 0
            entry["recent"] = (entry.get("recent") or [])[-(RECENT - 1):] + [0]
            entry["failing"], entry["refused"] = [], []
            entry["served"] = entry.get("served", 0) + 1
            entry["served_at"] = time.time()
            if entry.get("paused_since"):
                log.warning("The host %s answers again: resumed after %.0f s paused", host,
                            time.time() - entry["paused_since"])
                self._resume(entry)

    @staticmethod
    def _resume(entry: dict) -> None:
        for key in ("paused_since", "paused_reason", "probe", "probe_at", "probe_wait"):
            entry.pop(key, None)
        entry["recent"] = []
        entry["failing"], entry["refused"] = [], []

    def judge(self, url: str, episode: str, since: float | None = None) -> tuple[str, int]:
        """Whose fault a failure of `episode` is that either could own (a 401/403, a region
        lock, an unavailable video): (EPISODE or HOST, episodes the host has served). The
        episode's when the host's last outcome of another episode was a success; the
        host's when other episodes of it are refused too (a 5xx elsewhere says nothing
        of a ban), or it never served one. Undecided, it
        waits for the next outcome of another download of the host in flight (at most
        JUDGE_SECONDS, or ALONE_SECONDS with none in flight)."""
        host = host_of(url)
        if not host:
            return EPISODE, 0
        since = since or time.time()
        alone_since = None
        while True:
            with self._state() as state:
                entry = self._entry(state, host)
                others = [e for e in _failing(entry, "refused") if e != episode]
                served, served_at = entry.get("served", 0), entry.get("served_at", 0.0)
                in_flight = [h for h in entry["holders"].values() if h.get("id") != episode]
            if others:
                return HOST, served
            if served and served_at > time.time() - SERVED_MEMORY_SECONDS:
                return EPISODE, served
            now = time.time()
            alone_since = None if in_flight else (alone_since or now)
            if now - since >= self.judge_seconds or (alone_since and now - alone_since >= self.alone_seconds):
                return HOST, served
            time.sleep(POLL_SECONDS)

    def serves_others(self, url: str, episode: str) -> bool:
        """Whether the host of `url` serves other episodes now: it served one within
        SERVED_MEMORY_SECONDS and no other episode of it is failing since (read without
        the lock: a hint for ending one episode's retries, never a pause)."""
        entry = self._peek().get(host_of(url))
        return isinstance(entry, dict) and entry.get("served_at", 0) > time.time() - SERVED_MEMORY_SECONDS \
            and not [e for e in _failing(entry) if e != episode]

    def failed(self, url: str, reason: str, episode: str = "", own: bool = False, refused: bool = False) -> bool:
        """A download of the host failed (report it once per download, not per retry):
        for the host's reasons, or `own` (judged the episode's). `refused`: a 401/403 or
        "unavailable", which judge() weighs: other episodes refused too mean a ban. Pauses
        the host when `breaker_failures` distinct episodes fail (for either reason, so
        that a ban that starts with one episode's own is seen) with no success between
        them, or more than half of its last RECENT downloads failed for the host's
        reasons. Returns whether the host is paused now."""
        host = host_of(url)
        if not host:
            return False
        with self._state() as state:
            entry = self._entry(state, host)
            failing, refusals = _failing(entry), _failing(entry, "refused")
            # A retry of a download already counted is not counted again.
            new = not episode or episode not in failing + refusals
            if not own and (not episode or episode not in failing):
                entry["failing"] = failing = (failing + [episode])[-RECENT:]
            if refused and episode not in refusals:
                entry["refused"] = refusals = (refusals + [episode])[-RECENT:]
            recent = entry["recent"] = (entry.get("recent") or [])[-(RECENT - 1):] + ([1] if new and not own else [])
            now = time.time()
            if entry.get("paused_since"):  # a probe failed: wait twice as long for the next
                entry["probe_wait"] = min(entry.get("probe_wait", self.probe_seconds) * 2, self.max_probe_seconds)
                entry["probe_at"] = now + entry["probe_wait"]
                entry["probe"] = None
                log.warning("The probe of %s failed (%s): next probe in %.0f s", host, reason, entry["probe_wait"])
                return True
            distinct = len(failing) + len([e for e in refusals if e not in failing]) if episode else len(failing)
            trip = distinct >= self.breaker_failures or (len(recent) >= 10 and sum(recent) * 2 > len(recent))
            if trip:
                entry.update(paused_since=now, paused_reason=reason[:400], probe_wait=self.probe_seconds,
                             probe_at=now + self.probe_seconds, probe=None)
                log.error("The host %s is paused: %d distinct episodes failed with no success between (%d of its "
                          "last %d downloads for the host's reasons), the last: %s. Its episodes wait (one probes "
                          "it in %.0f s); other hosts go on", host, distinct, sum(recent), len(recent), reason,
                          self.probe_seconds)
            return trip

    def paused(self) -> dict:
        """{host: {"since", "reason", "next_probe"}} of the paused hosts, read without the
        lock and without writing (status, metrics, the dashboard)."""
        return {host: {"since": e["paused_since"], "reason": e.get("paused_reason"), "next_probe": e.get("probe_at")}
                for host, e in self._peek().items() if isinstance(e, dict) and e.get("paused_since")}

    def _peek(self) -> dict:
        """The shared state as it is on disk, read without the lock ({} when unreadable)."""
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def resume(self, host: str) -> bool:
        """`scribeflow retry --host`: resume a paused host now. Whether it was paused."""
        with self._state() as state:
            entry = state.get(host.lower())
            if not entry or not entry.get("paused_since"):
                return False
            self._resume(entry)
            return True

    def snapshot(self) -> dict:
        """The shared state (for tests and status): {host: {holders, last_start, backoff_until, strikes}}."""
        with self._state() as state:
            return json.loads(json.dumps(state))


def _failing(entry: dict, key: str = "failing") -> list:
    """The distinct episodes failing on the host since its last success (`refused`: with
    a 401/403 or "unavailable"; an older state file kept a count: it starts again)."""
    failing = entry.get(key)
    return list(failing) if isinstance(failing, list) else []
