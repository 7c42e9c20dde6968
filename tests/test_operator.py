"""The operator's view: what `scribeflow` tells the person running a months-long job."""

import subprocess
import sys

from conftest import write_catalogue
from scribeflow import catalogue as sf_catalogue
from scribeflow import config as cfg
from scribeflow.plan import plan, render


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`scribeflow status | head -5`: no BrokenPipeError traceback."""
    err = tmp_path / "err.txt"
    cmd = (f"{sys.executable} -m scribeflow.cli status --config data_dir={tmp_path / 'data'} 2>{err} | true; "
           f"exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0
    assert "Traceback" not in err.read_text() and "BrokenPipe" not in err.read_text()


def test_plan_sizes_a_small_catalogue_with_the_slots_the_run_gets(tmp_path):
    rows = [{"id": f"ep{n:02d}", "url": f"https://example.org/{n}", "expected_size_mb": 260, "duration_s": 1440}
            for n in range(30)]
    path = write_catalogue(tmp_path / "episodes.csv", rows)
    config = cfg.validate({"catalogue": str(path), "data_dir": str(tmp_path / "data")})
    p = plan(config, sf_catalogue.load(path), [1, 4], {"cores": 2, "transcription_speed": 30})
    one = p["scenarios"][0]
    assert p["inputs"]["download_slots"] == 1  # --cores 2: one slot is kept for the work that frees space
    assert one["episodes_in_flight"] <= 30  # not thousands
    assert one["steady_state_disk_gb"] < 30 * 0.31  # 30 episodes, not the 265 GB of a full budget
    assert "fits below the pause threshold" in one["behaviour"]
    text = render(p)
    # 30 episodes at 30x real time on one GPU: about 24 minutes, not "0 h".
    assert " 0 h" not in text and "24 min" in text
    assert "only 2 of 4 GPUs" in text
