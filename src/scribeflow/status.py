"""`scribeflow status`: episodes per stage, disk against the limits, pauses."""

from __future__ import annotations

import time
from pathlib import Path

from .disk import DiskMonitor
from .gate import gb
from .ledger import STAGES, Ledger


def snapshot(config: dict) -> dict:
    monitor = DiskMonitor.from_config(config)
    breakdown = monitor.get_breakdown()
    db = Path(config["data_dir"]) / "jobs.db"
    stages, pauses, failures = {}, [], []
    if db.exists():
        with Ledger(db) as ledger:
            stages = ledger.stage_counts()
            pauses = ledger.pause_events()
            failures = [dict(zip(("id", "attempts", "last_error"), r)) for r in ledger.conn.execute(
                "SELECT id, attempts, last_error FROM jobs WHERE stage = 'failed' ORDER BY id")]
    now = time.time()
    paused_s = sum((p["ended_at"] or now) - p["started_at"] for p in pauses)
    return {
        "stages": {s: stages.get(s, 0) for s in STAGES},
        "disk": {
            **breakdown.usage.as_dict(),
            "hard_limit": monitor.hard_limit,
            "pause_threshold": monitor.pause_threshold,
            "resume_threshold": monitor.resume_threshold,
            "percent_of_hard_limit": round(breakdown.percentage, 2),
            "filesystem_available": breakdown.filesystem_available,
        },
        "pauses": {"count": len(pauses), "total_seconds": round(paused_s, 1),
                   "open": any(p["ended_at"] is None for p in pauses)},
        "failures": failures,
    }


def render(s: dict) -> str:
    d = s["disk"]
    lines = ["Episodes by stage:"]
    lines += [f"  {stage:<13}{n:>9}" for stage, n in s["stages"].items() if n]
    lines.append(f"Disk: {gb(d['total'])}/{gb(d['hard_limit'])} GB ({d['percent_of_hard_limit']:.0f}%); "
                 f"pause at {gb(d['pause_threshold'])} GB, resume at {gb(d['resume_threshold'])} GB")
    for key in ("videos", "partial", "audio", "transcripts", "tokens", "analysis", "cache", "db", "logs", "other"):
        if d[key]:
            lines.append(f"  {key:<13}{gb(d[key]):>9} GB")
    p = s["pauses"]
    lines.append(f"Download pauses: {p['count']} ({p['total_seconds']:.0f} s in all)"
                 + (", paused now" if p["open"] else ""))
    if s["failures"]:
        lines.append(f"Failed episodes ({len(s['failures'])}):")
        lines += [f"  {f['id']}: {f['last_error']}" for f in s["failures"][:20]]
    return "\n".join(lines)
