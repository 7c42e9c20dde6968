"""The CPU side of an episode: what each stage costs besides the model's own work, on the
real workflow, and the rate a machine's cores sustain.

    python benchmarks/cpu_budget.py                             # 4 Japanese 24-min episodes, decoding stood in
    python benchmarks/cpu_budget.py --episodes 2 --minutes 4    # a quick look
    python benchmarks/cpu_budget.py --decode real --model tiny.en --episodes 6 --minutes 3 --slots 2
                                                                # the worker's model-busy share, real decoding

Episodes: benchmarks/episode_throughput.py's speech-dense episodes (espeak-ng reading kana
sentences end to end, AAC audio only), made once and cached in --media, served by the
tests' loopback media server: the download is real (yt-dlp over HTTP on 127.0.0.1).

The run: `snakemake --cores C` on the real workflow, every rule to the corpus, the
transcription worker on. `--decode stand-in` (the default) is the one mock, because this
machine has no GPU: the worker does everything the real one does on the CPU (reads the
WAV, the language vote's VAD and features, faster-whisper's VAD, chunking and 128-mel
features as large-v3 takes), but the model's calls (the vote's encoder, the decoding)
return at once, with Japanese text of a realistic length (8 characters a second of
speech) for the stages after it. The model is the multilingual `base` from PyPI, so that
the language vote runs.

Printed per episode: for each rule, the wall seconds of its jobs (Snakemake's benchmark
files) and their CPU seconds (each job's own rusage, logged by the job as it ends: Python's
start, the workflow's parse and the step); the worker's CPU (its own rusage, logged as it
exits); Snakemake's own CPU (the run's whole rusage, snakemake and every job it waited
for, less the jobs'); the total. Then the rate the CPU side sustains: measured at C cores,
and at 4, 8 and 16 cores estimated as cores x 3600 / (CPU s per episode), capped by
Snakemake's scheduler (one process: 3600 / its CPU s per episode). Also the worker's
model-busy share: the share of its wall time (first request to last reply) that some
request held the model; with real decoding on a CPU this is the proxy for a GPU's busy share.
Targets (docs/transcription.md): <= 120 CPU s per episode, >= 480 episodes/hour on 16 cores,
model busy >= 90 % with enough episodes queued.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the test tools: tests/support
sys.path.insert(0, str(REPO / "benchmarks"))

from episode_throughput import make_episode, model_dir  # noqa: E402
from support.server import MediaServer  # noqa: E402

RULES = ("download", "extract_audio", "transcribe", "analyse_episode")
CORES = (4, 8, 16)
TARGET_CPU_S = 120
TARGET_RATE = 480


def job_cpu(data: Path, rule: str) -> dict[str, float]:
    """Episode -> CPU seconds of its `rule` job, from the line the job logs as it ends."""
    out = {}
    for log in (data / "logs" / rule).glob("*.log"):
        found = re.findall(r"Job CPU: ([0-9.]+) s", log.read_text(errors="replace"))
        if found:
            out[log.stem] = float(found[-1])
    return out


def job_wall(data: Path, rule: str) -> dict[str, float]:
    out = {}
    for tsv in (data / "benchmarks" / rule).glob("*.tsv"):
        with tsv.open() as f:
            out[tsv.stem] = float(next(csv.DictReader(f, delimiter="\t"))["s"])
    return out


def worker_stats(data: Path) -> dict:
    stats = {}
    for log in (data / "logs" / "transcribe_worker").glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "Worker stats: " in line:
                stats = json.loads(line.split("Worker stats: ", 1)[1])
    return stats


def run(args, episodes: list[Path], work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with MediaServer(episodes[0].parent) as server:
        with (work / "episodes.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "url", "language", "series", "duration_s"])
            for i, e in enumerate(episodes):
                w.writerow([f"ep{i:03d}", server.url(e.name), "ja", "bench", int(args.minutes * 60)])
        tc = {"model": model_dir(args.model), "cpu_threads": args.cpu_threads, "batch_size": args.batch_size,
              "language": None}
        config = {"catalogue": str(work / "episodes.csv"), "data_dir": str(work / "data"),
                  "storage_dir": str(work / "storage"), "transcribe": tc,
                  "disk_management": {"max_concurrent_transcriptions": args.slots}}
        (work / "config.yaml").write_text(json.dumps(config))
        env = dict(os.environ)
        if args.decode == "stand-in":
            env["SCRIBEFLOW_STAND_IN_DECODE"] = "1"
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", str(args.cores), "--quiet", "all"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"snakemake failed:\n{out[-4000:]}")
    data = work / "data"
    n = len(episodes)
    rules = {}
    for rule in RULES:
        cpu, walls = job_cpu(data, rule), job_wall(data, rule)
        if len(cpu) != n:
            sys.exit(f"{rule}: {len(cpu)} of {n} jobs logged their CPU")
        rules[rule] = {"wall": sum(walls.values()) / n, "cpu": sum(cpu.values()) / n}
    corpus = job_cpu(data, "corpus")
    rules["corpus (once a run, per episode)"] = {"wall": sum(job_wall(data, "corpus").values()) / n,
                                                "cpu": sum(corpus.values()) / n}
    jobs_cpu = sum(r["cpu"] for r in rules.values()) * n
    run_cpu = usage.ru_utime + usage.ru_stime
    stats = worker_stats(data)
    return {"wall": wall, "episodes": n, "rules": rules, "snakemake": max(0.0, run_cpu - jobs_cpu) / n,
            "worker": stats.get("cpu_seconds", 0.0) / n, "worker_stats": stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=24)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=2, help="max_concurrent_transcriptions")
    parser.add_argument("--decode", choices=("stand-in", "real"), default="stand-in")
    parser.add_argument("--model", default="base")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched pipeline, as on a GPU")
    parser.add_argument("--cpu-threads", type=int, default=0)
    parser.add_argument("--media", type=Path, default=Path.home() / ".cache" / "scribeflow" / "bench-media")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scribeflow-cpu-budget"))
    args = parser.parse_args()

    sources = [make_episode(args.media / f"ja-{args.minutes:g}min-{i}.m4a", "ja", args.minutes, seed=i)
               for i in range(args.episodes)]
    r = run(args, sources, args.work)
    n = r["episodes"]
    print(f"{time.strftime('%Y-%m-%d')}: {n} episode(s) of {args.minutes:g} min (Japanese speech), "
          f"{args.cores} cores, decode: {args.decode}, model {args.model}, batch {args.batch_size}, "
          f"{args.slots} slot(s)")
    print(f"{'stage':34} {'wall s/ep':>10} {'CPU s/ep':>9}")
    for rule, v in r["rules"].items():
        print(f"{rule:34} {v['wall']:10.1f} {v['cpu']:9.1f}")
    print(f"{'transcription worker (CPU side)' if args.decode == 'stand-in' else 'transcription worker':34} "
          f"{'':>10} {r['worker']:9.1f}")
    print(f"{'Snakemake itself':34} {'':>10} {r['snakemake']:9.1f}")
    total = sum(v["cpu"] for v in r["rules"].values()) + r["worker"] + r["snakemake"]
    print(f"{'total':34} {'':>10} {total:9.1f}   (target <= {TARGET_CPU_S})")
    measured = n / r["wall"] * 3600
    print(f"run: {r['wall']:.0f} s wall, {measured:.0f} episodes/hour at {args.cores} cores (measured)")
    scheduler_cap = 3600 / r["snakemake"] if r["snakemake"] else float("inf")
    for cores in CORES:
        rate = min(cores * 3600 / total, scheduler_cap)
        mark = "" if cores != 16 else (" (target >= %d: %s)" % (TARGET_RATE, "met" if rate >= TARGET_RATE else "MISSED"))
        print(f"  {cores:2d} cores: {rate:.0f} episodes/hour (estimated){mark}")
    s = r["worker_stats"]
    if s.get("wall_seconds"):
        print(f"worker: model busy {s['busy_seconds']:.1f} s of {s['wall_seconds']:.1f} s = "
              f"{100 * s['busy_seconds'] / s['wall_seconds']:.0f} %, {s.get('requests', 0)} request(s); "
              f"VAD from the extraction: {s.get('vad_saved', 0)} call(s), run in the worker: {s.get('vad_ran', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
