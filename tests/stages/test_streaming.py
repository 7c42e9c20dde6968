"""Streaming sources (HLS, DASH, a page with a player) downloaded by real yt-dlp from a
loopback server: sizes declared before the download, audio only, every file accounted
for and cleaned up; and the per-host politeness shared by all processes."""

import subprocess
import sys
import threading
import time

import pytest
from support.server import MediaServer

from scribeflow.budget.cleanup import clean_orphans
from scribeflow.budget.gate import DownloadGate
from scribeflow.budget.hosts import HostLimiter
from scribeflow.config import settings as cfg
from scribeflow.stages.download import DownloadFailed, SizeExceeded, download_episode
from scribeflow.stages.media import extract_audio, validate


@pytest.fixture
def config(tmp_path):
    c = cfg.validate({"data_dir": str(tmp_path / "data"), "storage_dir": str(tmp_path / "storage"),
                      "download": {"retries": 1, "retry_backoff_seconds": 0.2}})
    return c


@pytest.fixture
def videos(tmp_path):
    return tmp_path / "storage" / "videos"


def names(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind", ["hls_audio", "hls_muxed", "dash", "page"])
def test_a_stream_is_sized_before_it_downloads_audio_only_when_offered(kind, streams_dir, config, videos, tmp_path):
    folder, made = streams_dir
    path, _ = made[kind]
    out = videos / "ep.media"
    with MediaServer(folder) as server:
        result = download_episode("ep", server.url(path), out, config)
    manifest = (folder / path).stat().st_size
    # The declared size is the media's (from bitrates or segment sizes), not the
    # manifest's few hundred bytes, nor the 600 MB default: at most a few times the file.
    assert result["bytes"] <= result["declared"] <= 4 * result["bytes"] + 100_000, result
    assert result["declared"] > manifest and "default" not in result["size_source"]
    # Audio only whenever the source offers it; the muxed stream has nothing else.
    assert result["audio_only"] is (kind != "hls_muxed"), result
    assert result["format_id"] and result["protocol"].startswith(("m3u8", "http_dash"))
    # The rule's output holds usable audio; nothing else is left beside it.
    assert names(videos) == ["ep.media"]
    assert validate(out).duration > 2
    assert extract_audio(out, tmp_path / "ep.wav") > 2


def test_dash_audio_through_ffmpeg_fixups_and_a_merge(streams_dir, config, videos):
    # The DASH m4a fixup and a video+audio merge are ffmpeg post-processors: they need
    # real extensions ("{id}.media" made them fail with "Invalid argument"), and
    # their copy of the file is reserved.
    folder, made = streams_dir
    with MediaServer(folder) as server:
        config = cfg.updated(config, {"download": {"fixup": "detect_or_warn"}})
        fixed = download_episode("a", server.url(made["dash"][0]), videos / "a.media", config)
        config = cfg.updated(config, {"download": {"format": "bv+ba/b"}})
        merged = download_episode("b", server.url(made["dash"][0]), videos / "b.media", config)
    assert fixed["audio_only"] and fixed["ext"] == "m4a"
    assert not merged["audio_only"] and "+" in merged["format_id"]
    assert merged["declared"] >= 2 * merged["bytes"] * 0.9  # the parts, then the merged copy
    assert names(videos) == ["a.media", "b.media"]
    assert validate(videos / "b.media").duration > 2


def test_the_size_cap_counts_every_fragment_and_the_retry_declares_the_measured_whole(
        streams_dir, config, videos, caplog):
    folder, made = streams_dir
    with MediaServer(folder) as server:
        # The catalogue's figure wins over yt-dlp's; a fragment is ~4 KB, the stream ~30 KB.
        result = download_episode("ep", server.url(made["hls_audio"][0]), videos / "ep.media", config,
                                  expected_size_mb=0.005)
    assert "past its declared 5 kB" in caplog.text
    # The share of fragments written when it was stopped sizes the whole stream.
    assert result["size_source"] == "measured by the attempt that was stopped"
    assert result["declared"] >= result["bytes"]
    assert names(videos) == ["ep.media"]


def test_a_previous_attempts_fragments_are_removed_and_the_download_restarts(streams_dir, config, videos):
    folder, made = streams_dir
    videos.mkdir(parents=True)
    stale = ["ep@dl.mp4.part", "ep@dl.mp4.part-Frag3.part", "ep@dl.mp4.ytdl", "ep@dl.temp.mp4", "ep.media.part"]
    for name in stale:
        (videos / name).write_bytes(b"stale" * 1000)
    with MediaServer(folder) as server:
        download_episode("ep", server.url(made["hls_muxed"][0]), videos / "ep.media", config)
    assert names(videos) == ["ep.media"]
    assert validate(videos / "ep.media").duration > 2


def test_orphan_cleanup_removes_stale_fragments_and_keeps_a_live_downloads(config, videos):
    videos.mkdir(parents=True)
    for name in ["dead@dl.mp4.part", "dead@dl.mp4.part-Frag7.part", "dead@dl.f1.m4a", "dead@dl.temp.mp4",
                 "live@dl.mp4.part", "live@dl.mp4.part-Frag2.part", "live@dl.f0.mp4.part-Frag1.part"]:
        (videos / name).write_bytes(b"x" * 4096)
    gate = DownloadGate.from_config(config)
    with gate.admitted("live", 10_000, [videos / "live.media", videos / "live@dl.mp4"]):
        files, freed = clean_orphans(config)
    assert files == 4 and freed >= 4 * 4096
    assert names(videos) == ["live@dl.f0.mp4.part-Frag1.part", "live@dl.mp4.part", "live@dl.mp4.part-Frag2.part"]
    assert clean_orphans(config)[0] == 3 and names(videos) == []  # once the download is gone


# -- politeness per host ---------------------------------------------------------------------
HOLD = """
import sys, time, json
from scribeflow.budget.hosts import HostLimiter
limiter = HostLimiter(sys.argv[1], max_per_host=2, min_interval=0, exempt=[])
with limiter.slot(sys.argv[2], "job"):
    start = time.time()
    time.sleep(0.6)
print(json.dumps([start, time.time()]))
"""


def test_at_most_max_per_host_downloads_of_a_host_run_across_processes(tmp_path):
    import json

    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "hosts"), url], stdout=subprocess.PIPE,
                              text=True)
             for url in ["http://a.example/1"] * 4 + ["http://b.example/1"]]
    spans = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    a, b = spans[:4], spans[4]
    overlap = max(sum(s <= t < e for s, e in a) for t, _ in a)
    assert overlap == 2  # two at a time, never three
    assert b[0] - min(s for s, _ in a) < 0.5  # another host does not wait for this one's slots


