"""Benchmark of the download's watchdog (src/scribeflow/watchdog.py) on loopback.

    python benchmarks/watchdog.py [--rates 10 50 100] [--mb 120]

For each link rate (MB/s, the loopback server's throttle) and each downloader --
yt-dlp's own (a direct file) and ffmpeg (an AES-128 HLS stream handed to it with
hls_prefer_native off) -- it runs two downloads with the real yt-dlp:
- one that completes, and prints the watchdog's CPU seconds for that download;
- one whose declared size is a third of the real one, and prints what was on disk when
  it was stopped: the bytes past its cap, the slack reserved for them
  (max_write_rate_mb_per_s x 2 x watch_interval_seconds + one block) and the bytes past
  the reservation (the hard limit's promise: always 0).
The bytes on disk are walked every 10 ms by a thread of this benchmark, apart from the
watchdog. Not a test: the figures depend on the machine. Needs ffmpeg.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test tools: tests/support

from support.scenario import AllocatedSampler  # noqa: E402
from support.server import MediaServer  # noqa: E402

from scribeflow.config import settings as cfg  # noqa: E402
from scribeflow.stages.download import DownloadFailed, _download_with_retries, reservation  # noqa: E402

MB = 1_000_000
WATCHDOG = re.compile(r"([\d.]+) s CPU \(peak_bytes=(\d+) reserved_bytes=(\d+)\)")


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def make_media(folder: Path, megabytes: float) -> tuple[str, str]:
    """A direct MP4 and an AES-128 HLS stream of about `megabytes` each (noise compresses badly)."""
    seconds = 30
    kbps = int(megabytes * 8000 / seconds)
    src = folder / "big.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=300:duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "50", "-b:v", f"{kbps}k", "-minrate", f"{kbps}k", "-maxrate", f"{kbps}k",
                    "-bufsize", f"{kbps}k", "-x264-params", "nal-hrd=cbr", "-c:a", "aac", "-shortest",
                    str(src)], check=True)
    hls = folder / "aes"
    hls.mkdir()
    (hls / "key.bin").write_bytes(bytes(range(16)))
    (hls / "keyinfo").write_text(f"key.bin\n{hls / 'key.bin'}\n")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy", "-f", "hls",
                    "-hls_time", "2", "-hls_playlist_type", "vod", "-hls_key_info_file", "keyinfo",
                    "-hls_segment_filename", "seg%03d.ts", "index.m3u8"], cwd=hls, check=True)
    return "big.mp4", "aes/index.m3u8"


def one(server, name: str, settings, work: Path, expected_mb: float | None, handler: Lines) -> dict:
    out = work / "videos" / "ep.media"
    handler.lines.clear()
    with AllocatedSampler([work / "videos"], interval=0.01) as sampler:
        started = time.monotonic()
        try:
            # One attempt, without the retry that declares what the stop measured.
            _download_with_retries("ep", server.url(name), out, settings, None, expected_mb, None, None)
            outcome = "complete"
        except DownloadFailed as exc:
            outcome = "stopped" if "past its declared" in str(exc) or "stopped to hold" in str(exc) else str(exc)
        seconds = time.monotonic() - started
    runs = [tuple(map(float, m.groups())) for line in handler.lines if (m := WATCHDOG.search(line))]
    for p in out.parent.glob("*"):
        p.unlink()
    cpu, peak, reserved = runs[0] if runs else (0.0, 0, 0)
    return {"outcome": outcome, "seconds": seconds, "cpu": cpu, "watchdog_peak": int(peak),
            "reserved": int(reserved), "walked_peak": sampler.peak,
            "stopped_by": "watchdog" if any("download stopped" in line for line in handler.lines) else "hook"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 50, 100])
    parser.add_argument("--mb", type=float, default=120, help="size of the served media")
    args = parser.parse_args()
    handler = Lines()
    logging.getLogger("scribeflow").addHandler(handler)
    logging.getLogger("scribeflow").setLevel(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "served").mkdir()
        direct, hls = make_media(tmp / "served", args.mb)
        size = (tmp / "served" / direct).stat().st_size
        print(f"media: {size / MB:.0f} MB; stopped downloads declare {size / 3 / MB:.0f} MB; "
              f"interval 50 ms; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"{'MB/s':>5} {'downloader':<10} {'complete: s':>11} {'got MB/s':>8} {'CPU s':>7} {'CPU/s':>6} | "
              f"{'stop: by':<9} {'past cap':>9} {'slack':>8} {'past reservation':>16}")
        for rate in args.rates:
            for label, name, native in (("yt-dlp", direct, True), ("ffmpeg", hls, False)):
                settings = cfg.validate({"data_dir": str(tmp / "data"), "storage_dir": str(tmp / "storage"),
                                         "download": {"hls_prefer_native": native, "retries": 0}})
                work = tmp / "storage"
                with MediaServer(tmp / "served", rate_bytes_per_s=rate * MB, hide_length=True) as server:
                    full = one(server, name, settings, work, size * 1.2 / MB, handler)
                    cap = int(size / 3)
                    stop = one(server, name, settings, work, cap / MB, handler)
                slack = reservation(settings, cap) - cap
                past_cap = stop["walked_peak"] - cap
                past_reservation = max(0, stop["walked_peak"] - reservation(settings, cap))
                print(f"{rate:>5.0f} {label:<10} {full['seconds']:>11.1f} {size / MB / full['seconds']:>8.1f} "
                      f"{full['cpu']:>7.3f} "
                      f"{full['cpu'] / max(full['seconds'], 1e-9):>6.3f} | {stop['stopped_by']:<9} "
                      f"{past_cap / MB:>7.2f}MB {slack / MB:>6.1f}MB {past_reservation:>15d}B", flush=True)
                if full["outcome"] != "complete" or stop["outcome"] != "stopped":
                    print(f"      unexpected: {full['outcome']!r} / {stop['outcome']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
