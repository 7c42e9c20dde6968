"""The transcription worker: same transcript as in-process, one model load for many
requests, and a job that still succeeds when no worker can serve it."""

import contextlib
import gzip
import json
import logging
import re
import socket
import threading
import time

import pytest
from conftest import leftover_temp_files, recall, run_snakemake, workflow_config, write_catalogue
from support.fixtures import SENTENCES, make_speech_video

from scribeflow.stages.media import extract_audio, read_wav
from scribeflow.stages.transcription import speech, worker
from scribeflow.stages.transcription.decode import decode_options
from scribeflow.stages.transcription.transcript import read_transcript


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker")
    extract_audio(make_speech_video(SENTENCES[1], folder / "clip.mp4"), folder / "clip.wav")
    return folder / "clip.wav"


def settings(model_path, **worker_settings):
    return {"model": model_path, "device": "cpu", "compute_type": "int8", "cpu_threads": 2, "num_workers": 1,
            "beam_size": 5, "vad_filter": True, "condition_on_previous_text": False, "word_timestamps": True,
            "hallucination_silence_threshold": None, "initial_prompt": None, "batch_size": 0,
            "worker": {"enabled": True, "idle_timeout_seconds": 30, "start_timeout_seconds": 60, **worker_settings}}


def ping(tc, data_dir):
    return worker.request(tc, data_dir, {"op": "ping"}, start=False)


def test_the_worker_transcribes_like_the_job_itself_and_loads_the_model_once(tmp_path, wav, model_path):
    tc, data = settings(model_path), tmp_path / "data"
    options = decode_options(tc, "en")
    try:
        first = worker.transcribe(tc, data, wav, options, "clip")
        pid = ping(tc, data)["pid"]
        second = worker.transcribe(tc, data, wav, options, "clip")
        state = ping(tc, data)
        assert {k: state[k] for k in ("pid", "key", "served")} == {"pid": pid, "key": worker.worker_key(tc, data),
                                                                   "served": 2}
        # The model's share of the worker's time, and where its VAD came from: it ran there.
        stats = state["stats"]
        assert stats["requests"] == 2 and 0 < stats["busy_seconds"] <= stats["wall_seconds"]
        # Once each for the decoding, then the coverage check answered from it.
        assert (stats["vad_saved"], stats["vad_ran"]) == (2, 2) and stats["cpu_seconds"] > 0
        # The speech found at extraction: the worker runs no VAD, and transcribes the same.
        found = tmp_path / "clip.speech.npz"
        speech.save(speech.compute(read_wav(wav), 0), found)
        third = worker.transcribe(tc, data, wav, options, "clip", speech_file=found)
        assert third.pop("vad_calls") == {"saved": 2, "ran": 0}
        assert ping(tc, data)["stats"]["vad_ran"] == 2
    finally:
        assert worker.stop(tc, data)
    in_process = worker.transcribe({**tc, "worker": {"enabled": False}}, data, wav, options)
    # Each says how much memory the process that transcribed held (for sizing machines).
    memories = [r.pop("memory") for r in (first, second, third, in_process)]
    assert all(m["peak_rss_bytes"] >= m["rss_bytes"] > 50 * 2**20 and m["gpu_bytes"] is None for m in memories)
    assert first == second == in_process
    assert {k: v for k, v in first.items() if k != "vad_calls"} == third
    assert "hello world" in first["segments"][0]["text"].lower() and first["segments"][0]["words"]
    log = worker.log_path(data, worker.worker_key(tc, data)).read_text()
    assert log.count("Loaded model") == 1 and "exiting after 3 transcription(s) (asked to)" in _wait_for(log, tc, data)

    # Other model settings, another worker.
    assert worker.worker_key({**tc, "compute_type": "float32"}, data) != worker.worker_key(tc, data)


def _wait_for(log, tc, data, seconds=10):
    deadline = time.monotonic() + seconds
    path = worker.log_path(data, worker.worker_key(tc, data))
    while "exiting" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log = path.read_text()
    return log


def test_a_job_still_succeeds_when_no_worker_can_start(tmp_path, wav, model_path, caplog):
    tc, data = settings(model_path), tmp_path / "data"
    options = decode_options(tc, "en")
    # The worker cannot write its log: a file stands where its folder should be.
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "transcribe_worker").write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="scribeflow.stages.transcription.worker"):
        raw = worker.transcribe(tc, data, wav, options, "clip")
    assert "No transcription worker (cannot write the worker's log" in caplog.text
    assert "hello world" in raw["segments"][0]["text"].lower()
    with pytest.raises(worker.WorkerUnavailable):
        ping(tc, data)