def test_starts_on_one_host_are_spaced_by_the_min_interval(tmp_path):
    limiter = HostLimiter(tmp_path / "hosts", max_per_host=0, min_interval=0.3, exempt=[])
    starts = []

    def job(url):
        with limiter.slot(url):
            starts.append((url, time.monotonic()))

    threads = [threading.Thread(target=job, args=("http://a.example/x",)) for _ in range(3)]
    threads.append(threading.Thread(target=job, args=("http://b.example/x",)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a = sorted(t for u, t in starts if "a.example" in u)
    # (Measured after the slot is granted, so a busy machine blurs each gap a little.)
    assert all(later - earlier >= 0.2 for earlier, later in zip(a, a[1:])) and a[-1] - a[0] >= 0.55, a
    b = next(t for u, t in starts if "b.example" in u)
    assert b - a[0] < 0.25


def test_a_429_slows_down_its_host_and_not_the_other(streams_dir, config, videos):
    folder, made = streams_dir
    config = cfg.updated(config, {"download": {"exempt_hosts": [], "min_start_interval_seconds": 0, "retries": 3}})
    finished = {}

    def job(name, server, path):
        download_episode(name, server.url(path), videos / f"{name}.media", config)
        finished[name] = time.monotonic()

    with MediaServer(folder) as fine, MediaServer(folder, host="127.0.0.2", faults={"GET /*": ["429:3"]}) as busy:
        first = threading.Thread(target=job, args=("b1", busy, made["hls_audio"][0]))
        first.start()
        limiter = HostLimiter.from_config(config)
        while limiter.snapshot().get("127.0.0.2", {}).get("backoff_until", 0) < time.time():
            time.sleep(0.01)
        told = time.monotonic()  # 127.0.0.2 said "429, come back in 3 s", and every process knows it
        others = [threading.Thread(target=job, args=("a1", fine, made["dash"][0])),
                  threading.Thread(target=job, args=("b2", busy, made["dash"][0]))]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(60)
    assert finished["a1"] - told < 2.5  # the other host is not slowed
    assert finished["b2"] - told >= 2.8 and finished["b1"] - told >= 2.8  # every download of the busy host waits
    assert busy.served(made["dash"][0], "GET")[0] == "ok"  # b2 never asked before the backoff ended
    assert names(videos) == ["a1.media", "b1.media", "b2.media"]
    assert HostLimiter.from_config(config).snapshot()["127.0.0.2"]["strikes"] == 0  # reset by the successes


# -- the order of the size sources, on what yt-dlp extracted (no network) ---------------------
from scribeflow.stages.download import declare_size, format_size  # noqa: E402


def test_size_sources_in_order_and_a_manifest_is_never_asked_for_its_size():
    info = {"duration": 100}
    assert format_size(None, info, {"filesize": 10, "filesize_approx": 20, "tbr": 8}).bytes == 10
    approx = format_size(None, info, {"filesize_approx": 20, "tbr": 8})
    assert (approx.bytes, approx.exact) == (20, False)
    assert format_size(None, info, {"tbr": 8}).bytes == 100_000  # 8 kbit/s x 100 s
    # No size and a manifest URL: nothing is asked of the network (ydl=None would fail).
    assert format_size(None, {}, {"protocol": "https", "url": "https://x.example/a/master.m3u8?t=1"}) is None
    assert format_size(None, {}, {"protocol": "https", "url": "https://x.example/a.mpd"}) is None


def test_declared_size_catalogue_first_then_yt_dlp_with_a_margin_and_merges_reserve_a_copy():
    config = cfg.validate({})
    audio = {"format_id": "a", "protocol": "https", "filesize_approx": 1_000_000, "vcodec": "none"}
    video = {"format_id": "v", "protocol": "https", "filesize": 3_000_000}
    media, reserved, source = declare_size(None, {**audio}, config, "ep", expected_size_mb=None)
    assert media == reserved == 1_250_000 and "filesize_approx + 25% margin" in source
    media, reserved, source = declare_size(None, {**audio}, config, "ep", expected_size_mb=2)
    assert media == 2_000_000 and source.startswith("catalogue expected_size_mb")
    media, reserved, _ = declare_size(None, {"requested_formats": [video, audio]}, config, "ep", None)
    assert media == 3_000_000 + 1_250_000 and reserved == 2 * media
    with pytest.raises(SizeExceeded, match="more than the catalogue"):  # the server knows better: fail before
        declare_size(None, {**video}, config, "ep", expected_size_mb=1)
    media, _, source = declare_size(None, {"protocol": "https", "url": "https://x.example/a.m3u8"}, config, "ep",
                                    None)
    assert media == config.disk_management.default_video_size_mb * 1_000_000 and "default" in source


def test_a_429_on_a_fragment_that_yt_dlp_retries_itself_still_slows_the_host(streams_dir, config, videos):
    folder, made = streams_dir
    path = made["dash"][0]
    fragment = f"/{path.rsplit('/', 1)[0]}/chunk-stream1-00002.m4s"
    config = cfg.updated(config, {"download": {"exempt_hosts": [], "min_start_interval_seconds": 0}})
    with MediaServer(folder, faults={f"GET {fragment}": ["429"]}) as server:
        started = time.time()
        download_episode("ep", server.url(path), videos / "ep.media", config)
        assert server.served(fragment.lstrip("/"), "GET")[:2] == ["429", "ok"]
    # yt-dlp retried the fragment on its own; every process now knows the host said 429.
    assert HostLimiter.from_config(config).snapshot()["127.0.0.1"]["backoff_until"] > started
    assert names(videos) == ["ep.media"]


def test_a_slot_held_by_a_dead_process_is_given_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    limiter = HostLimiter(tmp_path / "hosts", max_per_host=1, min_interval=0, exempt=[])
    with limiter._state() as state:  # as a download killed with -9 leaves it
        limiter._entry(state, "a.example")["holders"]["t"] = {"pid": int(dead), "machine": limiter.machine,
                                                               "beat": time.time()}
    started = time.monotonic()
    with limiter.slot("https://a.example/ep.m3u8"):
        assert time.monotonic() - started < 0.5
        assert len(limiter.snapshot()["a.example"]["holders"]) == 1
    assert limiter.snapshot()["a.example"]["holders"] == {}


def test_a_page_with_several_videos_is_refused_for_good(streams_dir, config, videos):
    folder, made = streams_dir
    page = folder / "two" / "index.html"
    page.parent.mkdir(exist_ok=True)
    page.write_text(f'<!DOCTYPE html><html><head><title>Two</title></head><body>'
                    f'<video><source src="../{made["hls_audio"][0]}" type="application/x-mpegURL"></video>'
                    f'<video><source src="../{made["dash"][0]}" type="application/dash+xml"></video></body></html>')
    with MediaServer(folder) as server, pytest.raises(DownloadFailed, match="holds 2 videos") as info:
        download_episode("ep", server.url("two/index.html"), videos / "ep.media", config)
    assert info.value.permanent and names(videos) == []
