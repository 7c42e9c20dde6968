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

from scribeflow.budget.gate import DownloadGate
from scribeflow.budget.monitor import DiskMonitor
from scribeflow.config.layout import Layout
from scribeflow.config.settings import MB, Settings
from scribeflow.files import human_bytes
from scribeflow.ops.rates import MIN_RUN_SECONDS, STAGE_DONE, duration, measured, stage_rates
from scribeflow.state.failures import given_up
from scribeflow.state.ledger import HOUR, STAGES, TRANSCRIBED, Ledger, LedgerReader


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


def reading(settings: Settings, configfiles=(), overrides=(), directory: str | Path = ".") -> dict:
    """What a read command reads: the config files (the workflow's config/config.yaml
    where there is one, then each --configfile, as `for_run` merges them), the --config
    overrides, and the data folder, with whether it exists."""
    from scribeflow.config.settings import CONFIG_FILE

    default = Path(directory) / CONFIG_FILE
    files = ([str(default.absolute())] if default.is_file() else []) + [str((Path(directory) / f).absolute())
                                                                          for f in configfiles]
    data = Path(settings.data_dir).absolute()
    return {"config_files": files, "config_overrides": list(overrides), "data_dir": str(data),
            "data_dir_exists": data.is_dir()}


def reading_lines(r: dict) -> list[str]:
    """`reading` for a person: one line, and a second when the data folder is missing."""
    files = " + ".join(r["config_files"]) or "no config file (none given, no config/config.yaml here: the defaults)"
    extra = f" + --config {' '.join(r['config_overrides'])}" if r["config_overrides"] else ""
    lines = [f"Reading {files}{extra}; data folder {r['data_dir']}"]
    if not r["data_dir_exists"]:
        lines.append(f"no data folder at {r['data_dir']}: is this the run's --configfile? (give the same "
                     f"--configfile/--config as the run, or run from its folder)")
    return lines


def measured_rates(ledger: Ledger, now: float) -> dict:
    """Throughput (stage_rates: this run, last hour, overall) and what a transcription frees
    and leaves behind, from the jobs table."""
    t = ledger.throughput(now - HOUR)
    span = (t["last_transcription"] or now) - t["first"] if t["first"] else 0
    growth = (t["transcript_bytes"] or 0) / (span / HOUR) if span > 0 else 0.0
    return {
        **stage_rates(ledger, now),
        "avg_mb_freed_per_transcription": round((t["freed_avg"] or 0) / MB, 3),
        "permanent_growth_mb_per_hour": round(growth / MB, 4),
        "transcribed": t["transcribed"],
    }


def eta_rate(rates: dict) -> tuple[float, str]:
    """The transcription rate the ETA divides by, and which it is: this run's while it goes
    on (and is under an hour old), else the last hour's, else the overall one."""
    tph, run = rates.get("transcriptions_per_hour") or {}, rates.get("this_run") or {}
    if tph.get("this_run") and run.get("ended_at") is None and run.get("seconds", HOUR) < HOUR:
        return tph["this_run"], f"this run ({duration(run['seconds'])})"
    if tph.get("last_hour"):
        return tph["last_hour"], "last hour"
    return tph.get("overall", 0.0), "overall"


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


def run_state(gate: DownloadGate, stages: dict, last_update: float | None, now: float,
              run: dict | None = None) -> dict:
    """Whether a run is alive: the gate's live holders (a download, extraction or
    transcription in flight, by process id or heartbeat), Snakemake's lock in the
    working directory, and when the ledger last changed, unless the latest run (`run`,
    stage_rates' this_run) recorded its end. Reads only."""
    holders = [h.get("kind", "job") for h in gate.live_holders()]
    locks = Path(".snakemake") / "locks"
    locked = locks.is_dir() and any(locks.iterdir())
    ended = bool(run and run.get("ended_at") is not None)
    recent = last_update is not None and now - last_update < 120 and not ended
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
        if ended:
            detail = f"the last run ended {dt.datetime.fromtimestamp(run['ended_at']).isoformat(timespec='seconds')}"
        if locked:
            detail += ("; Snakemake's lock is left in .snakemake/locks (a killed run: `snakemake --unlock`, "
                       "then run again)")
        if in_flight:
            detail += f"; {in_flight} episode(s) were in flight when it stopped: the next run starts them again"
    return {"alive": is_alive, "detail": detail, "holders": len(holders), "snakemake_lock": locked}