@contextlib.contextmanager
def dying_worker(tc, data_dir, waiting=False):
    """Something holds the worker's address and hangs up on every request, as a worker
    killed (OOM, kill -9) while transcribing does: its last heartbeat said it worked on the
    request (`waiting`: that the request still waited for the model behind another one)."""
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(worker.address(worker.worker_key(tc, data_dir)))
    squatter.listen(8)
    served = []

    def hang_up():
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:  # closed: the test is over
                return
            conn.recv(65536)
            conn.sendall(json.dumps({"heartbeat": {"waiting": waiting, "active": 0.5}}).encode() + b"\n")
            served.append(conn)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        yield served
    finally:
        squatter.close()


def test_a_worker_that_dies_mid_request_falls_back_in_process(tmp_path, wav, model_path, caplog):
    tc, data = settings(model_path), tmp_path / "data"
    with dying_worker(tc, data), caplog.at_level(logging.WARNING, logger="scribeflow.stages.transcription.worker"):
        raw = worker.transcribe(tc, data, wav, decode_options(tc, "en"), "clip")
    assert "the worker closed the connection" in caplog.text
    assert "hello world" in raw["segments"][0]["text"].lower()


def test_a_worker_that_goes_away_while_the_request_waits_counts_nothing(tmp_path, wav, model_path, caplog):
    """A worker that dies while this request was queued behind another one for the model
    (its heartbeat said so) was not killed by this audio: nothing is counted, the request
    goes to a new worker once more, and then the job transcribes it itself."""
    tc, data = settings(model_path), tmp_path / "data"
    died = []
    with dying_worker(tc, data, waiting=True) as served, \
            caplog.at_level(logging.WARNING, logger="scribeflow.stages.transcription.worker"):
        raw = worker.transcribe(tc, data, wav, decode_options(tc, "en"), "clip", on_worker_died=died.append)
    assert died == [] and len(served) == 2
    assert "went away while this request waited for the model" in caplog.text
    assert "hello world" in raw["segments"][0]["text"].lower()


def test_a_worker_death_counts_against_the_episode_and_the_third_failure_gives_it_up(tmp_path, wav, model_path):
    import shutil

    from scribeflow.config import settings as cfg
    from scribeflow.stages import steps
    from scribeflow.state import failures
    from scribeflow.state.ledger import Ledger

    data = tmp_path / "data"
    config = cfg.validate({"data_dir": str(data), "storage_dir": str(tmp_path / "storage"),
                           "transcribe": settings(model_path)})
    (data / "audio").mkdir(parents=True)
    for episode in ("first", "again"):
        shutil.copy(wav, data / "audio" / f"{episode}.wav")
    outputs = {e: {"json": str(data / "transcripts" / f"{e}.json")} for e in ("first", "again")}
    video = str(tmp_path / "storage" / "videos" / "gone.media")
    # Every request dies with the worker, as when one audio gets it killed for memory.
    with dying_worker(config.transcribe.as_dict(), str(data)):
        # A first death: counted, then the job transcribes in-process.
        steps.transcribe(settings=config, episode="first", audio=str(data / "audio" / "first.wav"),
                         outputs=outputs["first"], video=video, language="en")
        assert "hello world" in read_transcript(outputs["first"]["json"])["text"].lower()
        with Ledger.for_config(config) as ledger:
            assert (ledger.job("first")["stage"], ledger.job("first")["transcribe_failures"]) == ("transcribed", 1)
            ledger.set_stage("again", "transcribing")
            for _ in range(2):  # two earlier runs died on it too
                ledger.add_transcribe_failure("again")
        # The third failure (max_attempts 3): given up, without a try in-process.
        with pytest.raises(failures.TranscriptionCrashed, match="died while transcribing it, in 3 runs"):
            steps.transcribe(settings=config, episode="again", audio=str(data / "audio" / "again.wav"),
                             outputs=outputs["again"], video=video, language="en")
    assert failures.given_up(str(data)) == {"again"}
    marker = json.loads((data / "failed" / "again.json").read_text())
    assert (marker["step"], marker["attempts"]) == ("transcribe", 3)
    assert not (data / "transcripts" / "again.json").exists()


