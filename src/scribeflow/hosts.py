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

Hosts in `download.exempt_hosts` (the loopback addresses by default: your own
server) are not limited. The state is one JSON file under {data_dir}/hosts/, read
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

from .config import Settings
from .layout import HOSTS_LOCK_FILE, STATE_FILE, Layout
from .statefile import StateFile, alive

log = logging.getLogger("scribeflow.hosts")

BEAT_SECONDS = 30.0
POLL_SECONDS = 0.5


def host_of(url: str) -> str:
    """The host name of `url`, lower case, without port ('' when there is none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class HostLimiter:
    def __init__(self, state_dir: str | os.PathLike, max_per_host: int = 2, min_interval: float = 2.0,
                 exempt=(), backoff_base: float = 2.0, max_backoff: float = 300.0,
                 heartbeat_timeout: float = 4 * BEAT_SECONDS):
        self.state_dir = Path(state_dir)
        self.max_per_host = int(max_per_host)
        self.min_interval = float(min_interval)
        self.exempt = {h.lower().strip("[]") for h in exempt}
        self.backoff_base = float(backoff_base)
        self.max_backoff = float(max_backoff)
        self.heartbeat_timeout = heartbeat_timeout
        self.machine = socket.gethostname()

    @classmethod
    def from_config(cls, settings: Settings) -> "HostLimiter":
        dl = settings.download
        return cls(Layout.from_config(settings).hosts, max_per_host=dl.max_per_host,
                   min_interval=dl.min_start_interval_seconds,
                   exempt=dl.exempt_hosts, backoff_base=dl.retry_backoff_seconds,
                   max_backoff=dl.max_backoff_seconds)

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
                and entry.get("last_start", 0) < time.time() - max(self.min_interval, 3600)
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
    def slot(self, url: str, episode: str = ""):
        """Hold one of the host's slots for the block; wait for the host's backoff,
        its start interval and a free slot first."""
        host = host_of(url)
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
                    entry["holders"][token] = {"pid": os.getpid(), "machine": self.machine, "id": episode,
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
        """A download of the host went through: its count of 429s starts again."""
        host = host_of(url)
        if not self.limited(host):
            return
        with self._state() as state:
            if state.get(host, {}).get("strikes"):
                state[host]["strikes"] = 0

    def snapshot(self) -> dict:
        """The shared state (for tests and status): {host: {holders, last_start, backoff_until, strikes}}."""
        with self._state() as state:
            return json.loads(json.dumps(state))
