"""Month four against day one: the recurring operations with N episodes finished.

For each N, lays down the state N finished episodes leave in data_dir, as the
pipeline leaves it with the default config (formats [], no gzip) after the logs'
roll-up at a run's start:

  transcripts/{id}.json  tokens/{id}.parquet  analysis/episodes/{id}.json
  analysis/lemmas/{id}.parquet                        (4 files per finished episode)
  logs/rollup/*.log.gz, *.benchmarks.tsv.gz           (2 per 2,000-episode chunk)
  the last chunk's per-job logs and benchmark records, not rolled up yet (8 per episode)
  300 failed episodes: failed/{id}.json and their download logs
  jobs.db: N analyzed rows over 150 days, 300 failed, the 2,000 of the next chunk
  queued; 150 days of disk samples (every 30 s) and pauses (every ~67 min), thinned as
  the reconciliations thin them

File names and counts are those of a real run (bin/demo, 2026-12-02: 12 files per
episode before the roll-up); sizes are the demo's, with the text-proportional ones
scaled to a 24-minute episode (transcript 50 kB, tokens 40 kB, lemmas 15 kB). The
catalogue holds the N finished episodes and a next chunk of 2,000.

Then it prints, for each N: one walk of everything (what every look cost before),
the reconciliation's walk (outside the lock, every reconcile_interval_seconds), gate
admission p50/p95 (DownloadGate.from_config: the real DiskMonitor, gate and ledger, on
the real files, with 5 videos and 3 audio files in flight), the end-of-transcription
look, `scribeflow status` and `scribeflow check` as fresh processes (check twice: the
first reads every transcript, the recurring one those written since: the last
chunk's 2,000), the run's start on
a 3-episode catalogue (snakemake from launch to its first job, onstart included; the
first start after a chunk also starts the roll-up of its logs), and the next 2,000-episode chunk's plan
(`snakemake -n --quiet`, as benchmarks/plan_scale.py measures plans).

    .venv/bin/python benchmarks/full_scale.py [--sizes 10000 50000 171881] [--root /tmp]
        [--reuse] [--only plan|recurring] [--each-speedup]

Mind the space: 171,881 episodes take ~19 GB and ~700,000 files; each N's tree is
deleted after it is measured unless --keep. --reuse lays each N's tree down once, in
ROOT/full-scale-N, and keeps it for the next call. --only plan measures the chunk's
plan alone; --each-speedup also plans it without scribeflow.integration.internals'
speedups and without each one in turn (alternating, several rounds): what each saves.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import yaml  # noqa: E402

from plan_scale import make_catalogue, timed  # noqa: E402
from scribeflow.state import logs  # noqa: E402
from scribeflow.budget.monitor import DiskMonitor  # noqa: E402
from scribeflow.config.layout import EPISODE_RULES  # noqa: E402
from scribeflow.state.ledger import Ledger, mark_clean  # noqa: E402

DAY = 86400.0
CHUNK = 2000
FAILED = 300
SIZES = {"tokens": 40_000, "lemmas": 15_000}
LOG_LINES = {  # the demo's logs, one per rule
    "download": "INFO  scribeflow.stages.download: Declared size of {id}: 312 MB (from Content-Length); format mp4\n"
                "INFO  scribeflow.budget.gate: Disk usage: 212/300 GB (71%), downloading normally\n"
                "INFO  scribeflow.stages.download: Downloaded {id}: 312 MB (format mp4), 1440 s of aac audio, in 41 s\n",
    "extract_audio": "INFO  scribeflow: Extracted 1440.0 s of 16 kHz mono audio from {id}: 46.1 MB\n",
    "transcribe": "INFO  scribeflow: Transcribing {id}, video size: 312.0 MB\n"
                  "INFO  scribeflow.stages.transcription.worker: Transcribed by the worker in 61.2 s\n"
                  "INFO  scribeflow: Transcription complete (1440.0 s of audio, 312 segments), deleting video and "
                  "audio\nINFO  scribeflow: Freed 358.1 MB (video: 312.0 MB, audio: 46.1 MB)\n"
                  "INFO  scribeflow: Current disk usage: 231/300 GB (77%)\n",
    "analyse_episode": "INFO  scribeflow.stages.tokens: Tokenized transcripts/{id}.json (en): 3512 tokens in 312 segments\n"
                       "INFO  scribeflow.stages.analysis: Analysed {id}: 3512 tokens, 911 types\n",
}
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
BENCH_ROW = "61.94\t0:01:01\t29.18\t107.06\t16.79\t17.60\t0.00\t0.09\t4.17\t0.30"


def transcript(episode: str) -> str:
    """A valid transcript of ~50 kB: what `scribeflow check` reads for every episode."""
    words = "the quick brown fox jumps over the lazy dog while the weather stays sunny".split()
    segments = [{"start": round(k * 4.6, 2), "end": round(k * 4.6 + 4.4, 2),
                 "text": " " + " ".join(words[(k + j) % len(words)] for j in range(11))} for k in range(312)]
    return json.dumps({"id": episode, "language": "en", "duration": 1440.0, "model": "large-v3",
                       "options": {"beam_size": 5, "vad_filter": True, "language": "en"},
                       "text": "".join(s["text"] for s in segments), "segments": segments}, indent=1)


def lay_down(root: Path, n: int, seed: int = 1) -> dict:
    """The data_dir of n finished episodes (module docstring); returns the config."""
    rng = random.Random(seed)
    data = root / "data"
    ids = [f"show{i // 1000:03d}-e{i:06d}" for i in range(n + CHUNK)]
    finished, pending = ids[:n], ids[n:]
    failed = set(rng.sample(finished, FAILED))
    done = [e for e in finished if e not in failed]
    make_catalogue(root / "episodes.csv", n + CHUNK)
    for folder in ("transcripts", "tokens", "analysis/episodes", "analysis/lemmas", "failed", "videos", "audio",
                   "logs/rollup", *(f"logs/{r}" for r in EPISODE_RULES), *(f"benchmarks/{r}" for r in EPISODE_RULES)):
        (data / folder).mkdir(parents=True, exist_ok=True)
    template = transcript("@@ID@@")
    tokens, lemmas = os.urandom(SIZES["tokens"]), os.urandom(SIZES["lemmas"])
    for episode in done:
        (data / "transcripts" / f"{episode}.json").write_text(template.replace("@@ID@@", episode))
        (data / "tokens" / f"{episode}.parquet").write_bytes(tokens)
        (data / "analysis" / "episodes" / f"{episode}.json").write_text(
            json.dumps({"id": episode, "tokens": 3512, "types": 911, "unknown_rate": None}))
        (data / "analysis" / "lemmas" / f"{episode}.parquet").write_bytes(lemmas)
    for episode in failed:
        (data / "failed" / f"{episode}.json").write_text(json.dumps(
            {"id": episode, "step": "download", "permanent": True, "attempts": 1,
             "reason": "DownloadFailed: HTTP Error 404: Not Found", "failed_at": time.time()}))
        (data / "logs" / "download" / f"{episode}.log").write_text("ERROR scribeflow: HTTP Error 404\n")
    # Roll-ups of every chunk but the last; the last one's per-job files wait for the next start.
    last = done[-CHUNK:]
    for k in range(0, len(done) - len(last), CHUNK):
        chunk = done[k:k + CHUNK]
        with gzip.open(data / "logs" / "rollup" / f"chunk{k // CHUNK:05d}.log.gz", "wt", compresslevel=6) as f:
            for episode in chunk:
                for rule in EPISODE_RULES:
                    f.write(f"==> logs/{rule}/{episode}.log <==\n" + LOG_LINES[rule].format(id=episode))
        with gzip.open(data / "logs" / "rollup" / f"chunk{k // CHUNK:05d}.benchmarks.tsv.gz", "wt") as f:
            f.write(f"rule\tepisode\t{BENCH_HEADER}\n")
            f.writelines(f"{rule}\t{episode}\t{BENCH_ROW}\n" for episode in chunk for rule in EPISODE_RULES)
    for episode in last:
        for rule in EPISODE_RULES:
            (data / "logs" / rule / f"{episode}.log").write_text(LOG_LINES[rule].format(id=episode))
            (data / "benchmarks" / rule / f"{episode}.tsv").write_text(f"{BENCH_HEADER}\n{BENCH_ROW}\n")
    # The ledger: 150 days of a run.
    now = time.time()
    start = now - 150 * DAY
    with Ledger(data / "jobs.db") as ledger:
        with ledger.transaction() as c:
            rows = []
            for i, episode in enumerate(finished):
                t = start + 150 * DAY * i / n
                if episode in failed:
                    rows.append((episode, "failed", None, None, None, t, t, None, None, None, None, 1,
                                 "DownloadFailed: HTTP Error 404: Not Found"))
                else:
                    rows.append((episode, "analyzed", 312 * 10**6, 46 * 10**6, 50_000, t, t + 41, t + 50, t + 120,
                                 t + 130, t + 130, 1, None))
                    # Written when the ledger says: a check's "new since the last one" is then
                    # what a month leaves, not every file this lay-down just wrote.
                    os.utime(data / "transcripts" / f"{episode}.json", (t + 120, t + 120))
            rows += [(e, "queued", None, None, None, now, None, None, None, None, now, 0, None) for e in pending]
            # The next chunk under way: 10 episodes in flight.
            for k, stage in enumerate(("downloading",) * 5 + ("extracted",) * 3 + ("transcribing",) * 2):
                rows[n + k] = (pending[k], stage, None, None, None, now, None, None, None, None, now - 60, 1, None)
            c.executemany(
                """INSERT INTO jobs (id, stage, video_size_bytes, audio_size_bytes, transcript_size_bytes,
                   queued_at, downloaded_at, extracted_at, transcribed_at, analyzed_at, updated_at, attempts,
                   last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""", rows)
            c.execute("UPDATE jobs SET video_deleted = 1, audio_deleted = 1, tokenized_at = analyzed_at, "
                      "downloading_at = queued_at WHERE stage <> 'queued'")
            # The last 40 finished within the last 20 minutes (~120 an hour on a GPU pair).
            c.executemany("UPDATE jobs SET updated_at = ? WHERE id = ?",
                          ((now - 30 * k, e) for k, e in enumerate(reversed(done[-40:]))))
            c.executemany("INSERT INTO disk_samples VALUES (?, ?, ?, 0, ?, ?, ?, ?, 'bench')",
                          ((start + 30 * k, 265 * 10**9 + rng.randint(-15, 15) * 10**9, 2 * 10**11, 10**9,
                            k * 10**4, 10**8, 0) for k in range(int(150 * DAY / 30))))
            c.executemany("INSERT INTO pause_events (started_at, ended_at, usage_bytes, reason) VALUES (?,?,?,?)",
                          ((start + k * 4000, start + k * 4000 + 900, 280 * 10**9, "usage")
                           for k in range(int(150 * DAY / 4000))))
        thinned = ledger.thin_history(now)
    mark_clean(data / "jobs.db")  # the 150 days' last run ended cleanly
    config = {"catalogue": str(root / "episodes.csv"), "data_dir": str(data), "storage_dir": str(data),
              "transcribe": {"model": "tiny.en", "device": "cpu", "compute_type": "int8",
                             "worker": {"enabled": False}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {"config": config, "done": len(done), "thinned": thinned}


def files_under(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def full_config(root: Path):
    from scribeflow.config.settings import for_run

    return for_run([str(root / "config.yaml")])


def percentiles(times: list[float]) -> str:
    q = statistics.quantiles(times, n=20)
    return f"p50 {statistics.median(times) * 1000:7.1f} ms, p95 {q[18] * 1000:7.1f} ms"


def admissions(root: Path, runs: int) -> tuple[list[float], list[float]]:
    from scribeflow.budget.gate import DownloadGate

    config = full_config(root)
    data = Path(config.data_dir)
    for k in range(5):  # in flight: 5 videos, 3 audio files
        (data / "videos" / f"inflight{k}.media").write_bytes(os.urandom(1 << 20))
    for k in range(3):
        (data / "audio" / f"inflight{k}.wav").write_bytes(os.urandom(1 << 20))
    admit, look = [], []
    with Ledger(data / "jobs.db") as ledger:
        gate = DownloadGate.from_config(config, ledger=ledger)
        for k in range(runs):
            t0 = time.perf_counter()
            with gate.admitted(f"bench{k}", 10**6, [data / "videos" / f"bench{k}.media"]):
                admit.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            gate.check(download=False)
            look.append(time.perf_counter() - t0)
    for folder in ("videos", "audio"):
        for path in (data / folder).iterdir():
            path.unlink()
    return admit, look


def cli(root: Path, *args: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of a fresh `scribeflow ARGS` (CPU: about the wall time on a
    quiet machine; this VM's other users come and go), and its output."""
    cmd = [sys.executable, "-m", "scribeflow.ops.cli", *args, "--configfile", str(root / "config.yaml")]
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, _, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        return wall, usage.ru_utime + usage.ru_stime, out.read()


def start(root: Path, label: str, clean_end: bool = True) -> tuple[float, float, str]:
    """snakemake on a 3-episode catalogue in this data_dir, from launch to its first job.
    It is killed there; with `clean_end` the ledger is then marked as the run's clean end
    would have left it (ledger.mark_clean: the next start does not read every page)."""
    work = root / f"start-{label}"
    shutil.rmtree(work, ignore_errors=True)  # a reused tree's earlier start
    work.mkdir()
    make_catalogue(work / "three.csv", 3)
    catalogue = (work / "three.csv").read_text().replace("show000-e0", "new-e0")
    (work / "three.csv").write_text(catalogue)
    config = {**yaml.safe_load((root / "config.yaml").read_text()), "catalogue": str(work / "three.csv")}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, wall = [], None
    for line in proc.stdout:
        lines.append(line)
        if re.match(r"^(local)?rule (download|extract_audio|transcribe)\b", line):
            wall = time.perf_counter() - t0
            break
    os.killpg(proc.pid, signal.SIGKILL)
    _, _, usage = os.wait4(proc.pid, 0)
    if clean_end:
        mark_clean(root / "data" / "jobs.db")
    said = "".join(x for x in lines if x.startswith("scribeflow:")).strip()
    if wall is None:
        raise RuntimeError("snakemake started no job:\n" + "".join(lines[-40:]))
    return wall, usage.ru_utime + usage.ru_stime, said


def plan_command(root: Path) -> tuple[list[str], int]:
    chunks = max(1, round((len(open(root / "episodes.csv").readlines()) - 1) / CHUNK))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
           "--configfile", str(root / "config.yaml"), "-n", "--quiet", "--cores", "8",
           "--config", f"chunk={chunks}/{chunks}"]
    return cmd, chunks


