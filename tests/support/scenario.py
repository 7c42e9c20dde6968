"""The disk integration scenario, scaled down, with a sampler that measures
the pipeline's bytes on disk while the real workflow runs.

Used by tests/budget/test_disk_budget.py (assertions) and benchmarks/disk_budget.py
(figures). Needs espeak-ng and ffmpeg for the videos and the bundled tiny.en model.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from scribeflow.budget.gate import is_paused
from scribeflow.budget.monitor import DiskMonitor
from scribeflow.config.layout import Layout
from scribeflow.config.settings import MB

from . import REPO
from .fixtures import SENTENCES, make_speech_video
from .server import MediaServer


@dataclass
class Sample:
    t: float
    total: int
    temporary: int
    videos_waiting: int  # complete videos and audio files not yet transcribed
    transcribing: int  # transcribe job processes alive
    downloads: int  # downloads admitted through the gate
    paused: bool


@dataclass
class Result:
    returncode: int
    seconds: float
    hard_limit: int
    pause_threshold: int
    resume_threshold: int
    samples: list = field(default_factory=list)
    pause_events: list = field(default_factory=list)
    workdir: Path | None = None
    output: str = ""

    @property
    def peak(self) -> int:
        return max(s.total for s in self.samples)

    def saturated(self) -> list:
        """Samples from the first pause to the last moment a download was waiting or paused."""
        if not self.pause_events:
            return []
        start = min(e["started_at"] for e in self.pause_events)
        end = max(e["ended_at"] or time.time() for e in self.pause_events)
        last_download = max((s.t for s in self.samples if s.downloads), default=end)
        return [s for s in self.samples if start <= s.t <= max(end, last_download)]

    def figures(self) -> dict:
        sat = self.saturated()
        waiting = [s for s in self.samples if s.videos_waiting]
        idle = [s for s in waiting if not s.transcribing]
        return {
            "peak_over_hard": self.peak / self.hard_limit,
            "mean_saturated_over_pause": (sum(s.total for s in sat) / len(sat) / self.pause_threshold) if sat else None,
            "transcriber_idle_share": len(idle) / len(self.samples) if self.samples else None,
            "pauses": len(self.pause_events),
            "max_concurrent_downloads": max((s.downloads for s in self.samples), default=0),
            "samples": len(self.samples),
            "seconds": self.seconds,
        }


def make_videos(folder: Path, n: int, pad_seconds: float = 5.0, video_kbps: int = 300) -> list[Path]:
    """n speech videos of several hundred KB (speech, silence, a busy test picture)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"v{i:03d}.mp4"
        if not path.exists():
            make_speech_video(SENTENCES[i % len(SENTENCES)], path, pad_seconds=pad_seconds, video_kbps=video_kbps)
        out.append(path)
    return out


class Sampler(threading.Thread):
    def __init__(self, monitor: DiskMonitor, gate_state: Path, interval: float = 0.05):
        super().__init__(daemon=True)
        self.monitor, self.gate_state, self.interval = monitor, gate_state, interval
        self.samples: list[Sample] = []
        self.root_pid: int | None = None
        self.stopped = threading.Event()

    def _transcribing(self) -> int:
        if self.root_pid is None:
            return 0
        try:
            kids = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        count = 0
        for kid in kids:
            try:
                count += any(a.endswith(".transcribe.py") for a in kid.cmdline())
            except psutil.Error:
                pass
        return count

    def run(self):
        videos_dir = self.monitor.videos_dir
        audio_dir = self.monitor.layout.audio
        while not self.stopped.is_set():
            usage = self.monitor.current_usage(fresh=True)
            try:
                state = json.loads(self.gate_state.read_text())
            except (OSError, ValueError):
                state = {}
            waiting = sum(1 for d, suffix in ((videos_dir, ".media"), (audio_dir, ".wav"))
                          for p in (d.glob(f"*{suffix}") if d.exists() else []))
            self.samples.append(Sample(
                t=time.time(), total=usage.total, temporary=usage.temporary, videos_waiting=waiting,
                transcribing=self._transcribing(),
                downloads=sum(1 for r in state.get("reservations", {}).values() if r.get("kind") == "download"),
                paused=is_paused(state),
            ))
            self.stopped.wait(self.interval)


