"""The download gate: downloads pause at the pause threshold and resume at the resume
threshold (hysteresis), and every admission keeps the hard limit by construction.

The gate's state is one small JSON file under {data_dir}/gate/, read and written
under an fcntl (POSIX) lock, so every download job shares it: across processes,
across concurrent Snakemake runs on the same data, and across cluster nodes on a
shared filesystem with POSIX locks (NFSv4, Lustre, GPFS).

Why the hard limit holds. Let usage be what the DiskMonitor measures (partial
downloads included) and, for every admitted download, remaining = declared bytes
minus what it has written so far. A download is admitted only if

    usage + sum(remaining of admitted downloads) + declared <= hard limit

measured fresh under the lock. A download cannot write more than it declared (the
downloader stops it, see download.py), so from then on usage can only reach that
sum. Everything else the pipeline writes shrinks usage (transcription deletes video
and audio) or is small and counted by the next admission (transcripts, the ledger).
Reaching the pause threshold stops admissions until usage falls to the resume
threshold, so the in-flight margin (hard - pause) is what downloads may add above it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .disk import DiskMonitor, DiskUsage
from .files import allocated_bytes

log = logging.getLogger("scribeflow.gate")


class DiskStalled(RuntimeError):
    """Downloads are paused and nothing in flight can free space."""


def gb(n: float) -> str:
    """Bytes as GB, readable at both 300 GB and the 5 MB of a test."""
    value = n / 1e9
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


@dataclass
class Decision:
    admitted: bool
    usage: DiskUsage
    pending: int  # bytes admitted downloads may still write
    fs_available: int
    paused: bool
    reason: str
    stalled: str | None  # why nothing in flight can free space, when that is so


class DownloadGate:
    def __init__(
        self,
        monitor: DiskMonitor,
        state_dir: str | os.PathLike,
        ledger=None,
        check_interval: float = 30.0,
        stall_timeout: float = 900.0,
        heartbeat_timeout: float | None = None,
        audio_headroom: int = 0,
    ):
        self.monitor = monitor
        self.state_dir = Path(state_dir)
        self.ledger = ledger
        self.check_interval = check_interval
        self.stall_timeout = stall_timeout
        # A holder on another host is presumed dead after missing this many beats.
        self.heartbeat_timeout = heartbeat_timeout or max(3 * check_interval, 60.0)
        self.host = socket.gethostname()
        # Room downloads leave free under the hard limit so that an extraction can always
        # start: audio is written before its video is deleted.
        self.audio_headroom = int(audio_headroom)

    @classmethod
    def from_config(cls, config: dict, ledger=None) -> "DownloadGate":
        dm = config["disk_management"]
        return cls(
            DiskMonitor.from_config(config),
            Path(config["data_dir"]) / "gate",
            ledger=ledger,
            check_interval=dm["check_interval_seconds"],
            stall_timeout=dm["stall_timeout_seconds"],
            audio_headroom=int(dm["audio_headroom_mb"] * 1_000_000),
        )

    # -- shared state --------------------------------------------------------------
    @contextlib.contextmanager
    def _locked_state(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "gate.lock", "a+") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            try:
                path = self.state_dir / "state.json"
                try:
                    state = json.loads(path.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    state = {}
                state.setdefault("paused", False)
                state.setdefault("reasons", [])
                state.setdefault("reservations", {})
                state.setdefault("consumers", {})
                before = json.dumps(state, sort_keys=True)
                yield state
                after = json.dumps(state, sort_keys=True)
                if after != before:
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(after)
                    os.replace(tmp, path)
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") == self.host:
            try:
                os.kill(holder["pid"], 0)
                return True
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return time.time() - holder.get("beat", 0) < self.heartbeat_timeout

    def _prune(self, state: dict) -> None:
        for table in ("reservations", "consumers"):
            for token in [t for t, h in state[table].items() if not self._alive(h)]:
                log.info("Dropping %s of a dead process: %s", table[:-1], state[table][token].get("id"))
                del state[table][token]

    def _holder(self, **extra) -> dict:
        return {"pid": os.getpid(), "host": self.host, "since": time.time(), "beat": time.time(), **extra}

    @staticmethod
    def _remaining(reservation: dict) -> int:
        written = 0
        for name in reservation["paths"]:
            try:
                written += allocated_bytes(os.stat(name))
            except FileNotFoundError:
                pass
        return max(0, reservation["bytes"] - written)

    # -- the decision --------------------------------------------------------------
    def _decide(self, state: dict, declared: int, download: bool = True) -> Decision:
        m = self.monitor
        usage = m.current_usage(fresh=True)
        self._prune(state)
        pending = sum(self._remaining(r) for r in state["reservations"].values())
        fs_available = min(m.filesystem_available().values()) - pending
        band = m.pause_threshold - m.resume_threshold

        reasons = set(state["reasons"])
        # A pause holds downloads back: only a download's look opens one (an extraction's
        # look after the last download would open a pause that nothing ever closes).
        if usage.total >= m.pause_threshold and download:
            reasons.add("usage")
        elif usage.total <= m.resume_threshold:
            reasons.discard("usage")
        if fs_available < m.min_free_bytes + declared and download:
            reasons.add("filesystem")
        elif fs_available >= m.min_free_bytes + declared + band:
            reasons.discard("filesystem")
        self._record_transition(state, sorted(reasons), usage)

        headroom = self.audio_headroom if download else 0
        fits = usage.total + pending + declared + headroom <= m.hard_limit
        # Extraction ignores the pause (it is how space gets freed) but not the hard limit.
        admitted = fits and (not reasons or not download)
        reason = ", ".join(
            {"usage": f"usage {gb(usage.total)} GB reached the pause threshold {gb(m.pause_threshold)} GB",
             "filesystem": f"filesystem has {gb(fs_available)} GB available, below "
                           f"{gb(m.min_free_bytes + declared)} GB needed"}[r] for r in sorted(reasons)
        ) or ("" if fits else f"{gb(declared)} GB does not fit under the hard limit now")

        stalled = None
        if (reasons or not fits) and not state["consumers"] and not state["reservations"]:
            stalled = (f"no download, extraction or transcription is running while {gb(usage.temporary)} GB "
                       f"of video and audio wait (a failed transcription leaves its video; if jobs wait "
                       f"for cores, give Snakemake more cores than max_concurrent_downloads)")
        if "usage" in reasons and usage.total - usage.temporary > m.resume_threshold:
            stalled = (f"even with every video and audio file deleted, usage would be "
                       f"{gb(usage.total - usage.temporary)} GB, above the resume threshold "
                       f"{gb(m.resume_threshold)} GB (transcripts {gb(usage.transcripts)} GB, "
                       f"other files {gb(usage.total - usage.temporary - usage.transcripts)} GB)")
        if not fits and usage.total - usage.temporary + declared + headroom > m.hard_limit:
            stalled = f"this write ({gb(declared)} GB) can never fit under the hard limit {gb(m.hard_limit)} GB"
        if self.ledger is not None:
            self.ledger.sample_disk(usage, paused=bool(reasons), min_interval=self.check_interval)
        return Decision(admitted, usage, pending, fs_available, bool(reasons), reason, stalled)

    def _record_transition(self, state: dict, reasons: list, usage: DiskUsage) -> None:
        was_paused = bool(state["reasons"])
        state["reasons"] = reasons
        state["paused"] = bool(reasons)
        if reasons and not was_paused:
            state["paused_since"] = time.time()
            log.warning(
                "Disk usage exceeded threshold (%s GB >= %s GB), pausing downloads",
                gb(usage.total), gb(self.monitor.pause_threshold),
            ) if "usage" in reasons else log.warning(
                "Filesystem nearly full, pausing downloads")
            if self.ledger is not None:
                self.ledger.start_pause(usage.total, ",".join(reasons), at=state["paused_since"])
        elif was_paused and not reasons:
            state["paused_since"] = None
            if self.ledger is not None:
                self.ledger.end_pause(usage.total)

    def held_paths(self) -> tuple[set[str], bool]:
        """Paths reserved by live downloads and extractions, and whether any job is live."""
        with self._locked_state() as state:
            self._prune(state)
            paths = {p for r in state["reservations"].values() for p in r["paths"]}
            return paths, bool(state["reservations"] or state["consumers"])

    # -- the API used by the rules ---------------------------------------------------
    def check(self, declared: int = 0, download: bool = True) -> Decision:
        """One look at the gate without reserving anything. download=False: a look that
        may end a pause (after a transcription freed space) but never opens one."""
        with self._locked_state() as state:
            return self._decide(state, declared, download)

    @contextlib.contextmanager
    def admitted(self, episode: str, declared: int, paths: list[str | os.PathLike], download: bool = True):
        """Block until writing `declared` bytes into `paths` may start; hold the
        reservation until the block ends. Downloads (download=True) also wait while the
        gate is paused; audio extraction waits only for room under the hard limit.
        Raises DiskStalled after stall_timeout when nothing in flight can free space."""
        token = uuid.uuid4().hex
        paths = [str(Path(p).absolute()) for p in paths]
        waiting_since = stalled_since = None
        while True:
            with self._locked_state() as state:
                decision = self._decide(state, declared, download)
                if decision.admitted:
                    state["reservations"][token] = self._holder(
                        id=episode, bytes=declared, paths=paths, kind="download" if download else "audio")
                    break
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = now
                log.warning("Download of %s waits: %s", episode, decision.reason)
            log.info(
                "Waiting for transcriber to free up space (current: %s GB, need: < %s GB)",
                gb(decision.usage.total),
                gb(self.monitor.resume_threshold if decision.paused else self.monitor.hard_limit - declared),
            )
            if decision.stalled:
                stalled_since = stalled_since or now
                if now - stalled_since >= self.stall_timeout:
                    raise DiskStalled(
                        f"downloads paused for {now - stalled_since:.0f} s and nothing in flight can free "
                        f"space: {decision.stalled}. Free space or raise disk_management limits, then rerun."
                    )
            else:
                stalled_since = None
            time.sleep(self.check_interval)
        if download:
            self._log_admission(decision, waited=waiting_since is not None)
        beat = _Heartbeat(self, "reservations", token, self.check_interval)
        try:
            yield decision
        finally:
            beat.stop()
            with self._locked_state() as state:
                state["reservations"].pop(token, None)

    def _log_admission(self, d: Decision, waited: bool) -> None:
        m = self.monitor
        pct = 100 * d.usage.total / m.hard_limit
        if waited:
            log.info("Disk space freed (%s GB), resuming downloads", gb(d.usage.total))
        if d.usage.total >= m.resume_threshold:
            log.warning("Disk usage: %s/%s GB (%.0f%%), approaching limit", gb(d.usage.total), gb(m.hard_limit), pct)
        else:
            log.info("Disk usage: %s/%s GB (%.0f%%), downloading normally", gb(d.usage.total), gb(m.hard_limit), pct)

    @contextlib.contextmanager
    def consumer(self, episode: str, kind: str):
        """Mark an extraction or transcription in flight: the work that frees space."""
        token = uuid.uuid4().hex
        with self._locked_state() as state:
            state["consumers"][token] = self._holder(id=episode, kind=kind)
        beat = _Heartbeat(self, "consumers", token, self.check_interval)
        try:
            yield
        finally:
            beat.stop()
            with self._locked_state() as state:
                state["consumers"].pop(token, None)


class _Heartbeat:
    """Refreshes a holder's beat so that other hosts can tell it is alive."""

    def __init__(self, gate: DownloadGate, table: str, token: str, interval: float):
        self.gate, self.table, self.token = gate, table, token
        self.stopped = threading.Event()
        self.interval = max(interval, 1.0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.wait(self.interval):
            with self.gate._locked_state() as state:
                if self.token in state[self.table]:
                    state[self.table][self.token]["beat"] = time.time()

    def stop(self):
        self.stopped.set()
