"""`scribeflow status`: the ledger's view of a run — how far, how fast, how full,
what failed, and when it will be done.

Everything comes from a few aggregate queries on jobs.db, so it answers in well
under a second on a 171,881-episode ledger and can run beside a live workflow (it
only reads; readers never block the writers for long in the rollback journal). Disk
usage comes from the disk accounting (disk.py): the temporary folders are walked, the
folders that grow with every finished episode are not, so it costs the same in month
four as on day one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

from .config import MB, Settings
from .disk import DiskMonitor
from .failures import given_up
from .files import human_bytes
from .ledger import FAILED_ATTEMPTS_SQL, STAGES, TRANSCRIBED, TRANSCRIBED_SQL, Ledger
from .plan import measured

HOUR = 3600.0


def catalogue_rows(path) -> int | None:
    """How many episodes the whole catalogue holds (not just this chunk), cheaply."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        with path.open("rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            f.seek(max(0, path.stat().st_size - 1))
            last_unterminated = f.read(1) not in (b"\n", b"")
        return max(0, lines + last_unterminated - 1)  # minus the header
    except OSError:
        return None


def measured_rates(conn, now: float) -> dict:
    """Throughput and speeds measured from the jobs table."""
    q = conn.execute
    first, last_dl, last_tr = q(
        "SELECT MIN(downloading_at), MAX(downloaded_at), MAX(transcribed_at) FROM jobs").fetchone()
    downloads, downloads_hour = q(
        "SELECT COUNT(downloaded_at), COUNT(CASE WHEN downloaded_at >= ? THEN 1 END) FROM jobs",
        (now - HOUR,)).fetchone()
    done, done_hour, transcript_bytes, freed_avg = q(
        f"""SELECT COUNT(transcribed_at), COUNT(CASE WHEN transcribed_at >= ? THEN 1 END),
                   SUM(transcript_size_bytes),
                   AVG(video_deleted * COALESCE(video_size_bytes, 0)
                       + audio_deleted * COALESCE(audio_size_bytes, 0))
            FROM jobs WHERE {TRANSCRIBED_SQL}""",
        (now - HOUR,)).fetchone()
    def per_hour(count, end):
        span = (end or now) - first if first else 0
        return round(count / (span / HOUR), 2) if count and span > 0 else 0.0

    return {
        "downloads_per_hour": {"last_hour": float(downloads_hour), "overall": per_hour(downloads, last_dl)},
        "transcriptions_per_hour": {"last_hour": float(done_hour), "overall": per_hour(done, last_tr)},
        "avg_mb_freed_per_transcription": round((freed_avg or 0) / MB, 3),
        "permanent_growth_mb_per_hour": round(per_hour(transcript_bytes or 0, last_tr) / MB, 4),
        "transcribed": done,
    }


STAGE_DONE = {"downloads": "downloaded_at", "extractions": "extracted_at", "transcriptions": "transcribed_at"}


def window_rates(conn, now: float) -> dict:
    """Episodes through each stage per hour over the last hour, or since the earliest
    run that is still going (or ended within the hour) when that is later: a window never
    longer than the run's data, so that a run two minutes old is not measured over an
    hour it was not running."""
    import sqlite3

    try:
        run_start = conn.execute("SELECT MIN(started_at) FROM runs WHERE ended_at IS NULL OR ended_at >= ?",
                                 (now - HOUR,)).fetchone()[0]
    except sqlite3.OperationalError:  # a ledger read before the table existed
        run_start = None
    start = max(now - HOUR, run_start or 0)
    window = max(now - start, 60.0)
    counts = conn.execute(
        "SELECT " + ", ".join(f"COUNT(CASE WHEN {c} >= ? THEN 1 END)" for c in STAGE_DONE.values()) + " FROM jobs",
        (start,) * len(STAGE_DONE)).fetchone()
    basis = "last hour" if start == now - HOUR else f"this run's {window / 60:.0f} min"
    return {"window_seconds": round(window), "started_at": start, "basis": basis,
            "per_hour": {name: round(n * HOUR / window, 2) for name, n in zip(STAGE_DONE, counts)}}


def bottleneck(stages: dict, paused: bool) -> str:
    """The stage the work waits for: transcription while downloads are paused for space,
    else the stage with the longest queue in front of it, else the downloads."""
    if paused:
        return "transcription (downloads are paused until it frees space)"
    queues = {"transcription": stages.get("extracted", 0), "audio extraction": stages.get("downloaded", 0)}
    stage, waiting = max(queues.items(), key=lambda kv: kv[1])
    if waiting >= 2:
        return f"{stage} ({waiting} episodes wait for it)"
    return "downloads (the later stages keep up)"


