"""The download gate: downloads pause at the pause threshold and resume at the resume
threshold (hysteresis), and every admission keeps the hard limit by construction.

The gate's state is one small JSON file under {data_dir}/gate/, read and written
under an fcntl (POSIX) lock, so every download job shares it: across processes,
across concurrent Snakemake runs on the same data, and across cluster nodes on a
shared filesystem with POSIX locks (NFSv4, Lustre, GPFS). POSIX locks belong to the
process, not the thread (a second thread "gets" the lock at once, and closing any
descriptor of the file drops it), so threads of one process also take a mutex first.

The state holds only the live holders (reservations and consumers) and the pause
reasons. Unreadable state is moved aside and rebuilt: every live holder puts itself
back at its next heartbeat, and until then no download is admitted. A state write
that fails on a full disk admits nothing; a release that fails is retried by the
process's next state write (and a dead process's holders are pruned anyway).

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

What "measured fresh" costs, and why it is still exact. A look under the lock walks
only what is bounded by the budget or by the number of runs: videos, partial
downloads, audio, jobs.db, this folder, corpus, reports, log roll-ups. The folders
that grow with every finished episode (transcripts, tokens, analyses, failed markers,
per-job logs and benchmarks: disk.PER_EPISODE) are not walked under the lock; their
bytes are

    base (walked by the last reconciliation, less the episodes active then)
    + the files at the paths of the episodes active now (a few stat() each)
    + accounting_margin_mb

(disk.py's docstring). A download that finds the record older than
reconcile_interval_seconds reconciles first, outside this lock and under
reconcile.lock (one process walks; the others keep the old record, which stays
exact). Nothing written between two reconciliations can break the hard limit,
because every byte the pipeline writes after a reconciliation at t0 is in one of:
  * a walked folder: measured at every look, as before;
  * a per-episode file of an episode active now (its row in a stage between queued
    and analyzed, or changed at or after t0 - 10 min; a row idle in transcribed since
    before that, once its analysis job's log is fresh): stat'ed at every look;
  * a per-episode file of an episode not active now: impossible if it changed since
    t0, since every step writes the ledger before its first output (the analysis
    starts from a transcribed row and writes its log first) and seconds before its
    last one; so it is as the walk saw it, and in the base (an episode active at t0,
    left out of the base, is still active now: the conditions only widen);
  * a per-episode file written by no step of its episode (a subtitle verdict the
    planning process keeps for a queued episode): told to gate/written.log before it
    is written (monitor.note_written), and every look adds what was told since the
    walk began;
  * a file no per-episode path names: an atomic write's temporary file, a job's log
    lines before its first ledger write, or a told write still under way when the walk
    began (one per writer), bounded by the margin.
So the accounted usage is never below the true one at any look, and the inequality
above holds with it. A new or rebuilt ledger (or no record) makes the next look
reconcile first; an unreadable ledger makes every look walk everything.
reconcile_interval_seconds: 0 walks everything under the lock at every look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from scribeflow.budget.monitor import ACTIVE_STAGES, DiskMonitor, DiskUsage
from scribeflow.budget.statefile import StateFile, alive, this_process
from scribeflow.config.layout import GATE_LOCK_FILE, STATE_FILE, Layout
from scribeflow.config.settings import Settings
from scribeflow.files import allocated_bytes, human_bytes, is_disk_full
from scribeflow.state.ledger import Ledger

log = logging.getLogger("scribeflow.budget.gate")

TABLES = ("reservations", "consumers")
WAIT_LOG_SECONDS = 60.0  # how often a waiting admission says so in its log


class DiskStalled(RuntimeError):
    """Downloads are paused and nothing in flight can free space: the environment's
    failure, never counted against the episode (failures.kind)."""

    kind = "host"


class NeverFits(DiskStalled):
    """A write larger than the budget itself: no amount of waiting admits it."""

    permanent = True


# Releases whose state write failed, per state file; applied by the process's next write.
_UNRELEASED: dict[str, set[tuple[str, str]]] = {}


def _valid_state(state: dict) -> bool:
    return all(isinstance(state.get(t, {}), dict) for t in TABLES)


def _valid_holder(holder, table: str) -> bool:
    """A holder record this code can use (a damaged one is dropped like a dead one)."""
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return False
    if table == "reservations":
        return isinstance(holder.get("bytes"), int) and isinstance(holder.get("paths"), list)
    return True


def gb(n: float) -> str:
    """Bytes as GB, readable at both 300 GB and the 5 MB of a test."""
    value = n / 1e9
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


def is_paused(state: dict) -> bool:
    """Whether the gate's state pauses downloads: it stores only why (its reasons)."""
    return bool(state.get("reasons"))


