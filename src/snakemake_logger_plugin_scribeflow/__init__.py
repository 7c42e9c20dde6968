"""`snakemake --logger scribeflow`: a console that a months-long run can keep.

Snakemake's own console prints ~20 lines per job (170,000 episodes: millions of lines);
snakemake-logger-plugin-rich redraws a live display, which suits a terminal one watches,
not the log file of a chunk or a tmux scrollback read weeks later. This logger prints:
one compact line at most every `interval` seconds (jobs done of the total, per rule,
running, failed), every failed job at once (rule, episode, log file), warnings and
errors, and a last line when the run ends. Everything else is dropped.
"""

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from logging import WARNING, LogRecord

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    # A real type, not a string annotation: Snakemake builds its --logger-scribeflow-* options from it.
    interval: float = field(
        default=60.0,
        metadata={"help": "Seconds between progress lines (default 60).", "env_var": False, "required": False},
    )


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        self.stream = sys.stdout if getattr(self.common_settings, "stdout", False) else sys.stderr
        self.started = time.monotonic()
        self.last_line = 0.0
        self.jobs = {}  # jobid -> (rule, episode or "")
        self.running = set()
        self.finished: Counter = Counter()
        self.failed: Counter = Counter()
        self.done = self.total = 0

    @property
    def interval(self) -> float:
        value = getattr(self.settings, "interval", None)
        return 60.0 if value is None else float(value)

    def emit(self, record: LogRecord) -> None:
        try:
            self._handle(record)
        except Exception:  # a console line must never stop a run
            self.handleError(record)

    def _handle(self, record: LogRecord) -> None:
        event = getattr(record, "event", None)
        if event == LogEvent.JOB_INFO:
            wildcards = getattr(record, "wildcards", None) or {}
            episode = wildcards.get("episode", "") if isinstance(wildcards, dict) else ""
            self.jobs[getattr(record, "jobid", -1)] = (getattr(record, "rule_name", "?"), episode)
        elif event == LogEvent.JOB_STARTED:
            self.running.update(getattr(record, "jobs", None) or [])
        elif event == LogEvent.JOB_FINISHED:
            job = getattr(record, "job_id", None)
            self.running.discard(job)
            self.finished[self.jobs.get(job, ("?", ""))[0]] += 1
        elif event == LogEvent.JOB_ERROR:
            job = getattr(record, "jobid", None)
            self.running.discard(job)
            rule, episode = self.jobs.get(job, ("?", ""))
            self.failed[rule] += 1
            logs = getattr(record, "log", None) or []
            where = f"; log: {', '.join(map(str, logs))}" if logs else ""
            self._write(f"FAILED {rule}" + (f" {episode}" if episode else "") + where)
        elif event == LogEvent.PROGRESS:
            self.done, self.total = getattr(record, "done", 0), getattr(record, "total", 0)
            if self.total and self.done >= self.total:
                self._write(self._progress("Finished"))
                return
        elif event in (LogEvent.ERROR, LogEvent.GROUP_ERROR) or (event is None and record.levelno >= WARNING):
            self._write(record.getMessage())
        elif event is None:
            message = record.getMessage()
            # Snakemake's last words ("Nothing to be done", "Complete log: ...") say how a run ended.
            if message.startswith(("Nothing to be done", "Complete log", "Exiting because", "Will exit")):
                self._write(message)
        now = time.monotonic()
        if self.total and now - self.last_line >= self.interval:
            self._write(self._progress("progress"))

    def _progress(self, what: str) -> str:
        pct = 100 * self.done / self.total if self.total else 100.0
        per_rule = ", ".join(f"{rule} {n}" for rule, n in sorted(self.finished.items()))
        running = Counter(self.jobs.get(j, ("?", ""))[0] for j in self.running)
        line = f"{what}: {self.done}/{self.total} jobs ({pct:.0f}%)"
        if per_rule:
            line += f" | done: {per_rule}"
        if running:
            line += " | running: " + ", ".join(f"{rule} {n}" for rule, n in sorted(running.items()))
        if self.failed:
            line += " | failed: " + ", ".join(f"{rule} {n}" for rule, n in sorted(self.failed.items()))
        elapsed = time.monotonic() - self.started
        return line + f" | {elapsed / 60:.0f} min"

    def _write(self, text: str) -> None:
        self.last_line = time.monotonic()
        self.stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
