"""The fault-injection suite on the real workflow: hostile catalogues, network and media
faults, kill -9 at random moments, and a full disk. Real Snakemake, yt-dlp, PyAV and
faster-whisper tiny.en; the faults come from the loopback server or the test itself."""

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, leftover_temp_files, run_snakemake, workflow_config, write_catalogue
from support.filesystem import fill, small_filesystem
from support.fixtures import SENTENCES, make_speech_video
from support.server import MediaServer

from scribeflow.config import settings as cfg
from scribeflow.ops import cli
from scribeflow.ops.check import check_consistency

# Every episode here is on one host (the loopback server): its circuit breaker may pause it
# while the flaky episode fails; a paused host is probed each second and a download waits
# for it 10 s at most before it is deferred.
FAST_RETRIES = {"retries": 1, "retry_backoff_seconds": 0.05, "socket_timeout": 2, "max_attempts": 2,
                "host_probe_seconds": 1, "host_max_probe_seconds": 2, "host_wait_seconds": 10}


def scribeflow(tmp: Path, *args: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([*args, "--configfile", str(tmp / "config.yaml")])
    return code, capsys.readouterr().out


def checked(config: dict) -> cfg.Settings:
    return cfg.validate(json.loads(json.dumps(config)))


def transcripts(tmp: Path) -> set[str]:
    return {p.stem for p in (tmp / "data" / "transcripts").glob("*.json")}


@pytest.mark.slow
def test_a_hostile_catalogue_is_refused_row_by_row_and_nothing_is_written(tmp_path):
    hostile = [
        {"id": "../../x", "url": "https://e.org/1"},
        {"id": "$(touch pwned)", "url": "https://e.org/2"},
        {"id": "-rf", "url": "https://e.org/3"},
        {"id": "a b", "url": "https://e.org/4"},
        {"id": "x" * 300, "url": "https://e.org/5"},
        {"id": "エピソード", "url": "https://e.org/6"},
        {"id": "ok1", "url": "file:///etc/passwd"},
        {"id": "ok2", "url": "ftp://e.org/v.mp4"},
        {"id": "ok3", "url": "javascript:alert(1)"},
        {"id": "ok4", "url": ""},
        {"id": "ok1", "url": "https://e.org/dup"},
        {"id": "good", "url": "https://e.org/v.mp4?q=$(touch${IFS}pwned2)"},  # valid: never reaches a shell
    ]
    catalogue = write_catalogue(tmp_path / "episodes.csv", hostile)
    config = workflow_config(tmp_path, catalogue, "large-v3")
    proc = run_snakemake(tmp_path, config, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "11 problem(s) in 11 row(s)" in out
    # Named by the file's lines: line 1 is the header.
    for line in range(2, 8):
        assert f"line {line}, column id" in out
    for line in range(8, 12):
        assert f"line {line}, column url" in out
    assert "line 12, column id: duplicate id 'ok1' (first on line 8)" in out
    assert "line 13" not in out
    # Nothing written: no data or storage folder, no file made by a shell, nothing outside.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".snakemake", "config.yaml", "episodes.csv"]
    assert not list(tmp_path.parent.glob("pwned*")) and not list(REPO.glob("pwned*"))

    wrong_type = tmp_path / "episodes.xlsx"
    wrong_type.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    proc = run_snakemake(tmp_path, {**config, "catalogue": str(wrong_type)}, "--cores", "1", check=False)
    assert proc.returncode != 0 and "unknown file type '.xlsx'" in proc.stdout + proc.stderr
    no_url = write_catalogue(tmp_path / "no_url.csv", [{"id": "a", "title": "A"}])
    proc = run_snakemake(tmp_path, {**config, "catalogue": str(no_url)}, "--cores", "1", check=False)
    assert proc.returncode != 0 and "missing required column(s) url" in proc.stdout + proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "storage").exists()


@pytest.fixture(scope="module")
def faulty_media(speech_dir, tmp_path_factory) -> Path:
    """Good speech videos plus the media faults: garbage, a truncated file, no audio."""
    folder = tmp_path_factory.mktemp("faulty")
    for n in (1, 2, 3):
        shutil.copy(speech_dir / f"ep0{n}.mp4", folder / f"ep0{n}.mp4")
    (folder / "junk.mp4").write_bytes(bytes(range(256)) * 300)
    data = (speech_dir / "ep04.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=d=2:s=64x48",
                    "-c:v", "libx264", str(folder / "silent.mp4")], check=True)
    return folder


