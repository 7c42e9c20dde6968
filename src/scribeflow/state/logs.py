"""Roll-ups of per-job logs and benchmark records: a finished episode keeps its outputs,
not eight small files of how they were made.

Also a job's logging set-up (setup_logging), for the steps and the worker.

Snakemake writes one log ({data_dir}/logs/RULE/{id}.log) and one benchmark record
({data_dir}/benchmarks/RULE/{id}.tsv) per job, four jobs per episode: two million
files over the whole catalogue, which every directory listing and every walk of the
disk accounting would pay for. `rollup` (at each run's start) moves those of finished
episodes into two gzip files per roll-up under {data_dir}/logs/rollup/:

  TIME-PID.log.gz          every log, each after a line "==> logs/RULE/ID.log <=="
                           (zless/zgrep read it; so does `python -m scribeflow.state.logs ID`)
  TIME-PID.benchmarks.tsv.gz   one TSV: rule, episode, then Snakemake's benchmark columns

A finished episode is one whose analysis exists and whose analysis job has ended
(Snakemake writes the benchmark record after the job). Logs of failed or unfinished
episodes stay where they are, which is where Snakemake's error message and the failure
report point. A roll-up is written (fsynced) before the files it holds are deleted; a
crash in between leaves both, and readers take the newest copy.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gzip
import logging
import os
import signal
import sys
import time
from pathlib import Path

from scribeflow import child_env
from scribeflow.config.layout import EPISODE_RULES, MARKER_SUFFIX, STATS_SUFFIX, Layout
from scribeflow.files import allocated_bytes, atomic_path

log = logging.getLogger("scribeflow.state.logs")

HEADER = "==> {} <=="


def setup_logging(log_path: str | Path | None) -> None:
    """A job's log: everything in its log file; on the console (shared by every job of
    the run) only warnings and errors, and a failure as one line that points to the
    file, not a traceback. Without a log file (the worker), everything goes to stderr."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
        console.setLevel(logging.WARNING)
        console.addFilter(lambda record: not getattr(record, "file_only", False))

        def excepthook(kind, exc, tb):
            log.error("Traceback of the failure", exc_info=(kind, exc, tb), extra={"file_only": True})
            print(f"scribeflow: {kind.__name__}: {exc} (traceback in {log_path})", file=sys.stderr)

        sys.excepthook = excepthook
        interrupt_on_sigterm()
        atexit.register(_log_job_cpu)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")


def _log_job_cpu() -> None:
    """The job's CPU as it ends, in its log: this script's process (Python's start, the
    step) and the children it waited for; and, where Snakemake spawned a process for the
    job, that process's own (the workflow's parse, the job's start) until now.
    benchmarks/cpu_budget.py adds these up per stage."""
    import resource

    import psutil

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    spawner = ""
    with contextlib.suppress(psutil.Error, AttributeError):
        parent = psutil.Process().parent()
        if "snakemake" in " ".join(parent.cmdline()) and "--target-jobs" in parent.cmdline():
            times = parent.cpu_times()
            spawner = f", its Snakemake process {times.user + times.system:.3f} s"
    log.info("Job CPU: %.3f s%s", own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, spawner)


def interrupt_on_sigterm() -> None:
    """SIGTERM (run-chunks stopping a chunk, Slurm at a job's time limit or on preemption,
    systemd) interrupts a job as Ctrl-C does: a KeyboardInterrupt, so that the step
    records the interruption, puts the episode back and counts nothing (failures.record),
    and its files are cleaned up, instead of dying with the row left as it was."""
    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


def finished(data_dir: str | os.PathLike | Layout) -> set[str]:
    """Episodes whose jobs are all over: analysed, and the analysis job's record written."""
    layout = Layout.of(data_dir)
    ended = _ids(layout.benchmarks / "analyse_episode", ".tsv")
    analysed = layout.episode_stats
    return {e for e in ended if (analysed / f"{e}{STATS_SUFFIX}").is_file()} - _ids(layout.failed, MARKER_SUFFIX)


def rollup(data_dir: str | os.PathLike | Layout) -> tuple[int, int, int]:
    """Move the logs and benchmark records of finished episodes into one roll-up.
    Returns (episodes, files removed, bytes freed net of the roll-up). One process at a
    time; another one's roll-up in progress makes this one a no-op."""
    layout = Layout.of(data_dir)
    data = layout.data_dir
    done = finished(layout)
    if not done:
        return 0, 0, 0
    out = layout.rollup
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0, 0, 0
        done = finished(layout)  # the other roll-up may have taken some
        logs = [(rule, e, layout.log_file(rule, e)) for e in sorted(done) for rule in EPISODE_RULES]
        marks = [(rule, e, layout.benchmark_file(rule, e)) for e in sorted(done) for rule in EPISODE_RULES]
        logs = [x for x in logs if x[2].is_file()]
        marks = [x for x in marks if x[2].is_file()]
        if not logs and not marks:
            return 0, 0, 0
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        written = []
        if logs:
            target = out / f"{stem}.log.gz"
            with atomic_path(target) as tmp, gzip.open(tmp, "wt", encoding="utf-8", errors="replace") as f:
                for rule, _, path in logs:
                    f.write(HEADER.format(path.relative_to(data)) + "\n")
                    text = path.read_text(encoding="utf-8", errors="replace")
                    f.write(text if text.endswith("\n") or not text else text + "\n")
            written.append(target)
        if marks:
            target = out / f"{stem}.benchmarks.tsv.gz"
            with atomic_path(target) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
                header = None
                for rule, episode, path in marks:
                    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if not lines:
                        continue
                    if header is None:
                        header = lines[0]
                        f.write(f"rule\tepisode\t{header}\n")
                    for line in lines[1:]:
                        f.write(f"{rule}\t{episode}\t{line}\n")
            written.append(target)
        freed = 0
        for _, _, path in logs + marks:
            with contextlib.suppress(FileNotFoundError):
                freed += allocated_bytes(path.stat())
                path.unlink()
        freed -= sum(allocated_bytes(p.stat()) for p in written)
        return len(done), len(logs) + len(marks), freed


