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


# One definition per rate, the same in status, metrics and the dashboard.
RATE_DEFINITIONS = {
    "this_run": "episodes since the latest run started, per hour of that run (none before it has run a minute)",
    "last_hour": "episodes in the last 60 minutes",
    "overall": "episodes since the first download started, per hour from then to the last one finished (none "
               "before that is a minute)",
}
STAGE_DONE = {"downloads": "downloaded_at", "extractions": "extracted_at", "transcriptions": "transcribed_at"}
MIN_RUN_SECONDS = 60.0  # an hourly rate from a few seconds says nothing


def stage_rates(ledger, now: float) -> dict:
    """Episodes through each stage per hour, by RATE_DEFINITIONS: `{stage}_per_hour` holds
    this_run, last_hour and overall (downloads and transcriptions; the ledger keeps their
    totals), `this_run` when the latest run started and ended. Index ranges (the last hour's
    episodes, the latest run's) and kept totals: the cost grows with the latest run, not with
    the history."""
    hour = 3600.0
    run = ledger.latest_run()
    last_hour = ledger.reached_since(STAGE_DONE.values(), now - hour)
    this_run, run_info = (None,) * len(STAGE_DONE), None
    if run:
        started, ended = run
        seconds = (ended or now) - started
        run_info = {"started_at": started, "ended_at": ended, "seconds": round(seconds, 1)}
        if seconds >= MIN_RUN_SECONDS:
            this_run = tuple(round(n * hour / seconds, 2) for n in ledger.reached_since(STAGE_DONE.values(), started))
    t = ledger.throughput(now - hour)
    end = max([x for x in (t["last_download"], t["last_transcription"], run and run[1]) if x], default=None)
    span = end - t["first"] if t["first"] and end else 0
    overall = {"downloads": t["downloads"], "transcriptions": t["transcribed"]}
    out = {}
    for k, name in enumerate(STAGE_DONE):
        out[f"{name}_per_hour"] = {"this_run": this_run[k], "last_hour": float(last_hour[k])}
        if name in overall:
            n = overall[name]
            out[f"{name}_per_hour"]["overall"] = (None if span < MIN_RUN_SECONDS else round(n * hour / span, 2)) \
                if n else 0.0
    return {**out, "this_run": run_info, "definitions": RATE_DEFINITIONS}
