"""Failed episodes: which are given up, why, and how to try them again on purpose.

Every failure is recorded in the ledger (stage 'failed', last_error, attempts). With
keep-going, Snakemake would simply try every missing transcript again on the next
run, so a 404 would be downloaded, and fail, for ever. An episode is therefore
*given up* when its failure is permanent (HTTP 404/410, no media at the address,
unusable media, larger than declared) or when its download has failed in
`download.max_attempts` runs, or its transcription in `transcribe.max_attempts` runs
(a crash on one file, or a GPU out of memory every time): a marker
`{data_dir}/failed/{id}.json` is written, and the workflow's targets leave the episode
out (rules/common.smk) until `scribeflow retry` removes the marker and resets the
ledger row; the next run's orphan cleanup deletes its video and audio. Until then a
failure (a server that was down all day, a crash) is tried again by the next run. An
interrupted job (Ctrl-C, SIGINT) is not a failure: the episode goes back to the stage
it had reached, its last_error says "interrupted", and it never counts toward giving up.

The marker, not the ledger, is what the workflow reads: listing one folder is cheap
at every parse (cluster jobs parse the Snakefile again) and needs no SQLite lock.
`recovery.check_consistency` checks that the two agree.
"""

from __future__ import annotations

import json
import logging
import os
import time

from scribeflow.config.layout import MARKER_SUFFIX, Layout
from scribeflow.config.settings import Settings
from scribeflow.files import atomic_write_text, ids_with_suffix
from scribeflow.state.ledger import Ledger, LedgerReader

log = logging.getLogger(__name__)


def given_up(data_dir: str | os.PathLike | Layout) -> set[str]:
    """Ids of the episodes the workflow skips (one directory listing, no ledger access)."""
    return ids_with_suffix(Layout.of(data_dir).failed, MARKER_SUFFIX)


def is_permanent(exc: BaseException) -> bool:
    """The failure says so (DownloadFailed(permanent=True), every media.MediaError)."""
    return bool(getattr(exc, "permanent", False))


# Whose failure it was, and so what it costs the episode:
EPISODE = "episode"  # its own (gone, unsupported, never fits, undecodable): counted, given up
HOST = "host"  # the host's or the environment's (403/5xx, timeouts, extractor errors, a full disk): never counted
INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM: back to the stage before, not counted
KINDS = (EPISODE, HOST, INTERRUPTED)
# GPU out of memory, as CTranslate2 and CUDA say it. The worker first decodes again with
# half the batch, down to 1 (worker.decode); out of memory at batch 1 is then the
# episode's failure like any other: counted, and given up after transcribe.max_attempts runs.
_OUT_OF_MEMORY = ("CUDA out of memory", "CUDA failed with error out of memory", "CUDA_ERROR_OUT_OF_MEMORY",
                  "CUBLAS_STATUS_ALLOC_FAILED")


def out_of_memory(exc: BaseException) -> bool:
    """The GPU's memory ran out (a smaller batch may still fit)."""
    return any(marker in str(exc) for marker in _OUT_OF_MEMORY)


def kind(exc: BaseException) -> str:
    """EPISODE, HOST or INTERRUPTED: a failure says its kind (DownloadFailed.kind, the
    gate's DiskStalled, a model that cannot be loaded), an interruption is INTERRUPTED,
    and anything else (out of GPU memory at batch 1 included) is the episode's."""
    if interrupted(exc):
        return INTERRUPTED
    if is_permanent(exc):
        return EPISODE
    said = getattr(exc, "kind", None)
    if said in KINDS:
        return said
    return EPISODE


# The stage an episode is back at when `step` is interrupted.
BEFORE_STEP = {"download": "queued", "extract_audio": "downloaded", "transcribe": "extracted"}


def interrupted(exc: BaseException) -> bool:
    """Ctrl-C, or SIGTERM (logs.interrupt_on_sigterm makes it a KeyboardInterrupt in a job)."""
    return isinstance(exc, KeyboardInterrupt)


def record(settings: Settings, ledger: Ledger, episode: str, step: str, exc: BaseException) -> bool:
    """Record a failure of `step` for `episode` in the ledger; give the episode up when
    the failure is permanent, or its downloads (transcriptions) have failed in
    download.max_attempts (transcribe.max_attempts) runs. An interruption (Ctrl-C) is
    not a failure: the episode goes back to the stage before `step`, marked
    interrupted. Neither is the host's or the environment's failure counted (kind):
    the episode is tried again by the next run, however often. Returns whether it was
    given up."""
    what = kind(exc)
    if what != EPISODE and step == "download":
        ledger.uncount_attempt(episode)  # counted when the download started
    if what == INTERRUPTED:
        ledger.set_stage(episode, BEFORE_STEP.get(step, "queued"), failure_kind=INTERRUPTED,
                         last_error=f"{INTERRUPTED} during {step} ({exc or type(exc).__name__}); the next run "
                                    f"starts it again")
        return False
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    ledger.set_stage(episode, "failed", last_error=reason, failure_kind=what)
    if what == HOST:
        return False
    if step == "transcribe":
        attempts, limit = ledger.add_transcribe_failure(episode), settings.transcribe.max_attempts
    else:
        attempts = (ledger.job(episode) or {}).get("attempts") or 0
        limit = settings.download.max_attempts if step == "download" else None
    permanent = is_permanent(exc)
    final = permanent or (limit is not None and attempts >= limit)
    if final:
        if not permanent:  # what a person reads: how often it failed so, not only the last time
            reason = f"{reason} (failed so in {attempts} runs)"
            ledger.set_stage(episode, "failed", last_error=reason, failure_kind=what)
        marker = {"id": episode, "step": step, "permanent": permanent, "attempts": attempts,
                  "reason": reason, "failed_at": time.time()}
        atomic_write_text(Layout.from_config(settings).failed_marker(episode), json.dumps(marker, indent=1))
        discard_audio(settings, ledger, episode)
    return final


