"""The chunk driver (`scribeflow run-chunks`): planning, skipping, overlap, resume.

The fast tests drive a stand-in for Snakemake (a small script that marks its chunk's
downloads in the real ledger, then writes the per-episode analyses), so that the driver's
orchestration is checked in seconds; the slow test runs the real workflow."""

import json
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import yaml
from conftest import REPO, workflow_config, write_catalogue

from scribeflow.budget.slots import Slots
from scribeflow.config import settings as cfg
from scribeflow.config.catalogue import select_chunk, validate
from scribeflow.config.layout import Layout
from scribeflow.ops import chunks
from scribeflow.state.ledger import Ledger


def catalogue(n):
    return validate(pd.DataFrame({"id": [f"ep{i:03d}" for i in range(n)],
                                  "url": [f"http://e.org/{i}" for i in range(n)]}))


def test_plan_covers_every_episode_once_in_the_snakefiles_slices():
    cat = catalogue(10)
    plan = chunks.plan(cat, 4)
    assert [c.spec for c in plan] == ["1/3", "2/3", "3/3"]
    assert [i for c in plan for i in c.ids] == list(cat["id"])
    assert all(len(c.ids) <= 4 for c in plan)
    for c in plan:
        assert c.ids == list(select_chunk(cat, c.spec)["id"])
    assert [c.spec for c in chunks.plan(cat, 10)] == ["1/1"]


def test_downloads_ended_counts_only_this_runs_stages_and_transcripts(tmp_path):
    chunk = chunks.Chunk(1, 1, ["a", "b", "c"])
    db = tmp_path / "jobs.db"
    assert not chunks.downloads_ended(chunk, db, 0, set())  # no ledger yet
    with Ledger(db) as ledger:
        ledger.enqueue(["a", "b", "c"])
        ledger.set_stage("a", "failed")  # left by an earlier run
        since = time.time()
        ledger.set_stage("b", "downloaded")
        ledger.set_stage("c", "downloading")
    assert not chunks.downloads_ended(chunk, db, since, set())
    assert not chunks.downloads_ended(chunk, db, since, {"a"})  # c still downloading
    with Ledger(db) as ledger:
        ledger.set_stage("c", "failed")
    assert chunks.downloads_ended(chunk, db, since, {"a"})


FAKE_SNAKEMAKE = textwrap.dedent('''
    """Stands in for Snakemake: marks its chunk's downloads, waits, writes the analyses."""
    import json, sys, time
    from pathlib import Path
    import yaml
    from scribeflow.config.catalogue import load
    from scribeflow.state.ledger import Ledger

    args = sys.argv[1:]
    directory = Path(args[args.index("--directory") + 1])
    config = yaml.safe_load((directory / args[args.index("--configfile") + 1]).read_text())
    chunk = next((a.split("=", 1)[1] for a in args if a.startswith("chunk=")), None)
    events = directory / "events.jsonl"
    def event(what):
        with events.open("a") as f:
            f.write(json.dumps({"chunk": chunk, "what": what, "at": time.time()}) + "\\n")
    if chunk is None:  # the final run over the whole catalogue: the summaries
        event("summary")
        assert "corpus_only=True" in args  # it starts no episode
        corpus = directory / config["data_dir"] / "analysis" / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        (corpus / "episodes.tsv").write_text("id")
        sys.exit(0)
    ids = [i for i in load(directory / config["catalogue"], chunk).index]
    event("start")
    data = directory / config["data_dir"]
    with Ledger(data / "jobs.db") as ledger:
        for i in ids:
            ledger.set_stage(i, "downloaded")
    event("downloads ended")
    fake = yaml.safe_load((directory / "fake.yaml").read_text())
    # The last transcriptions: they last until the next chunk has started (when one
    # should), so that the overlap does not depend on how fast this machine is.
    k, n = map(int, chunk.split("/"))
    deadline = time.time() + fake["seconds"]
    while time.time() < deadline:
        if fake["until_next"] and (k == n or f'"{k + 1}/{n}", "what": "start"' in events.read_text()):
            break
        time.sleep(0.05)
    (data / "analysis" / "episodes").mkdir(parents=True, exist_ok=True)
    for i in ids:
        if i != fake["fail"]:
            (data / "analysis" / "episodes" / f"{i}.json").write_text("{}")
    event("end")
    sys.exit(1 if fake["fail"] in ids else 0)
''')


