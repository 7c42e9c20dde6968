"""Whose failure a transcription's is: a request queued behind another is never timed out
for its wait, out of GPU memory at batch 1 counts (and a given-up episode's audio goes), a
failing sampled ASR is the quality check's, and a model the machine cannot load is refused
before any download or, mid-run, is the environment's failure."""

import json
import os
import shutil
import sqlite3
import threading
import time
import wave
from pathlib import Path

import pytest
from conftest import run_snakemake, scribeflow, workflow_config, write_catalogue
from support.fixtures import SENTENCES
from support.server import MediaServer

from scribeflow.config.models import check_model, english_only, language_warning, unloadable
from scribeflow.stages.media import extract_audio
from scribeflow.stages.transcription import worker
from scribeflow.stages.transcription.decode import decode_options
from scribeflow.state import failures


def worker_settings(model_path, **worker):
    return {"model": model_path, "device": "cpu", "compute_type": "int8", "cpu_threads": 2, "num_workers": 1,
            "beam_size": 5, "vad_filter": True, "condition_on_previous_text": False, "word_timestamps": False,
            "hallucination_silence_threshold": None, "initial_prompt": None, "batch_size": 0,
            "worker": {"enabled": True, "idle_timeout_seconds": 30, "start_timeout_seconds": 60, **worker}}


def concatenated(wavs: list[Path], out: Path) -> Path:
    with wave.open(str(wavs[0])) as w:
        params = w.getparams()
    with wave.open(str(out), "wb") as joined:
        joined.setparams(params)
        for path in wavs:
            with wave.open(str(path)) as w:
                joined.writeframes(w.readframes(w.getnframes()))
    return out


def wav_of(speech_dir: Path, n: int, folder: Path) -> Path:
    extract_audio(speech_dir / f"ep{n:02d}.mp4", folder / f"ep{n:02d}.wav")
    return folder / f"ep{n:02d}.wav"


def ping(tc, data):
    return worker.request(tc, data, {"op": "ping"}, start=False)


