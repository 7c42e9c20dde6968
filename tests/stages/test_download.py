"""Real yt-dlp downloads from a loopback server; real PyAV checks."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.server import MediaServer

from scribeflow.config import settings as cfg
from scribeflow.stages.download import DownloadFailed, download_episode, parse_rate, ydl_options
from scribeflow.stages.media import MediaError, extract_audio, read_wav, validate


@pytest.fixture
def config(tmp_path):
    return cfg.validate({"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
                         "download": {"retries": 1}})


def test_downloads_and_validates_a_speech_video(media_server, speech_dir, config, tmp_path):
    out = tmp_path / "storage" / "videos" / "ep01.media"
    result = download_episode("ep01", media_server.url("ep01.mp4"), out, config)
    assert out.read_bytes() == (speech_dir / "ep01.mp4").read_bytes()
    assert result["size_source"] == "Content-Length" and result["declared"] == out.stat().st_size
    assert result["duration"] > 1.0


def test_a_stale_partial_file_is_not_resumed(media_server, speech_dir, config, tmp_path):
    out = tmp_path / "storage" / "videos" / "ep02.media"
    out.parent.mkdir(parents=True)
    (out.parent / "ep02.media.part").write_bytes(b"garbage" * 5000)
    out.write_bytes(b"truncated")  # yt-dlp would call this "already downloaded"
    download_episode("ep02", media_server.url("ep02.mp4"), out, config)
    assert out.read_bytes() == (speech_dir / "ep02.mp4").read_bytes()
    assert not (out.parent / "ep02.media.part").exists()


def test_a_truncated_file_fails_validation_and_leaves_nothing(speech_dir, config, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    data = (speech_dir / "ep03.mp4").read_bytes()
    (served / "cut.mp4").write_bytes(data[: len(data) // 2])  # header intact, second half missing
    out = tmp_path / "storage" / "videos" / "cut.media"
    with MediaServer(served) as server, pytest.raises(DownloadFailed, match="truncated"):
        download_episode("cut", server.url("cut.mp4"), out, config)
    assert list(out.parent.iterdir()) == []


def test_a_download_that_grows_past_its_declared_size_is_stopped_and_tried_once_with_the_measured_size(
        speech_dir, config, tmp_path, caplog):
    out = tmp_path / "storage" / "videos" / "big.media"
    with MediaServer(speech_dir, hide_length=True) as server:
        result = download_episode("big", server.url("ep01.mp4"), out, config, expected_size_mb=0.01)
    assert "grew past its declared 10 kB" in caplog.text and "trying once more" in caplog.text
    assert result["size_source"] == "measured by the attempt that was stopped"
    assert out.read_bytes() == (speech_dir / "ep01.mp4").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["big.media"]


def small_budget(tmp_path, hard_mb: float):
    """Settings with a budget of `hard_mb`, and a 3 MB file of noise to serve (never
    validated: every download of it is stopped long before its end)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "huge.mp4").write_bytes(os.urandom(3_000_000))
    gb = hard_mb / 1000
    return served, cfg.validate({"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
                                 "disk_management": {"hard_limit_gb": gb, "pause_threshold_gb": gb * 0.75,
                                                     "resume_threshold_gb": gb / 2}})


def test_a_download_that_grows_past_its_measured_size_too_is_given_up(tmp_path):
    # No length anywhere: the retry declares the room above the pause threshold (~0.6 MB here).
    served, config = small_budget(tmp_path, 4)
    out = tmp_path / "storage" / "videos" / "huge.media"
    with MediaServer(served, hide_length=True) as server, pytest.raises(DownloadFailed) as raised:
        download_episode("huge", server.url("huge.mp4"), out, config, expected_size_mb=0.1)
    assert raised.value.permanent and "grew past its declared size twice" in str(raised.value)
    assert "expected_size_mb" in str(raised.value) and "scribeflow retry huge" in str(raised.value)
    assert list(out.parent.iterdir()) == []


def test_a_download_whose_measured_size_cannot_fit_the_budget_never_fits(tmp_path):
    served, settings = small_budget(tmp_path, 2)
    out = tmp_path / "storage" / "videos" / "huge.media"
    # The GET says its length: the share written when stopped sizes the whole.
    with MediaServer(served) as server, pytest.raises(DownloadFailed) as raised:
        download_episode("huge", server.url("huge.mp4"), out, settings, expected_size_mb=0.2)
    message = str(raised.value)
    assert raised.value.permanent and "never fits" in message and "MB" in message
    assert "hard limit of 2 MB" in message, message
    assert list(out.parent.iterdir()) == []


