"""Every use scribeflow makes of Snakemake's internals: checked against the Snakemake
versions in SUPPORTED, and tested (tests/integration/test_speedups.py) on the installed one.

The speedups: costs Snakemake 9 pays for every job while planning, though they are the
same for every job of a rule (or not needed to plan), paid once here. Each one's saving
on a 2,000-episode chunk's plan is in docs/benchmarks.md.

- `smart_open.parse_uri`, which Snakemake's source cache calls for each job's script
  and conda environment, builds a new namedtuple class on every call (an `eval`). Its
  result depends on the string alone and is immutable: cached.
- The DAG's script check (`snakemake.dag.ScriptProcessor`) opens and reads a rule's
  script through the source cache for every job. Where the rule's script path holds
  no `{wildcard}` or `{params}`, every job of the rule names the same file: it is
  checked for the first job of the rule only.
- `snakemake.common.get_function_params` (`inspect.signature`) runs for every input,
  params and resource function of every job; a function's parameters do not change.
- A job's conda environment (`Job.conda_env_spec`) evaluates all of the job's params
  first, though a rule whose environment is a fixed file caches one answer for all its
  jobs: that answer is used, and params are left to when the job runs.
- The check that no output lies inside another job's directory output
  (`DAG.check_directory_outputs`) sorts every output as a `pathlib.Path`, whose
  comparisons are slow: the same order and the same neighbour test on strings, in
  which the separator sorts below every other character, as it does between parts.
- Python's cyclic garbage collector traverses every object a plan builds again and again
  as the DAG grows, and once more when the interpreter exits: a chunk's plan spent ~4 s
  of its ~10 s there. It runs less often (a younger generation collected every 10,000
  allocations instead of 700), and what is left at exit is frozen out of the last
  collection: the process's memory goes back to the system with it (Python does not run
  the finalizers of objects alive at exit in any case). Not a Snakemake internal, but
  the same kind of cost, paid by the same processes.

`rules/common.smk` applies them while it is the main workflow's file, not when another
workflow uses this one as a module (that workflow's planning is its own to change). They
are off with SCRIBEFLOW_SPEEDUPS=0 or `snakemake_speedups: false` in the config, and on a
Snakemake outside SUPPORTED (said once on stderr): planning is then slower, and nothing
else changes.

Also here, so that the commands read a run's configuration as Snakemake does:
`parse_overrides` (`--config KEY=VALUE`) and `profile_config` (a profile's `config:`);
and, for the run's end (the Snakefile's onerror), `run_outcome`: which jobs failed and
which summaries were never reached (`workflow.scheduler`, its `failed` and `_user_kill`,
`workflow.dag.needrun_jobs()`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
from pathlib import Path

import yaml

# The Snakemake releases whose internals these were read in and tested against
# (pyproject.toml requires the same): 9.20 to 9.27.1.
SUPPORTED = ((9, 20), (10, 0))

_APPLIED = "_scribeflow_speedup"
_warned = False


def snakemake_version() -> tuple[int, ...] | None:
    """The running Snakemake's (major, minor, patch), or None when it does not say."""
    from snakemake import __version__

    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", __version__)
    return tuple(int(x or 0) for x in match.groups()) if match else None


def supported(version: tuple[int, ...] | None = None) -> bool:
    """Whether `version` (default: the running Snakemake) is one these internals fit."""
    version = snakemake_version() if version is None else version
    return version is not None and SUPPORTED[0] <= version[:2] < SUPPORTED[1]


def enabled(on: bool = True) -> bool:
    """The switch: SCRIBEFLOW_SPEEDUPS=0 or `snakemake_speedups: false` (`on`) turns them off
    (SCRIBEFLOW_SPEEDUPS=NAME,... applies only those named in SPEEDUPS)."""
    return os.environ.get("SCRIBEFLOW_SPEEDUPS", "1") != "0" and bool(on)


