"""status, plan and plots on a ledger whose numbers are known by construction."""

import pytest
from conftest import scribeflow, write_catalogue
from support.models import packaged_model

from scribeflow.config import catalogue as sf_catalogue
from scribeflow.config import settings as cfg
from scribeflow.ops.plan import Inputs, estimate, plan
from scribeflow.ops.plan import render as render_plan
from scribeflow.ops.plots import draw_all
from scribeflow.ops.status import render, snapshot
from scribeflow.state.ledger import Ledger

TINY = str(packaged_model("tiny.en"))  # a model this machine loads (plan refuses one it cannot)
NOW = 1_800_000_000.0
MB = 1e6
AUDIO_S = 600  # each episode: 10 min of audio, 100 MB of video


def make_run(tmp_path, catalogue_rows=10):
    rows = [{"id": f"ep{i}", "url": f"https://example.org/{i}.mp4"} for i in range(catalogue_rows)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = cfg.load(None, {"catalogue": str(catalogue), "data_dir": str(tmp_path / "data"),
                             "storage_dir": str(tmp_path / "storage"), "transcribe.model": TINY})
    with Ledger(tmp_path / "data" / "jobs.db") as ledger, ledger.transaction() as c:
        for i in range(4):  # transcribed, one every 30 min: downloads 100 s, extraction 10 s, transcription 60 s
            t = NOW - 7200 + 1800 * i
            c.execute("""INSERT INTO jobs (id, stage, video_size_bytes, audio_size_bytes, transcript_size_bytes,
                         video_deleted, audio_deleted, downloading_at, downloaded_at, extracting_at,
                         extracted_at, transcribing_at, transcribed_at, attempts)
                         VALUES (?, 'transcribed', ?, ?, 50000, 1, 1, ?, ?, ?, ?, ?, ?, 1)""",
                      (f"ep{i}", 100 * MB, AUDIO_S * 32000, t, t + 100, t + 100, t + 110, t + 110, t + 170))
        c.execute("INSERT INTO jobs (id, stage, downloading_at, attempts, last_error) "
                  "VALUES ('ep4', 'failed', ?, 3, 'DownloadFailed: HTTP Error 404: Not Found')", (NOW - 600,))
        c.execute("INSERT INTO jobs (id, stage, downloading_at, downloaded_at) VALUES ('ep5', 'downloaded', ?, ?)",
                  (NOW - 200, NOW - 100))
        # Disk grows 1 MB a minute for two hours.
        c.executemany("INSERT INTO disk_samples (at, total_bytes, paused) VALUES (?, ?, 0)",
                      ((NOW - 7200 + 60 * k, 100 * MB + k * MB) for k in range(121)))
        c.execute("INSERT INTO pause_events (started_at, ended_at, usage_bytes) VALUES (?, ?, 1)",
                  (NOW - 3000, NOW - 2400))
        c.execute("INSERT INTO pause_events (started_at, usage_bytes) VALUES (?, 1)", (NOW - 300,))
    # ep4's 404 is permanent: the workflow gave it up (its marker), so the ETA leaves it out.
    (tmp_path / "data" / "failed").mkdir()
    (tmp_path / "data" / "failed" / "ep4.json").write_text('{"id": "ep4"}')
    return config


def test_status_figures(tmp_path):
    s = snapshot(make_run(tmp_path), now=NOW)
    assert s["catalogue_episodes"] == 10 and s["not_started"] == 4
    assert s["stages"]["transcribed"] == 4 and s["stages"]["failed"] == 1 and s["stages"]["downloaded"] == 1
    assert s["pauses"] == {"count": 2, "total_seconds": 900.0, "open": True}
    r = s["rates"]
    # ep2, ep3 transcribed in the last hour; ep2, ep3 and ep5 downloaded in it.
    assert r["transcriptions_per_hour"]["last_hour"] == 2 and r["downloads_per_hour"]["last_hour"] == 3
    # Overall: 4 transcriptions and 5 downloads between the first download's start and the last
    # episode finished (ep5's download, 7100 s later): one span for every stage.
    assert r["transcriptions_per_hour"]["overall"] == pytest.approx(4 / (7100 / 3600), abs=0.01)
    assert r["downloads_per_hour"]["overall"] == pytest.approx(5 / (7100 / 3600), abs=0.01)
    assert r["transcriptions_per_hour"]["this_run"] is None and r["this_run"] is None  # no run recorded
    assert r["avg_mb_freed_per_transcription"] == pytest.approx(100 + AUDIO_S * 0.032)
    assert r["per_job"]["download_mb_per_s"] == pytest.approx(1.0)
    assert r["per_job"]["transcription_speed"] == pytest.approx(10.0)
    assert r["per_job"]["extraction_speed"] == pytest.approx(60.0)
    assert s["disk_growth"]["last_hour_mb_per_hour"] == pytest.approx(60.0)
    assert s["disk_growth"]["overall_mb_per_hour"] == pytest.approx(60.0)
    # 10 - 4 done - 1 failed = 5 left at last hour's 2 per hour.
    assert s["eta"] == {**s["eta"], "remaining_episodes": 5, "seconds": 9000, "basis": "last hour"}
    text = render(s)
    assert "Episodes: 4 of 10 transcribed (40.0%)" in text
    assert "Download pauses: 2 (15 min 0 s in all), paused now" in text
    assert "Failed episodes: 1 (1 given up, 0 to be tried again by the next run)" in text
    assert "1 x DownloadFailed: HTTP Error 404: Not Found" in text and "ep4" in text
    assert "done in 2 h 30 min" in text


def test_status_command_on_a_fresh_data_dir(tmp_path):
    catalogue = write_catalogue(tmp_path / "e.csv", [{"id": "a", "url": "https://e.org/a"}])
    out = scribeflow(tmp_path, "status", "--config", f"catalogue={catalogue}", f"data_dir={tmp_path}/d",
                     f"storage_dir={tmp_path}/s")
    assert "Episodes: 0 of 1 transcribed" in out and "no rate measured yet" in out


def seed_inputs(**kw):
    values = dict(episodes=171_881, remaining=171_881, video_mb=500, duration_s=24 * 60, transcript_kb=50,
                  download_mb_per_s=10, transcription_speed=2, extraction_speed=300, download_slots=5,
                  extraction_slots=2, transcription_slots=8, sources={})
    return Inputs(**{**values, **kw})


def test_plan_reproduces_the_seed_figures_and_corrects_its_disk_estimate():
    config = cfg.load(None, {})
    two = estimate(config, seed_inputs(), gpus=2)
    # The seed: 2x real time on 24-minute episodes is 5 per GPU-hour; 10/h with 2 GPUs: 716 days.
    assert two["capacity_per_hour"]["transcribe"] == 10 and two["bottleneck"] == "transcribe"
    assert two["eta_days"] == pytest.approx(171_881 / 10 / 24, abs=0.1)
    # ... but the disk does not settle at 220 GB with 40-50 videos: downloads run ahead to the
    # pause threshold, so usage saws between 250 and 280 GB with ~500 videos waiting.
    assert two["steady_state_disk_gb"] == 265
    assert 480 < two["episodes_in_flight"] < 530
    assert two["permanent_outputs_at_end_gb"] == pytest.approx(8.6, abs=0.01)
    fast = estimate(config, seed_inputs(transcription_speed=100), gpus=8)
    assert fast["bottleneck"] == "download" and fast["episodes_per_hour"] == 360
    assert fast["steady_state_disk_gb"] < 10 and fast["episodes_in_flight"] == 10


def test_plan_reads_the_catalogue_and_the_ledger(tmp_path):
    config = make_run(tmp_path)
    catalogue = sf_catalogue.load(config.catalogue)
    p = plan(config, catalogue, [1, 4], {})
    i = p["inputs"]
    assert i["remaining"] == 5 and i["transcription_speed"] == pytest.approx(10.0)
    assert i["sources"]["transcription_speed"] == "measured on 4 episode(s)"
    assert i["video_mb"] == pytest.approx(100) and i["duration_s"] == pytest.approx(AUDIO_S)
    one, four = p["scenarios"]
    # max_concurrent_transcriptions (2) caps the GPUs a run uses: the plan says so.
    assert one["capacity_per_hour"]["transcribe"] == 60 and four["capacity_per_hour"]["transcribe"] == 120
    assert "only 2 of 4 GPUs" in " ".join(four["warnings"])
    assert one["eta_hours"] == pytest.approx(5 / min(one["capacity_per_hour"].values()), abs=0.05)
    assert "Transcription: " + TINY + " (tiny) on cpu" in render_plan(p)  # the configured model, on this CPU
    # Options win over measurements.
    given = plan(config, catalogue, [1], {"transcription_speed": 1.0})["inputs"]
    assert given["transcription_speed"] == 1.0 and given["sources"]["transcription_speed"] == "given"


def test_plan_command_refuses_a_bad_catalogue_by_row(tmp_path):
    bad = write_catalogue(tmp_path / "e.csv", [{"id": "ok", "url": "https://e.org/a"},
                                               {"id": "../x", "url": "https://e.org/b"}])
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "plan", "--config", f"catalogue={bad}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "line 3, column id" in proc.stderr  # the file's line, header included


def test_plots_are_png_files_with_content(tmp_path):
    config = make_run(tmp_path)
    disk, rate = tmp_path / "r" / "disk.png", tmp_path / "r" / "rate.png"
    draw_all(config, disk, rate)
    for png in (disk, rate):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # An empty ledger (a run that has not started) still draws the limits.
    empty = cfg.updated(config, {"data_dir": str(tmp_path / "empty")})
    draw_all(empty, tmp_path / "e1.png", tmp_path / "e2.png")
    assert (tmp_path / "e1.png").stat().st_size > 10_000


def test_a_short_run_that_ended_is_not_alive_and_gives_no_hourly_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no Snakemake lock here
    config = make_run(tmp_path)
    now = NOW + 30  # the ledger changed 40 s ago: "recent", were it not for the recorded end
    with Ledger(tmp_path / "data" / "jobs.db") as ledger, ledger.transaction() as c:
        c.execute("INSERT INTO runs (started_at, ended_at) VALUES (?, ?)", (now - 51, now - 40))
        for k in range(3):  # an 11-s run that downloaded three episodes
            c.execute("INSERT INTO jobs (id, stage, downloading_at, downloaded_at, updated_at) "
                      "VALUES (?, 'downloaded', ?, ?, ?)", (f"short{k}", now - 50, now - 45 + k, now - 41))
    s = snapshot(config, now=now)
    assert not s["run"]["alive"] and "the last run ended" in s["run"]["detail"]
    r = s["rates"]
    assert r["this_run"]["seconds"] == 11 and r["downloads_per_hour"]["this_run"] is None  # 11 s: no hourly rate
    assert r["downloads_per_hour"]["last_hour"] == 6  # a count: ep5 and ep2/ep3's downloads, and these three
    text = render(s)
    assert "too short for an hourly rate" in text and "last hour: the count in the last 60 min" in text
    # A new run started: alive again while the ledger changes.
    with Ledger(tmp_path / "data" / "jobs.db") as ledger, ledger.transaction() as c:
        c.execute("INSERT INTO runs (started_at) VALUES (?)", (now - 5,))
        c.execute("UPDATE jobs SET updated_at = ? WHERE id = 'short0'", (now - 1,))
    assert snapshot(config, now=now)["run"]["alive"]


def test_status_names_the_config_and_data_folder_it_reads(tmp_path):
    import json
    import subprocess
    import sys

    make_run(tmp_path)
    configfile = tmp_path / "run.yaml"
    configfile.write_text(f"catalogue: {tmp_path / 'episodes.csv'}\ndata_dir: {tmp_path / 'data'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def status(*args):
        proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "status", *args], cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc

    # Without the run's --configfile: it says what it read, and that no data folder is there.
    lines = status().stdout.splitlines()
    assert lines[0] == f"Reading no config file (none given, no config/config.yaml here: the defaults); " \
                       f"data folder {elsewhere / 'data'}"
    assert lines[1].startswith(f"no data folder at {elsewhere / 'data'}: is this the run's --configfile?")
    # With it, from another folder: the file and the run's data folder, then the run's figures.
    lines = status("--configfile", str(configfile)).stdout.splitlines()
    assert lines[0] == f"Reading {configfile}; data folder {tmp_path / 'data'}"
    assert lines[1].startswith("Episodes: 4 of 10 transcribed")
    js = status("--json", "--configfile", str(configfile))
    assert json.loads(js.stdout)["reading"] == {"config_files": [str(configfile)], "config_overrides": [],
                                                "data_dir": str(tmp_path / "data"), "data_dir_exists": True}
    assert js.stderr == ""  # the field says it
