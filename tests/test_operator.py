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


def _ledger_with_samples(path, usage_bytes):
    import time

    from scribeflow.ledger import Ledger

    ledger = Ledger(path)
    t0 = time.time() - 3600
    with ledger.transaction() as c:
        for i, used in enumerate(usage_bytes):
            c.execute("INSERT INTO disk_samples VALUES (?, ?, 0, 0, 0, 0, 0, 0, 'h')", (t0 + 30 * i, used))
        for i in range(20):
            at = t0 + 150 * i
            c.execute("INSERT INTO jobs (id, stage, downloaded_at, extracted_at, transcribed_at) "
                      "VALUES (?, 'transcribed', ?, ?, ?)", (f"e{i}", at, at + 30, at + 90))
    return ledger


def test_plots_follow_the_data_and_show_the_limits_when_in_range(tmp_path):
    import matplotlib.pyplot as plt

    from scribeflow import plots

    limits = cfg.validate({})["disk_management"]  # 300 / 280 / 250 GB
    pilot = _ledger_with_samples(tmp_path / "pilot.db", [int(2e9 + i * 1e7) for i in range(100)])
    fig = plots.disk_usage_figure(pilot, limits)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "disk usage (GB)" and 2.9 < ax.get_ylim()[1] < 4  # not a 0-300 GB axis
    assert "above this range: hard limit 300 GB" in ax.get_title()
    assert not [line for line in ax.get_lines() if "limit" in str(line.get_label())]
    plt.close(fig)

    full = _ledger_with_samples(tmp_path / "full.db", [int(2.6e11 + (i % 20) * 1e9) for i in range(100)])
    fig = plots.disk_usage_figure(full, limits)
    labels = [str(line.get_label()) for line in fig.axes[0].get_lines()]
    assert any(label.startswith("hard limit (300 GB)") for label in labels)
    assert any(label.startswith("resume downloads (250 GB)") for label in labels)
    plt.close(fig)

    fig = plots.throughput_figure(pilot)
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes] == [
        "downloads", "audio extractions", "transcriptions"]  # one panel each, nothing overlaps
    plt.close(fig)


def test_japanese_text_has_glyphs_in_plots():
    import warnings

    import matplotlib.pyplot as plt

    from scribeflow import plots  # noqa: F401  (sets the fonts)

    fig, ax = plt.subplots()
    ax.set_title("アニメ 日本語のシリーズ")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    assert not [w for w in caught if "missing from font" in str(w.message)]