def discard_audio(settings: Settings, ledger: Ledger, episode: str) -> None:
    """A given-up episode's video, audio and saved speech are deleted at once: no job of
    the workflow asks for them any more, and a WAV is ~46 MB per 24 minutes of the budget.
    (`scribeflow retry` starts the episode from its download.)"""
    layout = Layout.from_config(settings)
    audio = layout.audio_file(episode)
    had_audio = audio.exists()
    for path in (layout.video(episode), audio, layout.speech_file(episode)):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # the next run's orphan cleanup tries again
            log.warning("%s: could not delete %s (%s)", episode, path, exc)
    if had_audio and not audio.exists():
        ledger.update(episode, audio_deleted=1)


class TranscriptionCrashed(RuntimeError):
    """The transcription worker died with this episode in hand, in too many runs."""


def worker_died(settings: Settings, ledger: Ledger, episode: str, exc: Exception) -> None:
    """The worker died with this episode in hand. A crash on one file kills the worker
    in every run, then (most likely) the job's own try too, which no Python code outlives
    to record: so the death is counted as a failed transcription before the job tries
    in-process. An episode that was merely in flight beside it is counted too, and then
    transcribed in-process, after which the count no longer matters. Raises (and the
    job's failure then gives the episode up, in `record`) once this death would be the
    transcribe.max_attempts-th failure, and never on a first death."""
    failed = (ledger.job(episode) or {}).get("transcribe_failures") or 0
    if failed >= 1 and failed + 1 >= settings.transcribe.max_attempts:
        raise TranscriptionCrashed(f"{episode}: the transcription worker died while transcribing it, "
                                   f"in {failed + 1} runs (out of memory, or a crash on this audio): {exc}")
    ledger.add_transcribe_failure(episode)


def report(settings: Settings) -> list[dict]:
    """Failed episodes, from the ledger and the markers: id, attempts, reason, and
    whether the next run tries it again."""
    layout = Layout.from_config(settings)
    markers = {}
    for episode in given_up(layout):
        try:
            markers[episode] = json.loads(layout.failed_marker(episode).read_text())
        except (OSError, ValueError):
            markers[episode] = {}
    rows = {}
    if layout.ledger.exists():
        with LedgerReader(layout.ledger) as ledger:
            for episode, attempts, error, at, failure_kind in ledger.failed():
                rows[episode] = {"id": episode, "attempts": attempts, "reason": error, "failed_at": at,
                                 "kind": failure_kind or EPISODE}
    for episode, marker in markers.items():
        row = rows.setdefault(episode, {"id": episode, "attempts": marker.get("attempts"),
                                        "reason": marker.get("reason"), "failed_at": marker.get("failed_at"),
                                        "kind": EPISODE})
        row["step"] = marker.get("step")
        row["permanent"] = bool(marker.get("permanent"))
    for row in rows.values():
        row["given_up"] = row["id"] in markers
        row.setdefault("step", None)
        row.setdefault("permanent", False)
    return sorted(rows.values(), key=lambda r: r["id"])


KIND_HEADINGS = {
    EPISODE: "the episode's own (counted; given up when permanent or after max_attempts runs)",
    HOST: "the host's or the environment's (never counted: the next run tries them again)",
    INTERRUPTED: "interrupted (never counted)",
}


def render(rows: list[dict]) -> str:
    if not rows:
        return "No failed episodes."
    given = sum(r["given_up"] for r in rows)
    lines = [f"{len(rows)} failed episode(s): {given} given up (skipped until `scribeflow retry`), "
             f"{len(rows) - given} to be tried again by the next run."]
    for failure_kind in KINDS:
        group = [r for r in rows if r.get("kind", EPISODE) == failure_kind]
        if group:
            lines.append(f"{len(group)} {KIND_HEADINGS[failure_kind]}:")
        for r in group:
            what = ("permanent" if r["permanent"] else "given up") if r["given_up"] else "will retry"
            lines.append(f"  {r['id']}  [{what}, {r['attempts'] or 0} attempt(s)]  {r['reason'] or '?'}")
    return "\n".join(lines)


def retry(settings: Settings, ids: list[str] | None = None) -> list[str]:
    """Make failed episodes eligible again: remove their markers and reset their ledger
    rows to 'queued' with no attempts and no error. `ids=None`: every failed episode.
    Returns the ids reset; unknown or not-failed ids raise ValueError."""
    layout = Layout.from_config(settings)
    failed = {r["id"] for r in report(settings)}
    if ids is None:
        ids = sorted(failed)
    unknown = [i for i in ids if i not in failed]
    if unknown:
        raise ValueError(f"not failed episodes: {', '.join(unknown)} (see `scribeflow failed`)")
    if ids and layout.ledger.exists():
        with Ledger(layout.ledger) as ledger:
            ledger.requeue(ids)
    for episode in ids:
        layout.failed_marker(episode).unlink(missing_ok=True)
    return list(ids)
