"""Failed episodes (given-up markers, report, retry) and the ledger/disk consistency check."""

import json
from pathlib import Path

import pytest

from scribeflow.budget.cleanup import clean_orphans
from scribeflow.config import settings as cfg
from scribeflow.config.layout import Layout
from scribeflow.ops import cli
from scribeflow.ops.check import check_consistency
from scribeflow.stages.download import DownloadFailed
from scribeflow.stages.media import MediaError
from scribeflow.state import failures
from scribeflow.state.ledger import Ledger


@pytest.fixture
def config(tmp_path):
    return cfg.validate({"data_dir": str(tmp_path / "d"), "storage_dir": str(tmp_path / "s"),
                         "download": {"max_attempts": 2}})


@pytest.fixture
def ledger(config):
    with Ledger.for_config(config) as ledger:
        yield ledger


def fail_download(config, ledger, episode, exc):
    ledger.set_stage(episode, "downloading")
    return failures.record(config, ledger, episode, "download", exc)


def test_a_permanent_failure_gives_the_episode_up_at_once(config, ledger):
    assert fail_download(config, ledger, "gone", DownloadFailed("gone: HTTP 404", permanent=True))
    assert failures.given_up(config.data_dir) == {"gone"}
    marker = json.loads((Layout.of(config.data_dir).failed / "gone.json").read_text())
    assert marker["permanent"] and marker["attempts"] == 1 and "HTTP 404" in marker["reason"]
    job = ledger.job("gone")
    assert job["stage"] == "failed" and "HTTP 404" in job["last_error"]


def test_a_transient_download_failure_is_given_up_after_max_attempts(config, ledger):
    flaky = DownloadFailed("flaky: HTTP 503", transient=True)
    assert not fail_download(config, ledger, "flaky", flaky)
    assert failures.given_up(config.data_dir) == set()
    assert fail_download(config, ledger, "flaky", flaky)  # second run: max_attempts 2
    assert failures.given_up(config.data_dir) == {"flaky"}


def test_unusable_media_in_extraction_is_permanent_other_crashes_are_not(config, ledger):
    assert failures.record(config, ledger, "bad", "extract_audio", MediaError("bad.media: has no audio stream"))
    for _ in range(5):
        assert not failures.record(config, ledger, "crash", "extract_audio", MemoryError("out of memory"))
    assert failures.given_up(config.data_dir) == {"bad"}


def test_a_transcription_that_keeps_failing_is_given_up_after_max_attempts(config, ledger):
    config = cfg.updated(config, {"transcribe": {"max_attempts": 3}})
    ledger.set_stage("oom", "downloading")  # one download, then transcriptions that fail
    crash = RuntimeError("CTranslate2 failed on this audio")
    for run in (1, 2):
        ledger.set_stage("oom", "transcribing")
        assert not failures.record(config, ledger, "oom", "transcribe", crash)
        # Ctrl-C or SIGTERM in the middle of a transcription is not the episode's fault: never counted.
        assert not failures.record(config, ledger, "oom", "transcribe", KeyboardInterrupt())
    assert failures.given_up(config.data_dir) == set()
    # An interruption is not a failure: the episode is back where it was, marked interrupted.
    assert failures.render(failures.report(config)) == "No failed episodes."
    job = ledger.job("oom")
    assert job["stage"] == "extracted" and job["last_error"].startswith("interrupted during transcribe")
    assert job["transcribe_failures"] == 2 and job["failure_kind"] == "interrupted"
    # Out of GPU memory even at batch 1 (the worker tried the smaller batches first) counts
    # like any other failure: the third gives the episode up, and its audio is deleted.
    layout = Layout.of(config.data_dir)
    layout.audio.mkdir(parents=True, exist_ok=True)
    for path in (layout.audio_file("oom"), layout.speech_file("oom"), layout.audio_file("other")):
        path.write_bytes(b"RIFF")
    assert failures.record(config, ledger, "oom", "transcribe", RuntimeError("CUDA failed with error out of memory"))
    marker = json.loads((layout.failed / "oom.json").read_text())
    assert (marker["step"], marker["attempts"], marker["permanent"]) == ("transcribe", 3, False)
    assert [p.name for p in layout.audio.iterdir()] == ["other.wav"]
    assert ledger.job("oom")["audio_deleted"] == 1
    assert failures.retry(config, ["oom"]) == ["oom"]
    assert ledger.job("oom")["transcribe_failures"] == 0


