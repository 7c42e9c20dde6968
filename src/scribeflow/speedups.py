"""Costs Snakemake 9 pays for every job while planning, though they are the same for
every job of a rule (or not needed to plan): paid once here. On a 2,000-episode chunk
(8,000 jobs) they are about 40 % of the plan (benchmarks/plan_scale.py;
docs/benchmarks.md).

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

`rules/common.smk` applies them in every Snakemake process that parses the workflow.
Where a Snakemake release moves these internals, they are left alone: planning is then
slower, and nothing else changes. SCRIBEFLOW_SPEEDUPS=0 turns them off.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

_APPLIED = "_scribeflow_speedup"


def apply() -> list[str]:
    """Apply what this Snakemake allows; the names of those applied."""
    if os.environ.get("SCRIBEFLOW_SPEEDUPS", "1") == "0":
        return []
    return [name for name, speedup in (("parse_uri", _cache_parse_uri),
                                       ("script_check", _check_scripts_once_per_rule),
                                       ("function_params", _cache_function_params),
                                       ("conda_env", _conda_env_without_params),
                                       ("directory_outputs", _check_directory_outputs_on_strings)) if speedup()]


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
