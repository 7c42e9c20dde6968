"""Small file helpers: atomic writes and allocated sizes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# Up to this many candidates, one stat each costs less than listing a folder of a
# month four's 171,881 names (~5 us a stat, ~1 us a listed name, warm).
STAT_AT_MOST = 5000


def ids_with_suffix(folder: str | os.PathLike, suffix: str, among=None) -> set[str]:
    """Names in `folder` ending in `suffix`, without it: one directory scan, not one
    stat per episode (the workflow asks this of 171,881-episode folders). With `among`
    (ids), those of them whose file is there: one stat each when they are few (a run's
    start on a 3-episode catalogue, a 2,000-episode chunk), the scan otherwise."""
    if among is not None and len(among) <= STAT_AT_MOST:
        return {e for e in among if os.path.exists(os.path.join(folder, f"{e}{suffix}"))}
    if among is not None:
        return ids_with_suffix(folder, suffix) & set(among)
    try:
        return {e.name[: -len(suffix)] for e in os.scandir(folder) if e.name.endswith(suffix)}
    except FileNotFoundError:
        return set()


def file_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The regular files in `folder` (not links), as directory entries; [] when it is missing."""
    try:
        return [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def file_paths(folder: str | os.PathLike) -> list[Path]:
    """The regular files in `folder` (not links), as paths; [] when it is missing."""
    return [Path(e.path) for e in file_entries(folder)]


def entry_names(folder: str | os.PathLike) -> list[str]:
    """The names in `folder`: one listing, no stat (171,881 transcripts at month four)."""
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def is_temp(name: str) -> bool:
    """An atomic write's temporary file (atomic_path: .NAME.XXXX.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes the file occupies on disk (st_blocks are 512-byte units), not its apparent size."""
    return st.st_blocks * 512


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`.

    A crash leaves either the old file or none, never a half-written one; the
    temporary name starts with '.' and ends with '.tmp' so cleanup can find it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes 0600; the output is as shareable as any file the user makes (0644 under umask 022).
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc/self/status); where
    that is unavailable, set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it wraps) says the disk is full: ENOSPC or EDQUOT
    from a write, or SQLite's "database or disk is full"."""
    import errno
    import sqlite3

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        exc_info = getattr(exc, "exc_info", None)  # yt-dlp's DownloadError
        wrapped = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
        exc = wrapped or exc.__cause__ or exc.__context__
    return False


def human_bytes(n: float) -> str:
    """Bytes in decimal units, three significant digits: '300 GB', '3.9 MB', '250 kB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
