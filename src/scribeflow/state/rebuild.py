"""The ledger rebuilt from the files on disk, when it was unreadable (ledger.Ledger moves
it aside first). Apart from the orphan cleanup and the consistency check (recovery.py):
it needs the file layout only, so the ledger can call it without importing anything
that imports the ledger."""

from __future__ import annotations

import json
import os
import time

from scribeflow.config.layout import JSON_SUFFIXES, MARKER_SUFFIX, STATS_SUFFIX, TOKENS_SUFFIX, Layout
from scribeflow.files import allocated_bytes, file_entries, ids_with_suffix


def rebuild_ledger(ledger, data_dir: str | os.PathLike | Layout) -> dict[str, int]:
    """Fill an empty ledger from what the files on disk prove: a transcript (or, when
    transcripts are deleted after tokenization, tokens or an analysis) means the episode
    got that far; a failed marker, that it failed. The run's start enqueues the rest of
    the catalogue as queued. Returns the episodes per stage written."""
    layout = Layout.of(data_dir)
    found: dict[str, tuple[str, float, int | None]] = {}  # id -> (stage, at, transcript bytes)
    for stage, folder, suffixes in (("transcribed", layout.transcripts, JSON_SUFFIXES),
                                    ("tokenized", layout.tokens, (TOKENS_SUFFIX,)),
                                    ("analyzed", layout.episode_stats, (STATS_SUFFIX,))):
        for entry in file_entries(folder):
            name = entry.name
            suffix = next((x for x in suffixes if name.endswith(x)), None)
            if suffix is None or name.startswith("."):
                continue
            st = entry.stat()
            size = allocated_bytes(st) if stage == "transcribed" else found.get(name[: -len(suffix)], (0, 0, None))[2]
            found[name[: -len(suffix)]] = (stage, st.st_mtime, size)
    failed = {}
    for episode in ids_with_suffix(layout.failed, MARKER_SUFFIX):
        try:
            failed[episode] = json.loads(layout.failed_marker(episode).read_text())
        except (OSError, ValueError):
            failed[episode] = {}
    ledger.restore(found, {episode: (marker.get("failed_at") or time.time(),
                                     marker.get("reason") or "failed (marker without a reason)",
                                     marker.get("step"), int(marker.get("attempts") or 1))
                           for episode, marker in failed.items()})
    counts: dict[str, int] = {}
    for stage, *_ in found.values():
        counts[stage] = counts.get(stage, 0) + 1
    counts["failed"] = len(failed)
    return counts
