"""What the segments' times cost and how true they are, on Japanese episodes shaped like anime
(tests/support/japanese.py: Kokoro's voices, an opening and an ending song, background music,
a music-only scene change): each episode decoded with faster-whisper's own VAD joining
(timing.method vad-joined, the behaviour before) and in clips (vad-clips, the default), the
same audio, model and settings. Per episode and method: the decode's wall and CPU seconds, the
character error rate against the dialogue, how far segments reach outside the lines they hold
(the longest, and how many over 1 s), whether a segment joins a lyric to a line, and the
characters transcribed over music alone.

    .venv/bin/python benchmarks/japanese_timing.py --episodes 4 --model base            # CPU
    .venv/bin/python benchmarks/japanese_timing.py --episodes 4 --model large-v3 \\
        --device cuda --compute-type float16 --batch-size 16                            # GPU

`--folder DIR` also writes the episodes as release-named .mkv files with their .ja.srt, for
`scribeflow evaluate DIR --model ... --language ja`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the test tools: tests/support

from scribeflow.config.settings import validate  # noqa: E402
from scribeflow.ops.evaluate import timing  # noqa: E402
from scribeflow.stages.media import read_wav  # noqa: E402
from scribeflow.stages.transcription.decode import CLIPS, VAD_JOINED, decode_options, run_model  # noqa: E402
from scribeflow.stages.transcription.quality import character_errors, normalise  # noqa: E402
from scribeflow.stages.transcription.transcript import build_transcript  # noqa: E402
from support.japanese import japanese_episode  # noqa: E402
from support.models import packaged_model  # noqa: E402


def _cpu() -> float:
    """This process's CPU seconds (all threads): on a shared machine, steadier than the wall."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(model, tc: dict, episode, method: str) -> dict:
    audio = read_wav(str(episode.wav))
    options = {**decode_options(tc, "ja"), "timing": {"method": method}}
    started, cpu = time.monotonic(), _cpu()
    raw = run_model(model, audio, options)
    wall, cpu = time.monotonic() - started, _cpu() - cpu
    t = build_transcript(raw, f"ep{episode.number:02d}", tc, options)
    said = [s for s in t["segments"] if s["text"]]
    cues = [{"start": ln.start, "end": ln.end} for ln in episode.lines]
    errors, chars = character_errors(episode.text, " ".join(
        s["text"] for s in said if not any(ln.kind == "song" and ln.start < s["end"] and s["start"] < ln.end
                                           for ln in episode.lines)))
    joined = sum(len({ln.kind for ln in episode.lines if ln.start < s["end"] and s["start"] < ln.end}) > 1
                 for s in said)
    music = sum(len(normalise(s["text"])) for s in said
                if any(a <= s["start"] and s["end"] <= b for a, b in episode.music_only))
    return {"episode": episode.number, "method": method, "seconds": round(wall, 1), "cpu": round(cpu, 1),
            "audio": round(episode.duration, 1),
            "cer": round(errors / chars, 4), **timing(said, cues), "joined": joined, "music_chars": music,
            "segments": len(said)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--model", default="base", help="a faster-whisper name or directory; base: the PyPI one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder", type=Path, help="also write the episodes here for `scribeflow evaluate`")
    args = ap.parse_args(argv)
    from faster_whisper import WhisperModel

    path = str(packaged_model("base")) if args.model == "base" else args.model
    model = WhisperModel(path, device=args.device, compute_type=args.compute_type, cpu_threads=args.threads)
    tc = validate({"transcribe": {"model": path, "device": args.device, "compute_type": args.compute_type,
                                  "batch_size": args.batch_size}}).transcribe.as_dict()
    episodes = [japanese_episode(n, opening="instrumental" if n % 2 else "song") for n in range(1, args.episodes + 1)]
    if args.folder:
        for ep in episodes:
            name = f"[Kokoro] Nichijou - {ep.number:02d} [1080p]"
            ep.write_media(args.folder / f"{name}.mkv")
            ep.write_srt(args.folder / f"{name}.ja.srt")
    rows = [measure(model, tc, ep, method) for ep in episodes for method in (VAD_JOINED, CLIPS)]
    print(f"{'ep':>3} {'method':11} {'audio s':>7} {'wall s':>6} {'CPU s':>6} {'CER':>6} {'stray s':>7} {'>1 s':>4} "
          f"{'joined':>6} {'music ch':>8} {'segs':>4}")
    for r in rows:
        print(f"{r['episode']:3d} {r['method']:11} {r['audio']:7.1f} {r['seconds']:6.1f} {r['cpu']:6.1f} "
              f"{100 * r['cer']:5.1f}% "
              f"{r['timing_max_s'] or 0:7.2f} {r['mistimed']:4d} {r['joined']:6d} {r['music_chars']:8d} "
              f"{r['segments']:4d}")
    for method in (VAD_JOINED, CLIPS):
        mine = [r for r in rows if r["method"] == method]
        print(f"{method}: {statistics.fmean(r['seconds'] for r in mine):.1f} s wall, "
              f"{statistics.fmean(r['cpu'] for r in mine):.1f} CPU s per episode "
              f"({sum(r['cpu'] for r in mine) / sum(r['audio'] for r in mine):.3f} CPU s per audio s), "
              f"CER {100 * statistics.fmean(r['cer'] for r in mine):.1f} %, "
              f"{sum(r['mistimed'] for r in mine)} segment(s) over 1 s outside their lines "
              f"(longest {max(r['timing_max_s'] or 0 for r in mine):.2f} s), "
              f"{sum(r['joined'] for r in mine)} joining a lyric to a line, "
              f"{sum(r['music_chars'] for r in mine)} character(s) over music alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