def rollup_quietly(data_dir: str | os.PathLike | Layout) -> None:
    """Roll up, say so in one line, never fail (a full disk, an unreadable file: the
    logs simply stay)."""
    try:
        episodes, files, freed = rollup(data_dir)
    except Exception as exc:
        log.warning("Could not roll up the logs of finished episodes: %s", exc)
        print(f"scribeflow: could not roll up finished episodes' logs ({exc}); they stay as they are",
              file=sys.stderr)
        return
    if files:
        print(f"scribeflow: rolled up {files} log and benchmark file(s) of {episodes} finished episode(s) into "
              f"{Layout.of(data_dir).rollup} ({freed / 1e6:.1f} MB freed)", file=sys.stderr)


def start_rollup(data_dir: str | os.PathLike | Layout) -> int:
    """The run's start: roll up the previous chunk's logs in a process of its own, beside
    the first jobs (16,000 files take seconds the start should not wait for). Its output
    goes to logs/rollup/rollup.log. Returns the finished episodes with files to roll up."""
    import subprocess

    layout = Layout.of(data_dir)
    data = layout.data_dir
    count = len(finished(layout))
    if not count:
        return 0
    out = layout.rollup
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rollup.log", "a") as sink:
        subprocess.Popen([sys.executable, "-m", "scribeflow.state.logs", "--rollup", "--data-dir", str(data)],
                         stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
                         env=child_env())
    return count


def episode_logs(data_dir: str | os.PathLike | Layout, episode: str) -> list[tuple[str, str]]:
    """(path, text) of every log of `episode`: the files still in place, then those in
    roll-ups (newest roll-up first; a log in several is shown once)."""
    layout = Layout.of(data_dir)
    data = layout.data_dir
    found: dict[str, str] = {}
    # data_dir-relative names, as the roll-up's headers have them.
    names = [layout.log_file(rule, episode).relative_to(data) for rule in EPISODE_RULES]
    for name in names:
        path = data / name
        if path.is_file():
            found[str(name)] = path.read_text(encoding="utf-8", errors="replace")
    wanted = {HEADER.format(name) for name in names}
    for archive in sorted(layout.rollup.glob("*.log.gz"), reverse=True):
        current, lines = None, []
        with gzip.open(archive, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("==> ") and line.rstrip("\n").endswith(" <=="):
                    if current:
                        found.setdefault(current, "".join(lines))
                    header = line.rstrip("\n")
                    current = header[4:-4] if header in wanted else None
                    lines = []
                elif current:
                    lines.append(line)
        if current:
            found.setdefault(current, "".join(lines))
    return sorted(found.items())


def benchmarks(data_dir: str | os.PathLike | Layout) -> list[dict]:
    """Every benchmark record, rolled up or not: {"rule", "episode", Snakemake's columns}."""
    layout = Layout.of(data_dir)
    rows: dict[tuple[str, str], dict] = {}
    for archive in sorted(layout.rollup.glob("*.benchmarks.tsv.gz")):
        with gzip.open(archive, "rt", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            for line in f:
                row = dict(zip(header, line.rstrip("\n").split("\t")))
                rows[(row["rule"], row["episode"])] = row
    for rule in EPISODE_RULES:
        for path in sorted((layout.benchmarks / rule).glob("*.tsv")):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            if len(lines) > 1:
                row = {"rule": rule, "episode": path.stem, **dict(zip(lines[0].split("\t"), lines[1].split("\t")))}
                rows[(rule, path.stem)] = row
    return list(rows.values())


def _ids(folder: Path, suffix: str) -> set[str]:
    try:
        return {e.name[: -len(suffix)] for e in os.scandir(folder)
                if e.name.endswith(suffix) and not e.name.startswith(".")}
    except FileNotFoundError:
        return set()


def main(argv: list[str] | None = None) -> int:
    """python -m scribeflow.state.logs [--data-dir DIR] ID ...: print an episode's logs.
    --rollup: roll up the logs of finished episodes now."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scribeflow.state.logs", description=main.__doc__)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--rollup", action="store_true")
    parser.add_argument("ids", nargs="*")
    args = parser.parse_args(argv)
    if args.rollup:
        print(time.strftime("%Y-%m-%d %H:%M:%S"), end=" ", flush=True)
        rollup_quietly(args.data_dir)
        sys.stderr.flush()
        print(flush=True)
        return 0
    missing = 0
    for episode in args.ids:
        found = episode_logs(args.data_dir, episode)
        if not found:
            print(f"{episode}: no logs in {args.data_dir}", file=sys.stderr)
            missing += 1
        for path, text in found:
            print(HEADER.format(path))
            print(text, end="" if text.endswith("\n") else "\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