@pytest.mark.slow
def test_the_workflow_loads_the_model_once_and_writes_gzip_transcripts(tmp_path, media_server, model_path):
    rows = [{"id": f"ep{n:02d}", "url": media_server.url(f"ep{n:02d}.mp4"), "language": "en" if n < 3 else ""}
            for n in range(1, 4)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path, transcribe={
        "formats": ["srt", "vtt", "txt"], "gzip": True, "word_timestamps": True, "cpu_threads": 2})
    proc = run_snakemake(tmp_path, config, "--cores", "3")
    # Started by the run itself, so the model loaded while the first audio was extracted.
    assert "scribeflow: started the transcription worker" in proc.stdout + proc.stderr

    transcripts = tmp_path / "data" / "transcripts"
    assert sorted(p.name for p in transcripts.iterdir()) == sorted(
        f"{r['id']}.{f}.gz" for r in rows for f in ("json", "srt", "vtt", "txt"))
    for n, row in enumerate(rows):
        t = read_transcript(transcripts / f"{row['id']}.json.gz")
        assert t["language"] == "en" and recall(SENTENCES[n], t["text"]) >= 0.7, t["text"]
        assert all(s["words"] and s["words"][0]["start"] >= s["start"] for s in t["segments"])
        assert t["hallucinations"]["repetition"] == t["hallucinations"]["phrase"] == 0
        srt = gzip.decompress((transcripts / f"{row['id']}.srt.gz").read_bytes()).decode()
        assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt)
    assert leftover_temp_files(tmp_path) == []

    # One model load for the three jobs, in the worker, which the run's end let go.
    logs = tmp_path / "data" / "logs"
    for row in rows:
        job_log = (logs / "transcribe" / f"{row['id']}.log").read_text()
        assert "Transcribed by the worker" in job_log and "Loaded model" not in job_log
        assert "Started a transcription worker" not in job_log
    (worker_log,) = (logs / "transcribe_worker").glob("*.log")  # beside it: .log.stderr, for native crashes
    deadline = time.monotonic() + 10
    while "exiting" not in worker_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = worker_log.read_text()
    assert text.count("Loaded model") == 1 and "exiting after 3 transcription(s) (asked to)" in text

    dry = run_snakemake(tmp_path, config, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_prestart_starts_one_worker_without_waiting_and_the_jobs_use_it(tmp_path, wav, model_path):
    tc, data = settings(model_path), tmp_path / "data"
    started = time.monotonic()
    try:
        assert worker.prestart(tc, data)
        assert time.monotonic() - started < 1.0  # does not wait for the model
        deadline = time.monotonic() + 30
        while worker._connect(worker.worker_key(tc, data)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not worker.prestart(tc, data)  # one already runs
        pid = ping(tc, data)["pid"]
        worker.transcribe(tc, data, wav, decode_options(tc, "en"), "clip")
        state = ping(tc, data)
        assert {k: state[k] for k in ("pid", "key", "served")} == {"pid": pid, "key": worker.worker_key(tc, data),
                                                                   "served": 1}
    finally:
        worker.stop(tc, data)
    assert not worker.prestart({**tc, "worker": {"enabled": False}}, data)


def test_a_hung_worker_is_killed_and_replaced_and_the_episode_transcribed(tmp_path, wav, model_path, monkeypatch):
    """A worker that never answers (a wedged CUDA call; here a test hook) is killed when the
    request's timeout (start_timeout_seconds + factor x the audio's duration) passes, a new
    one is started and the episode transcribed."""
    flag = tmp_path / "hang-once"
    flag.write_text("")
    monkeypatch.setenv("SCRIBEFLOW_TEST_WORKER_FAULT", f"hang-once:{flag}")
    tc, data = settings(model_path, start_timeout_seconds=8, request_timeout_factor=1), tmp_path / "data"
    died = []
    started = time.monotonic()
    try:
        result = worker.transcribe(tc, data, wav, decode_options(tc, "en"), "clip", on_worker_died=died.append)
        assert "hello world" in result["segments"][0]["text"].lower()
        second = ping(tc, data)["pid"]
    finally:
        worker.stop(tc, data)
    assert 8 <= time.monotonic() - started < 60
    assert len(died) == 1 and isinstance(died[0], worker.WorkerHung) and "worked on the request for" in str(died[0])
    pid = int(re.search(r"pid (\d+)", str(died[0])).group(1))
    assert pid != second and not _alive(pid)


def test_out_of_gpu_memory_is_retried_on_the_same_model_with_a_smaller_batch(tmp_path, wav, model_path, monkeypatch):
    """CUDA out of memory (simulated by a test hook: no GPU here) with batch 8: the worker
    decodes again with 4, then 2, on the model it holds, and answers."""
    monkeypatch.setenv("SCRIBEFLOW_TEST_WORKER_FAULT", "oom-above:2")
    tc, data = {**settings(model_path), "batch_size": 8}, tmp_path / "data"
    try:
        result = worker.transcribe(tc, data, wav, decode_options(tc, "en"), "clip")
        assert ping(tc, data)["served"] == 1
    finally:
        worker.stop(tc, data)
    assert "hello world" in result["segments"][0]["text"].lower()
    log = _wait_for(worker.log_path(data, worker.worker_key(tc, data)).read_text(), tc, data)
    assert "with batch 8" in log and "again with batch 4" in log and "again with batch 2" in log
    assert log.count("Loaded model") == 1


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
