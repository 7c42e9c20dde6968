"""The seed's integration test, scaled down: the real workflow under a budget of a few MB."""

import json
import subprocess
import sys
import threading

import pytest
from conftest import leftover_temp_files
from support import scenario

from scribeflow.state.ledger import TRANSCRIBED


class StatusProbe(threading.Thread):
    """An operator running `scribeflow status --json` every few seconds during the run."""

    def __init__(self, configfile, interval=3.0):
        super().__init__(daemon=True)
        self.configfile, self.interval = configfile, interval
        self.seen, self.errors = [], []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            if not self.configfile.exists():
                continue
            proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "status", "--json",
                                   "--configfile", str(self.configfile)], capture_output=True, text=True)
            if proc.returncode:
                self.errors.append(proc.stderr[-2000:])
            else:
                self.seen.append(json.loads(proc.stdout))


@pytest.mark.slow
def test_the_hard_limit_holds_while_downloads_pause_and_resume(tmp_path_factory, model_path):
    media = scenario.make_videos(tmp_path_factory.mktemp("media"), 12)
    assert all(300_000 < p.stat().st_size < 900_000 for p in media)  # several hundred KB each
    work = tmp_path_factory.mktemp("run")
    probe = StatusProbe(work / "config.yaml")
    probe.start()
    try:
        result = scenario.run(work, media, model_path, hard_mb=4.0, pause_mb=2.0, resume_mb=1.7,
                              downloads=4, transcriptions=1, cores=6)
    finally:
        probe.stopped.set()
        probe.join()
    assert result.returncode == 0, result.output[-5000:]
    figures = result.figures()
    print(figures)

    assert len(result.samples) > 100  # sampled every 50 ms for the whole run
    assert result.peak <= result.hard_limit, f"peak {result.peak} B over the hard limit {result.hard_limit} B"
    assert result.peak >= result.resume_threshold  # the budget was really used
    assert figures["max_concurrent_downloads"] >= 3
    # Downloads paused at least once, and resumed.
    assert result.pause_events and all(e["ended_at"] for e in result.pause_events)
    assert any(s.paused for s in result.samples) and not result.samples[-1].paused

    for p in media:
        assert (work / "data" / "transcripts" / f"{p.stem}.json").is_file()
    assert leftover_temp_files(work) == []

    # Whichever job checks the gate first logs the change: a download or an extraction.
    logs = "".join(p.read_text() for p in (work / "data" / "logs").glob("*/*.log"))
    assert "pausing downloads" in logs and "resuming downloads" in logs and "Waiting for transcriber" in logs

    # `scribeflow status` answered all through the run, and saw it progress.
    assert probe.errors == []
    # Transcribed episodes go on to tokenized and analyzed: count them all.
    done = [sum(snap["stages"][s] for s in TRANSCRIBED) for snap in probe.seen]
    assert len(done) >= 3 and done == sorted(done) and any(0 < n < len(media) for n in done), done
    assert any(snap["pauses"]["open"] for snap in probe.seen) or any(snap["pauses"]["count"] for snap in probe.seen)
