"""The real workflow end to end: Snakemake, yt-dlp over loopback, PyAV, faster-whisper tiny.en."""

import json
import re
import sqlite3

import pytest

from conftest import leftover_temp_files, recall, run_snakemake, workflow_config, write_catalogue
from scribeflow.fixtures import SENTENCES


@pytest.mark.slow
def test_catalogue_to_transcripts(tmp_path, media_server, model_path):
    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en"} for n in range(1, 7)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path, transcribe={"formats": ["srt", "vtt", "txt"]})
    run_snakemake(tmp_path, config, "--cores", "3")

    for n, row in enumerate(rows):
        path = tmp_path / "data" / "transcripts" / f"{row['id']}.json"
        t = json.loads(path.read_text())
        assert set(t) >= {"id", "language", "duration", "model", "options", "text", "segments"}
        assert t["id"] == row["id"] and t["language"] == "en" and t["model"] == model_path
        assert t["options"]["beam_size"] == 5 and t["options"]["compute_type"] == "int8"
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

    # Every rule has its log and benchmark.
    for rule in ("download", "extract_audio", "transcribe"):
        assert len(list((tmp_path / "data" / "logs" / rule).glob("*.log"))) == 6
        assert len(list((tmp_path / "data" / "benchmarks" / rule).glob("*.tsv"))) == 6
    assert "Freed" in (tmp_path / "data" / "logs" / "transcribe" / "ep01.log").read_text()

    # Nothing left to do afterwards, and the dry run does not re-plan downloads.
    dry = run_snakemake(tmp_path, config, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.slow
def test_dry_run_of_a_large_catalogue_touches_nothing(tmp_path):
    # Port 9 on loopback: nothing listens there; a request would fail loudly.
    rows = [{"id": f"show-s01e{i:04d}", "url": f"http://127.0.0.1:9/{i}.mp4", "expected_size_mb": 350}
            for i in range(1000)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, "large-v3")
    proc = run_snakemake(tmp_path, config, "-n", "--cores", "8", timeout=300)
    out = proc.stdout + proc.stderr
    for rule in ("download", "extract_audio", "transcribe", "tokenize", "analyse_episode"):
        assert re.search(rf"^{rule}\s+1000$", out, re.M), out[-3000:]
    assert re.search(r"^total\s+5002$", out, re.M)  # 5 jobs per episode + corpus + all
    assert not (tmp_path / "data").exists() and not (tmp_path / "storage").exists()


@pytest.mark.slow
def test_bad_catalogue_and_config_are_refused_before_anything_runs(tmp_path):
    catalogue = write_catalogue(tmp_path / "episodes.csv", [
        {"id": "ok", "url": "https://e.org/1"},
        {"id": "../../x", "url": "file:///etc/passwd"},
        {"id": "ok", "url": "https://e.org/2"},
    ])
    config = workflow_config(tmp_path, catalogue, "large-v3")
    proc = run_snakemake(tmp_path, config, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "row 2, column id" in out and "row 2, column url" in out and "row 3, column id: duplicate" in out
    assert not (tmp_path / "data").exists()

    config["disk_management"] = {"resume_threshold_gb": 290}
    proc = run_snakemake(tmp_path, config, "--cores", "1", check=False)
    assert proc.returncode != 0 and "resume_threshold_gb" in proc.stdout + proc.stderr

    config["disk_management"] = {"hard_limit_gbb": 1}
    proc = run_snakemake(tmp_path, config, "--cores", "1", check=False)
    assert proc.returncode != 0 and "hard_limit_gbb" in proc.stdout + proc.stderr
