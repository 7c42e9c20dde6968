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

A circuit breaker per host (every host, exempt or not). When a host's downloads fail
for the host's reasons (failures.kind: 403/5xx, timeouts, extractor errors) `breaker_failures`
times in a row, or more than half of its last 20 outcomes, the host is *paused*: its
downloads wait (the run goes on with other hosts), and one of them at a time probes it,
the first after `probe_seconds`, then each after twice the wait before (at most
`max_probe_seconds`). A probe that succeeds resumes the host; one that fails keeps it
paused. A download that waits longer than `wait_seconds` is deferred (HostPaused: the
host's failure, never counted; the next run tries it again). `scribeflow status` shows
each paused host, since when and why; `scribeflow retry --host H` resumes one.

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
            idle = not holders and entry.get("backoff_until", 0) < time.time() \
                and entry.get("last_start", 0) < time.time() - max(self.min_interval, 3600) \
                and not entry.get("paused_since") and not any(entry.get("recent") or ())
            probe = entry.get("probe")
            if probe and not self._alive(probe):  # the probe's process died: the next one may go
                entry["probe"] = None
            if idle:
                del state[host]

    @staticmethod
    def _entry(state: dict, host: str) -> dict:
        entry = state.setdefault(host, {})
        entry.setdefault("holders", {})
        entry.setdefault("last_start", 0.0)
        entry.setdefault("backoff_until", 0.0)
        entry.setdefault("strikes", 0)
        return entry

    # -- the API ---------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self, url: str, episode: str = "", waiting_since: float | None = None):
        """Hold one of the host's slots for the block; wait for the host's circuit
        breaker (a paused host: until this download may probe it, or HostPaused after
        wait_seconds), its backoff, its start interval and a free slot first."""
        host = host_of(url)
        probing = self._pass_breaker(host, episode, waiting_since)
        try:
            with self._polite_slot(host, episode):
                yield
        finally:
            if probing:
                with contextlib.suppress(OSError), self._state() as state:
                    entry = state.get(host)
                    if entry and (entry.get("probe") or {}).get("pid") == os.getpid():
                        entry["probe"] = None

    def _pass_breaker(self, host: str, episode: str, waiting_since: float | None = None) -> bool:
        """Return at once when the host is not paused (False); when it is, wait until this
        download may probe it (True) or it resumes (False); HostPaused once it has waited
        wait_seconds since `waiting_since` (its first wait for this host)."""
        if not host:
            return False
        started, told = waiting_since or time.time(), False
        while True:
            with self._state() as state:
                entry = state.get(host)
                if not entry or not entry.get("paused_since"):
                    return False
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
        if not self.limited(host):
            yield
            return
        token = uuid.uuid4().hex
        told = False
        while True:
            with self._state() as state:
                entry = self._entry(state, host)
                now = time.time()
                wait = max(entry["backoff_until"] - now, entry["last_start"] + self.min_interval - now, 0.0)
                full = self.max_per_host > 0 and len(entry["holders"]) >= self.max_per_host
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
        """A download of the host went through: its count of 429s starts again, and a
        paused host resumes."""
        host = host_of(url)
        if not host:
            return
        with self._state() as state:
            entry = self._entry(state, host)
            entry["strikes"] = 0
            entry["recent"] = (entry.get("recent") or [])[-(RECENT - 1):] + [0]
            entry["failing"] = 0
            if entry.get("paused_since"):
                log.warning("The host %s answers again: resumed after %.0f s paused", host,
                            time.time() - entry["paused_since"])
                self._resume(entry)
            elif not self.limited(host) and not entry["holders"]:
                del state[host]  # nothing to remember of an exempt host that works

    @staticmethod
    def _resume(entry: dict) -> None:
        for key in ("paused_since", "paused_reason", "probe", "probe_at", "probe_wait"):
            entry.pop(key, None)
        entry["recent"] = []

    def failed(self, url: str, reason: str) -> bool:
        """A download of the host failed for the host's reasons (failures.kind); pauses
        the host when its breaker trips. Returns whether the host is paused now."""
        host = host_of(url)
        if not host:
            return False
        with self._state() as state:
            entry = self._entry(state, host)
            recent = entry["recent"] = (entry.get("recent") or [])[-(RECENT - 1):] + [1]
            entry["failing"] = entry.get("failing", 0) + 1
            now = time.time()
            if entry.get("paused_since"):  # a probe failed: wait twice as long for the next
                entry["probe_wait"] = min(entry.get("probe_wait", self.probe_seconds) * 2, self.max_probe_seconds)
                entry["probe_at"] = now + entry["probe_wait"]
                entry["probe"] = None
                log.warning("The probe of %s failed (%s): next probe in %.0f s", host, reason, entry["probe_wait"])
                return True
            trip = entry["failing"] >= self.breaker_failures or (len(recent) >= 10 and sum(recent) * 2 > len(recent))
            if trip:
                entry.update(paused_since=now, paused_reason=reason[:400], probe_wait=self.probe_seconds,
                             probe_at=now + self.probe_seconds, probe=None)
                log.error("The host %s is paused: %d of its recent downloads failed for the host's reasons, "
                          "the last: %s. Its episodes wait (one probes it in %.0f s); other hosts go on", host,
                          sum(recent), reason, self.probe_seconds)
            return trip

    def paused(self) -> dict:
        """{host: {"since", "reason", "next_probe"}} of the paused hosts, read without the
        lock and without writing (status, metrics, the dashboard)."""
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        return {host: {"since": e["paused_since"], "reason": e.get("paused_reason"), "next_probe": e.get("probe_at")}
                for host, e in (state.items() if isinstance(state, dict) else [])
                if isinstance(e, dict) and e.get("paused_since")}

    def resume(self, host: str) -> bool:
        """`scribeflow retry --host`: resume a paused host now. Whether it was paused."""
        with self._state() as state:
            entry = state.get(host.lower())
            if not entry or not entry.get("paused_since"):
                return False
            self._resume(entry)
            entry["failing"] = 0
            return True

    def snapshot(self) -> dict:
        """The shared state (for tests and status): {host: {holders, last_start, backoff_until, strikes}}."""
        with self._state() as state:
            return json.loads(json.dumps(state))
