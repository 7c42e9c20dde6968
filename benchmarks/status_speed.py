"""How fast `scribeflow status` answers on a ledger the size of the whole catalogue.

Builds a synthetic jobs.db of 171,881 episodes five months into a run (two thirds
transcribed, a few hundred failed, some in flight), a disk sample every 30 s for
150 days and a few thousand pause events, plus the matching catalogue CSV; then runs
the real command (a fresh process each time, as an operator would) and prints its
wall time. Target: under 2 s.

It lays down no files beside the ledger: benchmarks/full_scale.py measures status (and
the gate, check, a run's start and a chunk's plan) with the files of N finished
episodes in data_dir as well.

    .venv/bin/python benchmarks/status_speed.py [--episodes 171881] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from scribeflow.state.ledger import Ledger  # noqa: E402

DAY = 86400.0


def build(root: Path, episodes: int, days: float = 150, seed: int = 1) -> None:
    rng = random.Random(seed)
    data = root / "data"
    (root / "episodes.csv").write_text(
        "id,url\n" + "".join(f"ep{i:06d},https://example.org/{i}.mp4\n" for i in range(episodes)))
    start = time.time() - days * DAY
    done = episodes * 2 // 3
    rows = []
    for i in range(episodes):
        t = start + days * DAY * i / episodes
        if i < done:
            video, audio = rng.randint(300, 700) * 10**6, 1440 * 32000
            rows.append((f"ep{i:06d}", "transcribed", video, video, audio, 50_000, 1, 1, t, t, t + 50,
                         t + 50, t + 80, t + 600, t + 1300, t + 1300, 1, None))
        elif i < done + 300:
            rows.append((f"ep{i:06d}", "failed", None, None, None, None, 0, 0, t, t, None, None, None,
                         None, None, t, 3, "DownloadFailed: HTTP Error 404: Not Found"))
        elif i < done + 400:
            rows.append((f"ep{i:06d}", "downloaded", 5e8, 5e8, None, None, 0, 0, t, t, t + 50, None, None,
                         None, None, t + 50, 1, None))
        else:
            rows.append((f"ep{i:06d}", "queued", None, None, None, None, 0, 0, t, None, None, None, None,
                         None, None, t, 0, None))
    with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
        c.executemany(
            """INSERT INTO jobs (id, stage, declared_bytes, video_size_bytes, audio_size_bytes,
               transcript_size_bytes, video_deleted, audio_deleted, queued_at, downloading_at,
               downloaded_at, extracting_at, extracted_at, transcribing_at, transcribed_at,
               updated_at, attempts, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
              r[14], r[15], r[16], r[17]) for r in rows])
        samples = int(days * DAY / 30)
        c.executemany("INSERT INTO disk_samples VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'bench')",
                      ((start + 30 * k, 265 * 10**9 + rng.randint(-15, 15) * 10**9, 2 * 10**11, 0, 10**9,
                        k * 10**4, 10**8) for k in range(samples)))
        c.executemany("INSERT INTO pause_events (started_at, ended_at, usage_bytes, reason) VALUES (?,?,?,?)",
                      ((start + k * 4000, start + k * 4000 + 900, 280 * 10**9, "usage")
                       for k in range(int(days * DAY / 4000))))
    (data / "transcripts").mkdir(parents=True, exist_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=171_881)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build(root, args.episodes)
        size = (root / "data" / "jobs.db").stat().st_size
        print(f"synthetic ledger: {args.episodes} episodes, {size / 1e6:.0f} MB, built in "
              f"{time.perf_counter() - t0:.1f} s")
        cmd = [sys.executable, "-m", "scribeflow.ops.cli", "status", "--config", f"catalogue={root}/episodes.csv",
               f"data_dir={root}/data", f"storage_dir={root}/storage"]
        for flag in ([], ["--json"]):
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                out = subprocess.run(cmd + flag, check=True, capture_output=True, text=True).stdout
                times.append(time.perf_counter() - t0)
            print(f"scribeflow status {' '.join(flag)}: best {min(times):.2f} s, worst {max(times):.2f} s "
                  f"of {args.runs} runs (target < 2 s){'' if max(times) < 2 else '  MISSED'}")
        print(out if "--json" not in flag else "", end="")
        print("last output:\n" + subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
