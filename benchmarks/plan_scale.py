"""Benchmark: planning and running the whole catalogue (issue 5). Not a test.

    python benchmarks/plan_scale.py                 # 1k, 10k, 50k; whole DAG up to 50k
    python benchmarks/plan_scale.py --whole-max 171881   # also the 171,881-row whole dry run (~6 min, ~7 GB)
    python benchmarks/plan_scale.py --sizes 1000 --overhead-episodes 200   # quick look

For synthetic catalogues of 1,000, 10,000, 50,000 and 171,881 rows it prints the
dry-run wall time and peak memory (max RSS of the snakemake process) of:
- the whole catalogue as one DAG (sizes up to --whole-max; 171,881 costs ~325 s, ~7 GB),
- chunks of --chunk-size episodes (`--config chunk=K/N`, as `scribeflow run-chunks`
  runs them): the first chunk after the catalogue changed (cache cold: read + validate),
  then --sample-chunks chunks spread over the catalogue (cache warm); with
  --all-chunks every chunk, so that "planning the whole catalogue chunk by chunk"
  is measured in full,
- a resumed chunk, in which half of the transcripts exist,
- one job's start (what a cluster job pays to re-parse the Snakefile: --target-jobs
  of one download, --mode remote, as Snakemake's executors call it).
Then the wall time Snakemake adds per episode: a real (not dry) run of the workflow
whose rules, params, resources, priorities, temp() outputs, logs and benchmarks are
the real ones but whose steps only touch their outputs, so that what remains is
Snakemake's own cost (scheduling, job start, output checks, metadata, temp deletion);
the steps' own time (their benchmark files) is subtracted. Once per scheduler setting.

Targets: a chunk plans in < 10 s; planning chunk by chunk never needs > 1 GB; a
resumed chunk re-plans in < 10 s; Snakemake adds < 0.5 s per episode.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def make_catalogue(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "title", "series", "season", "episode", "duration_s", "expected_size_mb",
                    "language"])
        for i in range(n):
            # Port 9 on loopback: a request would fail loudly (a dry run makes none).
            w.writerow([f"show{i // 1000:03d}-e{i:06d}", f"http://127.0.0.1:9/v/{i}.mp4", f"Episode {i}",
                        f"show{i // 1000:03d}", i // 100 % 30, i % 100, 1800 + i % 900, 350 + i % 500, "en"])
    return path


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str, float]:
    """Wall seconds, peak RSS in bytes (of the process and the children it waited for), output,
    and CPU seconds (user + system): on a busy machine, about what the wall time would be
    on a quiet one (each run here is one single-threaded Python)."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else {**os.environ, **env})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, usage.ru_maxrss * 1024, text, usage.ru_utime + usage.ru_stime


def snakemake(workdir: Path, snakefile: Path, *args: str) -> list[str]:
    return [*SNAKEMAKE, "--snakefile", str(snakefile), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *args]


def write_config(workdir: Path, catalogue: Path, **extra) -> None:
    import yaml

    config = {"catalogue": str(catalogue), "data_dir": str(workdir / "data"),
              "storage_dir": str(workdir / "storage"), **extra}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def dry_run(workdir: Path, *args: str, listing: bool = False, env: dict | None = None,
            snakefile: Path = REPO / "Snakefile") -> tuple[float, int, int | None, float]:
    """The plan: `snakemake -n --quiet`, which builds the whole DAG (what a real run does
    before its first job) and stops, as Snakemake advises for large workflows. With
    `listing`, plain `-n`, which also prints every job (and the job count)."""
    quiet = [] if listing else ["--quiet"]
    wall, rss, out, cpu = timed(snakemake(workdir, snakefile, "-n", *quiet, "--cores", "8", *args), workdir, env)
    m = re.search(r"^total\s+(\d+)$", out, re.M)
    return wall, rss, int(m.group(1)) if m else None, cpu


def row(label: str, wall: float, rss: int, jobs: int | None = None, cpu: float | None = None,
        target: str = "") -> None:
    jobs_s = f"{jobs:>8,}" if jobs is not None else " " * 8
    cpu_s = f"{cpu:8.1f} s" if cpu is not None else " " * 10
    print(f"  {label:<46} {wall:8.1f} s {cpu_s} {rss / 1e9:7.2f} GB {jobs_s}  {target}", flush=True)