def apply(workflow=None, on: bool = True) -> list[str]:
    """Apply the speedups this Snakemake allows; the names of those applied. None while
    `workflow` (the Snakefile's `workflow`) is parsing this one as another's module."""
    global _warned
    if not enabled(on):
        return []
    if workflow is not None and not workflow.modifier.is_main_snakefile():
        return []
    if not supported():
        if not _warned:
            _warned = True
            low, high = (".".join(map(str, v)) for v in SUPPORTED)
            print(f"scribeflow: Snakemake {'.'.join(map(str, snakemake_version() or ()))} is not one its "
                  f"planning speedups were checked against (>={low},<{high}): planning without them",
                  file=sys.stderr)
        return []
    # A comma-separated list of names applies only those (benchmarks/full_scale.py
    # measures what each one saves).
    chosen = os.environ.get("SCRIBEFLOW_SPEEDUPS", "1")
    chosen = None if chosen == "1" else set(chosen.split(","))
    return [name for name, speedup in SPEEDUPS if (chosen is None or name in chosen) and speedup()]


def _replace(modules: list, name: str, wrap) -> bool:
    """Put wrap(f) where every one of `modules` holds the same function f as `name`."""
    found = {id(getattr(m, name, None)): getattr(m, name, None) for m in modules}
    if len(found) != 1 or None in found.values():
        return False
    (original,) = found.values()
    if not getattr(original, _APPLIED, False):
        replacement = wrap(original)
        setattr(replacement, _APPLIED, True)
        for module in modules:
            setattr(module, name, replacement)
    return True


def _cache_parse_uri() -> bool:
    try:
        from snakemake import sourcecache
        from snakemake.deployment import conda
    except ImportError:
        return False
    return _replace([sourcecache, conda], "parse_uri", functools.lru_cache(maxsize=4096))


def _check_scripts_once_per_rule() -> bool:
    try:
        from snakemake.dag import ScriptProcessor
    except ImportError:
        return False
    original = getattr(ScriptProcessor, "process_job", None)
    if original is None or not hasattr(ScriptProcessor, "script_type"):
        return False
    if getattr(original, _APPLIED, False):
        return True

    @functools.wraps(original)
    def process_job(self, job) -> None:
        entry = getattr(job.rule, self.script_type, None) if getattr(job, f"is_{self.script_type}", False) else None
        if entry is None or "{" in str(entry):
            return original(self, job)  # nothing to check, or a path of its own per job
        checked = self.__dict__.setdefault("_scribeflow_checked", set())
        key = (job.rule.name, str(entry))
        if key not in checked:
            original(self, job)  # raises if the script is missing: the rule stays unchecked
            checked.add(key)

    setattr(process_job, _APPLIED, True)
    ScriptProcessor.process_job = process_job
    return True


def _cache_function_params() -> bool:
    try:
        from snakemake import common, rules
    except ImportError:
        return False

    def wrap(original):
        # Bounded: a bound method is a new (equal) object at each access.
        cache = functools.lru_cache(maxsize=1024)(original)

        @functools.wraps(original)
        def get_function_params(func):
            try:
                return cache(func)
            except TypeError:  # an unhashable callable
                return original(func)

        return get_function_params

    return _replace([common, rules], "get_function_params", wrap)


def _conda_env_without_params() -> bool:
    try:
        from snakemake import rules
        from snakemake.jobs import Job
    except ImportError:
        return False
    original = getattr(Job, "conda_env_spec", None)
    not_cached = getattr(rules, "_NOT_CACHED", None)
    if not isinstance(original, property) or not_cached is None:
        return False
    if getattr(original.fget, _APPLIED, False):
        return True

    @functools.wraps(original.fget)
    def conda_env_spec(self):
        if getattr(self, "_conda_env_spec", None) is None:
            cached = getattr(self.rule, "_expanded_conda_env", not_cached)
            if cached is not not_cached and cached is not None:
                self._conda_env_spec = cached
        return original.fget(self)

    setattr(conda_env_spec, _APPLIED, True)
    Job.conda_env_spec = property(conda_env_spec)
    return True


def _check_directory_outputs_on_strings() -> bool:
    try:
        from snakemake.dag import DAG
        from snakemake.exceptions import ChildIOException
    except ImportError:
        return False
    original = getattr(DAG, "check_directory_outputs", None)
    if original is None or os.sep != "/":
        return False
    if getattr(original, _APPLIED, False):
        return True

    @functools.wraps(original)
    def check_directory_outputs(self) -> None:
        # Path order compares parts; joined with NUL (in no POSIX name) strings sort alike.
        outputs = sorted({("\0".join(Path(f).absolute().parts), job) for job in self.jobs for f in job.output})
        for (a, job_a), (b, job_b) in zip(outputs, outputs[1:]):
            if a != b and b.startswith(a + "\0") and job_a != job_b:
                raise ChildIOException(parent=(Path(*a.split("\0")), job_a), child=(Path(*b.split("\0")), job_b))

    setattr(check_directory_outputs, _APPLIED, True)
    DAG.check_directory_outputs = check_directory_outputs
    return True


