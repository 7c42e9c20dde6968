"""How a workflow run ends (the Snakefile's onsuccess and onerror): with the corpus tables
and plots of everything analysed so far, whatever failed, and with one last line on what
failed, what the next run tries again and which command lists them.

With keep-going (profiles/default) Snakemake runs every job it can, but a failed
episode's analysis is an input of the corpus, so it never runs the corpus or the plots,
and over months there is always an episode to try again. onerror therefore builds them
here, in Snakemake's own process, from the same function the `corpus` rule calls, over
the episodes analysed; the rule's next run rebuilds them as usual. The last line is
printed as the process exits, after Snakemake's own last words ("Complete log",
"WorkflowError ..."), so that it is the line a user reads last.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Collection
from pathlib import Path

from scribeflow.config.layout import STATS_SUFFIX, Layout
from scribeflow.config.settings import Settings
from scribeflow.files import ids_with_suffix
from scribeflow.state import failures

log = logging.getLogger("scribeflow")
SUMMARIES = ("corpus", "plots")  # the rules that read every episode, in their order
_interrupted = []  # a Ctrl-C seen by this process (note_interrupts)


def note_interrupts() -> None:
    """Note a Ctrl-C before Python turns it into KeyboardInterrupt: Snakemake's scheduler
    then ends like a failed run, and the run's end must not keep a user who wants out
    waiting for summaries. From the run's start (onstart: Snakemake's main thread)."""
    previous = signal.getsignal(signal.SIGINT)

    def noted(signum, frame):
        _interrupted.append(time.time())
        if callable(previous):
            return previous(signum, frame)
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread: nothing to note
        signal.signal(signal.SIGINT, noted)


def finish(settings: Settings, episodes: Collection[str], unreached: Collection[str] = (),
           failed: Collection[str] = (), out=None) -> None:
    """The run's end, success or not (Snakemake keeps one onsuccess and one onerror handler):
    let the transcription worker go rather than after its idle timeout (it holds GPU
    memory); build the summaries in `unreached` (rules of SUMMARIES this run planned but
    never ran, a job before them having failed); record the run's end in the ledger; and
    leave the closing line to be printed at exit (`failed`: the episodes whose job failed
    in this run). The log roll-up waits for the next run's start, so that a run's logs
    stay where Snakemake and `scribeflow failed` point until then."""
    from scribeflow.stages.transcription import worker
    from scribeflow.state.ledger import end_run

    out = out or sys.stderr
    worker.stop(settings.transcribe.as_dict(), Layout.from_config(settings).data_dir)
    if unreached and not _interrupted:
        print(summarise(settings, [rule for rule in SUMMARIES if rule in unreached]), file=out, flush=True)
    end_run(settings)
    try:
        line = closing_line(settings, episodes, failed)
    except Exception as exc:  # an unreadable ledger: `scribeflow check` says more
        line = f"scribeflow: could not count the failed episodes ({exc}); `scribeflow failed` lists them"
    atexit.register(lambda: print(line, file=out, flush=True))


def summarise(settings: Settings, rules: list[str]) -> str:
    """The corpus tables and the plots over the episodes analysed, built in this process;
    their log is the rules' own. A line that says what was built, or why it was not."""
    from scribeflow.ops import plots
    from scribeflow.stages import steps

    layout = Layout.from_config(settings)
    started = time.monotonic()
    for rule in rules:
        log_path = layout.run_log(rule)
        try:
            with _logged_to(log_path):
                log.info("Built at the run's end: a job before it failed")
                if rule == "corpus":
                    steps.corpus(settings=settings, stats_pattern=layout.stats_pattern(),
                                 lemmas_pattern=layout.lemmas_pattern(), outputs=layout.corpus_files())
                else:
                    files = layout.report_files()
                    plots.draw_all(settings, files["disk"], files["throughput"])
        except Exception as exc:  # the run has ended: say it in a line, the traceback is in the log
            return (f"scribeflow: the {rule} step at the run's end failed: {type(exc).__name__}: {exc} "
                    f"(traceback in {log_path})")
        except KeyboardInterrupt:
            return f"scribeflow: the {rule} step at the run's end was interrupted; the next run builds it"
    analysed = len(ids_with_suffix(layout.episode_stats, STATS_SUFFIX))
    steps_ = " and ".join(rules) + (" steps" if len(rules) > 1 else " step")
    return (f"scribeflow: a job failed, so Snakemake skipped the {steps_}; ran here over the {analysed} "
            f"episode(s) analysed so far in {time.monotonic() - started:.1f} s ({layout.corpus}, {layout.reports})")


@contextlib.contextmanager
def _logged_to(path: str):
    """The package's log records into `path` only, not onto Snakemake's console."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    except Exception:
        log.exception("Traceback of the failure")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        log.level, log.propagate = saved


def closing_line(settings: Settings, episodes: Collection[str], failed_now: Collection[str] = ()) -> str:
    """How many of `episodes` (the run's catalogue) are analysed and failed, how many of
    the failed the next run tries again, and the command that lists them. Failed: as the
    ledger and the given-up markers say, and `failed_now` (whose job failed in this run,
    recorded or not: a job can die before it records anything)."""
    layout = Layout.from_config(settings)
    ids = set(episodes)
    analysed = len(ids_with_suffix(layout.episode_stats, STATS_SUFFIX, among=ids))
    failed = {r["id"] for r in failures.report(settings)} & ids | set(failed_now) & ids
    head = (f"scribeflow: {'interrupted; the same command goes on where it stopped. ' if _interrupted else ''}"
            f"{analysed} of {len(ids)} episode(s) analysed")
    if not failed:
        return f"{head}; none failed"
    gave_up = len(failed & failures.given_up(layout))
    return (f"{head}; {len(failed)} failed: {len(failed) - gave_up} to be tried again by the next run, "
            f"{gave_up} given up until `scribeflow retry`. `scribeflow failed` lists them and why.")
