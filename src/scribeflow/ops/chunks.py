"""`scribeflow run-chunks`: the whole catalogue, one Snakemake run per chunk.

One DAG over 171,881 episodes costs minutes and gigabytes just to plan; a chunk of
2,000 plans in seconds. The driver runs the chunks (`--config chunk=K/N`) in turn:

- Resumable: a chunk whose episodes are all analysed or given up is skipped without starting
  Snakemake, so after an interruption the same command goes on where it stopped
  (the interrupted chunk re-runs its unfinished episodes; `rerun-incomplete` and the
  orphan cleanup at start handle its leftovers).
- The bottleneck stays busy across chunk boundaries: once every download of the
  running chunk has ended (its remaining work is extraction and transcription), the
  next chunk's Snakemake starts beside it, so its downloads overlap the last
  transcriptions. At most two chunks run at once. Both runs share one working
  directory: Snakemake locks output files, not the directory, and two chunks have
  no file in common. The disk budget holds across them because the download gate
  (data_dir/gate) is shared by every process; transcriptions are capped across them
  by the transcription slots (slots.py), since Snakemake's resources are per process.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scribeflow.config import catalogue as sf_catalogue
from scribeflow.config import settings as sf_config
from scribeflow.config.layout import STATS_SUFFIX, WORKFLOW_CACHE, Layout
from scribeflow.files import ids_with_suffix
from scribeflow.integration.internals import profile_config
from scribeflow.integration.workflow import find_snakefile
from scribeflow.state.failures import given_up
from scribeflow.state.ledger import DOWNLOAD_ENDED, HOUR, Error, LedgerReader


@dataclass
class Chunk:
    k: int
    n: int
    ids: list[str]

    @property
    def spec(self) -> str:
        return f"{self.k}/{self.n}"


def plan(catalogue, chunk_size: int) -> list[Chunk]:
    """The chunks K/N of `chunk_size` episodes or fewer, sliced as the Snakefile slices them."""
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    n = max(1, math.ceil(len(catalogue) / chunk_size))
    return [Chunk(k, n, list(sf_catalogue.select_chunk(catalogue, f"{k}/{n}")["id"])) for k in range(1, n + 1)]


def missing(chunk: Chunk, done: set[str]) -> list[str]:
    return [i for i in chunk.ids if i not in done]


def downloads_ended(chunk: Chunk, ledger_path: Path, since: float, done: set[str]) -> bool:
    """Whether every episode of `chunk` has a transcript or a download that ended after `since`
    (the start of the chunk's run: a stage left by an earlier run does not count)."""
    todo = [i for i in chunk.ids if i not in done]
    if not todo:
        return True
    try:
        with LedgerReader(ledger_path) as ledger:
            rows = ledger.stages_of(todo)
    except Error:
        return False  # no ledger yet: nothing has started
    # A download that ended, one way or the other: the chunk needs no more download slots for it.
    ended = sum(stage in DOWNLOAD_ENDED and (at or 0) >= since for stage, at in rows)
    return ended == len(todo)


@dataclass
class Running:
    chunk: Chunk
    proc: subprocess.Popen
    started: float
    log: object = field(repr=False, default=None)


class Driver:
    def __init__(self, directory: Path, config: sf_config.Settings, chunk_size: int, snakemake_args: list[str],
                 configfiles: list[str] = (), overrides: list[str] = (), overlap: bool = True,
                 poll: float = 2.0, unlock: bool = False, command: list[str] | None = None, out=None,
                 progress_every: float = 60.0, snakefile: str | Path = "Snakefile"):
        self.directory = Path(directory).absolute()
        self.config = config
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.poll = poll
        self.unlock = unlock
        self.out = out
        self.progress_every = progress_every
        self.catalogue_ids: set[str] = set()
        self.started = time.time()
        self.layout = Layout.from_config(config).under(self.directory)
        self.data = self.layout.data_dir
        self.ledger = self.layout.ledger
        self.logs = self.directory / WORKFLOW_CACHE / "chunks"
        # The Snakemake command line without the chunk; `command` replaces the
        # interpreter and module (the tests' stand-in for Snakemake).
        self.base = [*(command or [sys.executable, "-m", "snakemake"]),
                     "--snakefile", str(Path(snakefile).absolute()), "--directory", str(self.directory)]
        for name in configfiles:
            self.base += ["--configfile", name]
        self.overrides = list(overrides)
        self.snakemake_args = list(snakemake_args)
        # The chunk logs get a compact console (a progress line a minute, failures at once),
        # not Snakemake's ~20 lines per job, unless the user chose a logger.
        if not any(a == "--logger" or a.startswith("--logger=") for a in self.snakemake_args):
            self.snakemake_args += ["--logger", "scribeflow"]

    def finished(self) -> set[str]:
        """Episodes through their last per-episode stage (the analysis: the transcript may be
        deleted after tokenization), or given up (failures.py): nothing is left to do for them."""
        return ids_with_suffix(self.layout.episode_stats, STATS_SUFFIX) | given_up(self.layout)

    def progress(self, running: list[Running]) -> str:
        """One compact line: the running chunks, the catalogue, the rate since the driver
        started, the disk against its limits, failures."""
        from scribeflow.budget.gate import gb

        done = self.finished()
        parts = [f"chunk {r.chunk.spec}: {len(set(r.chunk.ids) & done)} of {len(r.chunk.ids)} done" for r in running]
        total = len(self.catalogue_ids) or 1
        have = len(done & self.catalogue_ids)
        parts.append(f"catalogue {have:,} of {len(self.catalogue_ids):,} ({100 * have / total:.1f}%)")
        elapsed = time.time() - self.started
        try:
            with LedgerReader(self.ledger, timeout=5) as ledger:
                window = min(elapsed, HOUR)
                recent = ledger.transcribed_since(time.time() - window)
                failed = ledger.failed_count()
                sample = ledger.last_sample()
        except Error:
            recent, failed, sample = 0, 0, None
        if window := min(elapsed, HOUR):
            parts.append(f"{recent * HOUR / window:.1f} transcribed/h over the last {window / 60:.0f} min")
        dm = self.config.disk_management
        if sample:
            parts.append(f"disk {gb(sample[0])} of {dm.hard_limit_gb:g} GB (pause {dm.pause_threshold_gb:g}, "
                         f"resume {dm.resume_threshold_gb:g})" + (", downloads paused" if sample[1] else ""))
        gave_up = len(given_up(self.data) & self.catalogue_ids)
        parts.append(f"failed {failed} ({gave_up} given up)")
        return " | ".join(parts)

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] run-chunks: {message}", file=self.out or sys.stdout, flush=True)

    def command(self, chunk: Chunk) -> list[str]:
        return [*self.base, *self.snakemake_args, "--config", *self.overrides, f"chunk={chunk.spec}"]

    def start(self, chunk: Chunk, todo: int) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"chunk-{chunk.k:05d}-of-{chunk.n}.log"
        log = open(log_path, "w")
        self.say(f"chunk {chunk.spec}: {todo} of {len(chunk.ids)} episodes to do; "
                 f"snakemake log {log_path.relative_to(self.directory)}")
        proc = subprocess.Popen(self.command(chunk), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        return Running(chunk, proc, time.time(), log)

    def may_start_next(self, running: list[Running]) -> bool:
        if not running:
            return True
        if not self.overlap or len(running) >= 2:
            return False
        done = self.finished()
        return all(downloads_ended(r.chunk, self.ledger, r.started, done) for r in running)

    def reap(self, running: list[Running], failed: list[Chunk], stopping=()) -> list[Running]:
        still = []
        for r in running:
            code = r.proc.poll()
            if code is None:
                still.append(r)
                continue
            r.log.close()
            left = len(missing(r.chunk, self.finished()))
            if not left:  # every episode analysed or given up, whatever Snakemake's exit code
                gave_up = len(given_up(self.data) & set(r.chunk.ids))
                self.say(f"chunk {r.chunk.spec}: done in {time.time() - r.started:.0f} s"
                         + (f", {gave_up} episode(s) given up" if gave_up else ""))
                continue
            if stopping:
                self.say(f"chunk {r.chunk.spec}: stopped, {left} episode(s) to go")
                continue
            failed.append(r.chunk)
            hint = ""
            if "cannot be locked" in Path(r.log.name).read_text(errors="replace"):
                hint = " (a killed run left Snakemake's lock: add --unlock once)"
            self.say(f"chunk {r.chunk.spec}: snakemake exited with {code}, {left} episode(s) not done; "
                     f"see {Path(r.log.name).relative_to(self.directory)}{hint}")
        return still

    def run(self) -> int:
        cache = self.directory / WORKFLOW_CACHE
        catalogue_path = self.directory / self.config.catalogue
        chunks = plan(sf_catalogue.load(catalogue_path, cache_dir=cache), self.chunk_size)
        self.catalogue_ids = {i for c in chunks for i in c.ids}
        done = self.finished()
        todo = [(c, len(missing(c, done))) for c in chunks]
        skipped = sum(1 for _, n in todo if n == 0)
        todo = [(c, n) for c, n in todo if n]
        self.say(f"{len(chunks)} chunk(s) of up to {self.chunk_size} episodes; {skipped} already done"
                 + (f"; starting at chunk {todo[0][0].spec}" if todo else ""))
        if self.unlock and todo:
            # After a kill -9 Snakemake's lock stays behind (docs/failures.md); release it once.
            subprocess.run([*self.base, "--unlock", "--config", *self.overrides, f"chunk={todo[0][0].spec}"],
                           cwd=self.directory, stdout=subprocess.DEVNULL, check=True)
        running: list[Running] = []
        failed: list[Chunk] = []
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)
            for r in running:
                if r.proc.poll() is None:
                    os.killpg(r.proc.pid, signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        last_progress = time.monotonic()

        def wait(seconds: float) -> None:
            nonlocal last_progress
            time.sleep(seconds)
            if running and not stopping and time.monotonic() - last_progress >= self.progress_every:
                last_progress = time.monotonic()
                self.say(self.progress(running))

        try:
            for chunk, n in todo:
                while not stopping:
                    running = self.reap(running, failed)
                    if self.may_start_next(running):
                        break
                    wait(self.poll)
                if stopping:
                    break
                running.append(self.start(chunk, n))
            while running:
                running = self.reap(running, failed, stopping)
                if running:
                    wait(min(self.poll, 0.5) if stopping else self.poll)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stopping:
            self.say("interrupted; run the same command again to go on where it stopped")
            return 130
        total = sum(len(c.ids) for c in chunks)
        have = len(self.finished() & {i for c in chunks for i in c.ids})
        self.say(f"{have} of {total} episodes analysed or given up; {len(failed)} chunk(s) failed"
                 + (f": {', '.join(c.spec for c in failed)}" if failed else ""))
        # The corpus and plots whatever failed: over what is analysed, when chunks ran now
        # or they were never built.
        code = self.summarise() if todo or not self.corpus_built() else 0
        left = [i for c in chunks for i in missing(c, self.finished())]
        if left:
            shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
            self.say(f"{len(left)} episode(s) still need attention (failed, to be tried again by the next run; "
                     f"`scribeflow failed` says why): {shown}")
        gave_up = len(given_up(self.data) & {i for c in chunks for i in c.ids})
        if gave_up:
            self.say(f"{gave_up} episode(s) given up (`scribeflow failed` lists them, `scribeflow retry` "
                     f"tries them again)")
        return 1 if left or code else 0

    def corpus_built(self) -> bool:
        return Path(self.layout.corpus_files()["episodes"]).is_file()

    def summarise(self) -> int:
        """One run without `chunk`: the summaries over the whole catalogue (corpus, plots),
        which chunk runs leave out (overlapping runs would both write them). It starts
        no episode (corpus_only: a failed one must not keep the corpus from being built)
        and rebuilds the corpus even when its one input is older (episodes analysed by the
        chunks are not its inputs). It plans in seconds."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / "summary.log"
        self.say(f"corpus and plots over the whole catalogue; snakemake log {log_path.relative_to(self.directory)}")
        config = ["--config", *self.overrides, "corpus_only=True"]
        with open(log_path, "w") as log:
            code = subprocess.run([*self.base, *self.snakemake_args, *config, "--forcerun", "corpus"],
                                  cwd=self.directory, stdout=log, stderr=subprocess.STDOUT).returncode
        if code:
            self.say(f"the summary run exited with {code}; see {log_path.relative_to(self.directory)}")
        return 1 if code else 0


def main(args) -> int:
    directory = Path(args.directory).absolute()
    snakemake_args = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    overrides = [*profile_config(directory, snakemake_args), *args.config]
    try:
        snakefile = find_snakefile(args.snakefile)
        # The run's defaults are the workflow's config/config.yaml, beside its Snakefile.
        config = sf_config.for_run(args.configfile, overrides, directory, workflow_dir=snakefile.parent)
        if config.chunk:
            raise sf_config.ConfigError("chunk: run-chunks sets it; leave it null")
    except (sf_config.ConfigError, sf_catalogue.CatalogueError, OSError, ValueError) as exc:
        print(f"run-chunks: {exc}", file=sys.stderr)
        return 2
    driver = Driver(directory, config, args.chunk_size, snakemake_args, configfiles=args.configfile,
                    overrides=overrides, overlap=not args.no_overlap, poll=args.poll, unlock=args.unlock,
                    progress_every=args.progress_seconds, snakefile=snakefile)
    try:
        return driver.run()
    except sf_catalogue.CatalogueError as exc:
        print(f"run-chunks: {exc}", file=sys.stderr)
        return 2