def run_state(settings: Settings, monitor: DiskMonitor, stages: dict, last_update: float | None, now: float) -> dict:
    """Whether a run is alive: the gate's live holders (a download, extraction or
    transcription in flight, by process id or heartbeat), Snakemake's lock in the
    working directory, and when the ledger last changed. Reads only."""
    from .gate import DownloadGate

    gate = DownloadGate(monitor, Path(settings.data_dir) / "gate")  # the default heartbeat timeout
    holders = [h.get("kind", "job") for h in gate.live_holders()]
    locks = Path(".snakemake") / "locks"
    locked = locks.is_dir() and any(locks.iterdir())
    recent = last_update is not None and now - last_update < 120
    in_flight = sum(stages.get(x, 0) for x in ("downloading", "extracting", "transcribing"))
    if holders:
        counts = Counter(holders)
        detail = "jobs in flight: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        is_alive = True
    elif recent:
        detail, is_alive = "the ledger changed in the last 2 minutes", True
    else:
        is_alive = False
        detail = "no job in flight"
        if locked:
            detail += ("; Snakemake's lock is left in .snakemake/locks (a killed run: `snakemake --unlock`, "
                       "then run again)")
        if in_flight:
            detail += f"; {in_flight} episode(s) were in flight when it stopped: the next run starts them again"
    return {"alive": is_alive, "detail": detail, "holders": len(holders), "snakemake_lock": locked}


def disk_growth(conn, now: float) -> dict:
    """Trend of the measured disk usage in MB per hour (least-squares slope, so that the
    pause/resume sawtooth does not swing it): over the last hour and over the whole run."""
    def slope(since: float):
        # Centred on `since` so that the sums stay small enough for doubles.
        n, sx, sy, sxx, sxy = conn.execute(
            """SELECT COUNT(*), SUM(x), SUM(y), SUM(x * x), SUM(x * y) FROM
               (SELECT (at - ?) / 3600.0 AS x, total_bytes / 1e6 AS y FROM disk_samples WHERE at >= ?)""",
            (since, since)).fetchone()
        den = n * sxx - sx * sx if n and n > 1 else 0
        return round((n * sxy - sx * sy) / den, 3) if den > 1e-12 else None

    first = conn.execute("SELECT MIN(at) FROM disk_samples").fetchone()[0]
    return {"last_hour_mb_per_hour": slope(now - HOUR),
            "overall_mb_per_hour": slope(first) if first is not None else None}


