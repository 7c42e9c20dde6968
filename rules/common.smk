import functools
import math
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package holds all the logic; the workflow needs it importable, installed or not.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from scribeflow import catalogue as sf_catalogue
from scribeflow import config as sf_config
from scribeflow.chunks import existing_transcripts

validate(config, "../config/schema.yaml")
try:
    sf_config.check_rules(config)
    # Every process parses this (each chunk, each cluster job): reuse the validated
    # catalogue while the file is unchanged.
    CATALOGUE = sf_catalogue.load(
        config["catalogue"], config["chunk"], cache_dir=".snakemake/scribeflow"
    )
except (sf_config.ConfigError, sf_catalogue.CatalogueError) as exc:
    raise WorkflowError(str(exc)) from None

DATA = config["data_dir"]
STORAGE = config["storage_dir"]
DISK = config["disk_management"]
CLEANUP = DISK["cleanup"]
LOGS = f"{DATA}/logs"
BENCHMARKS = f"{DATA}/benchmarks"


wildcard_constraints:
    episode=sf_catalogue.ID_PATTERN.pattern.strip("^$"),


def register_default_resource(name, value):
    """Global resources derived from the config, unless --resources (or a profile) sets them."""
    if name not in workflow.global_resources:
        workflow.register_resource(name, value)


# Downloads may hold at most this many job slots, and always leave one free for the
# extraction and transcription that free space: waiting downloads cannot starve them.
_cores = workflow.cores if isinstance(workflow.cores, int) else 1
register_default_resource(
    "download_slots",
    max(1, min(DISK["max_concurrent_downloads"], _cores - 1)),
)
register_default_resource("transcription_slots", DISK["max_concurrent_transcriptions"])
# Snakemake gives a resource back when a job ends, not when its temp() output is
# deleted, so disk_gb caps only the bytes of downloads in flight: the margin
# above the pause threshold. Snakemake's resources are integers: sizes round up.
register_default_resource("disk_gb", max(1, math.floor(sf_config.in_flight_gb(DISK))))


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


def declared_gb(wildcards):
    mb = row(wildcards.episode, "expected_size_mb") or DISK["default_video_size_mb"]
    return max(1, math.ceil(mb / 1000))


def transcript_targets(wildcards=None):
    """The missing transcripts. An existing one is final (its JSON is written last and
    its temp inputs are gone) and asking for it costs Snakemake 3 jobs to plan, so a
    resumed run plans only what is left. When none is missing: one existing one, so
    that Snakemake says there is nothing to do (an `all` without input always runs)."""
    # An input function: a cluster job that re-parses the Snakefile never calls it.
    done = existing_transcripts(Path(DATA) / "transcripts")
    todo = [e for e in CATALOGUE.index if e not in done] or list(CATALOGUE.index[:1])
    # A comprehension: expand() takes 2.6 s for 171,881 ids, this 0.03 s.
    return [f"{DATA}/transcripts/{episode}.json" for episode in todo]


def transcript_outputs():
    outputs = {"json": f"{DATA}/transcripts/{{episode}}.json"}
    for fmt in config["transcribe"]["formats"]:
        outputs[fmt] = f"{DATA}/transcripts/{{episode}}.{fmt}"
    return outputs


onstart:
    from scribeflow.ledger import Ledger
    from scribeflow.recovery import clean_orphans

    with Ledger.for_config(config) as ledger:
        ledger.enqueue(CATALOGUE.index)
    files, freed = clean_orphans(config)
    if files:
        print(
            f"scribeflow: removed {files} orphaned file(s) of an interrupted run, freed {freed / 1e6:.1f} MB"
        )