def driver(tmp_path, n_episodes, chunk_size, seconds=1.5, fail=None, until_next=False):
    rows = [{"id": f"ep{i:03d}", "url": f"http://127.0.0.1:9/{i}"} for i in range(n_episodes)]
    write_catalogue(tmp_path / "episodes.csv", rows)
    config = {"catalogue": "episodes.csv", "data_dir": "data", "storage_dir": "storage"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump({"seconds": seconds, "fail": fail, "until_next": until_next}))
    fake = tmp_path / "fake_snakemake.py"
    fake.write_text(FAKE_SNAKEMAKE)
    loaded = cfg.for_run(["run.yaml"], [], tmp_path)
    return chunks.Driver(tmp_path, loaded, chunk_size, [], configfiles=["run.yaml"], poll=0.1,
                         command=[sys.executable, str(fake)])


def events(tmp_path):
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_next_chunk_starts_when_the_running_one_has_no_downloads_left(tmp_path):
    d = driver(tmp_path, 7, 3, seconds=60, until_next=True)  # chunks of 2, 2 and 3 episodes
    assert d.run() == 0
    assert len(list((tmp_path / "data" / "analysis" / "episodes").glob("*.json"))) == 7
    ev = events(tmp_path)
    at = {(e["chunk"], e["what"]): e["at"] for e in ev}
    for k in (2, 3):
        prev, this = f"{k - 1}/3", f"{k}/3"
        assert at[(prev, "downloads ended")] < at[(this, "start")] < at[(prev, "end")], ev
    # Never more than two chunks at once.
    live = 0
    for e in sorted(ev, key=lambda e: e["at"]):
        live += {"start": 1, "end": -1}.get(e["what"], 0)
        assert live <= 2


def test_without_overlap_chunks_run_one_after_another(tmp_path, capsys):
    d = driver(tmp_path, 4, 2, seconds=0.6)
    d.overlap = False
    d.progress_every = 0.2
    assert d.run() == 0
    # A compact progress line while a chunk runs: the chunk, the catalogue, the failures.
    progress = [line for line in capsys.readouterr().out.splitlines() if "| catalogue" in line]
    assert progress and "chunk 1/2: 0 of 2 done | catalogue 0 of 4 (0.0%)" in progress[0]
    assert progress[-1].endswith("failed 0 (0 given up)")
    at = {(e["chunk"], e["what"]): e["at"] for e in events(tmp_path)}
    assert at[("1/2", "end")] < at[("2/2", "start")]
    # Then one run without a chunk builds the summaries (corpus, plots), after every chunk.
    assert at[(None, "summary")] > at[("2/2", "end")]


def test_done_chunks_are_skipped_and_a_failed_chunk_is_reported(tmp_path, capsys):
    transcripts = tmp_path / "data" / "analysis" / "episodes"
    transcripts.mkdir(parents=True)
    for i in range(3):  # chunk 1/2 (ep000-ep002) done by an earlier run
        (transcripts / f"ep{i:03d}.json").write_text("{}")
    d = driver(tmp_path, 6, 3, seconds=0.2, fail="ep004")
    assert d.run() == 1
    # The corpus is built whatever failed; the exit code says what still needs attention.
    assert {e["chunk"] for e in events(tmp_path)} == {"2/2", None}
    out = capsys.readouterr().out
    assert "1 already done" in out and "chunk 2/2: snakemake exited with 1, 1 episode(s) not done" in out
    assert "5 of 6 episodes analysed or given up; 1 chunk(s) failed: 2/2" in out
    assert "1 episode(s) still need attention" in out and out.rstrip().endswith("ep004")

    # A given-up episode needs no attention: the run succeeds, and says so.
    Layout.of(tmp_path / "data").failed.mkdir(parents=True)
    (Layout.of(tmp_path / "data").failed / "ep004.json").write_text("{}")
    (tmp_path / "events.jsonl").unlink()
    assert d.run() == 0
    assert "1 episode(s) given up" in capsys.readouterr().out
    assert not (tmp_path / "events.jsonl").exists()  # nothing left to start, the corpus is built
    (Layout.of(tmp_path / "data").failed / "ep004.json").unlink()

    # Once everything exists, nothing is started at all.
    (transcripts / "ep004.json").write_text("{}")
    assert d.run() == 0
    assert not (tmp_path / "events.jsonl").exists()


