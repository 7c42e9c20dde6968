"""DiskMonitor: what the pipeline holds on disk, by kind, across the two roots.

data_dir (local SSD) holds audio, transcripts, tokens, analysis, cache, logs and
jobs.db; storage_dir (bulk disk) holds videos and partial downloads. The two may be
the same path. Sizes are allocated bytes (st_blocks), which is what fills a disk.

Two ways to measure (disk_management.reconcile_interval_seconds):

- 0: every look walks every file of both roots. Exact, and what a small data_dir wants,
  but a walk of the ~700,000 files 171,881 finished episodes leave takes ~20 s.
- > 0 (the default): the per-episode folders (PER_EPISODE: transcripts, tokens,
  per-episode analyses, failed markers, per-job logs and benchmarks), which grow with
  every finished episode, are *accounted*: a reconciliation walks them now and then
  (`reconcile`, outside the gate's lock, one process at a time) and records their bytes
  minus those of the episodes active then; every look adds, by a few stat() calls each,
  the current files of the episodes active now, plus a fixed margin. Everything else
  (videos, partial downloads, audio, jobs.db, the gate, corpus, reports, roll-ups,
  unknown folders) is walked at every look, as before: its size and file count are
  bounded by the budget or by the number of runs, not by the episodes done.

An episode is *active* since a reconciliation that started at t0 when its ledger row is
in a stage between queued and analyzed (a job of it may be under way or pending:
downloading ... tokenized), or its row changed at or after t0 - ACTIVE_SLACK and it has
started once (a row the run's start has just enqueued is not active). One exception
keeps the set small: a row transcribed (or tokenized) before t0 - ACTIVE_SLACK is active
only once its analysis job has started, which that job's log (logs/analyse_episode/
{id}.log, created or truncated first thing) tells by its mtime. Why that
covers every byte written to a per-episode folder since t0 (gate.py's docstring turns
this into the hard limit's guarantee):
  * Every per-episode file is written by a job of its episode (the steps), and every
    step records a stage in the ledger before its first output and after its last one
    (steps.py) -- except the analysis, whose row is transcribed until it has written its
    tokens, and whose start its log's mtime shows -- : a never-started episode writes
    nothing, and an analyzed, failed or
    interrupted (back to queued) one stops writing within ACTIVE_SLACK of its last
    ledger write (what follows is the step's last log lines and Snakemake's benchmark
    record, seconds later).
  * Hence a file at an episode's path that changed after t0 belongs to an episode
    active now, and is stat'ed now; a file of an episode that is not active now has not
    changed since t0 and is in the recorded base, which left out exactly the episodes
    active at t0 (active at t0 implies active now: the condition only widens with time,
    for the same t0).
  * One writer is no step of its episode: the planning process keeps a subtitle verdict
    (subtitles/{id}.subtitle.json) for episodes that are still queued. It tells its bytes
    first (note_written: a line appended to gate/written.log), and every look adds the
    lines after the mark the last reconciliation took before its walk began: told before
    the mark, the file was on disk when the walk began (or is being written: below).
  * What no path names: an atomic write's temporary file (.NAME.XXXX.tmp, one per
    running writer, the size of the file it becomes), the few log lines a job writes
    before its first ledger record, and a told write still under way when a walk began.
    The margin (accounting_margin_mb) covers those.
A rebuilt ledger (its rows' times come from the files) invalidates the record: the next
look reconciles first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from scribeflow.config.layout import ACCOUNTING_FILE, LEDGER_FILE, PARTIAL_SUFFIXES, Layout
from scribeflow.config.settings import Settings
from scribeflow.files import allocated_bytes, atomic_write_text
from scribeflow.state import ledger as sf_ledger

log = logging.getLogger("scribeflow.budget.monitor")

_NAMES = Layout(".")  # data_dir-relative names
# data_dir/<name>/ -> category; everything else in data_dir counts as "other".
DATA_CATEGORIES = {
    _NAMES.audio.name: "audio",
    _NAMES.transcripts.name: "transcripts",
    _NAMES.tokens.name: "tokens",
    _NAMES.analysis.name: "analysis",
    _NAMES.cache.name: "cache",
    _NAMES.logs.name: "logs",
    _NAMES.benchmarks.name: "logs",
}
# data_dir-relative folder -> (category, the suffixes of its {id}SUFFIX files). A folder
# missing here (a new rule's logs) is walked at every look: slower, never wrong.
PER_EPISODE = {str(folder): spec for folder, spec in _NAMES.per_episode_folders().items()}

# Stages in which a job of the episode may be running or about to write (not queued,
# analyzed or failed).
ACTIVE_STAGES = ("downloading", "downloaded", "extracting", "extracted", "transcribing", "transcribed",
                 "tokenized")
AWAITING_ANALYSIS = ("transcribed", "tokenized")
# A step's last bytes (its final log lines, Snakemake's benchmark record) follow its last
# ledger write by seconds; ten minutes is a wide bound.
ACTIVE_SLACK = 600.0
RECONCILE_LOCK = "reconcile.lock"
# In the gate's folder: bytes a writer outside any step of an active episode (the planning
# process's subtitle verdicts) is about to add to a per-episode folder, one line each.
WRITTEN_FILE = "written.log"
_BLOCK: dict[str, int] = {}  # folder -> its filesystem's block size, once per process


def note_written(data_dir: str | os.PathLike, folder: str | os.PathLike, nbytes: int) -> None:
    """Tell the disk accounting, before writing, that a file of `nbytes` is about to be
    written into `folder` (a per-episode folder of `data_dir`) by a writer no active
    episode's ledger row covers. Counted by every look from then on, until the next
    reconciliation's walk has seen it: one small appended line, under a POSIX lock (a
    cluster's shared filesystem). Raises OSError when it cannot be told: then do not write."""
    folder = str(folder)
    if folder not in _BLOCK:
        try:
            _BLOCK[folder] = max(os.statvfs(folder).f_bsize, 512)
        except OSError:
            _BLOCK[folder] = 4096
    block = _BLOCK[folder]
    allocated = -(-max(nbytes, 1) // block) * block  # what the file will fill: whole blocks
    gate = Layout(data_dir).gate
    gate.mkdir(parents=True, exist_ok=True)
    fd = os.open(gate / WRITTEN_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\n" % allocated)
    finally:
        os.close(fd)  # closing drops the lock


@dataclass(frozen=True)
class DiskUsage:
    videos: int = 0
    partial: int = 0  # .part / .ytdl files of downloads in flight (or orphaned)
    audio: int = 0
    transcripts: int = 0
    tokens: int = 0
    analysis: int = 0
    cache: int = 0
    db: int = 0
    logs: int = 0
    other: int = 0
    # Counted for what the accounting cannot name (see the module docstring); 0 when
    # every look walks every file.
    margin: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def temporary(self) -> int:
        """Bytes that transcription (or cleanup) will free: videos, partial downloads, audio."""
        return self.videos + self.partial + self.audio

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class SpaceBreakdown:
    usage: DiskUsage
    percentage: float  # of the hard limit
    available_bytes: int  # what may still be written: min(hard limit headroom, filesystem)
    filesystem_available: dict  # path -> f_bavail bytes, one entry per filesystem
    can_download: bool


class DiskMonitor:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        storage_dir: str | os.PathLike,
        hard_limit_bytes: int,
        pause_threshold_bytes: int,
        resume_threshold_bytes: int,
        cache_duration: float = 5.0,
        min_free_bytes: int = 0,
        reconcile_interval: float = 0.0,
        margin_bytes: int = 0,
        state_dir: str | os.PathLike | None = None,
        read_only: bool = False,
    ):
        if not resume_threshold_bytes < pause_threshold_bytes < hard_limit_bytes:
            raise ValueError("need resume < pause < hard")
        self.data_dir = Path(data_dir).absolute()
        self.storage_dir = Path(storage_dir).absolute()
        self.layout = Layout(self.data_dir, self.storage_dir)
        self.videos_dir = self.layout.videos
        self.hard_limit = int(hard_limit_bytes)
        self.pause_threshold = int(pause_threshold_bytes)
        self.resume_threshold = int(resume_threshold_bytes)
        self.cache_duration = cache_duration
        self.min_free_bytes = int(min_free_bytes)
        # 0: walk everything at every look (exact; small data_dirs). See the module docstring.
        self.reconcile_interval = float(reconcile_interval)
        self.margin_bytes = int(margin_bytes) if self.reconcile_interval else 0
        self.state_dir = Path(state_dir).absolute() if state_dir else self.layout.gate
        # The operator's commands (status, metrics, the dashboard): never reconcile (a
        # write); without a record, walk everything, which is exact.
        self.read_only = read_only
        self._cached: tuple[float, DiskUsage] | None = None
        self._db: tuple[tuple, sf_ledger.LedgerReader] | None = None
        self._accounted = {self.data_dir / rel: spec for rel, spec in PER_EPISODE.items()}

    @classmethod
    def from_config(cls, settings: Settings, read_only: bool = False) -> "DiskMonitor":
        from scribeflow.config.settings import GB, MB

        dm = settings.disk_management
        return cls(
            settings.data_dir,
            settings.storage_dir,
            int(dm.hard_limit_gb * GB),
            int(dm.pause_threshold_gb * GB),
            int(dm.resume_threshold_gb * GB),
            cache_duration=dm.cache_duration_seconds,
            min_free_bytes=int(dm.min_free_gb * GB),
            reconcile_interval=dm.reconcile_interval_seconds,
            margin_bytes=int(dm.accounting_margin_mb * MB),
            read_only=read_only,
        )

    # -- measuring ---------------------------------------------------------------
    def current_usage(self, fresh: bool = False) -> DiskUsage:
        """Usage across both roots; reused for cache_duration seconds unless `fresh`.
        Never walks the per-episode folders when a reconciliation's record exists."""
        now = time.monotonic()
        if not fresh and self._cached and now - self._cached[0] < self.cache_duration:
            return self._cached[1]
        usage = self._measure()
        self._cached = (time.monotonic(), usage)
        return usage

    def _measure(self) -> DiskUsage:
        if not self.reconcile_interval:
            return self._scan(accounted=False)
        record = self._record()
        if record is None and self.read_only:
            return self._scan(accounted=False)
        if record is None:
            # First look at this data_dir (or a damaged record): the one walk that cannot
            # be avoided; it is small then.
            try:
                self.reconcile(only_if_due=True)
            except OSError as exc:  # a read-only or full data_dir: walk everything instead
                log.warning("Could not record the disk accounting (%s): walking every folder", exc)
            record = self._record()
        active = self._active(record["scanned_at"]) if record else None
        if active is None:  # the ledger cannot be read: walk everything (exact)
            return self._scan(accounted=False)
        usage = self._scan(accounted=True)
        totals = asdict(usage)
        for category, size in record["base"].items():
            totals[category] += size
        for category, size in self._episode_bytes(active).items():
            totals[category] += size
        # Verdicts a plan wrote since the walk (subtitles/, accounted as transcripts).
        totals["transcripts"] += self._written_since(record)
        totals["margin"] = self.margin_bytes
        return DiskUsage(**totals)

    def _scan(self, accounted: bool) -> DiskUsage:
        """Walk both roots; with `accounted`, leave out the per-episode folders."""
        skip = set(self._accounted) if accounted else set()
        totals = dict.fromkeys((f.name for f in fields(DiskUsage)), 0)
        videos_inside_data = _is_within(self.videos_dir, self.data_dir)
        if not videos_inside_data:
            self._add_videos(self.videos_dir, totals)
        try:
            top = list(os.scandir(self.data_dir))
        except FileNotFoundError:
            top = []
        for entry in top:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if videos_inside_data and path == self.videos_dir:
                    self._add_videos(path, totals)
                elif videos_inside_data and _is_within(self.videos_dir, path):
                    # storage_dir nested inside data_dir: split that subtree.
                    for sub_path, size in _walk(path, skip):
                        cat = self._video_category(sub_path) if _is_within(sub_path, self.videos_dir) else "other"
                        totals[cat] += size
                else:
                    cat = DATA_CATEGORIES.get(entry.name, "other")
                    totals[cat] += sum(size for _, size in _walk(path, skip))
            else:
                size = _size(entry)
                cat = "db" if entry.name.startswith(LEDGER_FILE) else "other"
                totals[cat] += size
        return DiskUsage(**totals)

    def _add_videos(self, root: Path, totals: dict) -> None:
        for path, size in _walk(root):
            totals[self._video_category(path)] += size

    @staticmethod
    def _video_category(path: Path) -> str:
        return "partial" if path.name.endswith(PARTIAL_SUFFIXES) else "videos"

    # -- accounting of the per-episode folders -----------------------------------------
    @property
    def accounting_path(self) -> Path:
        return self.state_dir / ACCOUNTING_FILE

    def _ledger_identity(self) -> list | None:
        try:
            st = os.stat(self.layout.ledger)
        except FileNotFoundError:
            return None
        return [st.st_dev, st.st_ino]

    def _record(self) -> dict | None:
        """The last reconciliation's record, or None when there is none usable."""
        try:
            record = json.loads(self.accounting_path.read_bytes())
            names = {f.name for f in fields(DiskUsage)}
            if not (isinstance(record, dict) and isinstance(record.get("scanned_at"), (int, float))
                    and isinstance(record.get("base"), dict)
                    and all(k in names and isinstance(v, int) for k, v in record["base"].items())):
                return None  # damaged: the next look reconciles
        except (OSError, ValueError):
            return None
        if record.get("ledger") != self._ledger_identity():
            return None  # a new or rebuilt ledger: its rows say nothing about the record's time
        return record

    def reconcile_due(self) -> bool:
        if not self.reconcile_interval:
            return False
        record = self._record()
        return record is None or time.time() - record["scanned_at"] >= self.reconcile_interval

    def reconcile_if_due(self) -> bool:
        """Reconcile when the record is older than reconcile_interval, unless another
        process is at it (its record, or the old one, stays exact meanwhile). Call it
        outside the gate's lock: it walks every per-episode folder."""
        if not self.reconcile_due():
            return False
        return self.reconcile(wait=False, only_if_due=True)

    def reconcile(self, wait: bool = True, only_if_due: bool = False) -> bool:
        """Walk the per-episode folders and record their bytes, less those of the episodes
        active now, with the walk's start time. One process at a time (a lock beside the
        record): with `wait`, wait for another one's walk and use it. Returns whether this
        process walked."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / RECONCILE_LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            if (only_if_due or not wait) and not self.reconcile_due():  # another process has just done it
                return False
            started = time.monotonic()
            identity = self._ledger_identity()
            written = self._written_mark()  # before the walk: what is told after it is counted
            scanned_at = time.time()
            active = self._active(scanned_at)
            if active is None:
                log.warning("The ledger cannot be read: the disk accounting walks every folder until it can")
                return False
            base, files = self._walk_accounted(active)
            record = {"scanned_at": scanned_at, "base": base, "files": files, "active_at_scan": len(active),
                      "ledger": identity, "written": written, "walk_seconds": round(time.monotonic() - started, 3)}
            atomic_write_text(self.accounting_path, json.dumps(record))
            log.info("Disk accounting reconciled: %d files in the per-episode folders, %.1f MB, walked in %.1f s",
                     files, sum(base.values()) / 1e6, record["walk_seconds"])
            return True

    @property
    def written_path(self) -> Path:
        return self.layout.gate / WRITTEN_FILE  # where note_written tells, whatever state_dir is

    def _written_mark(self) -> list | None:
        """[inode, size] of the file of told writes (note_written): where the next walk starts."""
        try:
            st = os.stat(self.written_path)
        except FileNotFoundError:
            return None
        return [st.st_ino, st.st_size]

    def _written_since(self, record: dict) -> int:
        """Bytes told by note_written since the record's walk began: the lines after its
        mark (the whole file when the mark is missing or the file was replaced). A read of
        what was told within one reconcile interval, not of all ever told."""
        mark = record.get("written")
        try:
            with open(self.written_path, "rb") as f:
                fcntl.lockf(f, fcntl.LOCK_SH)
                same = isinstance(mark, list) and len(mark) == 2 and mark[0] == os.fstat(f.fileno()).st_ino
                f.seek(mark[1] if same and mark[1] <= os.fstat(f.fileno()).st_size else 0)
                data = f.read()
        except FileNotFoundError:
            return 0
        return sum(int(line) for line in data.split() if line.isdigit())

    def _walk_accounted(self, active: set[str]) -> tuple[dict, int]:
        base: dict[str, int] = {}
        files = 0
        for folder, (category, suffixes) in self._accounted.items():
            by_length = sorted(suffixes, key=len, reverse=True)
            total = 0
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                files += 1
                name = entry.name
                suffix = next((s for s in by_length if name.endswith(s)), None)
                if suffix and not name.startswith(".") and name[: -len(suffix)] in active:
                    continue  # counted at every look from its paths
                try:
                    if entry.is_dir(follow_symlinks=False):
                        total += sum(size for _, size in _walk(Path(entry.path)))
                        continue
                except FileNotFoundError:
                    continue
                total += _size(entry)
            base[category] = base.get(category, 0) + total
        return base, files

    def _episode_bytes(self, episodes) -> dict[str, int]:
        """Bytes of the files at the per-episode paths of `episodes`, by category."""
        totals: dict[str, int] = {}
        for folder, (category, suffixes) in self._accounted.items():
            prefix = str(folder) + os.sep
            total = 0
            for episode in episodes:
                for suffix in suffixes:
                    try:
                        total += allocated_bytes(os.stat(prefix + episode + suffix))
                    except (FileNotFoundError, NotADirectoryError):
                        pass
            totals[category] = totals.get(category, 0) + total
        return totals

    def _reader(self) -> sf_ledger.LedgerReader | None:
        identity = self._ledger_identity()
        if identity is None:
            return None
        if self._db and self._db[0] == (tuple(identity), os.getpid()):
            return self._db[1]
        # Used under the gate's mutex, from any thread.
        reader = sf_ledger.LedgerReader(self.layout.ledger, check_same_thread=False)
        self._db = ((tuple(identity), os.getpid()), reader)
        return reader

    def _active(self, since: float) -> set[str] | None:
        """Ids of the episodes active since a reconciliation at `since` (module docstring);
        None when the ledger cannot be read. Two index lookups: flat in the episodes done."""
        try:
            reader = self._reader()
            if reader is None:
                return set()  # no ledger yet: no step has run
            cut = since - ACTIVE_SLACK
            rows = reader.active_rows(ACTIVE_STAGES, cut)
        except sf_ledger.Error as exc:
            if self._db:
                with contextlib.suppress(sf_ledger.Error):
                    self._db[1].close()
                self._db = None
            log.warning("Could not read the ledger's active episodes (%s)", exc)
            return None
        active = set()
        tripwire = str(self.layout.logs / "analyse_episode") + os.sep
        for episode, stage, updated in rows:
            if stage in AWAITING_ANALYSIS and (updated or 0) < cut:
                # Transcribed long ago and idle since (a resumed run, a rebuilt or old ledger:
                # there may be 100,000 of them). Its analysis job writes its tokens before its
                # first ledger write, but its log first of all: the job truncates or creates
                # it at its start. Idle until that log is fresh: one stat, not twenty.
                try:
                    if os.stat(tripwire + episode + ".log").st_mtime < cut:
                        continue
                except FileNotFoundError:
                    continue
            active.add(episode)
        return active


    # -- the filesystem -----------------------------------------------------------------
    def filesystem_available(self) -> dict[str, int]:
        """Available bytes (f_bavail: what a non-root writer may use) per distinct filesystem."""
        result, seen = {}, set()
        for root in (self.data_dir, self.storage_dir):
            probe = _existing_ancestor(root)
            dev = os.stat(probe).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            st = os.statvfs(probe)
            result[str(root)] = st.f_bavail * st.f_frsize
        return result

    @staticmethod
    def filesystem_size(root: Path) -> int | None:
        """Size of the filesystem that holds `root` (what a non-root writer could ever use)."""
        try:
            st = os.statvfs(_existing_ancestor(Path(root)))
        except OSError:
            return None
        return (st.f_blocks - (st.f_bfree - st.f_bavail)) * st.f_frsize

    # -- decisions (stateless: gate.DownloadGate keeps the pause reasons) -----------
    def pause_reasons(self, before, usage_total: int, fs_available: int, declared: int = 0,
                      download: bool = True) -> list[str]:
        """The pause rule: why downloads are paused after a look, given why they were
        before it (`before`). "usage" opens at the pause threshold and lifts at the resume
        threshold (hysteresis); only a download's look opens it (an extraction's look after
        the last download would open a pause that nothing ever closes). "filesystem" lifts
        as soon as the waiting write (`declared`) fits `fs_available` with the min-free
        margin (no band: on a filesystem smaller than one, it would never lift); only a
        download's look changes it, since an extraction's declares other bytes."""
        reasons = set(before)
        if usage_total >= self.pause_threshold and download:
            reasons.add("usage")
        elif usage_total <= self.resume_threshold:
            reasons.discard("usage")
        if download:
            if fs_available < self.min_free_bytes + declared:
                reasons.add("filesystem")
            else:
                reasons.discard("filesystem")
        return sorted(reasons)

    def should_pause_downloads(self) -> bool:
        return self.current_usage().total >= self.pause_threshold

    def can_resume_downloads(self) -> bool:
        return self.current_usage().total <= self.resume_threshold

    def filesystem_low(self, extra_bytes: int = 0) -> bool:
        return min(self.filesystem_available().values()) < self.min_free_bytes + extra_bytes

    def get_breakdown(self, paused_for=()) -> SpaceBreakdown:
        """Usage against the limits; `can_download` by the pause rule, from the reasons the
        gate holds now (`paused_for`: between the two thresholds, a pause holds)."""
        usage = self.current_usage()
        fs = self.filesystem_available()
        available = max(0, min(self.hard_limit - usage.total, min(fs.values()) - self.min_free_bytes))
        return SpaceBreakdown(
            usage=usage,
            percentage=100.0 * usage.total / self.hard_limit,
            available_bytes=available,
            filesystem_available=fs,
            can_download=not self.pause_reasons(paused_for, usage.total, min(fs.values())),
        )




def _size(entry: os.DirEntry) -> int:
    try:
        return allocated_bytes(entry.stat(follow_symlinks=False))
    except FileNotFoundError:  # deleted while we looked: it no longer counts
        return 0


def _walk(root: Path, skip: set[Path] = frozenset()):
    """(path, allocated bytes) of every file under root, less the folders in `skip`;
    tolerant of concurrent deletion."""
    stack = [] if root in skip else [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    path = Path(entry.path)
                    if path not in skip:
                        stack.append(path)
                    continue
            except FileNotFoundError:
                continue
            yield Path(entry.path), _size(entry)


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
