"""Streaming sources through the real workflow (Snakemake, yt-dlp, PyAV, tiny.en) under a
disk budget of a few MB, sampled every 50 ms; and a fragmented download killed halfway."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, leftover_temp_files, recall, workflow_config, write_catalogue
from support.fixtures import SENTENCES
from support.scenario import Sampler
from support.server import MediaServer, make_streams

from scribeflow.budget.monitor import DiskMonitor
from scribeflow.config.settings import MB
from scribeflow.state.logs import episode_logs

HARD_MB, PAUSE_MB, RESUME_MB = 1.5, 1.0, 0.8


def budget(tmp_path, catalogue, model_path):
    return workflow_config(tmp_path, catalogue, model_path, disk_management={
        "hard_limit_gb": HARD_MB / 1000, "pause_threshold_gb": PAUSE_MB / 1000,
        "resume_threshold_gb": RESUME_MB / 1000, "audio_headroom_mb": 0.3, "min_free_gb": 0.01,
        "check_interval_seconds": 0.1, "cache_duration_seconds": 0, "stall_timeout_seconds": 120,
        "max_concurrent_downloads": 3, "max_concurrent_transcriptions": 1})


def snakemake_cmd(tmp_path, config):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(tmp_path / "config.yaml"), "--cores", "4", "--resources", "disk_gb=3"]


@pytest.mark.slow
def test_hls_dash_and_a_player_page_become_transcripts_under_the_hard_limit(tmp_path, streams_dir, model_path):
    folder, made = streams_dir
    with MediaServer(folder) as server:
        rows = [{"id": kind, "url": server.url(path)} for kind, (path, _) in made.items()]
        config = budget(tmp_path, write_catalogue(tmp_path / "episodes.csv", rows), model_path)
        cmd = snakemake_cmd(tmp_path, config)
        monitor = DiskMonitor(tmp_path / "data", tmp_path / "storage", int(HARD_MB * MB), int(PAUSE_MB * MB),
                              int(RESUME_MB * MB), cache_duration=0)
        sampler = Sampler(monitor, tmp_path / "data" / "gate" / "state.json")
        sampler.start()
        try:
            proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        finally:
            sampler.stopped.set()
            sampler.join()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    peak = max(s.total for s in sampler.samples)
    print(f"{len(sampler.samples)} samples, peak {peak} B of {int(HARD_MB * MB)} B")
    assert len(sampler.samples) > 20 and peak <= HARD_MB * MB
    for kind, (_, episode) in made.items():
        t = json.loads((tmp_path / "data" / "transcripts" / f"{kind}.json").read_text())
        spoken = SENTENCES[int(episode[2:]) - 1]
        assert recall(spoken, t["text"]) >= 0.6, (kind, spoken, t["text"])
        log = dict(episode_logs(tmp_path / "data", kind))[f"logs/download/{kind}.log"]  # in place or rolled up
        # Sized from the stream itself, audio only where offered, and said so in the log.
        assert "Declared size of" in log and "default_video_size_mb" not in log, log
        assert ("audio only" in log) is (kind != "hls_muxed"), log
        # The transcript says what was downloaded, and that it fitted what was declared.
        assert t["source"] == "asr"
        source = t["download"]
        assert source["audio_only"] is (kind != "hls_muxed") and source["format_id"], source
        assert 0 < source["bytes"] <= source["declared_bytes"] < 4 * source["bytes"] + 100_000, source
    assert leftover_temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_fragmented_download_killed_halfway_leaves_no_fragments_after_the_next_run(tmp_path, speech_dir,
                                                                                     model_path):
    # Segments of ~150 KB, bigger than yt-dlp's 64 KiB read, served at 40 KB/s: a
    # fragment partial stays on disk for seconds.
    folder, episode = tmp_path / "served", "ep02"
    path = make_streams(speech_dir / f"{episode}.mp4", folder, segment_seconds=2, kinds=["hls_muxed"],
                        video_kbps=600)["hls_muxed"]
    videos = tmp_path / "storage" / "videos"
    with MediaServer(folder, rate_bytes_per_s=40_000) as server:
        config = budget(tmp_path, write_catalogue(tmp_path / "episodes.csv", [{"id": "ep", "url": server.url(path)}]),
                        model_path)
        cmd = snakemake_cmd(tmp_path, config)
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline and not any("Frag" in n for n in seen):
            seen = os.listdir(videos) if videos.exists() else []
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a power cut mid-fragment
        proc.wait()
        left = sorted(os.listdir(videos))
        assert any(".part-Frag" in n for n in left) and all(n.startswith("ep@dl.") for n in left), left
        subprocess.run([*cmd, "--unlock"], cwd=tmp_path, check=True, capture_output=True)
        rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    said = rerun.stdout + rerun.stderr
    assert re.search(r"removed [1-9]\d* orphaned file\(s\) of an interrupted run", said), said[-3000:]
    t = json.loads((tmp_path / "data" / "transcripts" / "ep.json").read_text())
    assert recall(SENTENCES[int(episode[2:]) - 1], t["text"]) >= 0.6
    assert leftover_temp_files(tmp_path) == []
