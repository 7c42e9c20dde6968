"""Transcription slots shared by every process on the same data.

Snakemake's resources (transcription_slots) are per process: two overlapping chunk
runs (`scribeflow run-chunks`), or two runs started by hand, would each run their
own. This caps them together at disk_management.max_concurrent_transcriptions: a
slot is one of N lock files under data_dir/gate/transcription/, held with flock.
The kernel releases a dead holder's lock, so a killed job never keeps its slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path

from scribeflow.config.layout import Layout
from scribeflow.config.settings import Settings

log = logging.getLogger("scribeflow.budget.slots")


class Slots:
    def __init__(self, folder: str | Path, count: int, poll: float = 0.5):
        self.folder = Path(folder)
        self.count = max(1, int(count))
        self.poll = poll

    @classmethod
    def transcription(cls, settings: Settings) -> "Slots":
        return cls(Layout.from_config(settings).transcription_slots,
                   settings.disk_management.max_concurrent_transcriptions)

    def try_acquire(self):
        """An open, locked slot file, or None when all N are held."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            f = open(self.folder / f"slot-{i}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                f.close()
        return None

    @contextlib.contextmanager
    def hold(self, what: str = ""):
        """Block until a slot is free; hold it for the block."""
        held, waited = self.try_acquire(), time.monotonic()
        if held is None:
            log.info("Waiting for a transcription slot for %s: all %d are in use (other runs on this data)",
                     what, self.count)
        while held is None:
            time.sleep(self.poll)
            held = self.try_acquire()
        if time.monotonic() - waited > self.poll:
            log.info("Got a transcription slot after %.0f s", time.monotonic() - waited)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