def snapshot(settings: Settings, now: float | None = None) -> dict:
    now = now or time.time()
    monitor = DiskMonitor.from_config(settings)
    breakdown = monitor.get_breakdown()
    db = Path(settings.data_dir) / "jobs.db"
    stages, pauses, failures, rates, growth, window, last_update, memory = {}, [], [], {}, {}, {}, None, {}
    gave_up = given_up(settings.data_dir)  # failed episodes the workflow no longer tries
    if db.exists():
        with Ledger(db) as ledger:
            stages = ledger.stage_counts()
            pauses = ledger.pause_events()
            failures = [dict(zip(("id", "attempts", "last_error"), r), given_up=r[0] in gave_up)
                        for r in ledger.conn.execute(
                            f"SELECT id, {FAILED_ATTEMPTS_SQL}, last_error FROM jobs "
                            "WHERE stage = 'failed' ORDER BY id")]
            rates = measured_rates(ledger.conn, now)
            rates["per_job"] = measured(ledger.conn)
            growth = disk_growth(ledger.conn, now)
            window = window_rates(ledger.conn, now)
            last_update = ledger.conn.execute("SELECT MAX(updated_at) FROM jobs").fetchone()[0]
            rss, gpu = ledger.conn.execute("SELECT MAX(worker_rss_bytes), MAX(worker_gpu_bytes) FROM jobs").fetchone()
            memory = {"peak_rss_bytes": rss, "gpu_bytes": gpu}
    paused_s = sum((p["ended_at"] or now) - p["started_at"] for p in pauses)
    # Old pauses are kept one row per day (Ledger.thin_history); `events` counts them.
    pause_count = sum(p.get("events") or 1 for p in pauses)

    in_ledger = sum(stages.values())
    total = max(catalogue_rows(settings.catalogue) or 0, in_ledger)
    done = sum(stages.get(s, 0) for s in TRANSCRIBED)
    remaining = max(0, total - done - len(gave_up))
    tph = rates.get("transcriptions_per_hour", {})
    # The current run's rate over a window never longer than the run (at most an hour);
    # when nothing runs, the whole history's.
    if window.get("per_hour", {}).get("transcriptions"):
        rate, basis = window["per_hour"]["transcriptions"], window["basis"]
    else:
        rate, basis = tph.get("overall", 0), "overall"
    eta_s = remaining / rate * HOUR if rate and remaining else (0.0 if not remaining else None)
    paused_now = any(p["ended_at"] is None for p in pauses)
    return {
        "at": now,
        "catalogue_episodes": total,
        "stages": {s: stages.get(s, 0) for s in STAGES},
        "not_started": max(0, total - in_ledger),
        "disk": {
            **breakdown.usage.as_dict(),
            "hard_limit": monitor.hard_limit,
            "pause_threshold": monitor.pause_threshold,
            "resume_threshold": monitor.resume_threshold,
            "percent_of_hard_limit": round(breakdown.percentage, 2),
            "filesystem_available": breakdown.filesystem_available,
        },
        "pauses": {"count": pause_count, "total_seconds": round(paused_s, 1), "open": paused_now},
        "rates": {**rates, "window": window},
        "bottleneck": bottleneck(stages, paused_now),
        "run": run_state(settings, monitor, stages, last_update, now),
        "transcription_memory": memory,
        "disk_growth": growth,
        "eta": {"remaining_episodes": remaining, "seconds": round(eta_s) if eta_s is not None else None,
                "at": dt.datetime.fromtimestamp(now + eta_s).isoformat(timespec="minutes")
                if eta_s is not None else None,
                "rate_per_hour": rate, "basis": basis},
        "failures": failures,
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def render(s: dict) -> str:
    d = s["disk"]
    done = sum(s["stages"][x] for x in TRANSCRIBED)
    total = s["catalogue_episodes"] or 1
    run = s.get("run") or {}
    lines = [f"Episodes: {done} of {s['catalogue_episodes']} transcribed ({100 * done / total:.1f}%)",
             f"Run: {'alive' if run.get('alive') else 'not running'} ({run.get('detail', 'unknown')})",
             "By stage:"]
    lines += [f"  {stage:<13}{n:>9}" for stage, n in s["stages"].items() if n]
    if s["not_started"]:
        lines.append(f"  {'not started':<13}{s['not_started']:>9}")
    lines.append(f"Disk: {human_bytes(d['total'])} of {human_bytes(d['hard_limit'])} "
                 f"({d['percent_of_hard_limit']:.2g}%); pause at {human_bytes(d['pause_threshold'])}, "
                 f"resume at {human_bytes(d['resume_threshold'])}")
    for key in ("videos", "partial", "audio", "transcripts", "tokens", "analysis", "cache", "db", "logs", "other"):
        if d[key]:
            lines.append(f"  {key:<13}{human_bytes(d[key]):>10}")
    if d.get("margin"):
        lines.append(f"  {'margin':<13}{human_bytes(d['margin']):>10}  (accounting_margin_mb: writes not yet "
                     f"attributed)")
    p = s["pauses"]
    lines.append(f"Download pauses: {p['count']} ({duration(p['total_seconds'])} in all)"
                 + (", paused now" if p["open"] else ""))
    r, g, e = s["rates"], s["disk_growth"], s["eta"]
    w = r.get("window") or {}
    if any(w.get("per_hour", {}).values()):
        lines.append(f"Rates ({w['basis']}): " + ", ".join(f"{n:g} {name}/h" for name, n in w["per_hour"].items())
                     + f"; bottleneck: {s.get('bottleneck')}")
    if r.get("downloads_per_hour"):
        lines += [
            f"Downloads per hour: {r['downloads_per_hour']['last_hour']:g} last hour, "
            f"{r['downloads_per_hour']['overall']:g} overall",
            f"Transcriptions per hour: {r['transcriptions_per_hour']['last_hour']:g} last hour, "
            f"{r['transcriptions_per_hour']['overall']:g} overall",
            f"Freed per transcription: {r['avg_mb_freed_per_transcription']:g} MB on average",
            f"Permanent outputs grow {r['permanent_growth_mb_per_hour']:g} MB/h"
            + (f"; disk usage changed {g['last_hour_mb_per_hour']:+g} MB/h over the last hour"
               if g.get("last_hour_mb_per_hour") is not None else ""),
        ]
    m = s.get("transcription_memory") or {}
    if m.get("peak_rss_bytes"):
        lines.append(f"Transcription memory: up to {human_bytes(m['peak_rss_bytes'])} resident"
                     + (f", {human_bytes(m['gpu_bytes'])} of GPU memory" if m.get("gpu_bytes") else "")
                     + f" (Slurm: mem_mb of at least {int(m['peak_rss_bytes'] * 1.25 / 2**20)} for transcribe)")
    lines.append(f"ETA: {e['remaining_episodes']} episodes left, "
                 + (f"done in {duration(e['seconds'])} ({e['at']}) at {e['rate_per_hour']:g}/h ({e['basis']})"
                    if e["seconds"] else "done" if e["seconds"] == 0 else "no rate measured yet"))
    if s["failures"]:
        reasons = Counter(f["last_error"] for f in s["failures"])
        gave_up = sum(f["given_up"] for f in s["failures"])
        lines.append(f"Failed episodes: {len(s['failures'])} ({gave_up} given up, {len(s['failures']) - gave_up} "
                     f"to be tried again by the next run), by reason:")
        lines += [f"  {n:>6} x {reason}" for reason, n in reasons.most_common(10)]
        shown = ", ".join(f["id"] for f in s["failures"][:10])
        more = len(s["failures"]) - 10
        lines.append(f"  episodes: {shown}" + (f" and {more} more" if more > 0 else ""))
        lines.append("  (`scribeflow failed` lists them all; `scribeflow retry IDS` tries given-up ones again)")
    return "\n".join(lines)
