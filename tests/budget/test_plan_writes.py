"""Files a planning process writes (subtitle verdicts, subtitles/{id}.subtitle.json) are
known to the disk gate at its next look, not at its next reconciliation (600 s later):
real verdicts judged from real .srt files by the Finder the Snakefile uses, real ledger,
real gate; and a real run at the edge of the budget, its bytes on disk walked by a thread
that shares no code with the pipeline."""

import os
import sqlite3

import pytest

from scribeflow.budget.gate import DownloadGate
from scribeflow.budget.monitor import DiskMonitor
from scribeflow.config.layout import Layout
from scribeflow.config.settings import validate
from scribeflow.stages import subtitles
from scribeflow.state.ledger import Ledger

SRT = "1\n00:00:01,000 --> 00:00:03,000\n（健太）猫が走った。\n\n2\n00:00:04,000 --> 00:00:06,000\n［拍手］\n魚を食べた。\n"


def _walked(folder) -> int:
    return sum(e.stat().st_blocks * 512 for e in os.scandir(folder))


def _plan(tmp_path, settings, episodes: int) -> int:
    """What a run's planning process does (rules/common.smk): the Finder judges every
    episode's subtitle file and keeps its verdict. Returns the verdicts' bytes on disk."""
    subs = tmp_path / "subs"
    subs.mkdir(exist_ok=True)
    for n in range(episodes):
        (subs / f"s{n:04d}.ja.srt").write_text(SRT, encoding="utf-8")
    finder = subtitles.Finder(settings, Layout.from_config(settings), lambda e, c: "ja" if c == "language" else None)
    assert all(finder.subtitled(f"s{n:04d}") for n in range(episodes))
    return _walked(Layout.from_config(settings).subtitles)


def _earlier_run(settings) -> None:
    """A data_dir a run has used: its ledger, and a reconciliation's record of a moment ago."""
    with Ledger.for_config(settings) as ledger:
        ledger.enqueue(["old"])
    assert DiskMonitor.from_config(settings).reconcile()


def test_verdicts_written_by_a_plan_are_counted_by_the_next_look(tmp_path):
    settings = validate({"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
                         "subtitles": {"folder": str(tmp_path / "subs")},
                         "disk_management": {"hard_limit_gb": 1, "pause_threshold_gb": 0.9,
                                             "resume_threshold_gb": 0.8, "cache_duration_seconds": 0}})
    _earlier_run(settings)
    monitor = DiskMonitor.from_config(settings)
    before = monitor.current_usage(fresh=True).transcripts
    verdicts = _plan(tmp_path, settings, 40)
    assert verdicts >= 40 * 4096
    # No reconciliation since (it is due in 600 s): the look counts them all the same.
    assert not monitor.reconcile_due()
    assert monitor.current_usage(fresh=True).transcripts - before >= verdicts
    with Ledger.for_config(settings) as ledger:
        decision = DownloadGate.from_config(settings, ledger).check(0)
    assert decision.usage.transcripts - before >= verdicts
    # The next walk takes them into its base, and they are counted once, not twice.
    assert monitor.reconcile()
    assert monitor.current_usage(fresh=True).transcripts == pytest.approx(before + verdicts, abs=8192)
    # A verdict written again after the walk (a changed file) is counted again until the next walk.
    (tmp_path / "subs" / "s0001.ja.srt").write_text(SRT + "\n3\n00:00:07,000 --> 00:00:08,000\n犬だ。\n",
                                                    encoding="utf-8")
    _plan(tmp_path, settings, 40)
    assert monitor.current_usage(fresh=True).transcripts >= before + verdicts + 4096


MB = 1_000_000


@pytest.mark.slow
def test_a_run_at_the_edge_of_the_budget_after_a_2000_episode_plan_never_crosses_the_hard_limit(tmp_path, model_path):
    """A 2,000-episode plan writes its verdicts (~8 MB on disk: a block each), then a run
    downloads beside them with its hard limit 1.2 MB above them and the small episode. Had
    the gate not known the verdicts (its record is from before the plan and not due for
    600 s), it would admit both downloads (~0.6 MB and ~3 MB) at once: ~2 MB over the limit.
    Knowing them, it admits the small one and refuses the big one as never fitting."""
    from conftest import run_snakemake, workflow_config, write_catalogue
    from support.scenario import AllocatedSampler
    from support.server import MediaServer

    from support.fixtures import make_speech_video

    site = tmp_path / "site"
    small = make_speech_video("A small episode fits beside the verdicts.", site / "small.mp4", pad_seconds=3,
                              video_kbps=800).stat().st_size
    big = make_speech_video("A big one does not.", site / "big.mp4", pad_seconds=6, video_kbps=3000).stat().st_size
    assert big > 2 * MB
    base = {"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
            "subtitles": {"folder": str(tmp_path / "subs"), "languages": ["ja"]}}
    plan_settings = validate({**base, "disk_management": {"hard_limit_gb": 1, "pause_threshold_gb": 0.9,
                                                          "resume_threshold_gb": 0.8}})
    _earlier_run(plan_settings)
    verdicts = _plan(tmp_path, plan_settings, 2000)
    assert verdicts >= 2000 * 4096
    with MediaServer(site) as server:
        rows = [{"id": "small", "url": server.url("small.mp4"), "language": "ja"},
                {"id": "big", "url": server.url("big.mp4"), "language": "ja"}]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        hard = verdicts + small + int(1.2 * MB)
        budget = {"hard_limit_gb": hard / 1e9, "pause_threshold_gb": (hard - 0.4 * MB) / 1e9,
                  "resume_threshold_gb": (hard - 0.8 * MB) / 1e9, "audio_headroom_mb": 0.05,
                  "outputs_per_episode_mb": 0.05, "accounting_margin_mb": 0.05, "min_free_gb": 0.001,
                  "max_write_rate_mb_per_s": 1, "check_interval_seconds": 0.2, "cache_duration_seconds": 0,
                  "stall_timeout_seconds": 2, "max_concurrent_downloads": 2}
        config = workflow_config(tmp_path, catalogue, model_path, disk_management=budget, subtitles=base["subtitles"])
        roots = [tmp_path / "storage" / "videos", tmp_path / "data"]
        with AllocatedSampler(roots, interval=0.02) as sampler:
            proc = run_snakemake(tmp_path, config, "--cores", "3", "--until", "download", check=False,
                                 timeout=300)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"verdicts {verdicts} B; peak {sampler.peak} B of {hard} B; {len(sampler.samples)} samples")
    assert len(sampler.samples) > 20
    assert sampler.peak <= hard, f"peak {sampler.peak} B over the hard limit {hard} B"
    # The small download fitted beside the verdicts; the big one can never fit beside them
    # (the verdicts are kept files) and was refused at once, never admitted.
    with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:
        stages = dict(db.execute("SELECT id, stage FROM jobs WHERE id IN ('small', 'big')"))
    assert stages["small"] == "downloaded" and stages["big"] == "failed", output
    log = (tmp_path / "data" / "logs" / "download" / "big.log").read_text()
    assert "can never fit" in log and "the pipeline keeps" in log and "Declared size of big" in log, log[-2000:]
    assert "Disk usage:" not in log  # the line of an admission: big was never admitted
    assert "peak_bytes=0 " in log  # its watchdog saw not a byte written