@pytest.mark.slow
def test_faulty_episodes_fail_alone_and_are_given_up_until_retried(tmp_path, faulty_media, model_path, capsys):
    permanent = {
        "gone": "404", "removed": "410", "page": "no media at this address",
        "junk": "not a readable media file", "cut": "truncated", "silent": "no audio stream",
    }
    plan = {
        "GET /ep01.mp4": ["503", "503"],  # extraction phase: our retry loop with backoff
        "GET /ep02.mp4": ["ok", "cut"],  # cut mid-body: yt-dlp resumes with Range
        "/removed.mp4": ["410"] * 99,
        "/page.mp4": ["html"] * 99,
        "/ep03.mp4": ["503"] * 999,  # down for two runs: the host's fault, never given up
    }
    with MediaServer(faulty_media, faults=plan) as server:
        names = {"ep01": "ep01", "ep02": "ep02", "gone": "gone", "removed": "removed", "page": "page",
                 "junk": "junk", "cut": "cut", "silent": "silent", "flaky": "ep03"}
        rows = [{"id": i, "url": server.url(f"{f}.mp4")} for i, f in names.items()]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path,
                                 download={**FAST_RETRIES, "retries": 2})
        run1 = run_snakemake(tmp_path, config, "--cores", "2", check=False)
        # keep-going (profiles/default): the good episodes are transcribed despite the failures.
        assert run1.returncode != 0
        assert transcripts(tmp_path) == {"ep01", "ep02"}, run1.stderr[-3000:]
        assert server.served("ep01.mp4", "GET")[:2] == ["503", "503"]
        assert "cut" in server.served("ep02.mp4", "GET")

        code, out = scribeflow(tmp_path, "failed", "--json", capsys=capsys)
        failed = {r["id"]: r for r in json.loads(out)}
        assert code == 0 and set(failed) == set(permanent) | {"flaky"}
        for episode, reason in permanent.items():
            assert failed[episode]["given_up"] and failed[episode]["permanent"], failed[episode]
            assert reason in failed[episode]["reason"] and failed[episode]["attempts"] == 1
        assert not failed["flaky"]["given_up"] and "HTTP 503" in failed["flaky"]["reason"]
        assert (tmp_path / "data" / "failed" / "gone.json").is_file()
        assert leftover_temp_files(tmp_path) == []
        assert check_consistency(checked(config)) == []

        # Run 2: the host's failure is tried again, the permanent ones are not. A host that is
        # down is never the episode's fault: however many runs it lasts, it is not given up.
        before = {e: len(server.served(f"{names[e]}.mp4")) for e in permanent}
        run2 = run_snakemake(tmp_path, config, "--cores", "2", check=False)
        assert run2.returncode != 0
        assert "skipping 6 failed episode(s)" in run2.stderr
        assert {e: len(server.served(f"{names[e]}.mp4")) for e in permanent} == before
        code, out = scribeflow(tmp_path, "failed", capsys=capsys)
        assert "7 failed episode(s): 6 given up" in out and "flaky  [will retry, 0 attempt(s)]" in out
        assert out.index("the host's or the environment's") < out.index("flaky")

        # Run 3: the server is back; only the summaries and the flaky episode run.
        server.plan("/ep03.mp4", [])
        run3 = run_snakemake(tmp_path, config, "--cores", "2")
        assert not re.search(r"^rule download:\n(?:.*\n)*?.*wildcards: episode=(?!flaky)", run3.stdout, re.M)
        assert "localrule plots:" in run3.stdout + run3.stderr
        assert "skipping 6 failed episode(s)" in run3.stderr
        assert "Building the corpus from 3 of 9" in (tmp_path / "data/logs/corpus/corpus.log").read_text()
        assert scribeflow(tmp_path, "retry", "ep01", capsys=capsys)[0] == 2  # not a failed episode
    assert transcripts(tmp_path) == {"ep01", "ep02", "flaky"}
    db = sqlite3.connect(tmp_path / "data" / "jobs.db")
    assert db.execute("SELECT stage, attempts FROM jobs WHERE id = 'flaky'").fetchone() == ("analyzed", 1)
    assert leftover_temp_files(tmp_path) == []
    code, out = scribeflow(tmp_path, "check", capsys=capsys)
    assert code == 0 and "agrees" in out