def test_a_request_queued_behind_a_slow_one_is_not_timed_out_for_its_wait(tmp_path, speech_dir, model_path):
    """Two requests on one worker (the real tiny.en): a long one holds the model while a
    short one waits behind it for longer than the short one's whole timeout. The short
    one's clock runs only while the worker works on it: it is answered by the same worker,
    nothing is killed and nothing is counted against it."""
    from scribeflow.stages.media import BYTES_PER_SECOND, WAV_HEADER

    wavs = [wav_of(speech_dir, n, tmp_path) for n in range(1, 9)]
    short, long = wavs[1], concatenated(wavs * 6, tmp_path / "long.wav")  # 48 sentences: many times the short one
    tc, data = worker_settings(model_path, start_timeout_seconds=1), tmp_path / "data"
    options = decode_options(tc, "en")
    try:
        assert worker.prestart(tc, data)
        deadline = time.monotonic() + 60
        while worker._connect(worker.worker_key(tc, data)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = ping(tc, data)["pid"]  # answered once the model is loaded
        # The short request alone, as fast as this machine is now; its timeout: four times that.
        started = time.monotonic()
        worker.transcribe(tc, data, short, options, "short")
        alone = time.monotonic() - started
        seconds = (short.stat().st_size - WAV_HEADER) / BYTES_PER_SECOND
        short_tc = {**tc, "worker": {**tc["worker"], "request_timeout_factor": max(4 * alone - 1, 1) / seconds}}
        timeout = worker.request_timeout(short_tc, short)
        assert timeout >= 4 * alone - 0.1

        slow = threading.Thread(target=worker.request, args=(tc, data, {
            "op": "transcribe", "audio": str(long), "options": options, "episode": "long"}), daemon=True)
        slow.start()
        while not ping(tc, data)["stats"]["model_busy"]:  # the long one holds the model
            time.sleep(0.02)
        died = []
        started = time.monotonic()
        result = worker.transcribe(short_tc, data, short, options, "short", on_worker_died=died.append)
        waited = time.monotonic() - started
        slow.join(300)
        state = ping(tc, data)
    finally:
        worker.stop(tc, data)
    # Queueing alone took longer than its timeout: timed from the request, it would have been killed.
    assert waited > timeout, (waited, timeout, alone)
    assert "hello world" in result["segments"][0]["text"].lower()
    assert died == [] and state["pid"] == pid and state["served"] == 3
    log = worker.log_path(data, worker.worker_key(tc, data)).read_text()
    assert log.count("Loaded model") == 1


def test_a_hung_worker_is_still_killed_on_its_time_worked(tmp_path, model_path, monkeypatch, speech_dir):
    """The other side of the rule: a request the worker works on past its timeout (a wedged
    call; a test hook here) still has the worker killed and replaced."""
    flag = tmp_path / "hang-once"
    flag.write_text("")
    monkeypatch.setenv("SCRIBEFLOW_TEST_WORKER_FAULT", f"hang-once:{flag}")
    wav = wav_of(speech_dir, 2, tmp_path)
    tc, data = worker_settings(model_path, start_timeout_seconds=4, request_timeout_factor=0.5), tmp_path / "data"
    died = []
    try:
        result = worker.transcribe(tc, data, wav, decode_options(tc, "en"), "ep02", on_worker_died=died.append)
    finally:
        worker.stop(tc, data)
    assert "hello world" in result["segments"][0]["text"].lower()
    assert len(died) == 1 and isinstance(died[0], worker.WorkerHung)
    assert "worked on the request for" in str(died[0])


def test_out_of_gpu_memory_is_the_episodes_failure_and_other_kinds_keep_theirs():
    oom = RuntimeError("CUDA failed with error out of memory")
    assert failures.out_of_memory(oom) and failures.kind(oom) == failures.EPISODE
    assert failures.kind(worker.OutOfMemory("out of GPU memory with batch 8, 4, 2, 1")) == failures.EPISODE
    assert failures.kind(KeyboardInterrupt()) == failures.INTERRUPTED
    assert failures.kind(worker.WorkerError("could not load", "host")) == failures.HOST
    assert failures.kind(worker.WorkerError("bad audio")) == failures.EPISODE


@pytest.mark.slow
def test_out_of_gpu_memory_at_every_batch_size_is_given_up_after_max_attempts_runs(tmp_path, speech_dir, model_path,
                                                                                   monkeypatch):
    """Out of GPU memory at every batch size, forced by the worker's test hook (there is no GPU
    here): each run tries batch 8, 4, 2, then 1, and fails the episode; after
    transcribe.max_attempts runs it is given up, with the reason, and its audio is deleted;
    the next run skips it."""
    monkeypatch.setenv("SCRIBEFLOW_TEST_WORKER_FAULT", "oom-above:0")
    with MediaServer(speech_dir) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "big", "url": server.url("ep01.mp4")}])
        config = workflow_config(tmp_path, catalogue, model_path, transcribe={"batch_size": 8, "max_attempts": 2})
        data = tmp_path / "data"
        first = run_snakemake(tmp_path, config, "--cores", "2", "--keep-going", check=False)
        assert first.returncode != 0
        kept = sorted(p.name for p in data.glob("audio/big*"))
        assert kept == ["big.speech.npz", "big.wav"] and not failures.given_up(data)  # kept for the next run
        db = sqlite3.connect(data / "jobs.db")
        assert db.execute("SELECT transcribe_failures, failure_kind FROM jobs").fetchone() == (1, "episode")
        run_snakemake(tmp_path, config, "--cores", "2", "--keep-going", check=False)
        assert failures.given_up(data) == {"big"}
        assert not list(data.glob("audio/big*"))  # the WAV and the VAD's speech file: gone as it was given up
        requests = len(server.requests)
        third = run_snakemake(tmp_path, config, "--cores", "2", "--keep-going", check=False)
        assert len(server.requests) == requests  # skipped: nothing fetched, nothing tried
    marker = json.loads((data / "failed" / "big.json").read_text())
    assert (marker["step"], marker["attempts"]) == ("transcribe", 2)
    assert "out of GPU memory with batch 8, 4, 2, 1" in marker["reason"]
    assert sqlite3.connect(data / "jobs.db").execute("SELECT audio_deleted FROM jobs").fetchone() == (1,)
    assert "skipping 1 failed episode(s)" in third.stderr
    (worker_log,) = (data / "logs" / "transcribe_worker").glob("*.log")
    assert "again with batch 4" in worker_log.read_text() and "again with batch 1" in worker_log.read_text()


