"""DiskMonitor: what the pipeline holds on disk, by kind, across the two roots.

data_dir (local SSD) holds audio, transcripts, tokens, analysis, cache, logs and
jobs.db; storage_dir (bulk disk) holds videos and partial downloads. The two may be
the same path. Sizes are allocated bytes (st_blocks), which is what fills a disk.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .files import allocated_bytes

PARTIAL_SUFFIXES = (".part", ".ytdl")
# data_dir/<name>/ -> category; everything else in data_dir counts as "other".
DATA_CATEGORIES = {
    "audio": "audio",
    "transcripts": "transcripts",
    "tokens": "tokens",
    "analysis": "analysis",
    "cache": "cache",
    "logs": "logs",
    "benchmarks": "logs",
}
TEMPORARY = ("videos", "partial", "audio")


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
    ):
        if not resume_threshold_bytes < pause_threshold_bytes < hard_limit_bytes:
            raise ValueError("need resume < pause < hard")
        self.data_dir = Path(data_dir).absolute()
        self.storage_dir = Path(storage_dir).absolute()
        self.videos_dir = self.storage_dir / "videos"
        self.hard_limit = int(hard_limit_bytes)
        self.pause_threshold = int(pause_threshold_bytes)
        self.resume_threshold = int(resume_threshold_bytes)
        self.cache_duration = cache_duration
        self.min_free_bytes = int(min_free_bytes)
        self._cached: tuple[float, DiskUsage] | None = None

    @classmethod
    def from_config(cls, config: dict) -> "DiskMonitor":
        from .config import GB

        dm = config["disk_management"]
        return cls(
            config["data_dir"],
            config["storage_dir"],
            int(dm["hard_limit_gb"] * GB),
            int(dm["pause_threshold_gb"] * GB),
            int(dm["resume_threshold_gb"] * GB),
            cache_duration=dm["cache_duration_seconds"],
            min_free_bytes=int(dm["min_free_gb"] * GB),
        )

    # -- measuring ---------------------------------------------------------------
    def current_usage(self, fresh: bool = False) -> DiskUsage:
        """Usage across both roots; reused for cache_duration seconds unless `fresh`."""
        now = time.monotonic()
        if not fresh and self._cached and now - self._cached[0] < self.cache_duration:
            return self._cached[1]
        usage = self._scan()
        self._cached = (time.monotonic(), usage)
        return usage

    def _scan(self) -> DiskUsage:
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
                    for sub_path, size in _walk(path):
                        cat = self._video_category(sub_path) if _is_within(sub_path, self.videos_dir) else "other"
                        totals[cat] += size
                else:
                    cat = DATA_CATEGORIES.get(entry.name, "other")
                    totals[cat] += sum(size for _, size in _walk(path))
            else:
                size = _size(entry)
                cat = "db" if entry.name.startswith("jobs.db") else "other"
                totals[cat] += size
        return DiskUsage(**totals)

    def _add_videos(self, root: Path, totals: dict) -> None:
        for path, size in _walk(root):
            totals[self._video_category(path)] += size

    @staticmethod
    def _video_category(path: Path) -> str:
        return "partial" if path.name.endswith(PARTIAL_SUFFIXES) else "videos"

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

    # -- decisions (stateless; the hysteresis lives in gate.DownloadGate) -----------
    def should_pause_downloads(self) -> bool:
        return self.current_usage().total >= self.pause_threshold

    def can_resume_downloads(self) -> bool:
        return self.current_usage().total <= self.resume_threshold

    def filesystem_low(self, extra_bytes: int = 0) -> bool:
        return min(self.filesystem_available().values()) < self.min_free_bytes + extra_bytes

    def get_breakdown(self) -> SpaceBreakdown:
        usage = self.current_usage()
        fs = self.filesystem_available()
        available = max(0, min(self.hard_limit - usage.total, min(fs.values()) - self.min_free_bytes))
        return SpaceBreakdown(
            usage=usage,
            percentage=100.0 * usage.total / self.hard_limit,
            available_bytes=available,
            filesystem_available=fs,
            can_download=usage.total < self.pause_threshold and not self.filesystem_low(),
        )


def _size(entry: os.DirEntry) -> int:
    try:
        return allocated_bytes(entry.stat(follow_symlinks=False))
    except FileNotFoundError:  # deleted while we looked: it no longer counts
        return 0


def _walk(root: Path):
    """(path, allocated bytes) of every file under root; tolerant of concurrent deletion."""
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
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
