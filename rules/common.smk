import functools
import importlib.util
import math
import os
import sys
from pathlib import Path

# The package holds all the logic. An installed scribeflow is used; a checkout run without
# installing it uses its own src/. The jobs' scripts see the same: Snakemake appends this
# process's sys.path to theirs (conda environments included), and the transcription worker
# is started with the location of the package its job imported.
if importlib.util.find_spec("scribeflow") is None:
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from scribeflow.config import catalogue as sf_catalogue
from scribeflow.config import settings as sf_config
from scribeflow.state import failures as sf_failures
from scribeflow.integration import internals as sf_internals
from scribeflow.files import ids_with_suffix
from scribeflow.stages import subtitles as sf_subtitles
from scribeflow.stages.subtitles import Finder
from scribeflow.config.layout import WORKFLOW_CACHE, Layout

try:
    # Validated once (defaults filled into `config`, which every job gets); the rules
    # read SETTINGS, the jobs rebuild it from their config (scribeflow.stages.steps.Job).
    SETTINGS = sf_config.validate(config)
    # Every process parses this (each chunk, each cluster job): reuse the validated
    # catalogue while the file is unchanged.
    CATALOGUE = sf_catalogue.load(
        SETTINGS.catalogue, SETTINGS.chunk, cache_dir=WORKFLOW_CACHE
    )
except (sf_config.ConfigError, sf_catalogue.CatalogueError) as exc:
    print(f"scribeflow: {exc}", file=sys.stderr)
    sys.exit(1)

# Snakemake's planning costs per job that are the same for every job of a rule; not
# while another workflow parses this one as its module.
sf_internals.apply(workflow, SETTINGS.snakemake_speedups)

# Every path of the run (scribeflow.config.layout); the rules declare its {episode} patterns.
LAYOUT = Layout.from_config(SETTINGS)
DISK = SETTINGS.disk_management
CLEANUP = DISK.cleanup


wildcard_constraints:
    episode=sf_catalogue.ID_PATTERN.pattern.strip("^$"),


def register_default_resource(name, value):
    """Global resources derived from the config, unless --resources (or a profile) sets them."""
    if name not in workflow.global_resources:
        workflow.register_resource(name, value)


# Downloads may hold at most this many job slots, and always leave one free for the
# extraction and transcription that free space: waiting downloads cannot starve them.
# The slots are this machine's cores or, on a cluster (profiles/slurm), --jobs: Snakemake
# keeps --jobs only for remote executors (locally it becomes --cores).
_slots = workflow.nodes if workflow.nodes is not None else workflow.cores
_slots = _slots if isinstance(_slots, int) else 1
register_default_resource("download_slots", DISK.download_slots(_slots))
register_default_resource("transcription_slots", DISK.max_concurrent_transcriptions)
# Snakemake gives a resource back when a job ends, not when its temp() output is
# deleted, so disk_gb caps only the bytes of downloads in flight: the margin
# above the pause threshold. Snakemake's resources are integers: sizes round up.
register_default_resource("disk_gb", max(1, math.floor(DISK.in_flight_gb)))


def temp_if(flag, path):
    return temp(path) if flag else path


@functools.cache
def catalogue_column(column):
    """{episode: value} of one column: a dict lookup per job, not a pandas .at (100x slower)."""
    if column not in CATALOGUE.columns:
        return {}
    return dict(zip(CATALOGUE.index, CATALOGUE[column].tolist()))


def row(episode, column):
    """A catalogue value, or None when the column is absent or empty."""
    value = catalogue_column(column).get(episode)
    return None if value is None or value != value else value  # NaN != NaN


@functools.cache
def check_model(planned=True):
    """A model this machine cannot load is refused before any download, in one line naming
    it and what to write instead; an English-only one asked for another language is warned
    of (scribeflow.config.models). Once per run: it may import faster-whisper and ask the
    hub. Said as config errors are: one line, no Python frames."""
    from scribeflow.config.models import check_model as _check

    problem, warning = _check(
        SETTINGS.transcribe.model,
        SETTINGS.transcribe.language,
        catalogue_column("language").values(),
    )
    if warning:
        print(f"scribeflow: warning: {warning}", file=sys.stderr)
    if problem and planned:
        print(f"scribeflow: {problem}", file=sys.stderr)
        sys.exit(1)


