"""The real workflow end to end: Snakemake, yt-dlp over loopback, PyAV, faster-whisper tiny.en."""

import json
import re
import sqlite3
import subprocess
import sys
import time
import zipfile

import pytest
from conftest import leftover_temp_files, recall, run_snakemake, scribeflow, workflow_config, write_catalogue
from support.fixtures import SENTENCES
from support.server import MediaServer


@pytest.mark.slow
def test_catalogue_to_transcripts(tmp_path, media_server, model_path):
    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en"} for n in range(1, 7)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path, transcribe={"formats": ["srt", "vtt", "txt"]},
                             disk_management={"check_interval_seconds": 1})
    run_snakemake(tmp_path, config, "--cores", "3")

    for n, row in enumerate(rows):
        path = tmp_path / "data" / "transcripts" / f"{row['id']}.json"
        t = json.loads(path.read_text())
        assert set(t) >= {"id", "language", "duration", "model", "options", "text", "segments"}
        assert t["id"] == row["id"] and t["language"] == "en" and t["model"] == model_path
        # The settings CTranslate2 ran: int8 on a CPU is int8_float32.
        assert t["options"]["beam_size"] == 5 and (t["options"]["device"], t["options"]["compute_type"]) == \
            ("cpu", "int8_float32")
        assert recall(SENTENCES[n], t["text"]) >= 0.7, (SENTENCES[n], t["text"])
        assert t["segments"] and all(s["end"] > s["start"] for s in t["segments"])
        assert 1.0 < t["duration"] < 10
        assert " --> " in path.with_suffix(".srt").read_text()
        assert path.with_suffix(".vtt").read_text().startswith("WEBVTT")
        assert path.with_suffix(".txt").read_text().strip()

    # Videos and audio are temporary: nothing is left, not even a partial download.
    assert leftover_temp_files(tmp_path) == []
    hidden_tmp = list((tmp_path / "data" / "transcripts").glob(".*"))
    assert hidden_tmp == []

    # The ledger agrees with the files.
    db = sqlite3.connect(tmp_path / "data" / "jobs.db")
    rows_db = db.execute("SELECT stage, video_deleted, audio_deleted, attempts, video_size_bytes FROM jobs").fetchall()
    assert len(rows_db) == 6
    assert all(r[:4] == ("analyzed", 1, 1, 1) and r[4] > 10_000 for r in rows_db)
    # The memory of the process that transcribed each episode, for sizing (no GPU here).
    memory = db.execute("SELECT worker_rss_bytes, worker_gpu_bytes FROM jobs").fetchall()
    assert all(rss > 50 * 2**20 and gpu is None for rss, gpu in memory)

    # Every rule has its log and benchmark.
    for rule in ("download", "extract_audio", "transcribe"):
        assert len(list((tmp_path / "data" / "logs" / rule).glob("*.log"))) == 6
        assert len(list((tmp_path / "data" / "benchmarks" / rule).glob("*.tsv"))) == 6
    assert "Freed" in (tmp_path / "data" / "logs" / "transcribe" / "ep01.log").read_text()
    # The speech was found on the extraction's side: no VAD ran in the transcription, and
    # every job logged its CPU as it ended.
    for rule in ("download", "extract_audio", "transcribe", "analyse_episode"):
        for log in (tmp_path / "data" / "logs" / rule).glob("*.log"):
            assert re.search(r"Job CPU: [0-9.]+ s", log.read_text()), log
    for n in range(1, 7):
        assert "Found the speech (Silero VAD)" in (tmp_path / "data" / "logs" / "extract_audio" / f"ep{n:02d}.log"
                                                   ).read_text()
        assert "The VAD ran" not in (tmp_path / "data" / "logs" / "transcribe" / f"ep{n:02d}.log").read_text()
    worker_log = next((tmp_path / "data" / "logs" / "transcribe_worker").glob("*.log"))
    deadline = time.monotonic() + 30  # the worker writes its figures as it exits, asked to at the run's end
    while "Worker stats" not in worker_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    stats = json.loads(re.findall(r"Worker stats: (.*)", worker_log.read_text())[-1])
    assert stats["requests"] == 6 and (stats["vad_saved"], stats["vad_ran"]) == (12, 0)  # decoding, coverage
    assert 0 < stats["busy_seconds"] <= stats["wall_seconds"]

    # Nothing left to do afterwards, and the dry run does not re-plan downloads.
    dry = run_snakemake(tmp_path, config, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # The operator's view of the finished run, from the same config.
    cli = ["--configfile", str(tmp_path / "config.yaml")]
    snap = json.loads(scribeflow(tmp_path, "status", "--json", *cli))
    assert snap["transcription_memory"]["peak_rss_bytes"] > 50 * 2**20
    assert snap["stages"]["analyzed"] == 6 and snap["catalogue_episodes"] == 6  # transcribed, then corpus
    assert snap["eta"]["remaining_episodes"] == 0 and snap["eta"]["seconds"] == 0
    rates = snap["rates"]
    assert rates["downloads_per_hour"]["last_hour"] == 6 and rates["transcriptions_per_hour"]["last_hour"] == 6
    video_and_audio_mb = sum(r[4] for r in rows_db) / 6 / 1e6  # at least the video, plus the audio
    assert rates["avg_mb_freed_per_transcription"] > video_and_audio_mb
    assert rates["per_job"]["transcription_speed"] > 0.5 and rates["per_job"]["download_mb_per_s"] > 0
    assert snap["disk"]["videos"] == 0 and snap["disk"]["audio"] == 0 and snap["disk"]["transcripts"] > 0
    text = scribeflow(tmp_path, "status", *cli)
    assert "Episodes: 6 of 6 transcribed (100.0%)" in text and "ETA: 0 episodes left, done" in text

    # plan now uses the speeds this run measured.
    plan = json.loads(scribeflow(tmp_path, "plan", "--json", "--gpus", "1", "2", *cli))
    assert plan["inputs"]["sources"]["transcription_speed"] == "measured on 6 episode(s)"
    one, two = plan["scenarios"]
    assert one["capacity_per_hour"]["transcribe"] * 2 == pytest.approx(two["capacity_per_hour"]["transcribe"], abs=0.02)

    # The plots rule ran, and the report carries them.
    for png in ("disk_usage.png", "throughput.png"):
        assert (tmp_path / "data" / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_snakemake(tmp_path, config, "--report", str(tmp_path / "report.zip"), "--cores", "1")
    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert any(n.endswith("disk_usage.png") for n in names) and any(n.endswith("throughput.png") for n in names)


@pytest.mark.slow
def test_dry_run_of_a_large_catalogue_touches_nothing(tmp_path, model_path):
    # Port 9 on loopback: nothing listens there; a request would fail loudly.
    rows = [{"id": f"show-s01e{i:04d}", "url": f"http://127.0.0.1:9/{i}.mp4", "expected_size_mb": 350}
            for i in range(1000)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    # A model this machine has: a name it would have to download is refused (test_failure_kinds.py).
    config = workflow_config(tmp_path, catalogue, model_path)
    # A nested --config value arrives as a string ('400'); the workflow reads it as the number it is.
    proc = run_snakemake(tmp_path, config, "-n", "--cores", "8", "--config",
                         "disk_management={'hard_limit_gb': 400, 'max_concurrent_downloads': 3}", timeout=300)
    out = proc.stdout + proc.stderr
    for rule in ("download", "extract_audio", "transcribe", "analyse_episode"):
        assert re.search(rf"^{rule}\s+1000$", out, re.M), out[-3000:]
    assert re.search(r"^total\s+4003$", out, re.M)  # 4 jobs per episode + corpus + plots + all
    assert not (tmp_path / "data").exists() and not (tmp_path / "storage").exists()


def refusal(proc) -> str:
    """A refused run's one message: exit 1, on stderr, with no Python frames around it."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr and "WorkflowError" not in proc.stderr
    return proc.stderr


@pytest.mark.slow
def test_bad_catalogue_and_config_are_refused_before_anything_runs(tmp_path):
    catalogue = write_catalogue(tmp_path / "episodes.csv", [
        {"id": "ok", "url": "https://e.org/1"},
        {"id": "../../x", "url": "file:///etc/passwd"},
        {"id": "ok", "url": "https://e.org/2"},
    ])
    config = workflow_config(tmp_path, catalogue, "large-v3")
    # The catalogue's lines as an editor numbers them: the header is line 1.
    err = refusal(run_snakemake(tmp_path, config, "--cores", "1", check=False))
    assert "line 3, column id" in err and "line 3, column url" in err
    assert "line 4, column id: duplicate id 'ok' (first on line 2)" in err
    assert not (tmp_path / "data").exists()
    # The same message as `scribeflow plan` gives.
    plan = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "plan", "--configfile",
                           str(tmp_path / "config.yaml")], cwd=tmp_path, capture_output=True, text=True)
    assert plan.returncode == 2
    assert plan.stderr.removeprefix("scribeflow plan: ") == err[err.index("catalogue "):]

    config["disk_management"] = {"resume_threshold_gb": 290}
    err = refusal(run_snakemake(tmp_path, config, "-n", check=False))
    assert "resume_threshold_gb" in err

    config["disk_management"] = {}
    config["transcribe"]["devise"] = "cpu"
    for console in ([], ["--logger", "scribeflow"]):  # Snakemake's console and the compact one
        err = refusal(run_snakemake(tmp_path, config, "-n", *console, check=False))
        assert "transcribe.devise: unknown key; did you mean device?" in err


@pytest.mark.slow
def test_a_run_with_a_dead_link_ends_with_the_corpus_the_plots_and_a_closing_line(tmp_path, speech_dir, model_path):
    # Two good episodes, one whose audio track (its speech, ~4 s) is much shorter than its
    # 20-s video (not truncation: transcribed), and a dead link (404, given up at once).
    served = tmp_path / "served"
    served.mkdir()
    for n in (1, 2):
        (served / f"ep0{n}.mp4").write_bytes((speech_dir / f"ep0{n}.mp4").read_bytes())
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=d=20:s=64x48:r=10",
                    "-i", str(speech_dir / "ep03.mp4"), "-map", "0:v", "-map", "1:a", "-c:v", "libx264",
                    "-preset", "ultrafast", "-c:a", "copy", "-movflags", "+faststart", str(served / "short.mp4")],
                   check=True)
    with MediaServer(served) as server:
        rows = [{"id": name, "url": server.url(f"{name}.mp4"), "language": "en"}
                for name in ("ep01", "ep02", "short", "gone")]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path)
        proc = run_snakemake(tmp_path, config, "--cores", "2", check=False)
    assert proc.returncode == 1  # a job failed: Snakemake says so, and so does the exit code
    data = tmp_path / "data"
    # Everything analysed is in the corpus and the plots, though Snakemake never ran their rules.
    episodes = (data / "analysis" / "corpus" / "episodes.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in episodes[1:]) == ["ep01", "ep02", "short"]
    for png in (data / "analysis" / "corpus" / "coverage.png", data / "analysis" / "corpus" / "shows.png",
                data / "reports" / "disk_usage.png", data / "reports" / "throughput.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "Snakemake skipped the corpus and plots steps; ran here over the 3 episode(s) analysed so far" \
        in proc.stderr
    # The short track is transcribed as it is, all of its speech.
    short = json.loads((data / "transcripts" / "short.json").read_text())
    assert short["duration"] < 6 and recall(SENTENCES[2], short["text"]) >= 0.7, short["text"]
    # The last line says what failed, what the next run tries again, and where to look.
    assert proc.stderr.rstrip("\n").splitlines()[-1] == (
        "scribeflow: 3 of 4 episode(s) analysed; 1 failed: 0 to be tried again by the next run, 1 given up "
        "until `scribeflow retry`. `scribeflow failed` lists them and why.")
    failed = scribeflow(tmp_path, "failed", "--configfile", str(tmp_path / "config.yaml"))
    assert "gone" in failed and "HTTP 404" in failed
    # status does not call the catalogue done while an episode is given up.
    status = scribeflow(tmp_path, "status", "--configfile", str(tmp_path / "config.yaml"))
    eta = next(line for line in status.splitlines() if line.startswith("ETA:"))
    assert eta == "ETA: 0 episodes left; 1 given up, not counted (`scribeflow retry` tries them again)"
