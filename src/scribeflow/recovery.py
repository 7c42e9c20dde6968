"""After a crash: remove temporary files that no pending job needs.

Snakemake does not clean up temp() files of an interrupted run (snakemake #3742),
and a killed download leaves its .part behind. Files that a live process of a
concurrent run still holds (gate reservations) are left alone.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .disk import PARTIAL_SUFFIXES
from .files import allocated_bytes
from .gate import DownloadGate

log = logging.getLogger("scribeflow.recovery")
STALE_TMP_SECONDS = 600  # an atomic-write temp file this old belongs to no live writer


def clean_orphans(config: dict) -> tuple[int, int]:
    """Delete orphaned videos, audio, partial downloads and temp files. Returns (files, bytes)."""
    data, storage = Path(config["data_dir"]), Path(config["storage_dir"])
    videos, audio, transcripts = storage / "videos", data / "audio", data / "transcripts"
    cleanup = config["disk_management"]["cleanup"]
    busy, anyone_busy = DownloadGate.from_config(config).held_paths()
    now = time.time()
    doomed: list[Path] = []

    def done(episode: str) -> bool:
        # Either form: the gzip setting may have changed since the transcript was written.
        return any((transcripts / f"{episode}{ext}").is_file() for ext in (".json", ".json.gz"))

    for path in _files(videos):
        if str(path.absolute()) in busy:
            continue
        if path.name.endswith(PARTIAL_SUFFIXES):
            doomed.append(path)
        elif path.suffix == ".media":
            episode = path.stem
            has_audio = (audio / f"{episode}.wav").is_file()
            if cleanup["delete_video_after_transcription"] and (done(episode) or has_audio):
                doomed.append(path)
    for path in _files(audio):
        if path.suffix == ".wav" and cleanup["delete_audio_after_transcription"] and done(path.stem):
            doomed.append(path)
    for folder in (videos, audio, transcripts):
        for path in _files(folder):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if not anyone_busy or now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    doomed.append(path)

    freed = 0
    for path in doomed:
        try:
            freed += allocated_bytes(path.stat())
            path.unlink()
            log.info("Removed orphaned %s", path)
        except FileNotFoundError:
            pass
    return len(doomed), freed


def _files(folder: Path):
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
