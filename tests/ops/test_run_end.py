"""The run's closing line (scribeflow.ops.run_end), from a real ledger and real markers.
The run that prints it is tests/workflow/test_workflow.py's dead-link run."""

import pytest

from scribeflow.config import settings as cfg
from scribeflow.config.layout import Layout
from scribeflow.ops.run_end import closing_line
from scribeflow.stages.download import DownloadFailed
from scribeflow.state import failures
from scribeflow.state.ledger import Ledger


@pytest.fixture
def config(tmp_path):
    return cfg.validate({"data_dir": str(tmp_path / "d"), "storage_dir": str(tmp_path / "s")})


def analysed(config, *episodes):
    folder = Layout.from_config(config).episode_stats
    folder.mkdir(parents=True, exist_ok=True)
    for episode in episodes:
        (folder / f"{episode}.json").write_text("{}")


def test_the_closing_line_counts_the_failed_the_retried_and_the_given_up(config):
    analysed(config, "a", "b", "other-catalogue")
    with Ledger.for_config(config) as ledger:
        for episode in ("gone", "down", "elsewhere"):
            ledger.set_stage(episode, "downloading")
        failures.record(config, ledger, "gone", "download", DownloadFailed("gone: HTTP 404", permanent=True))
        # The host's fault: never counted against the episode, tried again by the next run.
        failures.record(config, ledger, "down", "download", DownloadFailed("down: HTTP 503", kind=failures.HOST))
        failures.record(config, ledger, "elsewhere", "download", DownloadFailed("x: HTTP 404", permanent=True))
    line = closing_line(config, ["a", "b", "gone", "down", "c"])  # "elsewhere" is not this run's
    assert line == ("scribeflow: 2 of 5 episode(s) analysed; 2 failed: 1 to be tried again by the next run, "
                    "1 given up until `scribeflow retry`. `scribeflow failed` lists them and why.")


def test_a_run_without_failures_says_so(config):
    analysed(config, "a")
    assert closing_line(config, ["a", "b"]) == "scribeflow: 1 of 2 episode(s) analysed; none failed"


def test_a_job_that_died_before_recording_its_failure_still_counts(config):
    # The ledger knows nothing of "crashed" (its job died first); Snakemake saw its job fail.
    analysed(config, "a")
    with Ledger.for_config(config) as ledger:
        ledger.set_stage("crashed", "extracted")
    assert closing_line(config, ["a", "crashed", "c"], failed_now=["crashed", "not-in-catalogue"]) == (
        "scribeflow: 1 of 3 episode(s) analysed; 1 failed: 1 to be tried again by the next run, 0 given up "
        "until `scribeflow retry`. `scribeflow failed` lists them and why.")


def test_after_a_ctrl_c_the_end_builds_nothing_and_says_how_to_go_on(config, monkeypatch, capsys):
    import atexit
    import os
    import signal
    import time

    from scribeflow.ops import run_end

    monkeypatch.setattr(run_end, "_interrupted", [])
    lines = []
    monkeypatch.setattr(atexit, "register", lambda f: lines.append(f))  # the line Python would print at exit
    previous = signal.getsignal(signal.SIGINT)
    try:
        run_end.note_interrupts()
        with pytest.raises(KeyboardInterrupt):  # what Snakemake's scheduler then catches
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at once; this only bounds the wait
    finally:
        signal.signal(signal.SIGINT, previous)
    run_end.finish(config, ["a"], unreached={"corpus", "plots"})
    assert capsys.readouterr().err == ""  # no summaries built
    assert not (Layout.from_config(config).corpus / "episodes.tsv").exists()
    lines[0]()
    assert capsys.readouterr().err == ("scribeflow: interrupted; the same command goes on where it stopped. "
                                       "0 of 1 episode(s) analysed; none failed\n")