@pytest.mark.slow
def test_three_kills_at_random_moments_then_the_documented_resume(tmp_path, speech_dir, model_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    moments = []
    with MediaServer(speech_dir, rate_bytes_per_s=60_000) as server:
        rows = [{"id": f"ep{n:02d}", "url": server.url(f"ep{n:02d}.mp4")} for n in range(1, 6)]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path, transcribe={"formats": ["srt"]})
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
        for _ in range(3):
            subprocess.run([*cmd, "--unlock"], cwd=tmp_path, check=True, capture_output=True)
            proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            moments.append(round(rng.uniform(2.0, 9.0), 2))
            time.sleep(moments[-1])
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process tree, like a power cut
            proc.wait()
        context = f"seed {seed}, kills at {moments} s after each start"
        # The documented resume: release the lock the killed run left, then the same command.
        subprocess.run([*cmd, "--unlock"], cwd=tmp_path, check=True, capture_output=True)
        rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, context + rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for row in rows:
        t = json.loads((tmp_path / "data" / "transcripts" / f"{row['id']}.json").read_text())
        assert t["id"] == row["id"] and t["segments"] and t["text"].strip(), context
        assert " --> " in (tmp_path / "data" / "transcripts" / f"{row['id']}.srt").read_text()
    assert leftover_temp_files(tmp_path) == [], context
    assert check_consistency(checked(config)) == [], context
    stages = sqlite3.connect(tmp_path / "data" / "jobs.db").execute("SELECT DISTINCT stage FROM jobs").fetchall()
    assert stages == [("analyzed",)], context


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_full_disk_during_a_download_pauses_downloads_until_space_returns(tmp_path, speech_dir, model_path):
    storage = tmp_path / "storage"
    # ep01's download stalls near its end until released, so the disk fills while it is
    # surely in flight; at 400 kb/s it spans several of the downloader's 64 KiB reads.
    media = tmp_path / "media"
    make_speech_video(SENTENCES[0], media / "ep01.mp4", video_kbps=400)
    shutil.copy(speech_dir / "ep02.mp4", media / "ep02.mp4")
    with small_filesystem(storage), MediaServer(media, faults={"GET /ep01.mp4": ["ok", "stall"]}) as server:
        rows = [{"id": f"ep{n:02d}", "url": server.url(f"ep{n:02d}.mp4")} for n in (1, 2)]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(
            tmp_path, catalogue, model_path,
            download={"retries": 3, "retry_backoff_seconds": 0.1},
            disk_management={"hard_limit_gb": 0.02, "pause_threshold_gb": 0.015, "resume_threshold_gb": 0.01,
                             "audio_headroom_mb": 1, "min_free_gb": 0, "check_interval_seconds": 0.2,
                             "cache_duration_seconds": 0, "stall_timeout_seconds": 120})
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            videos = storage / "videos"
            wait_for(lambda: server.served("ep01.mp4", "GET") == ["ok", "stall"]
                     and any(p.stat().st_size for p in videos.glob("ep01*.part")), 60, "ep01's download in flight")
            ballast = fill(storage)
            server.release()
            wait_for(lambda: not list(videos.glob("*.part")), 30, "the partial file to be removed")
            state = tmp_path / "data" / "gate" / "state.json"
            wait_for(lambda: "filesystem" in json.loads(state.read_text())["reasons"], 30, "downloads to pause")
            time.sleep(1.5)
            assert not list(videos.glob("*.part")) and proc.poll() is None  # still paused, still alive
            ballast.unlink()  # space returns
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out[-4000:]
        logs = "".join(p.read_text() for p in (tmp_path / "data" / "logs" / "download").glob("*.log"))
        assert "disk is full (ENOSPC)" in logs and "removed its partial file" in logs
        assert transcripts(tmp_path) == {"ep01", "ep02"}
        db = sqlite3.connect(tmp_path / "data" / "jobs.db")
        pauses = db.execute("SELECT reason, ended_at FROM pause_events").fetchall()
        assert pauses and pauses[0][0] == "filesystem" and all(end for _, end in pauses)
        assert leftover_temp_files(tmp_path) == []
        assert check_consistency(checked(config)) == []