@pytest.mark.slow
def test_a_failing_sampled_asr_is_the_quality_checks_failure_not_the_episodes(tmp_path, speech_dir, model_path,
                                                                             monkeypatch):
    """subtitles.sample_share 1.0 and an ASR that fails (out of GPU memory at every batch size,
    forced by the test hook): the quality file, the ledger and the job's log say the quality
    check failed; the transcript is still made from the subtitle, nothing is counted and the
    episode is not given up."""
    monkeypatch.setenv("SCRIBEFLOW_TEST_WORKER_FAULT", "oom-above:0")
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "ep01.en.srt").write_text(f"1\n00:00:00,500 --> 00:00:04,000\n{SENTENCES[0]}\n", encoding="utf-8")
    with MediaServer(speech_dir) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv",
                                    [{"id": "ep01", "url": server.url("ep01.mp4"), "language": "en"}])
        config = workflow_config(tmp_path, catalogue, model_path, transcribe={"batch_size": 8},
                                 subtitles={"folder": str(subs), "sample_share": 1.0, "languages": ["en"]})
        run_snakemake(tmp_path, config, "--cores", "2")
    data = tmp_path / "data"
    transcript = json.loads((data / "transcripts" / "ep01.json").read_text())
    assert transcript["source"] == "subtitles" and transcript["text"] == SENTENCES[0]
    quality = json.loads((data / "quality" / "ep01.json").read_text())
    assert quality["cer"] is None and quality["failed"].startswith("quality check (sampled ASR) failed")
    assert "out of GPU memory" in quality["failed"]
    row = sqlite3.connect(data / "jobs.db").execute(
        "SELECT stage, transcribe_failures, last_error, sample_chars FROM jobs").fetchone()
    assert row[:2] == ("analyzed", 0) and row[2].startswith("quality check (sampled ASR) failed") and row[3] is None
    assert failures.given_up(data) == set()
    assert "not counted against the episode" in (data / "logs" / "sample_asr" / "ep01.log").read_text()


# -- a model the machine cannot load -----------------------------------------------------------
def offline(monkeypatch, tmp_path):
    """No Hugging Face cache and a hub that cannot be reached (a closed loopback port), in
    the children this test starts (snakemake, scribeflow, the worker)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.slow
def test_a_model_name_that_cannot_be_fetched_is_refused_before_any_download(tmp_path, speech_dir, model_path,
                                                                           monkeypatch):
    """transcribe.model: tiny.en (as the README's "bundled tiny.en" suggests) with no model
    cache and no hub: the run's start, `snakemake -n` and `scribeflow plan` refuse it in one
    line naming it and the bundled model's folder; no request reaches the catalogue's server
    and nothing is written. An English-only model for Japanese rows is warned of."""
    offline(monkeypatch, tmp_path)
    with MediaServer(speech_dir) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv", [
            {"id": "ep01", "url": server.url("ep01.mp4"), "language": "ja"},
            {"id": "ep02", "url": server.url("ep02.mp4"), "language": "ja"}])
        config = workflow_config(tmp_path, catalogue, "tiny.en")
        run = run_snakemake(tmp_path, config, "--cores", "2", check=False)
        dry = run_snakemake(tmp_path, config, "-n", "--cores", "1", check=False)
        assert server.requests == []
    assert not (tmp_path / "data").exists()
    for proc in (run, dry):
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if "transcribe.model: tiny.en" in line]
        assert len(lines) == 1, proc.stderr[-3000:]
        assert "cannot be reached" in lines[0] and f"model: {model_path}" in lines[0]
        assert "Traceback" not in proc.stderr
        assert "transcribe.model tiny.en is English-only, but 2 catalogue row(s) say language ja" in proc.stderr
    plan = _scribeflow_fails(tmp_path, "plan", "--configfile", str(tmp_path / "config.yaml"))
    assert lines[0].removeprefix("scribeflow: ") in plan


def _scribeflow_fails(cwd, *args) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc.stderr


def fake_hub_cache(home: Path, model_path: str) -> None:
    """tiny.en in a Hugging Face cache as faster-whisper's download leaves it (the bundled files)."""
    repo = home / "hub" / "models--Systran--faster-whisper-tiny.en"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in os.listdir(model_path):
        (snapshot / name).symlink_to(Path(model_path) / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_a_cached_model_name_is_accepted_offline_and_an_uncached_one_refused(tmp_path, model_path, monkeypatch):
    """Both sides of the rule, with `scribeflow plan` as a user runs it: tiny.en in the cache
    plans with no hub; missing from it, refused, naming it and what to write instead."""
    offline(monkeypatch, tmp_path)
    catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "ep01", "url": "http://127.0.0.1:9/ep01.mp4"}])
    (tmp_path / "config.yaml").write_text(json.dumps(workflow_config(tmp_path, catalogue, "tiny.en")))
    refused = _scribeflow_fails(tmp_path, "plan", "--configfile", "config.yaml")
    assert "transcribe.model: tiny.en is not in this machine's Hugging Face cache" in refused
    assert f"transcribe: {{model: {model_path}}}" in refused
    fake_hub_cache(tmp_path / "hf-home", model_path)
    assert "transcribe.model" not in scribeflow(tmp_path, "plan", "--configfile", "config.yaml")  # exit 0


