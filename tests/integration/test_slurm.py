"""The workflow on a real Slurm (slurm-wlm 22.05 + munge, started by the test on 127.0.0.1)
through profiles/slurm and snakemake-executor-plugin-slurm."""

import json
import os
import re
import sqlite3

import pytest
import yaml
from conftest import REPO, leftover_temp_files, recall, run_snakemake, workflow_config, write_catalogue
from slurm_cluster import GPU_TYPE, LocalSlurm, missing_binaries
from support.fixtures import SENTENCES


def _why_not() -> str | None:
    missing = missing_binaries()
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge (.ci/run does)"
    if os.getuid() != 0:
        return "starting slurmd needs root (CI runs as root)"
    return None


# Decided before any fixture runs: the speech videos are not made for nothing.
pytestmark = [pytest.mark.slow, pytest.mark.slurm,
              pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]

# duration_s as a catalogue may give it: the transcription's time limit follows it.
DURATIONS = {"ep01": 1440, "ep02": None, "ep03": 6}
TIME_LIMITS = {"ep01": "27:00", "ep02": "1:15:00", "ep03": "16:00"}  # see scribeflow.integration.cluster


@pytest.fixture
def slurm():
    with LocalSlurm() as cluster:
        yield cluster


def test_workflow_runs_through_slurm(tmp_path, media_server, model_path, slurm, monkeypatch):
    for name, value in {**slurm.env, "SCRIBEFLOW_SLURM_PARTITION": "cpu",
                        "SCRIBEFLOW_SLURM_GPU_PARTITION": "gpu", "SCRIBEFLOW_SLURM_GPU_MODEL": GPU_TYPE}.items():
        monkeypatch.setenv(name, value)
    rows = [{"id": ep, "url": media_server.url(f"{ep}.mp4"), "duration_s": d} for ep, d in DURATIONS.items()]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path, transcribe={"cpu_threads": 2},
                             disk_management={"max_concurrent_transcriptions": 3})
    # What only this one-node test cluster needs, layered over the real profile: no slurmdbd,
    # so squeue instead of sacct (MinJobAge 600 s keeps finished jobs in squeue), a short
    # first status check, and the job logs kept to look at.
    override = tmp_path / "slurm-test"
    override.mkdir()
    (override / "config.yaml").write_text(yaml.safe_dump({
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 6,
        "slurm-keep-successful-logs": True,
    }))
    proc = run_snakemake(tmp_path, config, "--profile", str(REPO / "profiles" / "slurm"),
                         "--profile", str(override), "--jobs", "4", timeout=300)
    out = proc.stdout + proc.stderr

    # Real transcripts of the spoken sentences.
    for n, ep in enumerate(DURATIONS):
        t = json.loads((tmp_path / "data" / "transcripts" / f"{ep}.json").read_text())
        assert recall(SENTENCES[n], t["text"]) >= 0.7, (SENTENCES[n], t["text"])
    assert leftover_temp_files(tmp_path) == []
    db = sqlite3.connect(tmp_path / "data" / "jobs.db")
    assert db.execute("SELECT stage, count(*) FROM jobs GROUP BY stage").fetchall() == [("analyzed", 3)]

    # Every job went through Slurm, with what the profile asks for.
    jobs = {j["Comment"]: j for j in slurm.jobs()}
    for ep in DURATIONS:
        for rule in ("download", "extract_audio", "transcribe", "analyse_episode"):
            job = jobs.pop(f"rule_{rule}_wildcards_{ep}")
            assert job["State"] == "COMPLETED", job
            logs = list((tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}" / ep).glob("*.log"))
            assert [p.stem for p in logs] == [job["JobID"]]
            if rule == "transcribe":
                assert (job["Partition"], job["tres-per-job"]) == ("gpu", f"gres:gpu:{GPU_TYPE}:1"), job
                assert (job["MinMemory"], job["NumCPUs"]) == ("16000M", "4"), job
                assert job["TimeLimit"] == TIME_LIMITS[ep], job
            else:
                assert (job["Partition"], job["tres-per-job"]) == ("cpu", "N/A"), job
                assert job["NumCPUs"] == "1", job
    corpus = jobs.pop("rule_corpus")
    assert (corpus["State"], corpus["Partition"], corpus["MinMemory"]) == ("COMPLETED", "cpu", "8000M"), corpus
    assert jobs == {}, f"jobs no rule accounts for: {jobs}"  # `all` and `plots` are local rules

    # The disk budget's scheduler-side caps are in force on the cluster too: downloads
    # leave one of the 4 job slots to extraction and transcription.
    provided = re.search(r"^Provided resources: (.*)$", out, re.M)
    assert provided, out[-3000:]
    assert provided_resource(provided[1], "download_slots") == 3, provided[1]
    assert provided_resource(provided[1], "transcription_slots") == 3, provided[1]


def provided_resource(line: str, name: str) -> int:
    """A value from Snakemake's "Provided resources:" line (`n=3` or `n=Resource("n", 3)`)."""
    return int(re.search(rf'\b{name}=(?:Resource\("{name}", )?(\d+)', line)[1])
