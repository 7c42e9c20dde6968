"""benchmarks/episode_throughput.py runs end to end at a size CI affords: one 20-s episode,
tiny.en, the limit and the real workflow (no GPU here: the GPU columns stay empty)."""

import subprocess
import sys

import pytest
from support import REPO  # noqa: E402


@pytest.mark.slow
def test_the_episode_benchmark_measures_the_workflow_against_the_limit(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "episode_throughput.py"), "--models", "tiny.en",
                           "--episodes", "1", "--minutes", "0.34", "--device", "cpu", "--media", str(tmp_path / "media"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "transcripts identical to the limit's: 1/1" in out, out
    rows = [line.split() for line in out.splitlines() if line.startswith("tiny.en ") and ":" not in line]
    assert [r[1] for r in rows] == ["limit,", "pipeline,"], out
    assert "pipeline / limit" in out and "catalogue days" in out
    # The episode is made once: a second run finds it (same name, same size).
    made = list((tmp_path / "media").glob("en-*.m4a"))
    assert len(made) == 1 and 15 < made[0].stat().st_size / 1000 < 400