def run(workdir: Path, media: list[Path], model: str, hard_mb: float = 4.0, pause_mb: float = 2.0,
        resume_mb: float = 1.7, headroom_mb: float = 0.4, downloads: int = 4, transcriptions: int = 1,
        cores: int = 6, timeout: float = 900) -> Result:
    """Run the real workflow on `media` under a tiny disk budget and sample it."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Each download lasts about a second (a few hundred KB at 400 kB/s), as on a real
    # network: on loopback it would take milliseconds, and downloads admitted together
    # would rarely be seen in flight together by the sampler.
    with MediaServer(media[0].parent, rate_bytes_per_s=400_000) as server:
        catalogue = workdir / "episodes.csv"
        with catalogue.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "url"])
            w.writerows([p.stem, server.url(p.name)] for p in media)
        config = {
            "catalogue": str(catalogue),
            "data_dir": str(workdir / "data"),
            "storage_dir": str(workdir / "storage"),
            "disk_management": {
                "hard_limit_gb": hard_mb / 1000, "pause_threshold_gb": pause_mb / 1000,
                "resume_threshold_gb": resume_mb / 1000, "audio_headroom_mb": headroom_mb,
                "check_interval_seconds": 0.1, "cache_duration_seconds": 0, "min_free_gb": 0.01,
                "stall_timeout_seconds": 120, "max_concurrent_downloads": downloads,
                "max_concurrent_transcriptions": transcriptions,
            },
            # The case the gate exists for: a transcriber slower than the downloads. Without
            # the model worker each job loads its own model (~2 s), which keeps tiny.en on
            # 10 s clips slower than loopback downloads, as large-v3 on 24-min episodes is.
            "transcribe": {"model": model, "device": "cpu", "compute_type": "int8", "cpu_threads": 2,
                           "worker": {"enabled": False}},
        }
        configfile = workdir / "config.yaml"
        configfile.write_text(yaml.safe_dump(config))
        monitor = DiskMonitor(workdir / "data", workdir / "storage", int(hard_mb * MB), int(pause_mb * MB),
                              int(resume_mb * MB), cache_duration=0)
        sampler = Sampler(monitor, Layout.from_config(config).gate_state)
        # disk_gb: Snakemake's integer resource cannot express a sub-GB margin; one unit
        # per download lets the gate (which counts bytes) decide.
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(configfile), "--cores", str(cores),
               "--resources", f"disk_gb={downloads}"]
        started = time.time()
        sampler.start()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        sampler.root_pid = proc.pid
        try:
            output, _ = proc.communicate(timeout=timeout)
        finally:
            sampler.stopped.set()
            sampler.join()
    seconds = time.time() - started
    events = []
    db = Layout(workdir / "data").ledger
    if db.exists():
        from scribeflow.state.ledger import Ledger

        with Ledger(db) as ledger:
            events = ledger.pause_events()
    return Result(proc.returncode, seconds, monitor.hard_limit, monitor.pause_threshold, monitor.resume_threshold,
                  sampler.samples, events, workdir, output)


class AllocatedSampler(threading.Thread):
    """The pipeline's bytes on disk as the filesystem allocates them (st_blocks x 512),
    walked every `interval` seconds by a thread that shares no code with the pipeline:
    `{storage_dir}/videos` and everything under `data_dir`, what the budget counts."""

    def __init__(self, roots: list[Path], interval: float = 0.05):
        super().__init__(daemon=True)
        self.roots, self.interval = [Path(r) for r in roots], interval
        self.samples: list[tuple[float, int]] = []
        self.largest_file: dict[str, int] = {}
        self.stopped = threading.Event()

    def _walk(self, folder: Path) -> int:
        total = 0
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return 0
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    total += self._walk(Path(e.path))
                else:
                    size = e.stat(follow_symlinks=False).st_blocks * 512
                    total += size
                    if size > self.largest_file.get(e.name, 0):
                        self.largest_file[e.name] = size
            except OSError:
                pass  # deleted between the listing and the stat
        return total

    def run(self):
        while not self.stopped.is_set():
            self.samples.append((time.time(), sum(self._walk(r) for r in dict.fromkeys(self.roots))))
            self.stopped.wait(self.interval)

    @property
    def peak(self) -> int:
        return max(total for _, total in self.samples)

    def __enter__(self) -> "AllocatedSampler":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()