def declared_gb(wildcards):
    mb = row(wildcards.episode, "expected_size_mb") or DISK.default_video_size_mb
    return max(1, math.ceil(mb / 1000))


# Episodes given up (permanent failure, or max_attempts reached) are left out of the
# targets until `scribeflow retry`: with keep-going, Snakemake would retry them for ever.
GIVEN_UP = sf_failures.given_up(LAYOUT)
# Said here, not in onstart: onstart does not run when nothing is left to be done.
if GIVEN_UP and not (workflow.remote_exec or workflow.subprocess_exec):
    _skipped = len(GIVEN_UP.intersection(CATALOGUE.index))
    if _skipped:
        print(
            f"scribeflow: skipping {_skipped} failed episode(s); `scribeflow failed` says why, "
            f"`scribeflow retry` tries them again",
            file=sys.stderr,
        )


# Subtitles first (scribeflow.stages.subtitles): an episode with a usable local subtitle
# is planned as one job that makes its transcript from it, with no download, audio or
# model. A cluster job reads the verdicts its planning process made.
SUBTITLES = Finder(
    SETTINGS,
    LAYOUT,
    lambda e, c: row(e, c),
    judge=not workflow.remote_exec,
    write=lambda: not workflow.dryrun,
    progress=lambda n: print(
        f"scribeflow: judged {n} subtitle file(s) so far", file=sys.stderr
    ),
)


def transcribe_input(wildcards):
    """The subtitle or the audio: what the transcript comes from."""
    episode = wildcards.episode
    if not SUBTITLES.subtitled(episode):
        return {"audio": str(LAYOUT.audio_file(episode))}
    inputs = {"subtitle": SUBTITLES.source_file(episode)}
    # subtitles.sample_share: a sampled one is also transcribed first, and the ASR's error
    # rate against the subtitle recorded (rule sample_asr), the same episodes every run.
    if sf_subtitles.sampled(episode, SETTINGS.subtitles.sample_share):
        inputs["sample"] = str(LAYOUT.quality_file(episode))
    return inputs


def transcription_slot(wildcards):
    return 0 if SUBTITLES.subtitled(wildcards.episode) else 1


def transcript_outputs():
    # transcribe.gzip: every transcript file ends in .gz (.json.gz is then the target).
    outputs = LAYOUT.transcript_patterns()
    outputs["json"] = temp_if(
        CLEANUP.delete_transcript_after_tokenization, outputs["json"]
    )
    return outputs


def corpus_outputs():
    """The corpus tables and plot: the workflow's final targets."""
    return LAYOUT.corpus_files()


# Per-episode outputs the corpus is rebuilt from; the corpus step also finds those of
# earlier runs (other chunks) by these patterns.
EPISODE_STATS = LAYOUT.stats_pattern()
EPISODE_LEMMAS = LAYOUT.lemmas_pattern()


def lost_corpus_index(wildcards=None):
    """The corpus index when it is missing while episodes were analysed: its rule rebuilds it."""
    if LAYOUT.corpus_index.exists() or not LAYOUT.episode_stats.is_dir():
        return []
    with os.scandir(LAYOUT.episode_stats) as entries:
        return [str(LAYOUT.corpus_index)] if next(entries, None) is not None else []


def episode_analysis_outputs():
    return LAYOUT.analysis_patterns()


def missing_targets(pattern):
    """The targets of `pattern` ("folder/{episode}suffix") not yet on disk. An existing
    one is final and asking for it costs Snakemake a chain of jobs to plan, so a
    resumed run plans only what is left. When none is missing: one existing one, so
    that Snakemake says there is nothing to do (an `all` without input always runs).
    Given-up episodes are left out."""
    folder, suffix = str(pattern).split("{episode}")
    done = ids_with_suffix(folder, suffix, among=CATALOGUE.index)
    todo = (
        []
        if SETTINGS.corpus_only
        else [e for e in CATALOGUE.index if e not in done and e not in GIVEN_UP]
    )
    if SUBTITLES.only:
        todo = subtitled_only(todo)
    todo = todo or [e for e in CATALOGUE.index if e in done][:1]
    # Not expand(): it takes 2.6 s for 171,881 ids, this 0.03 s.
    return [pattern.format(episode=episode) for episode in todo]


