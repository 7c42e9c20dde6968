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
files) and their CPU seconds (each job's script process, its own rusage and its children's,
logged by the job as it ends); the worker's CPU (its own rusage, logged as it exits);
Snakemake's own CPU (the snakemake process, sampled: locally it starts each job's script
itself; where it spawns a process per job, as on a cluster, that process's CPU is a row of
its own); the total. Then the rate the CPU side sustains: measured at C cores, and at 4, 8
and 16 cores estimated as cores x 3600 / (CPU s per episode), capped by the scheduler (one
process: 3600 / its CPU s per episode). Also the worker's
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
ONCE = ("corpus", "plots")
CORES = (4, 8, 16)
TARGET_CPU_S = 120
TARGET_RATE = 480


def job_files(data: Path, rule: str, episodes: list[str], kind: str) -> dict[str, Path]:
    """Episode (or the rule, for one that runs once a run) -> its log or benchmark file."""
    from scribeflow.config.layout import Layout

    layout = Layout.of(data)
    if rule in ONCE:
        return {rule: Path(layout.run_log(rule) if kind == "log" else layout.run_benchmark(rule))}
    pattern = layout.log_pattern(rule) if kind == "log" else layout.benchmark_pattern(rule)
    return {e: Path(pattern.format(episode=e)) for e in episodes}


def job_cpu(data: Path, rule: str, episodes: list[str]) -> dict[str, tuple[float, float]]:
    """CPU seconds of each `rule` job (its script, and the Snakemake process that ran it where
    there is one), from the line the job logs as it ends."""
    out = {}
    for key, log in job_files(data, rule, episodes, "log").items():
        found = re.findall(r"Job CPU: ([0-9.]+) s(?:, its Snakemake process ([0-9.]+) s)?",
                           log.read_text(errors="replace") if log.is_file() else "")
        if found:
            out[key] = (float(found[-1][0]), float(found[-1][1] or 0))
    return out


def job_wall(data: Path, rule: str, episodes: list[str]) -> dict[str, float]:
    out = {}
    for key, tsv in job_files(data, rule, episodes, "benchmark").items():
        with tsv.open() as f:
            out[key] = float(next(csv.DictReader(f, delimiter="\t"))["s"])
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
                # No language: the vote runs, as for a catalogue that does not say.
                w.writerow([f"ep{i:03d}", server.url(e.name), args.language, "bench", int(args.minutes * 60)])
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
        main = MainCpu(proc.pid)
        out = proc.stdout.read()
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        main.stop()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"snakemake failed:\n{out[-4000:]}")
    data = work / "data"
    n = len(episodes)
    ids = [f"ep{i:03d}" for i in range(n)]
    rules, spawners = {}, 0.0
    for rule in RULES + ONCE:
        cpu, walls = job_cpu(data, rule, ids), job_wall(data, rule, ids)
        if len(cpu) != (1 if rule in ONCE else n):
            sys.exit(f"{rule}: {len(cpu)} job(s) logged their CPU")
        name = f"{rule} (once a run, per episode)" if rule in ONCE else rule
        rules[name] = {"wall": sum(walls.values()) / n, "cpu": sum(c for c, _ in cpu.values()) / n}
        spawners += sum(p for _, p in cpu.values())
    stats = worker_stats(data)
    return {"wall": wall, "episodes": n, "rules": rules, "scheduler": main.seconds / n, "job_processes": spawners / n,
            "worker": stats.get("cpu_seconds", 0.0) / n, "worker_stats": stats}


class MainCpu:
    """The snakemake process's own CPU (not its children's), sampled until it exits: the
    scheduler, one process, whatever the cores."""

    def __init__(self, pid: int):
        import threading

        import psutil

        self.seconds, self._proc, self._stop = 0.0, psutil.Process(pid), threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        import psutil

        while not self._stop.wait(0.2):
            try:
                t = self._proc.cpu_times()
                self.seconds = t.user + t.system
            except psutil.Error:
                return

    def stop(self):
        self._stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=24)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=2, help="max_concurrent_transcriptions")
    parser.add_argument("--decode", choices=("stand-in", "real"), default="stand-in")
    parser.add_argument("--model", default="base")
    parser.add_argument("--language", default="", help="the catalogue's language column (empty: the vote decides)")
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
    if r["job_processes"]:  # where Snakemake spawns a process per job (a cluster), not locally
        print(f"{'Snakemake: job processes':34} {'':>10} {r['job_processes']:9.1f}")
    print(f"{'Snakemake: the scheduler':34} {'':>10} {r['scheduler']:9.1f}")
    total = sum(v["cpu"] for v in r["rules"].values()) + r["worker"] + r["job_processes"] + r["scheduler"]
    stand_in = args.decode == "stand-in"  # the targets are the CPU side's: the model's work stood in
    print(f"{'total':34} {'':>10} {total:9.1f}" + (f"   (target <= {TARGET_CPU_S}: "
                                                    f"{'met' if total <= TARGET_CPU_S else 'MISSED'})" if stand_in else ""))
    measured = n / r["wall"] * 3600
    print(f"run: {r['wall']:.0f} s wall, {measured:.0f} episodes/hour at {args.cores} cores (measured)")
    scheduler_cap = 3600 / r["scheduler"] if r["scheduler"] else float("inf")
    for cores in CORES:
        rate = min(cores * 3600 / total, scheduler_cap)
        mark = "" if cores != 16 or not stand_in else \
            f" (target >= {TARGET_RATE}: {'met' if rate >= TARGET_RATE else 'MISSED'})"
        print(f"  {cores:2d} cores: {rate:.0f} episodes/hour (estimated){mark}")
    s = r["worker_stats"]
    if args.decode == "stand-in":
        print(f"worker: the model's work stood in; VAD from the extraction: {s.get('vad_saved', 0)} call(s), "
              f"run in the worker: {s.get('vad_ran', 0)}")
    elif s.get("wall_seconds"):
        print(f"worker: model busy {s['busy_seconds']:.1f} s of {s['wall_seconds']:.1f} s = "
              f"{100 * s['busy_seconds'] / s['wall_seconds']:.0f} %, {s.get('requests', 0)} request(s); "
              f"VAD from the extraction: {s.get('vad_saved', 0)} call(s), run in the worker: {s.get('vad_ran', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