def test_a_ledger_from_before_transcribe_failures_gains_the_column(tmp_path):
    import sqlite3

    db = tmp_path / "jobs.db"
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, stage TEXT NOT NULL DEFAULT 'queued', attempts INTEGER "
                "NOT NULL DEFAULT 0, last_error TEXT, updated_at REAL, queued_at REAL, failed_at REAL)")
    old.execute("INSERT INTO jobs (id, stage, attempts) VALUES ('ep', 'failed', 2)")
    old.commit()
    old.close()
    with Ledger(db) as ledger:
        assert ledger.job("ep")["transcribe_failures"] == 0
        assert ledger.add_transcribe_failure("ep") == 1
    with Ledger(db) as ledger:  # opened again: the column is there once
        assert ledger.job("ep")["transcribe_failures"] == 1


def test_report_and_retry(config, ledger):
    fail_download(config, ledger, "gone", DownloadFailed("gone: HTTP 410", permanent=True))
    fail_download(config, ledger, "flaky", DownloadFailed("flaky: timed out", transient=True))
    ledger.set_stage("fine", "transcribed")
    rows = {r["id"]: r for r in failures.report(config)}
    assert set(rows) == {"gone", "flaky"}
    assert rows["gone"]["given_up"] and rows["gone"]["permanent"] and rows["gone"]["step"] == "download"
    assert not rows["flaky"]["given_up"] and rows["flaky"]["attempts"] == 1
    text = failures.render(failures.report(config))
    assert "2 failed episode(s): 1 given up" in text and "gone  [permanent, 1 attempt(s)]" in text

    with pytest.raises(ValueError, match="not failed episodes: fine"):
        failures.retry(config, ["fine"])
    assert failures.retry(config, ["gone"]) == ["gone"]
    assert failures.given_up(config.data_dir) == set()
    job = ledger.job("gone")
    assert (job["stage"], job["attempts"], job["last_error"]) == ("queued", 0, None)
    assert failures.retry(config) == ["flaky"]
    assert failures.report(config) == []