def subtitled_only(todo):
    """policy only: the episodes that have, or may still find, a usable subtitle."""
    kept = [e for e in todo if SUBTITLES.subtitled(e) or SUBTITLES.may_find(e)]
    if len(kept) < len(todo) and not (workflow.remote_exec or workflow.subprocess_exec):
        print(
            f"scribeflow: {len(todo) - len(kept)} episode(s) have no usable subtitle and subtitles.policy "
            f"is only: not transcribed (subtitles/ says why)",
            file=sys.stderr,
        )
    return kept


# An input function: a cluster job that re-parses the Snakefile never calls it.
def analysis_targets(wildcards=None):
    """The missing per-episode analyses (rules/corpus.smk). Asked for by `all` itself:
    Snakemake reruns a job whose output exists for newer inputs, never for missing
    ones, so the corpus alone would not bring in an episode new to the catalogue."""
    # A dry-run has no start (onstart): it checks the model here, while its DAG is built.
    if workflow.dryrun:
        check_model()
    return missing_targets(EPISODE_STATS)


# -- cluster ---------------------------------------------------------------------
def transcribe_runtime(wildcards, attempt):
    """Slurm time limit (minutes) from the catalogue's duration_s; see profiles/slurm."""
    from scribeflow.integration.cluster import transcribe_runtime_minutes

    return transcribe_runtime_minutes(row(wildcards.episode, "duration_s"), attempt)


onstart:
    from scribeflow.state.ledger import Ledger
    from scribeflow.budget.cleanup import clean_orphans
    from scribeflow.ops.run_end import note_interrupts

    # A Ctrl-C noted: the run's end then builds no summaries (Snakefile, onerror).
    note_interrupts()
    if not workflow.local_exec:
        # Jobs on other nodes share the gate and the ledger only through file locks.
        from scribeflow.integration.cluster import local_lock_problem

        problem = local_lock_problem(LAYOUT.data_dir)
        if problem:
            print(f"scribeflow: {problem}", file=sys.stderr)
            sys.exit(1)
    # The orphan cleanup first, writing nothing before it frees: on a full disk it is what
    # makes room for the ledger's writes. Inputs of the jobs about to run are never
    # orphans, e.g. the audio of a transcription that was killed after writing its transcript.
    jobs = list(workflow.dag.needrun_jobs())
    # Before anything is written or downloaded; only when some job needs the model.
    planned = [j.wildcards.episode for j in jobs if j.rule.name == "transcribe"]
    check_model(
        any(j.rule.name == "sample_asr" for j in jobs)
        or any(not SUBTITLES.subtitled(e) for e in planned)
    )
    needed = {f for job in jobs for f in job.input}
    files, freed = clean_orphans(SETTINGS, keep=needed)
    if files:
        print(
            f"scribeflow: removed {files} orphaned file(s) of an interrupted run, freed {freed / 1e6:.1f} MB"
        )
    # verify: a damaged ledger is found (and rebuilt from the files) before any job starts.
    subtitled = [e for e in planned if SUBTITLES.subtitled(e)]
    with Ledger.for_config(SETTINGS, verify=True) as ledger:
        ledger.enqueue(CATALOGUE.index)
        ledger.plan_subtitled(subtitled)
        ledger.start_run()
    if subtitled:
        print(
            f"scribeflow: {len(subtitled)} of {len(planned)} transcript(s) come from subtitles "
            f"(no download, no model); {SUBTITLES.judged} subtitle verdict(s) made"
        )
    # Finished episodes' per-job logs and benchmark records, into one roll-up (scribeflow.state.logs),
    # in a process of its own: the start does not wait for it.
    from scribeflow.state.logs import start_rollup

    if start_rollup(LAYOUT):
        print(
            f"scribeflow: rolling up the logs of finished episodes into {LAYOUT.rollup}"
        )
    # The model loads while the first audio is extracted. Locally only: a cluster job
    # starts the worker of its own node.
    if workflow.local_exec and len(subtitled) < len(planned):
        from scribeflow.stages.transcription import worker

        if worker.prestart(SETTINGS.transcribe.as_dict(), LAYOUT.data_dir):
            print(
                "scribeflow: started the transcription worker (the model loads meanwhile)"
            )