@dataclass
class Decision:
    admitted: bool
    usage: DiskUsage
    pending: int  # bytes admitted downloads may still write
    fs_available: int
    paused: bool
    reason: str
    stalled: str | None  # why nothing in flight can free space, when that is so
    never: str | None = None  # why no freed space can ever admit this write beside the kept files


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
        outputs_per_episode: int = 0,
    ):
        self.monitor = monitor
        self.state_dir = Path(state_dir)
        self.ledger = ledger
        self.check_interval = check_interval
        self.stall_timeout = stall_timeout
        # A holder on another host is presumed dead after missing this many beats.
        self.heartbeat_timeout = heartbeat_timeout or max(3 * check_interval, 60.0)
        self.host = socket.gethostname()
        self._file = StateFile(self.state_dir, STATE_FILE, GATE_LOCK_FILE)
        # Room downloads leave free under the hard limit so that an extraction can always
        # start: audio is written before its video is deleted.
        self.audio_headroom = int(audio_headroom)
        # What each episode in flight may still write outside any reservation (its
        # transcript, tokens, analysis, logs): kept free under the hard limit.
        self.outputs_per_episode = int(outputs_per_episode)

    @classmethod
    def from_config(cls, settings: Settings, ledger=None) -> "DownloadGate":
        dm = settings.disk_management
        return cls(
            DiskMonitor.from_config(settings),
            Layout.from_config(settings).gate,
            ledger=ledger,
            check_interval=dm.check_interval_seconds,
            stall_timeout=dm.stall_timeout_seconds,
            audio_headroom=int(dm.audio_headroom_mb * 1_000_000),
            outputs_per_episode=int(dm.outputs_per_episode_mb * 1_000_000),
        )

    # -- shared state --------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self._file.path

    @contextlib.contextmanager
    def _locked_state(self):
        """The shared state (statefile.py: exclusive across threads, processes and hosts,
        written atomically). Raises OSError(ENOSPC) when the disk is too full to write
        it: then nothing the block did took effect."""
        with self._file.locked(_valid_state) as (state, rebuilt):
            if rebuilt:
                state["rebuilt_at"] = time.time()
                log.warning("The gate's state was rebuilt; running jobs register again within %.0f s, and "
                            "no download starts until then", self._beat_interval)
            state.setdefault("reasons", [])
            state.pop("paused", None)  # derived from the reasons (is_paused); older files stored it
            state.setdefault("paused_since", None)
            for table in TABLES:
                holders = state.setdefault(table, {})
                for token in [t for t, h in holders.items() if not _valid_holder(h, table)]:
                    del holders[token]
            unreleased = set(_UNRELEASED.get(self._file.key, ()))
            for table, token in unreleased:
                state[table].pop(token, None)
            yield state
        if unreleased:
            with self._file.mutex():
                _UNRELEASED[self._file.key] -= unreleased

    def state_problem(self) -> str | None:
        """Why the state file cannot be read, or None (`scribeflow check`; reads only)."""
        problem = self._file.problem(_valid_state)
        return problem and (f"{problem}; the next download or `scribeflow check` moves it aside and rebuilds "
                            f"it (it holds only the running jobs, which register again)")

    @property
    def _beat_interval(self) -> float:
        return max(self.check_interval, 1.0)

    def _release(self, table: str, token: str) -> None:
        """Drop a holder; when the disk is too full to record that, the process's next
        state write does (never raises: the caller's own exception is the one to see)."""
        try:
            with self._locked_state() as state:
                state[table].pop(token, None)
        except Exception as exc:
            with self._file.mutex():
                _UNRELEASED.setdefault(self._file.key, set()).add((table, token))
            log.warning("Could not record the end of a %s in %s (%s); the next look at the gate does",
                        table[:-1], self.state_path, exc)

    def _alive(self, holder: dict) -> bool:
        return alive(holder, self.host, self.heartbeat_timeout)

    def _prune(self, state: dict) -> None:
        for table in ("reservations", "consumers"):
            for token in [t for t, h in state[table].items() if not self._alive(h)]:
                log.info("Dropping %s of a dead process: %s", table[:-1], state[table][token].get("id"))
                del state[table][token]

    def _holder(self, **extra) -> dict:
        return {**this_process(), "host": self.host, "since": time.time(), "beat": time.time(), **extra}

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
        """One look: measure, update the pause (the monitor's rule), admit or not, say why
        and whether waiting can help, and sample the disk into the ledger."""
        usage, pending, fs_available = self._measure(state)
        reasons = self.monitor.pause_reasons(state["reasons"], usage.total, fs_available, declared, download)
        self._record_transition(state, reasons, usage)
        headroom = self.audio_headroom if download else 0
        outputs = self._outputs_reserve(state)
        fits = usage.total + pending + declared + headroom + outputs <= self.monitor.hard_limit
        # Extraction ignores the pause (it is how space gets freed) but not the hard limit.
        admitted = fits and (not reasons or not download)
        reason = self._why_waiting(reasons, fits, usage, fs_available, declared)
        stalled = self._stalled(state, reasons, fits, usage, fs_available, declared, headroom)
        never = self._never(usage, declared, download) if not fits else None
        self._to_ledger("sample_disk", usage, paused=bool(reasons), min_interval=self.check_interval)
        return Decision(admitted, usage, pending, fs_available, bool(reasons), reason, stalled, never)

    def largest_beside_kept(self, usage: DiskUsage | None = None, download: bool = True) -> int:
        """The largest write this budget can ever admit beside the files the pipeline keeps
        (transcripts, tokens, analyses, the ledger: no transcription frees them) and the
        outputs the writer's episode will add: `largest`, less those."""
        usage = usage or self.monitor.current_usage(fresh=True)
        return self.largest(download) - (usage.total - usage.temporary) - self.outputs_per_episode

    def _never(self, usage: DiskUsage, declared: int, download: bool) -> str | None:
        """Why this write can never be admitted, whatever the videos and audio in flight free."""
        if declared <= self.largest_beside_kept(usage, download):
            return None
        headroom = self.audio_headroom if download else 0
        return (f"{human_bytes(declared)} declared" + (f" + {human_bytes(headroom)} audio headroom" if headroom else "")
                + f" beside the {human_bytes(usage.total - usage.temporary)} the pipeline keeps (transcripts, tokens, "
                f"analyses, the ledger) exceeds the hard limit of {human_bytes(self.monitor.hard_limit)}")

    def _outputs_reserve(self, state: dict) -> int:
        """outputs_per_episode for every episode in flight (a ledger row between downloading
        and tokenized; at least every live holder and the asker): the transcripts,
        tokens, analyses and logs they may still write, which no reservation covers."""
        if not self.outputs_per_episode:
            return 0
        active = len(state["reservations"]) + len(state["consumers"]) + 1
        if self.ledger is not None:
            try:
                counts = self.ledger.stage_counts()  # one small table, kept by triggers
                active = max(active, sum(counts.get(s, 0) for s in ACTIVE_STAGES))
            except Exception as exc:  # the ledger is history here: never fail a decision on it
                log.debug("Could not count the episodes in flight: %s", exc)
        return self.outputs_per_episode * active

    def _measure(self, state: dict) -> tuple[DiskUsage, int, int]:
        """Usage measured fresh, the bytes live admitted downloads may still write (dead
        holders pruned first), and the filesystem's available bytes less those."""
        usage = self.monitor.current_usage(fresh=True)
        self._prune(state)
        pending = sum(self._remaining(r) for r in state["reservations"].values())
        return usage, pending, min(self.monitor.filesystem_available().values()) - pending

    def _why_waiting(self, reasons: list, fits: bool, usage: DiskUsage, fs_available: int, declared: int) -> str:
        """The pause's reasons in words, or why the write does not fit; "" when admitted."""
        m = self.monitor
        return ", ".join(
            {"usage": f"usage {gb(usage.total)} GB reached the pause threshold {gb(m.pause_threshold)} GB",
             "filesystem": f"filesystem has {gb(fs_available)} GB available, below "
                           f"{gb(m.min_free_bytes + declared)} GB needed"}[r] for r in reasons
        ) or ("" if fits else f"{gb(declared)} GB does not fit under the hard limit now")

    def _stalled(self, state: dict, reasons: list, fits: bool, usage: DiskUsage, fs_available: int,
                 declared: int, headroom: int) -> str | None:
        """Why nothing in flight can free the space this write waits for, when that is so."""
        m = self.monitor
        stalled = None
        if "filesystem" in reasons and usage.temporary == 0:
            stalled = (f"the filesystem has {gb(fs_available)} GB available, {gb(m.min_free_bytes + declared)} GB "
                       f"needed (min_free_gb included), and the pipeline holds no video or audio it could free: "
                       f"other files fill it; free space there")
        elif (reasons or not fits) and not state["consumers"] and not state["reservations"]:
            # (An extraction registers as a consumer only once admitted: one that waits
            # frees nothing.)
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
        return stalled

    def _record_transition(self, state: dict, reasons: list, usage: DiskUsage) -> None:
        was_paused = is_paused(state)
        state["reasons"] = reasons
        if reasons and not was_paused:
            state["paused_since"] = time.time()
            if usage.total > self.monitor.hard_limit:  # said once, as the pause begins
                log.error("Disk usage %s is above the hard limit %s (another program, or files written outside "
                          "the pipeline?): downloads pause until it falls to the resume threshold",
                          human_bytes(usage.total), human_bytes(self.monitor.hard_limit))
            log.warning(
                "Disk usage exceeded threshold (%s GB >= %s GB), pausing downloads",
                gb(usage.total), gb(self.monitor.pause_threshold),
            ) if "usage" in reasons else log.warning(
                "Filesystem nearly full, pausing downloads")
            self._to_ledger("start_pause", usage.total, ",".join(reasons), at=state["paused_since"])
        elif was_paused and not reasons:
            state["paused_since"] = None
            self._to_ledger("end_pause", usage.total)

    def _to_ledger(self, method: str, *args, **kwargs) -> None:
        """Record in the ledger what the gate saw. A record lost to a full disk is only
        history: it never fails a decision (nor waits for space under the gate's lock)."""
        if self.ledger is None:
            return
        try:
            getattr(self.ledger, method)(*args, **kwargs)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.warning("The ledger could not record %s: %s", method.replace("_", " "), exc)

    def _reconcile(self) -> None:
        """The disk accounting's occasional walk of the per-episode folders, before the
        lock (disk.py). Only downloads do it: they wait anyway, while an extraction or a
        transcription holds a slot that the next job wants. Never fails a download: the
        old record stays exact, only the looks get slower. The walker also thins the
        ledger's old disk samples and pause events, at the same rare pace."""
        try:
            walked = self.monitor.reconcile_if_due()
        except Exception as exc:
            log.warning("Could not reconcile the disk accounting: %s", exc)
            return
        if walked:
            self._thin_history()

    def _thin_history(self) -> None:
        """Status, plan and plots read a history whose size no longer grows with the months
        of the run (ledger.thin_history). History only: never fails a download."""
        if not self.monitor.layout.ledger.exists():
            return
        try:
            with Ledger(self.monitor.layout.ledger, timeout=30) as ledger:
                ledger.thin_history()
        except Exception as exc:
            log.warning("Could not thin the ledger's history: %s", exc)

    def _peek(self) -> dict:
        """The state as it is on disk, read without the lock and without changing anything
        (`scribeflow status`); {} when unreadable."""
        try:
            state = json.loads(self.state_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) and _valid_state(state) else {}

    def live_holders(self) -> list[dict]:
        """The holders (downloads, extractions, transcriptions) whose process lives."""
        state = self._peek()
        return [h for table in TABLES for h in (state.get(table) or {}).values()
                if _valid_holder(h, table) and self._alive(h)]

    def pause_reasons(self) -> list[str]:
        """Why downloads are paused now (empty: they are not), read without the lock."""
        reasons = self._peek().get("reasons")
        return [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else []

    def held_paths(self) -> tuple[set[str], bool]:
        """Paths reserved by live downloads and extractions, and whether any job is live.
        On a disk too full to write the state, read as it is (the orphan cleanup that
        calls this is what frees the space)."""
        try:
            with self._locked_state() as state:
                self._prune(state)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            log.warning("The gate's state cannot be written (%s); reading it as it is", exc)
            state = {t: {k: h for k, h in (self._peek().get(t) or {}).items()
                         if _valid_holder(h, t) and self._alive(h)} for t in TABLES}
        paths = {p for r in state["reservations"].values() for p in r["paths"]}
        return paths, bool(state["reservations"] or state["consumers"])

    # -- the API used by the rules ---------------------------------------------------
    def check(self, declared: int = 0, download: bool = True) -> Decision:
        """One look at the gate without reserving anything. download=False: a look that
        may end a pause (after a transcription freed space) but never opens one."""
        if download:
            self._reconcile()
        decision, error = self._look(declared, download)
        if error:
            log.warning("The gate could not record its look: %s", error)
        return decision

    def _look(self, declared: int, download: bool, then=None) -> tuple[Decision, OSError | None]:
        """One decision under the lock; `then(state, decision)` may act on it (admit) and
        returns the decision. A full disk that keeps the state from being written is
        returned as the error, with the decision, which then took no effect."""
        decision = None
        try:
            with self._locked_state() as state:
                decision = self._decide(state, declared, download)
                if then is not None:
                    decision = then(state, decision)
        except OSError as exc:
            if decision is None or not is_disk_full(exc):
                raise
            return decision, exc
        return decision, None

    @contextlib.contextmanager
    def admitted(self, episode: str, declared: int, paths: list[str | os.PathLike], download: bool = True):
        """Block until writing `declared` bytes into `paths` may start; hold the
        reservation until the block ends. Downloads (download=True) also wait while the
        gate is paused; audio extraction waits only for room under the hard limit.
        Raises NeverFits at once when the write is larger than the budget itself, and
        DiskStalled after stall_timeout when nothing in flight can free space."""
        self._check_can_ever_fit(episode, declared, download)
        token = uuid.uuid4().hex
        paths = [str(Path(p).absolute()) for p in paths]
        waiting_since = stalled_since = None
        holder, told = None, float("-inf")

        def admit(state: dict, decision: Decision) -> Decision:
            nonlocal holder
            if decision.admitted and download and self._rebuilding(state):
                decision = dataclasses.replace(
                    decision, admitted=False,
                    reason="the gate's state was rebuilt: waiting for running jobs to register again")
            if decision.admitted:
                holder = self._holder(id=episode, bytes=declared, paths=paths,
                                      kind="download" if download else "audio")
                state["reservations"][token] = holder
            return decision

        while True:
            if download:
                self._reconcile()
            decision, error = self._look(declared, download, admit)
            if error:  # the admission could not be recorded: it did not happen
                decision = dataclasses.replace(
                    decision, admitted=False, paused=True,
                    reason=f"the disk is full: the gate cannot record an admission ({error.strerror})")
            if decision.admitted:
                break
            if decision.never:
                raise NeverFits(f"{episode}: its {'download' if download else 'audio'} can never fit: "
                                f"{decision.never}. Raise disk_management.hard_limit_gb (or correct the catalogue's "
                                f"expected_size_mb), then `scribeflow retry {episode}`")
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = now
                log.warning("Download of %s waits: %s", episode, decision.reason)
            if now - told >= WAIT_LOG_SECONDS:  # logs count against the budget too: not every look
                told = now
                log.info("Waiting for transcriber to free up space (current: %s GB, pending %s GB, declared %s GB)",
                         gb(decision.usage.total), gb(decision.pending), gb(declared))
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
        beat = _Heartbeat(self, "reservations", token, holder, self._beat_interval)
        try:
            yield decision
        finally:
            beat.stop()
            self._release("reservations", token)

    def wait_for_space(self, exc: BaseException | None = None, need: int = 1_000_000) -> None:
        """Block until data_dir's filesystem has min_free + `need` bytes available: a
        ledger write that met a full disk waits here, then tries again. Raises
        DiskStalled after stall_timeout."""
        m = self.monitor
        started = time.monotonic()
        log.warning("The disk is full (%s); waiting for space on %s (a transcription in flight may free "
                    "some; otherwise free space there)", exc, m.data_dir)
        while m.filesystem_available()[str(m.data_dir)] < m.min_free_bytes + need:
            waited = time.monotonic() - started
            if waited >= self.stall_timeout:
                raise DiskStalled(f"the disk has been full for {waited:.0f} s (the ledger cannot be written: "
                                  f"{exc}); free space on {m.data_dir}, then rerun")
            time.sleep(self.check_interval)
        log.info("Space returned after %.1f s", time.monotonic() - started)

    def _rebuilding(self, state: dict) -> bool:
        """Right after a rebuild, live reservations are missing until their next beat."""
        rebuilt = state.get("rebuilt_at")
        if isinstance(rebuilt, (int, float)) and time.time() - rebuilt < 2.5 * self._beat_interval:
            return True
        state.pop("rebuilt_at", None)
        return False

    def largest(self, download: bool = True) -> int:
        """The largest write this budget can ever admit: within the hard limit, with the
        audio headroom beside a download."""
        return self.monitor.hard_limit - (self.audio_headroom if download else 0)

    def _check_can_ever_fit(self, episode: str, declared: int, download: bool) -> None:
        """Fail at once, without waiting or holding anything, when no amount of freed
        space admits this write: larger than the hard limit, or than the filesystem."""
        m = self.monitor
        headroom = self.audio_headroom if download else 0
        what = "download" if download else "audio"
        if declared > self.largest(download):
            raise NeverFits(
                f"{episode}: its {what} ({human_bytes(declared)} declared"
                + (f" + {human_bytes(headroom)} audio headroom" if headroom else "")
                + f") exceeds the hard limit of {human_bytes(m.hard_limit)}: it can never fit this budget. Raise "
                f"disk_management.hard_limit_gb (or correct the catalogue's expected_size_mb), then "
                f"`scribeflow retry {episode}`")
        root = m.storage_dir if download else m.data_dir
        total = m.filesystem_size(root)
        if total is not None and declared + m.min_free_bytes > total:
            raise NeverFits(
                f"{episode}: its {what} ({human_bytes(declared)} declared + min_free_gb {human_bytes(m.min_free_bytes)})"
                f" is larger than the whole filesystem of {root} ({human_bytes(total)}): it can never fit. Move "
                f"{'storage_dir' if download else 'data_dir'} to a larger disk, then `scribeflow retry {episode}`")

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
        """Mark an extraction or transcription in flight: the work that frees space.
        Not recording it (a full disk) only makes the gate's stall detection more eager."""
        token, holder = uuid.uuid4().hex, self._holder(id=episode, kind=kind)
        try:
            with self._locked_state() as state:
                state["consumers"][token] = holder
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            log.warning("Could not record %s's %s in the gate (%s); its heartbeat tries again", episode, kind, exc)
        beat = _Heartbeat(self, "consumers", token, holder, self._beat_interval)
        try:
            yield
        finally:
            beat.stop()
            self._release("consumers", token)


class _Heartbeat:
    """Refreshes a holder's beat so that other hosts can tell it is alive, and puts the
    holder back when the state was rebuilt without it. Never raises: a beat lost to a
    full disk is taken again at the next interval."""

    def __init__(self, gate: DownloadGate, table: str, token: str, holder: dict, interval: float):
        self.gate, self.table, self.token, self.holder = gate, table, token, dict(holder)
        self.stopped = threading.Event()
        self.interval = interval
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"gate-heartbeat-{token[:8]}")
        self.thread.start()

    def _run(self):
        while not self.stopped.wait(self.interval):
            try:
                with self.gate._locked_state() as state:
                    if self.stopped.is_set():
                        return
                    holder = state[self.table].get(self.token)
                    if holder is None:
                        holder = state[self.table][self.token] = dict(self.holder)
                    if holder is not None:
                        holder["beat"] = time.time()
            except Exception as exc:
                log.warning("Gate heartbeat skipped: %s", exc)

    def stop(self):
        self.stopped.set()
        # The release that follows must not race a beat that would put the holder back.
        self.thread.join(timeout=60)