def plan_figures(args, base: Path) -> None:
    print(f"Planning (dry runs, --cores 8); {load()}", flush=True)
    print(f"  {'':<46} {'wall':>10} {'CPU':>10} {'peak RSS':>10} {'jobs':>8}", flush=True)
    for n in args.sizes:
        work = base / f"plan-{n}"
        work.mkdir()
        catalogue = make_catalogue(work / "episodes.csv", n)
        write_config(work, catalogue)
        print(f" {n:,} episodes", flush=True)
        if n <= args.whole_max:
            row("whole catalogue, one DAG", *dry_run(work))
        else:
            print(f"  whole catalogue, one DAG: skipped (--whole-max {args.whole_max:,})", flush=True)
        chunks = max(1, -(-n // args.chunk_size))
        (work / ".snakemake" / "scribeflow").exists() and shutil.rmtree(work / ".snakemake" / "scribeflow")
        os.utime(catalogue)  # a changed catalogue: the first chunk reads and validates it
        wall, rss, jobs, cpu = dry_run(work, "--config", f"chunk=1/{chunks}")
        row(f"chunk 1/{chunks}, catalogue cache cold", wall, rss, jobs, cpu, "target < 10 s, < 1 GB")
        row(f"chunk 1/{chunks}, without scribeflow.speedups",
            *dry_run(work, "--config", f"chunk=1/{chunks}", env={"SCRIBEFLOW_SPEEDUPS": "0"}))
        row(f"chunk 1/{chunks}, plain -n (lists every job)", *dry_run(work, "--config", f"chunk=1/{chunks}",
                                                                     listing=True))
        ks = range(1, chunks + 1) if args.all_chunks else sorted(
            {1 + (chunks - 1) * i // max(1, args.sample_chunks - 1) for i in range(args.sample_chunks)})
        walls, cpus, peak, total = [], [], 0, 0.0
        for k in ks:
            wall, rss, jobs, cpu = dry_run(work, "--config", f"chunk={k}/{chunks}")
            walls.append(wall)
            cpus.append(cpu)
            peak = max(peak, rss)
            total += wall
        what = "all" if args.all_chunks else f"{len(ks)} sampled"
        row(f"chunk, cache warm: max of {what} of {chunks}", max(walls), peak, jobs, max(cpus),
            "target < 10 s, < 1 GB")
        print(f"  {'chunk, cache warm: mean':<46} {sum(walls) / len(walls):8.1f} s;  all {chunks} chunks "
              f"{'took' if args.all_chunks else '~'} {total if args.all_chunks else total / len(walls) * chunks:.0f} s",
              flush=True)

        # Resume: half of chunk 1's episodes are done (their analysis exists), as after an
        # interruption; then the worst case, where half are transcribed but none analysed
        # (Snakemake then also plans, and drops, the jobs upstream of each transcript).
        from scribeflow.config.catalogue import load as load_catalogue

        ids = list(load_catalogue(catalogue, f"1/{chunks}").index)
        for folder, suffix in (("analysis/episodes", ".json"), ("analysis/lemmas", ".parquet"),
                               ("tokens", ".parquet"), ("transcripts", ".json")):
            (work / "data" / folder).mkdir(parents=True)
            for episode in ids[::2]:
                (work / "data" / folder / f"{episode}{suffix}").write_text("{}")
        wall, rss, jobs, cpu = dry_run(work, "--config", f"chunk=1/{chunks}")
        row(f"chunk 1/{chunks} resumed, {len(ids[::2])} of {len(ids)} done", wall, rss, jobs, cpu, "target < 10 s")
        for folder in ("analysis/episodes", "analysis/lemmas", "tokens"):
            shutil.rmtree(work / "data" / folder)
        wall, rss, jobs, cpu = dry_run(work, "--config", f"chunk=1/{chunks}")
        row(f"  same, {len(ids[::2])} transcribed but not analysed", wall, rss, jobs, cpu, "target < 10 s")
        if n == max(args.sizes):
            job_start(work, ids[1])
        shutil.rmtree(work)
    floor(args, base)


FLOOR_SNAKEFILE = """\
IDS = [f"e{i:06d}" for i in range(%d)]

rule all:
    input: [f"x/{e}.json" for e in IDS]

rule r1:
    output: "v/{e}.m"
    shell: "touch {output}"

rule r2:
    input: "v/{e}.m"
    output: "a/{e}.wav"
    shell: "touch {output}"

rule r3:
    input: "a/{e}.wav"
    output: "t/{e}.json"
    shell: "touch {output}"

rule r4:
    input: "t/{e}.json"
    output: "x/{e}.json"
    shell: "touch {output}"
"""


def floor(args, base: Path) -> None:
    """Snakemake's own floor on this machine: a chunk-sized plan of 4 rules per episode that
    do nothing but `touch` (no script, log, benchmark, params or resources)."""
    work = base / "floor"
    work.mkdir()
    (work / "Snakefile").write_text(FLOOR_SNAKEFILE % args.chunk_size)
    runs = [timed([*SNAKEMAKE, "-n", "--quiet", "--cores", "8"], work) for _ in range(2)]
    print(f"  {'for scale: Snakemake alone, 4 bare rules x ' + f'{args.chunk_size:,}':<46} "
          f"{min(r[0] for r in runs):8.1f} s {min(r[3] for r in runs):8.1f} s {max(r[1] for r in runs) / 1e9:7.2f} GB"
          f"           (this machine's speed: a chunk's plan cannot be faster)", flush=True)


def job_start(work: Path, episode: str) -> None:
    cmd = snakemake(work, REPO / "Snakefile", "-n", "--cores", "1", "--mode", "remote", "--target-jobs",
                    f"download:episode={episode}", "--allowed-rules", "download")
    os.utime(work / "episodes.csv")
    cold = timed(cmd, work)
    warm = [timed(cmd, work) for _ in range(3)]
    row("one job's start (cluster job re-parse), cold", cold[0], cold[1], None, cold[3])
    row("one job's start, catalogue cache warm (best of 3)", min(w[0] for w in warm), max(w[1] for w in warm),
        None, min(w[3] for w in warm))
    empty = work / "empty"
    empty.mkdir()
    (empty / "Snakefile").write_text('rule x:\n    output: "x"\n    shell: "touch {output}"\n')
    base = [timed([*SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(empty / "Snakefile")], empty)
            for _ in range(3)]
    row("  for scale: snakemake -n of a one-rule Snakefile", min(b[0] for b in base), max(b[1] for b in base),
        None, min(b[3] for b in base))


# -- Snakemake's own cost per episode --------------------------------------------
def trivial_workflow(dest: Path) -> Path:
    """The real Snakefile and rules, with each step's script replaced by touching its outputs."""
    dest.mkdir()
    for name in ("Snakefile", "config", "environment.yml"):
        src = REPO / name
        shutil.copytree(src, dest / name) if src.is_dir() else shutil.copy(src, dest / name)
    (dest / "src").symlink_to(REPO / "src")
    (dest / "rules").mkdir()
    for smk in (REPO / "rules").glob("*.smk"):
        text = re.sub(r'script:\n(\s+)"\.\./scripts/\w+\.py"', r'shell:\n\1"touch {output}"', smk.read_text())
        (dest / "rules" / smk.name).write_text(text)
    shutil.copytree(REPO / "profiles", dest / "profiles")
    return dest / "Snakefile"


SETTINGS = {
    "greedy": ["--scheduler", "greedy"],
    "greedy+db": ["--scheduler", "greedy", "--persistence-backend", "db"],
    "ilp": ["--scheduler", "ilp"],
    "ilp+subsample": ["--scheduler", "ilp", "--scheduler-subsample", "100"],
    "profile": [],  # whatever profiles/default sets
}


def overhead(args, base: Path) -> None:
    n = args.overhead_episodes
    print(f"\nSnakemake's own time per episode ({n} episodes, 4 jobs each, steps that only touch their "
          f"outputs, --cores {args.overhead_cores}); {load()}", flush=True)
    snakefile = trivial_workflow(base / "trivial")
    for label in args.settings:
        extra = SETTINGS[label]
        work = base / f"run-{re.sub(r'[^a-z0-9]+', '-', label)}"
        work.mkdir()
        write_config(work, make_catalogue(work / "episodes.csv", n))
        dry, _, _, dry_cpu = timed(snakemake(work, snakefile, "-n", "--cores", str(args.overhead_cores)), work)
        wall, rss, _, cpu = timed(snakemake(work, snakefile, "--cores", str(args.overhead_cores), *extra), work)
        steps = 0.0
        for tsv in (work / "data" / "benchmarks").rglob("*.tsv"):
            lines = tsv.read_text().splitlines()
            steps += float(lines[1].split("\t")[0])
        done = len(list((work / "data" / "transcripts").glob("*.json")))
        assert done == n, f"{done} of {n} transcripts"
        per = (wall - dry - steps / args.overhead_cores) / n
        print(f"  {label:<16} run {wall:6.1f} s (plan {dry:.1f} s, steps {steps:.1f} s): "
              f"{per * 1000:5.0f} ms per episode beyond planning; CPU {(cpu - dry_cpu) / n * 1000:4.0f} ms "
              f"per episode (Snakemake and the touch steps)   target < 500 ms", flush=True)
        shutil.rmtree(work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000, 171_881])
    parser.add_argument("--whole-max", type=int, default=50_000,
                        help="largest catalogue planned as one DAG (171881: ~325 s, ~7 GB)")
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--sample-chunks", type=int, default=3)
    parser.add_argument("--all-chunks", action="store_true", help="plan every chunk (171,881: ~86 dry runs)")
    parser.add_argument("--overhead-episodes", type=int, default=2000, help="0 skips the run")
    parser.add_argument("--overhead-cores", type=int, default=1)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["profile"],
                        help="scheduler/persistence settings of the runs (default: the profile's)")
    parser.add_argument("--skip-plan", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    print(f"scribeflow plan_scale on {os.cpu_count()} CPUs; {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="plan_scale-") as tmp:
        base = Path(tmp)
        if not args.skip_plan:
            plan_figures(args, base)
        if args.overhead_episodes:
            overhead(args, base)
    print(f"done; {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
