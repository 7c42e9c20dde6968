"""The download's watchdog: the size cap rests on bytes on disk, not on progress reports.

yt-dlp reports progress only from its native downloaders. A stream it hands to ffmpeg
(AES-128 HLS without pycryptodomex, a format whose protocol is `m3u8`, a live stream, an
external downloader) writes for minutes without a single report, and so does every
ffmpeg post-processor (merge, fixup). So a thread of the downloading process measures
the episode's own files -- every staging file `{id}@dl.*` (partials, fragments,
ffmpeg's output, merge and post-processing files) and the output itself, in allocated
bytes -- every `interval` seconds, and stops the download when they reach its cap:

1. it records why (`tripped`), which the progress hook of a native downloader turns
   into SizeExceeded at its next block;
2. it kills every child process the download started (ffmpeg, ffprobe, an external
   downloader): yt-dlp then fails with the child's exit code;
3. should the files still grow one interval later (a writer that is neither a child
   nor reports progress), it truncates them, which frees their blocks at once even
   while the writer holds them open.

The bound. Let R be the fastest the files can grow and P the interval. R is the link's
rate for yt-dlp's own downloaders, but a writer that buffers writes in bursts: ffmpeg's
muxer holds up to seconds of media and writes them at once (measured: its output grew at
10 MB/s from a 2 MB/s server), so R is the disk's rate over one such burst. A reading at
or below cap + BLOCK lets the download go on (BLOCK covers a file's last, partly filled
filesystem block and the block yt-dlp has in flight); the next reading, and the kill it
sends, come within LATE x P of it (one interval, plus as much again for a loaded
machine's scheduling and the kill), so the files grow by at most R x LATE x P before the
stop. They never exceed cap + BLOCK + R x LATE x P, which is the download's reservation
(download.reservation: slack = R_max x LATE x P + BLOCK, R_max being
disk_management.max_write_rate_mb_per_s): the hard limit holds by construction. The
fastest growth and the longest gap between readings are logged, and a download that grew
faster than R_max is reported with the key to raise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import psutil

from scribeflow.files import allocated_bytes, human_bytes

log = logging.getLogger("scribeflow.budget.watchdog")

BLOCK = 64 * 1024  # yt-dlp's fixed read size (download.ydl_options: buffersize, noresizebuffer)


# A reading may come late (a loaded machine schedules the thread late, and the child it
# kills writes until the kernel stops it): the slack covers this many intervals.
LATE = 2


def slack_bytes(max_rate_bytes_per_s: float, interval: float) -> int:
    """What a download may write past its cap before the watchdog's next reading stops it."""
    return int(max_rate_bytes_per_s * interval * LATE) + BLOCK


class DiskWatchdog:
    """Measures the files of one download every `interval` seconds and stops it at `cap`
    allocated bytes (see the module docstring). Use as a context manager around the
    download; `tripped` is the reason it stopped it, or None."""

    def __init__(self, folder: str | os.PathLike, prefix: str, cap: int, interval: float = 0.05,
                 extra: tuple = (), episode: str = ""):
        self.folder, self.prefix = Path(folder), prefix
        self.extra = [Path(p) for p in extra]
        self.cap = int(cap)
        self.interval = float(interval)
        self.episode = episode
        self.tripped: str | None = None
        self.written_at_stop = 0
        self.peak = 0  # the largest reading
        self.readings = 0
        self.fastest = 0.0  # bytes per second, the fastest growth between two readings
        self.longest_gap = 0.0  # seconds, the longest time between two readings
        self.cpu_seconds = 0.0  # the thread's own CPU time
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watchdog-{episode}")
        self._own = psutil.Process()
        # Children alive before the download (none, in a job) are not the download's
        # (psutil compares processes by pid and start time).
        self._before = set(self._children())

    def __enter__(self) -> "DiskWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    # -- measuring -------------------------------------------------------------------
    def files(self) -> list[Path]:
        found = [p for p in self.extra]
        try:
            with os.scandir(self.folder) as entries:
                found += [Path(e.path) for e in entries if e.name.startswith(self.prefix)]
        except FileNotFoundError:
            pass
        return found

    def measure(self) -> int:
        """The allocated bytes of the download's files now."""
        total = 0
        for path in self.files():
            with contextlib.suppress(FileNotFoundError):
                total += allocated_bytes(os.stat(path))
        return total

    def _run(self) -> None:
        started_cpu = time.thread_time()
        last, last_t = self.measure(), time.monotonic()
        try:
            while not self._stopped.wait(self.interval):
                now_bytes, now_t = self.measure(), time.monotonic()
                self.readings += 1
                self.peak = max(self.peak, now_bytes)
                self.fastest = max(self.fastest, (now_bytes - last) / max(now_t - last_t, 1e-6))
                self.longest_gap = max(self.longest_gap, now_t - last_t)
                if self.tripped is None:
                    # One block over the cap: a file's last filesystem block is allocated whole.
                    if now_bytes > self.cap + BLOCK:
                        self._trip(now_bytes, f"its files reached {human_bytes(now_bytes)} on disk, its cap "
                                              f"is {human_bytes(self.cap)}")
                elif now_bytes > last:
                    self._truncate()  # a writer that neither reports nor is a child
                    self._kill()
                last, last_t = now_bytes, now_t
        finally:
            self.cpu_seconds = time.thread_time() - started_cpu

    # -- stopping --------------------------------------------------------------------
    def _trip(self, written: int, why: str) -> None:
        self.written_at_stop = written
        self.tripped = f"{self.episode}: download stopped to hold the disk limit: {why}"
        log.warning("%s", self.tripped)
        self._kill()

    def _children(self) -> list:
        try:
            return self._own.children(recursive=True)
        except psutil.Error:
            return []

    def _kill(self) -> None:
        for child in set(self._children()) - self._before:
            with contextlib.suppress(psutil.Error):
                name = child.name()
                child.kill()
                log.warning("%s: killed %s (pid %d), which was writing the download", self.episode, name,
                            child.pid)

    def _truncate(self) -> None:
        for path in self.files():
            with contextlib.suppress(OSError):
                os.truncate(path, 0)

    def check(self) -> None:
        """Raise the stop in the downloading thread (the progress hook calls it)."""
        if self.tripped:
            raise Stopped(self.tripped)


class Stopped(RuntimeError):
    """The watchdog stopped the download (raised in yt-dlp's progress hook)."""

