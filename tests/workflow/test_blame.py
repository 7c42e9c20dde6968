"""Whose fault, on a host that serves every episode but a few: the region-locked episode
(403 for ever), a removed one (404), a page without media and one that answers 500 for
ever fail as their own, once a run, and the host is never paused; a host-wide outage is still the host's
(test_real_sites.py). Real Snakemake, real yt-dlp, a server on 127.0.0.1."""

import json
import shutil
import sqlite3
import time

import pytest
from conftest import run_snakemake, scribeflow, workflow_config, write_catalogue
from support.server import HTML_PAGE, MediaServer

from scribeflow.stages.download import classify

PLAYING = [f"ep{n:02d}" for n in range(1, 9)]


def _rows(tmp):
    with sqlite3.connect(tmp / "data" / "jobs.db") as db:
        return {r[0]: r[1:] for r in db.execute("SELECT id, stage, attempts, failure_kind, last_error FROM jobs")}


@pytest.fixture
def site(tmp_path, speech_dir):
    """8 episodes that play, one region-locked (403 for every request), one removed, one
    page without media, one broken (500 for every request), all on one host."""
    root = tmp_path / "site"
    root.mkdir()
    for episode in PLAYING:
        shutil.copy(speech_dir / f"{episode}.mp4", root / f"{episode}.mp4")
    shutil.copy(speech_dir / "ep01.mp4", root / "locked.mp4")
    shutil.copy(speech_dir / "ep02.mp4", root / "broken.mp4")
    (root / "page.html").write_bytes(HTML_PAGE)
    with MediaServer(root, faults={"/locked.mp4": ["403"] * 100_000, "/broken.mp4": ["500"] * 100_000}) as server:
        rows = [{"id": e, "url": server.url(f"{e}.mp4")} for e in PLAYING]
        rows += [{"id": "locked", "url": server.url("locked.mp4")}, {"id": "gone", "url": server.url("gone.mp4")},
                 {"id": "page", "url": server.url("page.html")}, {"id": "broken", "url": server.url("broken.mp4")}]
        yield server, write_catalogue(tmp_path / "episodes.csv", rows)


@pytest.mark.slow
def test_one_region_locked_episode_fails_as_its_own_once_a_run_and_never_pauses_its_host(
        tmp_path, site, model_path):
    server, catalogue = site
    config = workflow_config(tmp_path, catalogue, model_path)
    configfile = ["--configfile", str(tmp_path / "config.yaml")]
    started = time.monotonic()
    run_snakemake(tmp_path, config, "--cores", "4", check=False, timeout=900)
    print(f"first run: {time.monotonic() - started:.0f} s")
    rows = _rows(tmp_path)
    assert {e: rows[e][0] for e in PLAYING} == {e: "analyzed" for e in PLAYING}
    assert {e: rows[e][:3] for e in ("locked", "gone", "page", "broken")} == {
        e: ("failed", 1, "episode") for e in ("locked", "gone", "page", "broken")}, rows
    assert "403" in rows["locked"][3] and "serves other episodes" in rows["locked"][3], rows["locked"]
    assert "500" in rows["broken"][3] and "serves other episodes" in rows["broken"][3], rows["broken"]
    assert len(server.served("broken.mp4")) <= 8, server.served("broken.mp4")  # four tries, not eleven
    # One request for the page, the media once, and once more after a fresh extraction: no
    # retries with backoff inside the job.
    assert len(server.served("locked.mp4")) <= 4, server.served("locked.mp4")
    log = (tmp_path / "data" / "logs" / "download" / "locked.log").read_text()
    assert "retrying in" not in log and "is paused" not in log and "probes" not in log, log[-2000:]
    status = json.loads(scribeflow(tmp_path, "status", "--json", *configfile))
    assert not status["hosts_paused"]

    # Later runs: it is tried once a run, and given up after download.max_attempts (3) runs
    # with the reason a person reads; nothing else is touched.
    for run in (2, 3):
        run_snakemake(tmp_path, config, "--cores", "4", check=False, timeout=600)
        assert _rows(tmp_path)["locked"][1] == run
    failed = scribeflow(tmp_path, "failed", *configfile)
    line = next(x for x in failed.splitlines() if x.strip().startswith("locked"))
    assert "given up" in line and "403" in line and "serves other episodes" in line and "in 3 runs" in line, failed
    assert len(server.served("locked.mp4")) <= 12
    before = len(server.requests)
    run_snakemake(tmp_path, config, "--cores", "4", timeout=600)  # a fourth run asks for nothing
    assert len(server.requests) == before
    assert not json.loads(scribeflow(tmp_path, "status", "--json", *configfile))["hosts_paused"]


def test_the_sites_own_words_for_an_episode_are_judged_not_charged_to_the_host_at_once():
    from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError

    for error in (GeoRestrictedError("This video is not available from your location"),
                  ExtractorError("Private video. Sign in if you've been granted access", expected=True),
                  ExtractorError("Video unavailable", expected=True)):
        failure = classify(DownloadError(str(error), exc_info=(type(error), error, None)), "ep01")
        assert failure.either and not failure.permanent, error
        assert "ep01" in str(failure) and str(error).split(".")[0] in str(failure)
    broken = classify(ExtractorError("Unable to extract video data"), "ep01")  # the site changed
    assert broken.kind == "host" and not broken.either and "update yt-dlp" in str(broken)


@pytest.mark.slow
def test_a_run_whose_other_work_is_done_does_not_wait_on_one_episodes_backoff(tmp_path, speech_dir, model_path):
    """An episode whose server answers 503 for ever, its retries waiting 10, 20, 40, 80 s...:
    the short waits are waited for; once the other episode is done, a wait over 30 s is
    not; the failure is the host's (not counted) and the next run tries again."""
    with MediaServer(speech_dir, faults={"/ep02.mp4": ["503"] * 100_000}) as server:
        catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "ep01", "url": server.url("ep01.mp4")},
                                                                {"id": "ep02", "url": server.url("ep02.mp4")}])
        config = workflow_config(tmp_path, catalogue, model_path,
                                 download={"retry_backoff_seconds": 10, "max_backoff_seconds": 600})
        started = time.monotonic()
        run_snakemake(tmp_path, config, "--cores", "2", check=False, timeout=900)
        took = time.monotonic() - started
    rows = _rows(tmp_path)
    assert rows["ep01"][0] == "analyzed"
    assert rows["ep02"][:3] == ("failed", 0, "host"), rows["ep02"]
    assert "nothing else of this run is in flight" in rows["ep02"][3]
    # 10 retries would have waited 10 + 20 + 40 + 80 + ... s; it stopped at a wait over 30 s.
    assert 2 <= len(server.served("ep02.mp4")) <= 4, server.served("ep02.mp4")
    print(f"run: {took:.0f} s")
