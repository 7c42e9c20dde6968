"""What status and plan both read of the ledger's measurements, and how they say a time."""

from __future__ import annotations

from scribeflow.config.settings import MB
from scribeflow.stages.media import BYTES_PER_SECOND


def measured(ledger) -> dict:
    """Per-job speeds and sizes from finished episodes in the ledger."""
    n, download_bps, transcription, extraction, video, duration, transcript = ledger.job_averages(BYTES_PER_SECOND)
    row = (n, download_bps and download_bps / MB, transcription, extraction, video and video / MB, duration,
           transcript and transcript / 1000.0)
    keys = ("episodes", "download_mb_per_s", "transcription_speed", "extraction_speed", "video_mb",
            "duration_s", "transcript_kb")
    return {k: v for k, v in zip(keys, row) if v}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