def test_missing_episode_is_a_permanent_failure(media_server, config, tmp_path):
    out = tmp_path / "storage" / "videos" / "gone.media"
    with pytest.raises(DownloadFailed) as info:
        download_episode("gone", media_server.url("nothing-here.mp4"), out, config)
    assert info.value.permanent and "404" in str(info.value)
    assert not out.exists()


def test_download_options_pass_through(tmp_path):
    dl = cfg.validate({"download": {"rate_limit": "2M", "sleep_interval": 3, "max_sleep_interval": 9,
                                    "cookies": "/c.txt", "proxy": "socks5://127.0.0.1:1080",
                                    "max_filesize_mb": 700, "user_agent": "ua"}}).download
    opts = ydl_options(dl, tmp_path / "50%(id)s.media", [])
    assert opts["retries"] == 10 and opts["format"] == "bestaudio/best"
    assert opts["ratelimit"] == 2 * 1024**2 and opts["sleep_interval"] == 3 and opts["max_sleep_interval"] == 9
    assert opts["cookiefile"] == "/c.txt" and opts["proxy"].startswith("socks5")
    assert opts["max_filesize"] == 700_000_000 and opts["http_headers"]["User-Agent"] == "ua"
    assert opts["outtmpl"].endswith("50%%(id)s.media")  # a % in a path cannot inject a field
    assert parse_rate("50K") == 51200 and parse_rate(1000) == 1000 and parse_rate(None) is None


def test_extract_audio_makes_16k_mono_of_the_full_length(speech_dir, tmp_path):
    info = validate(speech_dir / "ep01.mp4")
    wav = tmp_path / "a.wav"
    seconds = extract_audio(speech_dir / "ep01.mp4", wav)
    assert seconds == pytest.approx(info.duration, abs=0.1)
    samples = read_wav(wav)
    assert len(samples) == pytest.approx(16000 * seconds, abs=2) and abs(samples).max() > 0.05
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temp file left


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to build the fixture")
def test_media_without_audio_or_with_garbage_fails_clearly(tmp_path):
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=d=1:s=64x48",
                    "-c:v", "libx264", str(silent)], check=True)
    with pytest.raises(MediaError, match="no audio stream"):
        validate(silent)
    with pytest.raises(MediaError, match="no audio stream"):
        extract_audio(silent, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x13junk" * 4000)
    with pytest.raises(MediaError, match="not a readable media file"):
        validate(garbage)


def test_the_retry_declares_what_fits_and_never_fits_only_when_even_the_least_whole_cannot(tmp_path):
    """Stopped at 1.5 MB within its 2nd of 4 fragments (25-50 % written): the whole is at
    least 3 MB. Under a 4 MB budget the extrapolation from 25 % (7.5 MB) and the least
    whole plus the margin do not fit, the least whole does: it is declared. Stopped at
    1.5 MB within its 2nd of 10 (10-20 %): at least 7.5 MB, never fits."""
    from scribeflow.stages.download import SizeExceeded, _declare_after_stop

    _, settings = small_budget(tmp_path, 4)
    fits = SizeExceeded("ep: stopped", written=1_500_000, fraction=(0.25, 0.5), declared=1_000_000)
    assert _declare_after_stop(fits, settings, "ep", retried=False) == 3_000_000
    never = SizeExceeded("ep: stopped", written=1_500_000, fraction=(0.1, 0.2), declared=1_000_000)
    with pytest.raises(DownloadFailed, match=r"never fits.*at least 7.5 MB in all") as raised:
        _declare_after_stop(never, settings, "ep", retried=False)
    assert raised.value.permanent


def test_a_stream_of_unknown_size_that_cannot_fit_beside_the_kept_files_never_fits_in_its_first_run(tmp_path):
    """Stopped at 1.5 MB of an unknown total under a 4 MB budget: an empty pipeline could
    take its least whole, but 3 MB of transcripts are kept: it can never be admitted, so it
    is given up now, with its sizes, instead of waiting at the gate every run."""
    from scribeflow.budget.gate import DownloadGate
    from scribeflow.stages.download import SizeExceeded, _declare_after_stop, largest_now

    _, settings = small_budget(tmp_path, 4)
    stopped = SizeExceeded("ep: stopped", written=1_500_000, fraction=None, declared=1_000_000)
    assert _declare_after_stop(stopped, settings, "ep", retried=False)  # an empty pipeline could take it
    transcripts = Path(settings.data_dir) / "transcripts"
    transcripts.mkdir(parents=True, exist_ok=True)
    (transcripts / "kept.json").write_bytes(b"x" * 3_000_000)
    gate = DownloadGate.from_config(settings)
    with pytest.raises(DownloadFailed, match=r"never fits.*1.5 MB written of an unknown total.*beside the files "
                                             r"the pipeline keeps") as raised:
        _declare_after_stop(stopped, settings, "ep", retried=False, limit=largest_now(settings, gate))
    assert raised.value.permanent