def test_what_the_model_check_says(tmp_path, model_path, monkeypatch):
    # A folder that is not a CTranslate2 model, and one that is.
    (tmp_path / "notes").mkdir()
    assert "lacks model.bin" in unloadable(str(tmp_path / "notes"))
    fake = tmp_path / "fake"
    shutil.copytree(model_path, fake)
    (fake / "model.bin").write_bytes(b"not a model")
    (fake / "preprocessor_config.json").write_text('{"feature_size": 80}')
    assert "is not a CTranslate2 Whisper model" in unloadable(str(fake))
    assert unloadable(model_path) is None
    assert "is not a faster-whisper model name" in unloadable("tiny-en")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # English-only: the bundled folder (its vocabulary) and names ending in .en; not large-v3.
    assert english_only(model_path) and english_only("tiny.en") and english_only("Systran/faster-whisper-small.en")
    assert not english_only("large-v3")
    assert language_warning(model_path, "ja", []).startswith(f"transcribe.model {model_path} is English-only, "
                                                             "but transcribe.language is ja")
    assert language_warning(model_path, None, ["en", None, float("nan")]) is None
    assert language_warning("large-v3", None, ["ja"]) is None
    assert check_model(model_path, None, ["en"]) == (None, None)


def test_a_model_that_fails_to_load_mid_run_is_the_environments_failure(tmp_path, speech_dir, model_path):
    """The model passed the run's check, then cannot be loaded where the job runs (here its
    folder was damaged meanwhile): the job fails naming the model, the episode is failed as
    the environment's (kind host), nothing is counted and it is not given up."""
    from scribeflow.config import settings as cfg
    from scribeflow.stages import steps
    from scribeflow.stages.transcription.model import ModelUnavailable
    from scribeflow.state.ledger import Ledger

    model = tmp_path / "model"
    shutil.copytree(model_path, model)
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    extract_audio(speech_dir / "ep01.mp4", data / "audio" / "ep01.wav")

    def configured(enabled: bool):
        return cfg.validate({"data_dir": str(data), "storage_dir": str(tmp_path / "storage"),
                             "transcribe": worker_settings(str(model), enabled=enabled)})

    # Through the worker, and in the job itself; the run's check passes for both.
    config, in_job = configured(True), configured(False)
    (model / "model.bin").write_bytes((model / "model.bin").read_bytes()[:4096])  # damaged after the check
    for settings in (config, in_job):
        with pytest.raises((worker.WorkerError, ModelUnavailable), match=f"transcribe.model: {model}"):
            steps.transcribe(settings=settings, episode="ep01", audio=str(data / "audio" / "ep01.wav"),
                             outputs={"json": str(data / "transcripts" / "ep01.json")},
                             video=str(tmp_path / "storage" / "videos" / "ep01.media"), language="en")
        with Ledger.for_config(settings) as ledger:
            job = ledger.job("ep01")
        assert (job["stage"], job["failure_kind"], job["transcribe_failures"]) == ("failed", "host", 0)
        assert str(model) in job["last_error"]
    worker.stop(config.transcribe.as_dict(), data)
    assert failures.given_up(data) == set() and (data / "audio" / "ep01.wav").is_file()
