"""Months on real sites, in the real workflow against loopback servers: an outage that
passes, a host that breaks for good beside a healthy one, a signed URL that expires while
the gate holds its download, SIGTERM in the middle of downloads. No episode is charged
for what is not its fault."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import REPO, leftover_temp_files, run_snakemake, scribeflow, workflow_config, write_catalogue
from support.server import MediaServer

FAST_BREAKER = {"retries": 20, "retry_backoff_seconds": 1, "max_backoff_seconds": 4, "host_breaker_failures": 3,
                "host_probe_seconds": 4, "host_max_probe_seconds": 8}


def _rows(tmp):
    with sqlite3.connect(tmp / "data" / "jobs.db") as db:
        return {r[0]: r[1:] for r in db.execute("SELECT id, stage, attempts, failure_kind FROM jobs")}


def _status(tmp) -> dict:
    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "status", "--json", "--configfile",
                           str(tmp / "config.yaml")], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


@pytest.mark.slow
def test_a_host_that_answers_403_for_90_seconds_is_paused_then_every_episode_is_transcribed(
        tmp_path, speech_dir, model_path):
    episodes = ["ep01", "ep02", "ep03", "ep04"]
    with MediaServer(speech_dir, faults={"/*": ["403"] * 100_000}) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv",
                                    [{"id": e, "url": server.url(f"{e}.mp4")} for e in episodes])
        config = workflow_config(tmp_path, catalogue, model_path, download=FAST_BREAKER)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        seen_paused = []

        def outage():
            started = time.monotonic()
            while time.monotonic() - started < 90:
                if _status(tmp_path).get("hosts_paused"):
                    seen_paused.append(time.monotonic() - started)
                time.sleep(3)
            server.plan("/*", [])  # the host answers again

        watcher = threading.Thread(target=outage, daemon=True)
        watcher.start()
        proc = run_snakemake(tmp_path, config, "--cores", "4", check=False, timeout=600)
        watcher.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seen_paused, "status never showed the host paused"
    rows = _rows(tmp_path)
    assert {e: rows[e][0] for e in episodes} == {e: "analyzed" for e in episodes}
    assert all(rows[e][1] <= 1 for e in episodes), rows  # the 403s were never counted
    assert not (tmp_path / "data" / "failed").exists() or not list((tmp_path / "data" / "failed").iterdir())
    logs = "".join(p.read_text() for p in (tmp_path / "data" / "logs" / "download").glob("*.log"))
    assert "is paused" in logs and "answers again" in logs


@pytest.mark.slow
def test_a_host_broken_for_good_is_paused_and_its_episodes_deferred_while_a_healthy_host_finishes(
        tmp_path, speech_dir, model_path):
    # The breaker counts distinct episodes (3 here), not retries: three of the host's episodes fail.
    broken_eps, healthy_eps = ["ep01", "ep02", "ep06"], ["ep03", "ep04", "ep05"]
    with MediaServer(speech_dir, host="127.0.0.2", faults={"/*": ["500"] * 100_000}) as broken, \
            MediaServer(speech_dir) as healthy:
        rows = [*({"id": e, "url": broken.url(f"{e}.mp4")} for e in broken_eps),
                *({"id": e, "url": healthy.url(f"{e}.mp4")} for e in healthy_eps)]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path, download={**FAST_BREAKER, "host_wait_seconds": 20})
        proc = run_snakemake(tmp_path, config, "--cores", "4", check=False, timeout=600)
        ledger = _rows(tmp_path)
        assert all(ledger[e][0] == "analyzed" for e in healthy_eps), ledger
        assert all(ledger[e][0] == "failed" and ledger[e][2] == "host" and ledger[e][1] == 0 for e in broken_eps), \
            (ledger, proc.stderr[-3000:])
        status = _status(tmp_path)
        assert "127.0.0.2" in status["hosts_paused"] and "500" in status["hosts_paused"]["127.0.0.2"]["reason"]
        text = scribeflow(tmp_path, "status", "--configfile", str(tmp_path / "config.yaml"))
        assert "Host paused: 127.0.0.2" in text
        failed = scribeflow(tmp_path, "failed", "--configfile", str(tmp_path / "config.yaml"))
        assert "the host's or the environment's" in failed and "0 given up" in failed
        # The host comes back; the operator resumes it.
        broken.plan("/*", [])
        said = scribeflow(tmp_path, "retry", "--host", "127.0.0.2", "--configfile", str(tmp_path / "config.yaml"))
        assert "resumed" in said and "3 of its failed" in said
        run_snakemake(tmp_path, config, "--cores", "4", timeout=600)
    assert all(stage == "analyzed" for stage, *_ in _rows(tmp_path).values())
    assert leftover_temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_signed_url_that_expires_while_the_gate_holds_the_download_is_extracted_again(
        tmp_path, speech_dir, model_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    ballast = data / "ballast.bin"  # another program's file: downloads pause until it goes
    ballast.write_bytes(os.urandom(3_700_000))
    with MediaServer(speech_dir, signed_ttl=20) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "ep01", "url": server.url("signed/ep01.mp4.html")}])
        config = workflow_config(tmp_path, catalogue, model_path,
                                 disk_management={"hard_limit_gb": 0.005, "pause_threshold_gb": 0.0035,
                                                  "resume_threshold_gb": 0.003, "check_interval_seconds": 1,
                                                  "stall_timeout_seconds": 300, "cache_duration_seconds": 0},
                                 download={"max_url_age_seconds": 10})
        threading.Timer(40, ballast.unlink).start()
        started = time.monotonic()
        run_snakemake(tmp_path, config, "--cores", "2", timeout=600)
        assert time.monotonic() - started > 40
        served = list(server.requests)
    rows = _rows(tmp_path)
    assert rows["ep01"][:2] == ("analyzed", 1)
    assert not [r for r in served if r[2].startswith("403")], served  # no expired URL was ever asked for
    pages = [r for r in served if r[1].endswith(".html") and r[0] == "GET"]
    assert len(pages) >= 2  # extracted again once the gate admitted it
    log = (data / "logs" / "download" / "ep01.log").read_text()
    assert "extracting again for fresh media URLs" in log and "waits" in log


@pytest.mark.slow
def test_sigterm_mid_download_three_times_counts_nothing_and_the_fourth_run_finishes(
        tmp_path, speech_dir, model_path):
    episodes = ["ep01", "ep02", "ep03"]
    # 20 kB/s: each download takes a few seconds, so SIGTERM meets them in flight.
    with MediaServer(speech_dir, rate_bytes_per_s=20_000) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv",
                                    [{"id": e, "url": server.url(f"{e}.mp4")} for e in episodes])
        config = workflow_config(tmp_path, catalogue, model_path)
        configfile = tmp_path / "config.yaml"
        configfile.write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(configfile), "--cores", "4"]
        for n in range(3):
            proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until a download is writing
                if list((tmp_path / "storage" / "videos").glob("*@dl.*")):
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)  # as run-chunks and Slurm stop a run
            out, _ = proc.communicate(timeout=120)
            rows = _rows(tmp_path)
            assert not [e for e, r in rows.items() if r[0] in ("downloading", "extracting", "transcribing")], \
                (n, rows, out[-3000:])
            assert all(r[1] == 0 for e, r in rows.items() if r[0] in ("queued",)), (n, rows)
            assert any(r[2] == "interrupted" for r in rows.values()), (n, rows)
            subprocess.run([*cmd, "--unlock"], cwd=tmp_path, capture_output=True, timeout=120)
        run_snakemake(tmp_path, config, "--cores", "4", timeout=600)
    rows = _rows(tmp_path)
    assert all(r[0] == "analyzed" and r[1] == 1 for r in rows.values()), rows
    assert leftover_temp_files(tmp_path) == []