def plan(root: Path) -> tuple[float, float, int | None]:
    cmd, chunks = plan_command(root)
    cold = timed(cmd, root)[0]
    wall, _, out, cpu = timed(cmd, root)
    return cold, wall, cpu, chunks


def each_speedup(root: Path, rounds: int) -> dict:
    """The chunk's plan with every speedup, with none, and without each one in turn,
    alternating for `rounds` rounds: {variant: (median wall, median CPU)}."""
    from scribeflow.integration.internals import SPEEDUPS

    names = [name for name, _ in SPEEDUPS]
    variants = {"all": "1", "none": "0",
                **{f"without {n}": ",".join(x for x in names if x != n) or "0" for n in names}}
    cmd, _ = plan_command(root)
    seen: dict = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, value in variants.items():
            wall, _, _, cpu = timed(cmd, root, env={"SCRIBEFLOW_SPEEDUPS": value})
            seen[variant].append((wall, cpu))
    return {v: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
            for v, runs in seen.items()}


def measure(n: int, base: Path, runs: int, keep: bool, reuse: bool = False, only: str | None = None,
            speedup_rounds: int = 0) -> dict:
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    if reuse:
        root, keep = Path(base or tempfile.gettempdir()) / f"full-scale-{n}", True
    else:
        root = Path(tempfile.mkdtemp(prefix=f"full-scale-{n}-", dir=base))
    print(f"\n== {n:,} finished episodes ({root}); load average {os.getloadavg()[0]:.2f}", flush=True)
    figures = {"episodes": n}
    try:
        data = root / "data"
        if reuse and (root / "laid-down.json").exists():
            state = json.loads((root / "laid-down.json").read_text())
            print(f"  reusing the tree laid down before ({state['done']:,} finished episodes)", flush=True)
        else:
            root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            state = lay_down(root, n)
            files = files_under(data)
            print(f"  laid down in {time.perf_counter() - t0:.0f} s: {files:,} files, "
                  f"{shutil.disk_usage(root).used / 1e9:.0f} GB used on the disk; ledger thinned "
                  f"{state['thinned']}", flush=True)
            if reuse:
                (root / "laid-down.json").write_text(json.dumps({"done": state["done"]}))
        if only == "plan":
            measure_plan(root, figures, speedup_rounds)
            return figures
        config = full_config(root)
        recurring = only == "recurring"
        walk_all = None if recurring else DiskMonitor(data, data, 300 * 10**9, 280 * 10**9, 250 * 10**9, cache_duration=0)
        if not recurring:
            t0 = time.perf_counter()
            walk_all.current_usage(fresh=True)
            figures["walk_everything_s"] = time.perf_counter() - t0
            print(f"  one walk of everything (every look before):      {figures['walk_everything_s']:7.2f} s",
                  flush=True)
            monitor = DiskMonitor.from_config(config)
            t0 = time.perf_counter()
            monitor.reconcile()
            figures["reconcile_s"] = time.perf_counter() - t0
            print(f"  reconciliation (outside the lock, every 600 s): {figures['reconcile_s']:7.2f} s", flush=True)
        admit, look = admissions(root, runs)
        figures["admission_p50_ms"], figures["admission_p95_ms"] = (statistics.median(admit) * 1000,
                                                                    statistics.quantiles(admit, n=20)[18] * 1000)
        figures["look_p50_ms"], figures["look_p95_ms"] = (statistics.median(look) * 1000,
                                                          statistics.quantiles(look, n=20)[18] * 1000)
        print(f"  gate admission ({runs}):                          {percentiles(admit)}", flush=True)
        print(f"  end-of-transcription look ({runs}):               {percentiles(look)}", flush=True)
        status = [cli(root, "status") for _ in range(3)]
        figures["status_s"] = max(s[0] for s in status)
        figures["status_cpu_s"] = max(s[1] for s in status)
        print(f"  scribeflow status (3 fresh processes):          best {min(s[0] for s in status):.2f} s, worst "
              f"{figures['status_s']:.2f} s (CPU {figures['status_cpu_s']:.2f} s)", flush=True)
        if recurring:  # a clean check to start from: cheap on a tree checked before
            cli(root, "check")
        else:
            figures["check_first_s"], _, out = cli(root, "check", "--full")
            print(f"  scribeflow check, first (reads every transcript): {figures['check_first_s']:7.2f} s  "
                  f"({out.strip().splitlines()[0][:80] if out.strip() else ''})", flush=True)
        # The recurring check: after a clean one, the last chunk's 2,000 transcripts are new
        # (written, and their ledger rows moved on, as the pipeline does).
        newest = [path.name.removesuffix(".json") for path in sorted((data / "transcripts").iterdir())[-2000:]]
        with Ledger(data / "jobs.db") as ledger:
            for episode in newest:
                ledger.set_stage(episode, "analyzed")
        mark_clean(data / "jobs.db")  # that chunk's run ended cleanly
        figures["check_s"], figures["check_cpu_s"], out = cli(root, "check")
        # Back to a day ago: 2,000 rows changed in the last 10 minutes would be 2,000 episodes
        # active for the gate's next looks (a rerun on this tree), not a month-four day.
        with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
            c.executemany("UPDATE jobs SET updated_at = ?, analyzed_at = ? WHERE id = ?",
                          ((time.time() - DAY, time.time() - DAY, episode) for episode in newest))
        mark_clean(data / "jobs.db")
        print(f"  scribeflow check, recurring (2,000 new):        {figures['check_s']:7.2f} s (CPU "
              f"{figures['check_cpu_s']:.2f} s)  ({out.strip().splitlines()[0][:80] if out.strip() else ''})",
              flush=True)
        if not recurring:
            first, cpu, said = start(root, "first")
            figures["start_first_s"] = first
            print(f"  run's start, 3 episodes, first after a chunk:    {first:.2f} s (CPU {cpu:.2f} s)", flush=True)
            for line in said.splitlines():
                print(f"      {line[:150]}", flush=True)
            t0 = time.perf_counter()
            while logs.finished(data) and time.perf_counter() - t0 < 300:  # the roll-up it started
                time.sleep(0.2)
            print(f"  the roll-up it started ended after {time.perf_counter() - t0:.1f} s more", flush=True)
        again = [start(root, f"again{k}") for k in range(3)]
        figures["start_s"] = statistics.median(a[0] for a in again)
        figures["start_cpu_s"] = statistics.median(a[1] for a in again)
        print(f"  run's start, 3 episodes, again (median of 3):    {figures['start_s']:.2f} s (CPU "
              f"{figures['start_cpu_s']:.2f} s)", flush=True)
        start(root, "killed", clean_end=False)
        figures["start_after_kill_s"], cpu, _ = start(root, "after-kill")
        print(f"  run's start after a run was killed (reads every page of the ledger): "
              f"{figures['start_after_kill_s']:.2f} s (CPU {cpu:.2f} s)", flush=True)
        after = files_under(data)
        per_episode = (after - files_under(data / "logs" / "rollup")) / max(1, state["done"])
        print(f"  files in data_dir after the roll-up: {after:,} ({per_episode:.2f} per finished episode, "
              f"roll-ups apart)", flush=True)
        measure_plan(root, figures, speedup_rounds)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def measure_plan(root: Path, figures: dict, speedup_rounds: int) -> None:
    cold, warm, cpu, chunks = plan(root)
    figures["plan_s"], figures["plan_cpu_s"] = warm, cpu
    print(f"  next chunk's plan ({chunks}/{chunks}, ~{CHUNK:,} episodes): cold cache {cold:.2f} s, "
          f"warm {warm:.2f} s (CPU {cpu:.2f} s)", flush=True)
    if speedup_rounds:
        seen = each_speedup(root, speedup_rounds)
        wall_all, cpu_all = seen["all"]
        print(f"  the plan's speedups, median of {speedup_rounds} alternating rounds (wall, CPU; saving = "
              "the variant's minus all's):", flush=True)
        for variant, (wall, cpu) in seen.items():
            print(f"    {variant:<28} {wall:6.2f} s  CPU {cpu:6.2f} s  saving {wall - wall_all:+6.2f} s  "
                  f"CPU {cpu - cpu_all:+6.2f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 171_881])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--runs", type=int, default=200, help="admissions and looks per size")
    ap.add_argument("--keep", action="store_true", help="keep the laid-down trees")
    ap.add_argument("--reuse", action="store_true", help="lay each tree down once in ROOT/full-scale-N, keep it")
    ap.add_argument("--only", choices=["plan", "recurring"],
                    help="plan: the chunk's plan alone; recurring: what recurs (no walk of everything, "
                         "no first full check, no first start), on a tree --reuse laid down and checked before")
    ap.add_argument("--each-speedup", type=int, default=0, metavar="ROUNDS",
                    help="also plan without the speedups and without each one, ROUNDS times")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores; {' '.join(sys.argv)}")
    results = [measure(n, args.root, args.runs, args.keep, args.reuse, args.only, args.each_speedup)
               for n in args.sizes]
    targets = {"admission_p95_ms": 50, "look_p95_ms": 50, "status_s": 2, "check_s": 60, "start_s": 5, "plan_s": 10}
    print("\nSummary (target at the largest N; and within 2x of the smallest N's figure)")
    print(f"  {'':<18}" + "".join(f"{r['episodes']:>12,}" for r in results) + "      target  ratio")
    for key, target in targets.items():
        values = [r[key] for r in results if key in r]
        if len(values) != len(results):
            continue
        ratio = values[-1] / values[0] if values[0] else float("inf")
        met = values[-1] <= target and ratio <= 2
        print(f"  {key:<18}" + "".join(f"{v:12.2f}" for v in values)
              + f"  {target:>10}  {ratio:5.2f}  {'met' if met else 'MISSED'}")
    for key in ("status_cpu_s", "check_cpu_s", "start_cpu_s", "plan_cpu_s", "walk_everything_s", "reconcile_s", "start_first_s"):
        print(f"  {key:<18}" + "".join(f"{r.get(key, float('nan')):12.2f}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