def disk_growth(ledger: Ledger, now: float) -> dict:
    """Trend of the measured disk usage in MB per hour (least-squares slope, so that the
    pause/resume sawtooth does not swing it): over the last hour and over the whole run."""
    def slope(since: float):
        n, sx, sy, sxx, sxy = ledger.usage_sums(since)
        den = n * sxx - sx * sx if n and n > 1 else 0
        return round((n * sxy - sx * sy) / den, 3) if den > 1e-12 else None

    first = ledger.first_sample_at()
    return {"last_hour_mb_per_hour": slope(now - HOUR),
            "overall_mb_per_hour": slope(first) if first is not None else None}


def snapshot(settings: Settings, now: float | None = None) -> dict:
    now = now or time.time()
    monitor = DiskMonitor.from_config(settings, read_only=True)
    layout = Layout.from_config(settings)
    gate = DownloadGate(monitor, layout.gate)  # the default heartbeat timeout
    # Whether downloads may start: the gate's rule, from the gate's own pause.
    breakdown = monitor.get_breakdown(paused_for=gate.pause_reasons())
    db = layout.ledger
    stages, pauses, failures, rates, growth, last_update, memory = {}, [], [], {}, {}, None, {}
    ledger_sources, sampled = (0, 0), (0, None)
    gave_up = given_up(settings.data_dir)  # failed episodes the workflow no longer tries
    if db.exists():
        with LedgerReader(db) as ledger:
            stages = ledger.stage_counts()
            ledger_sources = ledger.subtitled_counts()
            sampled = ledger.sampled_cer()
            pauses = ledger.pause_events()
            failures = [dict(zip(("id", "attempts", "last_error"), r[:3]), given_up=r[0] in gave_up,
                             kind=r[4] or "episode") for r in ledger.failed()]
            rates = measured_rates(ledger, now)
            rates["per_job"] = measured(ledger)
            growth = disk_growth(ledger, now)
            last_update = ledger.last_update()
            rss, gpu = ledger.peak_memory()
            memory = {"peak_rss_bytes": rss, "gpu_bytes": gpu}
    paused_s = sum((p["ended_at"] or now) - p["started_at"] for p in pauses)
    # Old pauses are kept one row per day (Ledger.thin_history); `events` counts them.
    pause_count = sum(p.get("events") or 1 for p in pauses)

    in_ledger = sum(stages.values())
    total = max(catalogue_rows(settings.catalogue) or 0, in_ledger)
    done = sum(stages.get(s, 0) for s in TRANSCRIBED)
    subtitled, subtitled_todo = ledger_sources
    # The ETA is the ASR's: transcripts from subtitles take seconds.
    remaining = max(0, total - done - len(gave_up) - subtitled_todo)
    rate, basis = eta_rate(rates)
    eta_s = remaining / rate * HOUR if rate and remaining else (0.0 if not remaining else None)
    paused_now = any(p["ended_at"] is None for p in pauses)
    from scribeflow.budget.hosts import HostLimiter

    return {
        "hosts_paused": HostLimiter.from_config(settings).paused(),
        "at": now,
        "catalogue_episodes": total,
        "sources": {"subtitles": subtitled, "asr": done - subtitled, "subtitles_planned": subtitled_todo},
        # subtitles.sample_share: the ASR's character error rate on sampled subtitled episodes.
        "sampled_asr": {"episodes": sampled[0], "cer": None if sampled[1] is None else round(sampled[1], 4),
                        "model": settings.transcribe.model},
        "stages": {s: stages.get(s, 0) for s in STAGES},
        "not_started": max(0, total - in_ledger),
        "disk": {
            **breakdown.usage.as_dict(),
            "hard_limit": monitor.hard_limit,
            "pause_threshold": monitor.pause_threshold,
            "resume_threshold": monitor.resume_threshold,
            "percent_of_hard_limit": round(breakdown.percentage, 2),
            "filesystem_available": breakdown.filesystem_available,
            "can_download": breakdown.can_download,
        },
        "pauses": {"count": pause_count, "total_seconds": round(paused_s, 1), "open": paused_now},
        "rates": rates,
        "bottleneck": bottleneck(stages, paused_now),
        "run": run_state(gate, stages, last_update, now, rates.get("this_run")),
        "transcription_memory": memory,
        "disk_growth": growth,
        "eta": {"remaining_episodes": remaining, "seconds": round(eta_s) if eta_s is not None else None,
                "at": dt.datetime.fromtimestamp(now + eta_s).isoformat(timespec="minutes")
                if eta_s is not None else None,
                "rate_per_hour": rate, "basis": basis, "given_up": len(gave_up)},
        "failures": failures,
        "songs": songs_found(layout),
    }


