"""Plots of a run from the ledger: disk usage against the limits, and stage throughput.

Both read jobs.db only, so they can be drawn while a run goes on (`scribeflow plots`)
and by the workflow's `plots` rule for `snakemake --report`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and cluster nodes
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from scribeflow.config.settings import GB, DiskManagement, Settings  # noqa: E402
from scribeflow.figures import use_fonts  # noqa: E402
from scribeflow.ops.rates import MIN_RUN_SECONDS, duration  # noqa: E402
from scribeflow.state.ledger import Ledger, LedgerReader, thin_peaks  # noqa: E402

use_fonts()

MAX_POINTS = 5000  # months of 30 s samples, thinned to what a figure can show
STAGE_TIMES = {"downloads": "downloaded_at", "audio extractions": "extracted_at",
               "transcriptions": "transcribed_at"}


def _times(values) -> list:
    return [dt.datetime.fromtimestamp(v) for v in values]


def _unit(top_bytes: float) -> tuple[float, str]:
    for scale, unit in ((GB, "GB"), (1e6, "MB"), (1e3, "kB")):
        if top_bytes >= scale:
            return scale, unit
    return 1.0, "bytes"


def disk_usage(ledger: Ledger, limits: DiskManagement, out: str | Path) -> Path:
    return _save(disk_usage_figure(ledger, limits), out)


def disk_usage_figure(ledger: Ledger, limits: DiskManagement):
    """Disk usage over time, pause periods shaded; the axis follows the data, and the
    three thresholds are drawn when they are in its range (a pilot run of a few GB
    under a 300 GB budget is not a flat line at 0)."""
    samples = ledger.disk_samples()
    thinned = thin_peaks(samples, MAX_POINTS)
    peak = max((s[1] for s in samples), default=0)
    lines = [(getattr(limits, key) * GB, label, colour) for key, label, colour in (
        ("hard_limit_gb", "hard limit", "tab:red"),
        ("pause_threshold_gb", "pause downloads", "tab:orange"),
        ("resume_threshold_gb", "resume downloads", "tab:green"))]
    # The limits come into view once usage reaches half the resume threshold.
    top = lines[0][0] * 1.08 if peak >= lines[2][0] / 2 else max(peak * 1.25, 1.0)
    scale, unit = _unit(top)
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    if thinned:
        ax.plot(_times(s[0] for s in thinned), [s[1] / scale for s in thinned], lw=1, color="tab:blue",
                marker="." if len(thinned) < 200 else None,
                label="usage (videos, audio and permanent outputs)")
        first, last = samples[0][0], samples[-1][0]
        pad = max(60.0, (last - first) * 0.02)
        ax.set_xlim(*_times((first - pad, last + pad)))
    hidden = []
    for value, label, colour in lines:
        if value <= top:
            ax.axhline(value / scale, color=colour, ls="--", lw=1, label=f"{label} ({value / scale:g} {unit})")
        else:
            hidden.append(f"{label} {value / GB:g} GB")
    pauses = ledger.pause_events()
    end = samples[-1][0] if samples else None
    for n, p in enumerate(pauses):
        stop = p["ended_at"] or end or p["started_at"]
        ax.axvspan(*_times((p["started_at"], stop)), color="tab:orange", alpha=0.15, lw=0,
                   label="downloads paused" if n == 0 else None)
    ax.set_ylabel(f"disk usage ({unit})")
    ax.set_ylim(0, top / scale)
    # Old pauses are merged into one row a day, which says how many it holds.
    n_pauses = sum(p.get("events") or 1 for p in pauses)
    title = (f"Disk usage: peak {peak / scale:.3g} {unit}, {len(samples):,} sample{'' if len(samples) == 1 else 's'}, "
             f"{n_pauses} download pause{'' if n_pauses == 1 else 's'}")
    if hidden:
        title += f"\n(above this range: {', '.join(hidden)})"
    ax.set_title(title)
    _time_axis(ax)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def throughput(ledger: Ledger, out: str | Path) -> Path:
    return _save(throughput_figure(ledger), out)


def throughput_figure(ledger: Ledger):
    """Episodes finishing each stage per hour: one panel per stage (lines that share an
    axis hide each other), the counts per time bin as bars, and a moving average over a
    sixth of the run as a line."""
    series = {name: ledger.stage_times(col) for name, col in STAGE_TIMES.items()}
    stamps = [t for ts in series.values() for t in ts]
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 6), sharex=True, layout="constrained")
    if stamps:
        start, stop = min(stamps), max(stamps)
        # About four episodes a bin at the busiest stage, 6 to 48 bins, at least a minute each.
        bins = min(48, max(6, max(len(ts) for ts in series.values()) // 4))
        width = max((stop - start) / bins, 60.0)
        n_bins = max(1, int((stop - start) // width) + 1)
        edges = [start + k * width for k in range(n_bins + 1)]
        window = max(1, n_bins // 6)
        for ax, (name, ts), colour in zip(axes, series.items(), ("tab:blue", "tab:purple", "tab:green")):
            counts = [0] * n_bins
            for t in ts:
                counts[min(n_bins - 1, int((t - start) / width))] += 1
            rates = [c * 3600 / width for c in counts]
            smooth = [sum(rates[max(0, i - window + 1):i + 1]) / len(rates[max(0, i - window + 1):i + 1])
                      for i in range(n_bins)]
            centres = _times(e + width / 2 for e in edges[:-1])
            ax.bar(centres, rates, width=width / 86400 * 0.9, color=colour, alpha=0.25)
            ax.plot(centres, smooth, color=colour, lw=2)
            ax.set_ylabel("per hour")
            ax.set_title(_stage_title(name, ts), fontsize="medium", loc="left")
            ax.set_ylim(0, max(rates) * 1.15 or 1)
    else:
        axes[0].set_title("Stage throughput: nothing finished yet")
    for ax in axes:
        _time_axis(ax)
    return fig


def _stage_title(name: str, times: list[float]) -> str:
    """How many finished the stage and at what hourly rate between the first and the last;
    no rate from under a minute (rates.MIN_RUN_SECONDS, as status says)."""
    span = times[-1] - times[0] if times else 0.0
    if span < MIN_RUN_SECONDS:
        return f"{name}: {len(times)} in {duration(span)} (too short for an hourly rate)"
    return f"{name}: {len(times):,}, {len(times) * 3600 / span:,.3g}/h between the first and the last"


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


def draw_all(settings: Settings, disk_png: str | Path, throughput_png: str | Path) -> None:
    """Both plots, from the ledger read only; before the first run (no ledger yet), from an
    empty one made elsewhere: the limits are drawn, nothing is written to data_dir."""
    import tempfile

    from scribeflow.config.layout import Layout

    db = Layout.from_config(settings).ledger
    with contextlib.ExitStack() as stack:
        if not db.exists():
            db = Path(stack.enter_context(tempfile.TemporaryDirectory())) / db.name
            stack.enter_context(Ledger(db))
        ledger = stack.enter_context(LedgerReader(db))
        disk_usage(ledger, settings.disk_management, disk_png)
        throughput(ledger, throughput_png)