def test_a_chunk_in_the_config_is_refused(tmp_path, capsys):
    write_catalogue(tmp_path / "episodes.csv", [{"id": "a", "url": "http://e.org/a"}])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"catalogue": "episodes.csv", "chunk": "1/2"}))
    args = ["run-chunks", "-d", str(tmp_path), "--configfile", "run.yaml"]
    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "chunk" in proc.stderr


def test_transcription_slots_are_shared_across_processes(tmp_path):
    slots = Slots(tmp_path, 2)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from scribeflow.budget.slots import Slots
        with Slots({str(tmp_path)!r}, 2).hold("other"):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        first = slots.try_acquire()
        assert first is not None
        assert slots.try_acquire() is None  # one held by the other process, one here
        first.close()
        holder.kill()
        holder.wait()
        # The kernel released the killed holder's slot.
        assert slots.try_acquire() is not None
    finally:
        holder.kill()


@pytest.mark.slow
def test_run_chunks_transcribes_the_whole_catalogue_and_a_second_run_is_a_fast_no_op(tmp_path, media_server,
                                                                                      model_path):
    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en"} for n in (1, 2, 3)]
    dead = {"id": "dead", "url": media_server.url("gone.mp4"), "language": "en"}  # a 404: given up at once
    catalogue = write_catalogue(tmp_path / "episodes.csv", [*rows, dead])
    config = workflow_config(tmp_path, catalogue, model_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "scribeflow.ops.cli", "run-chunks", "--directory", str(tmp_path),
           "--configfile", "run.yaml", "--chunk-size", "2", "--poll", "1", "--", "--cores", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a given-up episode needs no attention
    assert "2 chunk(s) of up to 2 episodes; 0 already done" in proc.stdout
    for row in rows:
        t = json.loads((tmp_path / "data" / "transcripts" / f"{row['id']}.json").read_text())
        assert t["id"] == row["id"] and t["text"].strip()
    assert "4 of 4 episodes analysed or given up; 0 chunk(s) failed" in proc.stdout
    assert "1 episode(s) given up" in proc.stdout
    # The corpus is built although an episode failed.
    corpus = (tmp_path / "data" / "analysis" / "corpus" / "episodes.tsv").read_text()
    assert all(row["id"] in corpus for row in rows) and "dead" not in corpus
    logs = [(tmp_path / f".snakemake/scribeflow/chunks/chunk-0000{k}-of-2.log").read_text() for k in (1, 2)]
    assert "Finished: 9/9 jobs (100%)" in logs[0]
    assert "FAILED download dead; log:" in logs[1]  # at once, with the file that says why
    # A compact console (scribeflow's logger), not Snakemake's ~20 lines per job.
    assert all(len(log.splitlines()) < 30 for log in logs), logs

    started = time.monotonic()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 already done" in again.stdout, again.stdout + again.stderr
    assert "episodes to do" not in again.stdout  # no Snakemake started
    assert time.monotonic() - started < 15


def test_a_profiles_config_is_kept_beside_the_chunk(tmp_path):
    # Snakemake drops a profile's `config:` when --config is on the command line.
    assert chunks.profile_config(REPO, ["--cores", "8", "--profile", "gpu"]) == \
        yaml.safe_load((REPO / "profiles" / "gpu" / "config.yaml").read_text())["config"]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.yaml").write_text(yaml.safe_dump({"config": {"data_dir": "/x"}}))
    assert chunks.profile_config(tmp_path, ["--profile=p"]) == ["data_dir=/x"]
    assert chunks.profile_config(tmp_path, ["--cores", "2"]) == []


def test_an_interrupted_run_goes_on_where_it_stopped(tmp_path):
    import os
    import signal
    import threading

    d = driver(tmp_path, 4, 2, seconds=30)
    # Ctrl-C while chunk 1/2 "transcribes": the driver stops its Snakemake and exits 130.
    threading.Timer(4, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    assert d.run() == 130
    assert time.monotonic() - started < 20
    assert "end" not in [e["what"] for e in events(tmp_path)]  # both chunks were stopped
    assert not (tmp_path / "data" / "analysis" / "episodes").exists()

    (tmp_path / "fake.yaml").write_text(yaml.safe_dump({"seconds": 0.1, "fail": None, "until_next": False}))
    assert d.run() == 0
    assert len(list((tmp_path / "data" / "analysis" / "episodes").glob("*.json"))) == 4