def songs_found(layout: Layout, shown: int = 5) -> dict:
    """The songs and repeats the last corpus step found per series (stages/songs.py), left
    out of the counts: totals, and the series with the most."""
    from scribeflow.stages.songs import read_summary

    per = read_summary(layout.marks)
    most = sorted(per.items(), key=lambda kv: -(kv[1]["song_s"] + kv[1]["repeat_s"]))[:shown]
    return {"series": len(per), "series_with_any": sum(1 for v in per.values() if v["song_s"] or v["repeat_s"]),
            "song_s": round(sum(v["song_s"] for v in per.values()), 1),
            "repeat_s": round(sum(v["repeat_s"] for v in per.values()), 1),
            "most": [{"series": name, **v} for name, v in most if v["song_s"] or v["repeat_s"]]}


def _per_hour(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def render_rates(r: dict) -> list[str]:
    """The rates as a table, each column with its one definition (rates.RATE_DEFINITIONS)."""
    run = r.get("this_run")
    if run is None:
        about = "none recorded"
    else:
        about = "since it started, " + duration(run["seconds"]) + (
            ", going on" if run["ended_at"] is None
            else ", ended " + dt.datetime.fromtimestamp(run["ended_at"]).isoformat(timespec="minutes"))
        if run["seconds"] < MIN_RUN_SECONDS:
            about += ": too short for an hourly rate"
    lines = [f"Episodes per hour {'this run':>10} {'last hour':>10} {'overall':>10}"]
    for name in STAGE_DONE:
        got = r.get(f"{name}_per_hour") or {}
        lines.append(f"  {name:<15} " + " ".join(f"{_per_hour(got.get(k)):>10}"
                                                for k in ("this_run", "last_hour", "overall")))
    lines.append(f"  (this run: {about}; last hour: the count in the last 60 min; "
                 f"overall: since the first download, to the last episode finished)")
    return lines


def render(s: dict) -> str:
    d = s["disk"]
    done = sum(s["stages"][x] for x in TRANSCRIBED)
    total = s["catalogue_episodes"] or 1
    run = s.get("run") or {}
    src = s.get("sources") or {}
    lines = [f"Episodes: {done} of {s['catalogue_episodes']} transcribed ({100 * done / total:.1f}%)"
             + (f"; {src['subtitles']} from subtitles, {src['asr']} by ASR" if src.get("subtitles") else "")
             + (f"; {src['subtitles_planned']} more planned from subtitles" if src.get("subtitles_planned") else ""),
             f"Run: {'alive' if run.get('alive') else 'not running'} ({run.get('detail', 'unknown')})",
             "By stage:"]
    sample = s.get("sampled_asr") or {}
    if sample.get("cer") is not None:
        lines.insert(1, f"ASR quality: CER {100 * sample['cer']:.1f} % against the subtitles of {sample['episodes']} "
                        f"sampled episode(s) ({sample['model']})")
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
    songs = s.get("songs") or {}
    if songs.get("series"):
        lines.append(f"Songs and repeats, left out of the counts: {duration(songs['song_s'])} of songs, "
                     f"{duration(songs['repeat_s'])} of repeats, in {songs['series_with_any']} of {songs['series']} "
                     f"series" + "".join(f"; {m['series']}: {duration(m['song_s'])} songs, "
                                         f"{duration(m['repeat_s'])} repeats" for m in songs["most"][:3]))
    p = s["pauses"]
    lines.append(f"Download pauses: {p['count']} ({duration(p['total_seconds'])} in all)"
                 + (", paused now" if p["open"] else ""))
    for host, h in (s.get("hosts_paused") or {}).items():
        probe = h.get("next_probe")
        lines.append(f"Host paused: {host} since {dt.datetime.fromtimestamp(h['since']).isoformat(timespec='seconds')}"
                     f" ({duration(s['at'] - h['since'])}): {h.get('reason')}"
                     + (f"; next probe in {duration(max(0.0, probe - s['at']))}" if probe else "")
                     + f"; its episodes wait; `scribeflow retry --host {host}` resumes it now")
    r, g, e = s["rates"], s["disk_growth"], s["eta"]
    if r.get("downloads_per_hour"):
        lines += render_rates(r) + [
            f"  bottleneck: {s.get('bottleneck')}",
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
    # Given-up episodes are not left to the runs, but nor is the catalogue done while there are any.
    given_up_note = (f"{e['given_up']} given up, not counted (`scribeflow retry` tries them again)"
                     if e.get("given_up") else "")
    if e["seconds"] == 0 and given_up_note:
        lines.append(f"ETA: {e['remaining_episodes']} episodes left; {given_up_note}")
    else:
        lines.append(f"ETA: {e['remaining_episodes']} episodes left, "
                     + (f"done in {duration(e['seconds'])} ({e['at']}) at {e['rate_per_hour']:g}/h ({e['basis']})"
                        if e["seconds"] else "done" if e["seconds"] == 0 else "no rate measured yet")
                     + (f"; {given_up_note}" if given_up_note else ""))
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
