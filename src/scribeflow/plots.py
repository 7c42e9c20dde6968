"""Plots of a run from the ledger: disk usage against the limits, and stage throughput.

Both read jobs.db only, so they can be drawn while a run goes on (`scribeflow plots`)
and by the workflow's `plots` rule for `snakemake --report`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and cluster nodes
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from .config import GB  # noqa: E402
from .ledger import Ledger  # noqa: E402

MAX_POINTS = 5000  # months of 30 s samples, thinned to what a figure can show
STAGE_TIMES = {"downloads": "downloaded_at", "audio extractions": "extracted_at",
               "transcriptions": "transcribed_at"}


def _times(values) -> list:
    return [dt.datetime.fromtimestamp(v) for v in values]


def _unit(limits: dict) -> tuple[float, str]:
    return (GB, "GB") if limits["hard_limit_gb"] >= 1 else (1e6, "MB")


def disk_usage(ledger: Ledger, limits: dict, out: str | Path) -> Path:
    """Disk usage over time, the three thresholds as lines, pause periods shaded."""
    samples = ledger.disk_samples()
    step = max(1, len(samples) // MAX_POINTS)
    # Thinning keeps each bucket's highest sample: a peak near the hard limit must show.
    thinned = [max(samples[i:i + step], key=lambda s: s[1]) for i in range(0, len(samples), step)]
    scale, unit = _unit(limits)
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    if thinned:
        ax.plot(_times(s[0] for s in thinned), [s[1] / scale for s in thinned], lw=1, color="tab:blue",
                marker="." if len(thinned) < 200 else None,
                label="usage (videos, audio and permanent outputs)")
        first, last = samples[0][0], samples[-1][0]
        pad = max(60.0, (last - first) * 0.02)
        ax.set_xlim(*_times((first - pad, last + pad)))
    for key, label, colour in (("hard_limit_gb", "hard limit", "tab:red"),
                               ("pause_threshold_gb", "pause downloads", "tab:orange"),
                               ("resume_threshold_gb", "resume downloads", "tab:green")):
        value = limits[key] * GB / scale
        ax.axhline(value, color=colour, ls="--", lw=1, label=f"{label} ({value:g} {unit})")
    pauses = ledger.pause_events()
    end = samples[-1][0] if samples else None
    for n, p in enumerate(pauses):
        stop = p["ended_at"] or end or p["started_at"]
        ax.axvspan(*_times((p["started_at"], stop)), color="tab:orange", alpha=0.15, lw=0,
                   label="downloads paused" if n == 0 else None)
    ax.set_ylabel(f"disk usage ({unit})")
    ax.set_ylim(0, limits["hard_limit_gb"] * GB / scale * 1.08)
    ax.set_title(f"Disk usage: {len(samples)} samples, {len(pauses)} download pause(s)")
    _time_axis(ax)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out)


def throughput(ledger: Ledger, out: str | Path, bins: int = 48) -> Path:
    """Episodes finishing each stage per hour, in `bins` equal time bins over the run."""
    series = {name: [r[0] for r in ledger.conn.execute(
        f"SELECT {col} FROM jobs WHERE {col} IS NOT NULL ORDER BY {col}")] for name, col in STAGE_TIMES.items()}
    stamps = [t for ts in series.values() for t in ts]
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    if stamps:
        start, stop = min(stamps), max(stamps)
        width = max((stop - start) / bins, 1.0)
        edges = [start + k * width for k in range(bins + 1)]
        for name, ts in series.items():
            counts = [0] * bins
            for t in ts:
                counts[min(bins - 1, int((t - start) / width))] += 1
            ax.step(_times(edges[:-1]), [c * 3600 / width for c in counts], where="post",
                    label=f"{name} ({len(ts)})")
    ax.set_ylabel("episodes per hour")
    ax.set_title("Stage throughput")
    _time_axis(ax)
    if stamps:
        ax.legend(loc="upper left", fontsize="small")
    return _save(fig, out)


def _time_axis(ax) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)


def _save(fig, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # a reader never sees half a PNG
    return out


def draw_all(config: dict, disk_png: str | Path, throughput_png: str | Path) -> None:
    with Ledger.for_config(config) as ledger:
        disk_usage(ledger, config["disk_management"], disk_png)
        throughput(ledger, throughput_png)