def test_cli_failed_retry_and_check(config, ledger, tmp_path, capsys):
    configfile = tmp_path / "c.yaml"
    configfile.write_text(json.dumps({"data_dir": config.data_dir, "storage_dir": config.storage_dir}))
    fail_download(config, ledger, "gone", DownloadFailed("gone: HTTP 404", permanent=True))
    assert cli.main(["failed", "--json", "--configfile", str(configfile)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["gone"]
    assert cli.main(["retry", "gone", "--all", "--configfile", str(configfile)]) == 2
    assert cli.main(["retry", "nope", "--configfile", str(configfile)]) == 2
    assert "not failed episodes: nope" in capsys.readouterr().err
    assert cli.main(["check", "--configfile", str(configfile)]) == 0
    assert cli.main(["retry", "--all", "--configfile", str(configfile)]) == 0
    assert "1 episode(s) will be tried again by the next run: gone" in capsys.readouterr().out


def touch(path, data=b"\0" * 4096):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cfg_path(config, root, *parts):
    """A path under data_dir ("d") or storage_dir ("s")."""
    return Path(config.data_dir if root == "d" else config.storage_dir).joinpath(*parts)


def transcript(config, episode):
    t = {"id": episode, "language": "en", "duration": 1.0, "model": "m", "options": {}, "text": "hi",
         "segments": [{"start": 0, "end": 1, "text": "hi"}]}
    return touch(cfg_path(config, "d", "transcripts", f"{episode}.json"), json.dumps(t).encode())


def test_consistency_check_finds_each_kind_of_disagreement(config, ledger):
    assert check_consistency(config) == []
    ledger.set_stage("done", "transcribed", video_deleted=1, audio_deleted=1)
    transcript(config, "done")
    assert check_consistency(config) == []

    ledger.set_stage("lost", "transcribed")  # transcript missing
    ledger.set_stage("broken", "transcribed")
    touch(cfg_path(config, "d", "transcripts", "broken.json"), b'{"id": "broken", "text": ')
    ledger.set_stage("behind", "downloading")  # the ledger missed the transcript
    transcript(config, "behind")
    transcript(config, "stray")  # not in the ledger
    touch(cfg_path(config, "s", "videos", "done.media"))  # deleted, says the ledger
    touch(cfg_path(config, "s", "videos", "x.media.part"))
    touch(cfg_path(config, "d", "audio", ".y.wav.abc.tmp"))
    fail_download(config, ledger, "gone", DownloadFailed("HTTP 404", permanent=True))
    ledger.set_stage("gone", "queued")  # marker and ledger disagree
    touch(cfg_path(config, "d", "audio", "done.wav"))  # deleted, says the ledger
    touch(cfg_path(config, "d", "transcripts", ".half.json.abc.tmp"))
    fail_download(config, ledger, "unknown", DownloadFailed("HTTP 404", permanent=True))
    with ledger.transaction() as c:  # a marker whose row is gone
        c.execute("DELETE FROM jobs WHERE id = 'unknown'")
    problems = "\n".join(check_consistency(config))
    for fragment in ("lost: ledger says transcribed but", "lost.json is missing", "broken.json is not valid JSON",
                     "behind: a transcript exists but the ledger says downloading",
                     "stray: a transcript exists but the ledger has no row",
                     "done: ledger says the video was deleted but it is on disk",
                     "x.media.part: partial download left behind", ".y.wav.abc.tmp: half-written audio",
                     "gone: marked failed", "done: ledger says the audio was deleted but it is on disk",
                     "unknown: marked failed but not in the ledger", ".half.json.abc.tmp: half-written transcript"):
        assert fragment in problems, (fragment, problems)


def test_orphan_cleanup_keeps_what_pending_jobs_need_and_drops_given_up_files(config, ledger):
    needed_audio = touch(cfg_path(config, "d", "audio", "a.wav"))
    transcript(config, "a")  # killed after the transcript was written: Snakemake reruns it
    stale_audio = touch(cfg_path(config, "d", "audio", "b.wav"))
    transcript(config, "b")
    fail_download(config, ledger, "c", DownloadFailed("HTTP 410", permanent=True))
    given_up_video = touch(cfg_path(config, "s", "videos", "c.media"))
    pending_video = touch(cfg_path(config, "s", "videos", "d.media"))
    files, _ = clean_orphans(config, keep=[str(needed_audio)])
    assert files == 2
    assert needed_audio.exists() and pending_video.exists()
    assert not stale_audio.exists() and not given_up_video.exists()


def test_a_transcription_step_that_crashes_on_its_audio_is_given_up_on_the_third_run(tmp_path, model_path):
    """The real step, faster-whisper and ledger: an audio file it cannot decode (not the
    media check's job: extraction wrote it) fails each run until max_attempts."""
    from scribeflow.stages import steps

    config = cfg.validate({"data_dir": str(tmp_path / "d"), "storage_dir": str(tmp_path / "s"),
                           "transcribe": {"model": model_path, "device": "cpu", "compute_type": "int8",
                                          "worker": {"enabled": False}}})
    audio = tmp_path / "d" / "audio" / "ep.wav"
    audio.parent.mkdir(parents=True)
    audio.write_bytes(b"RIFF" + b"\x00garbage" * 512)
    outputs = {"json": str(tmp_path / "d" / "transcripts" / "ep.json")}
    for run in (1, 2, 3):
        with pytest.raises(Exception):
            steps.transcribe(settings=config, episode="ep", audio=str(audio), outputs=outputs,
                             video=str(tmp_path / "s" / "videos" / "ep.media"))
        assert failures.given_up(config.data_dir) == ({"ep"} if run == 3 else set())
    assert not Path(outputs["json"]).exists()
    (row,) = failures.report(config)
    assert (row["step"], row["attempts"], row["given_up"]) == ("transcribe", 3, True)


def test_failures_are_charged_to_whom_they_belong(config, ledger):
    """The host's or the environment's failures (403, 5xx, timeouts, extractor errors, a
    full or stalled disk) never count against an episode, however often; an interruption
    (SIGTERM) puts it back; `scribeflow failed` groups them by kind."""
    from scribeflow.budget.gate import DiskStalled
    from scribeflow.stages.download import DiskFull

    host_faults = [DownloadFailed("ep: HTTP 403 (Forbidden)", status=403, kind="host"),
                   DownloadFailed("ep: HTTP 503", transient=True, kind="host"),
                   DiskFull("ep: the disk is full (ENOSPC) while downloading", transient=True),
                   DiskStalled("downloads paused for 900 s and nothing in flight can free space")]
    for _ in range(3):
        for exc in host_faults:
            assert not fail_download(config, ledger, "ep", exc)
    job = ledger.job("ep")
    assert job["attempts"] == 0 and job["failure_kind"] == "host"
    assert failures.given_up(config.data_dir) == set()
    assert not fail_download(config, ledger, "cut", KeyboardInterrupt("SIGTERM"))
    job = ledger.job("cut")
    assert job["stage"] == "queued" and job["attempts"] == 0 and "SIGTERM" in job["last_error"]
    fail_download(config, ledger, "gone", DownloadFailed("gone: HTTP 404", permanent=True))
    text = failures.render(failures.report(config))
    assert text.index("the episode's own") < text.index("gone") < text.index("the host's") < text.index("  ep  ")
