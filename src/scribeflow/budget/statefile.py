"""A small JSON state shared by every process of a run (the download gate, the per-host
politeness): read, changed and written back under one exclusive lock.

- Exclusive across hosts and processes: an fcntl (POSIX) lock on a lock file, which
  NFSv4, Lustre and GPFS carry between nodes. POSIX locks belong to the process, not
  the thread (a second thread "gets" the lock at once, and closing any descriptor of
  the file drops it), so threads of one process also take a mutex per state file.
- Written atomically: a temporary file of a unique name beside it, fsynced, renamed
  over it; only when the block changed something. A write that fails (a full disk)
  removes its temporary file and raises: nothing the block did took effect.
- Unreadable state (bytes that are not a JSON object, a disk fault) is moved aside
  (NAME.corrupt-TIME) and the block gets an empty state: such state holds only what
  live processes put back (their holders), never data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

from scribeflow.files import current_umask

log = logging.getLogger("scribeflow.budget.statefile")

_MUTEXES: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


def _mutex(key: str) -> threading.Lock:
    with _GUARD:
        return _MUTEXES.setdefault(key, threading.Lock())


def _after_fork() -> None:
    # A child holds none of its parent's locks, whatever the parent's threads were doing.
    global _GUARD
    _GUARD = threading.Lock()
    _MUTEXES.clear()


os.register_at_fork(after_in_child=_after_fork)


class Unreadable(ValueError):
    """The state file holds something that is not this state."""


class StateFile:
    def __init__(self, folder: str | os.PathLike, name: str = "state.json", lock_name: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.lock_path = self.folder / (lock_name or f"{Path(name).stem}.lock")
        self.key = str(self.path.absolute())

    def mutex(self) -> threading.Lock:
        """This process's mutex of the state file (held inside `locked`)."""
        return _mutex(self.key)

    @contextlib.contextmanager
    def locked(self, valid=lambda state: True):
        """Yield (state, rebuilt): the state as a dict, and whether it was unreadable and
        is rebuilt from nothing (the caller may then want to write even an unchanged
        state). `valid(state)` says whether a parsed object is this state."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.mutex(), open(self.lock_path, "a+") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            try:
                state, rebuilt = self._read(valid)
                before = None if rebuilt else json.dumps(state, sort_keys=True)
                yield state, rebuilt
                after = json.dumps(state, sort_keys=True)
                if after != before:
                    self._write(after)
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    def _read(self, valid) -> tuple[dict, bool]:
        try:
            state = json.loads(self.path.read_bytes())
            if not isinstance(state, dict) or not valid(state):
                raise Unreadable("not the expected state object")
            return state, False
        except FileNotFoundError:
            return {}, False
        except ValueError as exc:  # JSON and UTF-8 errors included
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.warning("%s was unreadable (%s): moved to %s and rebuilt", self.path, exc, aside.name)
            return {}, True

    def _write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp", dir=self.folder)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # as the user's other files, not mkstemp's 0600
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def problem(self, valid=lambda state: True) -> str | None:
        """Why the state file cannot be read, or None (reads only)."""
        try:
            state = json.loads(self.path.read_bytes())
            if not isinstance(state, dict) or not valid(state):
                raise Unreadable("not the expected state object")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return f"{self.path}: unreadable ({exc})"
        return None


def this_process() -> dict:
    """What a holder records of the process that holds: its pid and its start time, so
    that a pid the kernel has since given to another process is not taken as alive."""
    return {"pid": os.getpid(), "created": _created(os.getpid())}


def _created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(holder: dict, this_host: str, heartbeat_timeout: float, host_key: str = "host") -> bool:
    """Whether the process that holds `holder` lives: on this host, ask the kernel (psutil:
    the pid, and its start time when the holder recorded one); on another one, trust a
    heartbeat newer than `heartbeat_timeout` seconds."""
    if holder.get(host_key) == this_host:
        try:
            process = psutil.Process(holder["pid"])
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            created = holder.get("created")
            return created is None or abs(process.create_time() - created) < 0.01
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
    return time.time() - holder.get("beat", 0) < heartbeat_timeout