_GC_THRESHOLD = (10_000, 10, 10)


def _collect_garbage_less_often() -> bool:
    import atexit
    import gc

    if not getattr(gc, _APPLIED, False):
        gc.set_threshold(*(max(now, want) for now, want in zip(gc.get_threshold(), _GC_THRESHOLD)))
        atexit.register(gc.freeze)
        setattr(gc, _APPLIED, True)
    return True


SPEEDUPS = (("parse_uri", _cache_parse_uri),
            ("script_check", _check_scripts_once_per_rule),
            ("function_params", _cache_function_params),
            ("conda_env", _conda_env_without_params),
            ("directory_outputs", _check_directory_outputs_on_strings),
            ("gc", _collect_garbage_less_often))


_CONFIG_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


def parse_overrides(entries) -> dict:
    """`--config KEY=VALUE ...` parsed exactly as snakemake.cli.parse_config parses it
    (the tests compare the two), without importing snakemake.cli on a supported
    Snakemake: ~1 s, a second of every `scribeflow status`. On another, its own."""
    if not supported():
        from snakemake.cli import parse_config

        return parse_config(list(entries))
    from snakemake.common import parse_key_value_arg
    from snakemake.utils import update_config

    def boolean(value: str) -> bool:
        if value in ("True", "False"):
            return value == "True"
        raise ValueError

    parsers = [int, float, boolean, lambda v: yaml.load(v, Loader=yaml.loader.BaseLoader), str]
    config: dict = {}
    for entry in entries:
        key, value = parse_key_value_arg(
            entry, errmsg="Invalid config definition: Config entries have to be defined as name=value pairs.")
        if not _CONFIG_KEY.match(key):
            raise ValueError("Invalid config definition: Config entry must start with a valid identifier.")
        parsed = None
        if value != "":
            for parser in parsers:
                try:
                    parsed = parser(value)
                except Exception:
                    continue
                if not callable(parsed):
                    break
        update_config(config, {key: parsed})
    return config


def profile_config(directory: Path, snakemake_args: list[str]) -> list[str]:
    """The `config:` entries that `snakemake SNAKEMAKE_ARGS`, started in `directory`, takes
    from its profiles: --profile (or SNAKEMAKE_PROFILE) and the workflow profile, found
    and read by Snakemake's own argument parser. Snakemake replaces them all with a
    command line --config, so a caller that adds one passes these too. [] where
    Snakemake would refuse the arguments: the run itself then says why."""
    from snakemake import cli

    try:
        # A profile name is looked up in the current directory first.
        with contextlib.chdir(directory), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            _, args = cli.parse_args(list(snakemake_args))
    except SystemExit:
        return []
    return [str(entry) for entry in args.config or []]


def default_snakefiles() -> list[Path]:
    """Where Snakemake looks for the Snakefile when it is given none, in its order."""
    from snakemake.common import SNAKEFILE_CHOICES

    return [Path(p) for p in SNAKEFILE_CHOICES]



def run_outcome(workflow) -> tuple[set[str], set[str]]:
    """(the summaries this run planned and never ran, a job before them having failed;
    the episodes whose job failed). With keep-going every other job ran. Neither after
    Ctrl-C (the user wants out; the jobs it stopped did not fail), and not a summary that
    failed itself."""
    scheduler = getattr(workflow, "scheduler", None)
    if scheduler is None or getattr(scheduler, "_user_kill", None):
        return set(), set()
    failed_jobs = getattr(scheduler, "failed", set())
    unreached = {j.rule.name for j in workflow.dag.needrun_jobs() if j not in failed_jobs}
    # A group job (on a cluster) stands for its members.
    jobs = [m for j in failed_jobs for m in (getattr(j, "jobs", None) or [j])]
    failed = {j.wildcards.get("episode") for j in jobs} - {None}
    return unreached, failed
