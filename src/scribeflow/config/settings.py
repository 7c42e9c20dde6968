"""Configuration: JSON-Schema validation with defaults, the rules a schema cannot say, and
the typed, immutable `Settings` that rules, steps and commands read by attribute."""

from __future__ import annotations

import copy
import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from scribeflow.integration.internals import parse_overrides

GB = 1_000_000_000
MB = 1_000_000

# Inside the package, so that an installed scribeflow validates without the repository.
SCHEMA_PATH = Path(str(resources.files(__package__) / "schema.yaml"))
# The workflow's own config file, relative to the workflow's directory (beside the
# Snakefile): the defaults a run starts from.
CONFIG_FILE = Path("config") / "config.yaml"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


def _with_defaults(validator_class):
    import jsonschema  # here, not at the top: every job imports this module, few validate

    # jsonschema does not fill defaults by itself; this is its documented recipe,
    # the same one snakemake.utils.validate(set_default=True) applies.
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    # libyaml's loader where present: every Snakemake process (each cluster job) reads it.
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


_SCALARS = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None}


def coerce_strings(config: dict, schema: dict | None = None) -> dict:
    """Read strings where the schema wants numbers, booleans or null (in place).

    Snakemake parses `--config "disk_management={'hard_limit_gb': 500}"` with YAML's
    base loader, which leaves every nested value a string ('500'): the schema would
    refuse what the user plainly meant. A string is read as YAML and kept as it was
    unless that gives a type the schema allows."""
    schema = schema or load_schema()
    for key, sub in (schema.get("properties") or {}).items():
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):
            coerce_strings(value, sub)
        elif isinstance(value, str):
            types = sub.get("type", [])
            types = [types] if isinstance(types, str) else types
            if "string" not in types and any(t in _SCALARS for t in types):
                try:
                    read = yaml.safe_load(value)
                except yaml.YAMLError:
                    continue
                if any(_SCALARS[t](read) for t in types if t in _SCALARS):
                    config[key] = read
    return config


def validate(config: dict, schema: dict | None = None) -> Settings:
    """The one way in: fill defaults into `config` (in place: the dict Snakemake hands its
    jobs), refuse what the schema or the rules refuse, and return the settings."""
    import jsonschema

    schema = schema or load_schema()
    coerce_strings(config, schema)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [line for e in errors for line in _explain(e)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    settings = Settings.from_validated(config)
    check_rules(settings)
    return settings


def _explain(error) -> list[str]:
    """One line per problem, named by its dotted key; an unknown key with the closest known one."""
    where = ".".join(map(str, error.absolute_path))
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return [f"{where or '(top level)'}: {error.message}"]
    import difflib

    known = sorted((error.schema.get("properties") or {}))
    lines = []
    for key in sorted(set(map(str, error.instance)) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"the known keys are {', '.join(known)}"
        lines.append(f"{where + '.' if where else ''}{key}: unknown key; {hint}")
    return lines or [f"{where or '(top level)'}: {error.message}"]


def workflow_defaults(directory: str | Path = ".") -> dict:
    """The workflow's config/config.yaml in `directory`, or nothing where there is none
    (the schema's defaults then apply: the shipped file only spells them out)."""
    path = Path(directory) / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def load(path: str | Path | None = None, overrides: dict | None = None) -> Settings:
    """Read a config file (default: config/config.yaml of the current directory, else the
    schema's defaults), apply overrides, validate."""
    config = (yaml.safe_load(Path(path).read_text()) or {}) if path else workflow_defaults()
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return validate(config)


def for_run(configfiles: list[str] = (), overrides: list[str] = (), directory: str | Path = ".",
            workflow_dir: str | Path | None = None) -> Settings:
    """The settings a `snakemake` run given these --configfile FILE and --config KEY=VALUE
    arguments sees: config/config.yaml of the workflow (the Snakefile's configfile;
    `workflow_dir`, by default `directory`), updated by each file (relative to
    `directory`), then by the overrides, parsed as Snakemake parses them and merged by its
    own update_config. What the `scribeflow` commands read, so that they see what the run
    sees. (`load` is for code and tests: one file, dotted overrides.)"""
    from snakemake.utils import update_config

    config = workflow_defaults(directory if workflow_dir is None else workflow_dir)
    for name in configfiles:
        path = Path(directory) / name
        try:
            update_config(config, yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    if overrides:
        try:
            update_config(config, parse_overrides(overrides))
        except ValueError as exc:
            bad = [o for o in overrides if "." in o.partition("=")[0]]
            hint = (f" ({bad[0]!r}: Snakemake takes no dotted keys; write "
                    "KEY=\"{'sub_key': value}\", which is merged into KEY)") if bad else ""
            raise ConfigError(f"--config {' '.join(overrides)}: {exc}{hint}") from None
    return validate(config)


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# Size defaults for a large budget; each shrinks with a small one (resolve_sizes).
AUDIO_HEADROOM_MB = 200
DEFAULT_VIDEO_SIZE_MB = 600
MIN_FREE_GB = 1
ACCOUNTING_MARGIN_MB = 64
OUTPUTS_PER_EPISODE_MB = 8
MAX_WRITE_RATE_MB_PER_S = 250


def resolve_sizes(dm: dict) -> dict:
    """The disk_management section with the size keys left null filled with defaults
    that scale with the budget, so that a 4 MB hard limit runs with its three
    thresholds alone. Returns a new dict; `dm` is left as it is."""
    dm = dict(dm)
    hard, pause = dm["hard_limit_gb"], dm["pause_threshold_gb"]
    margin_mb = max(0.0, (hard - pause) * 1000)
    if dm.get("in_flight_gb") is None:  # the bytes downloads in flight may add above the pause threshold
        dm["in_flight_gb"] = hard - pause
    if dm.get("audio_headroom_mb") is None:
        dm["audio_headroom_mb"] = min(AUDIO_HEADROOM_MB, margin_mb / 4)
    if dm.get("default_video_size_mb") is None:
        room_mb = dm["in_flight_gb"] * 1000 - dm["audio_headroom_mb"]  # what fits above the pause threshold
        dm["default_video_size_mb"] = min(DEFAULT_VIDEO_SIZE_MB, max(room_mb, margin_mb / 4))
    if dm.get("min_free_gb") is None:
        dm["min_free_gb"] = min(MIN_FREE_GB, hard / 100)
    if dm.get("accounting_margin_mb") is None:
        # A transcript's temporary file while it is written, a job's first log lines.
        dm["accounting_margin_mb"] = min(float(ACCOUNTING_MARGIN_MB), hard * 1000 / 100)
    if dm.get("outputs_per_episode_mb") is None:
        dm["outputs_per_episode_mb"] = min(float(OUTPUTS_PER_EPISODE_MB), margin_mb / 40)
    if dm.get("max_write_rate_mb_per_s") is None:
        # The watchdog's slack (rate x 2 intervals) at most a tenth of the in-flight margin.
        interval = dm.get("watch_interval_seconds") or 0.05
        dm["max_write_rate_mb_per_s"] = min(float(MAX_WRITE_RATE_MB_PER_S), margin_mb / 20 / interval)
    return dm


def check_rules(settings: Settings) -> None:
    """Cross-key rules of the disk budget. Each message names the key at fault."""
    dm = settings.disk_management
    hard, pause, resume = dm.hard_limit_gb, dm.pause_threshold_gb, dm.resume_threshold_gb
    if not pause < hard:
        raise ConfigError(
            f"disk_management.pause_threshold_gb ({pause}) must be below hard_limit_gb ({hard})"
        )
    if not resume < pause:
        raise ConfigError(
            f"disk_management.resume_threshold_gb ({resume}) must be below pause_threshold_gb ({pause})"
        )
    if pause + dm.in_flight_gb > hard + 1e-12:
        raise ConfigError(
            f"disk_management.in_flight_gb ({dm.in_flight_gb}) + pause_threshold_gb ({pause}) "
            f"exceeds hard_limit_gb ({hard}): downloads in flight could cross the hard limit"
        )
    if dm.audio_headroom_mb * MB >= (hard - pause) * GB:
        raise ConfigError(
            f"disk_management.audio_headroom_mb ({dm.audio_headroom_mb}) must be below "
            f"hard_limit_gb - pause_threshold_gb ({(hard - pause) * 1000:g} MB); leave it out (null) for a "
            f"default that scales with the budget"
        )
    if (dm.default_video_size_mb + dm.audio_headroom_mb) * MB > hard * GB:
        raise ConfigError(
            f"disk_management.default_video_size_mb ({dm.default_video_size_mb}) + audio_headroom_mb "
            f"({dm.audio_headroom_mb:g}) exceeds hard_limit_gb ({hard}): a download of unknown size could never "
            f"start; leave default_video_size_mb out (null) for a default that scales with the budget"
        )
    chunk = settings.chunk
    if chunk is not None:
        from scribeflow.config.catalogue import CatalogueError, parse_chunk

        try:
            parse_chunk(chunk)
        except CatalogueError:
            raise ConfigError(f"chunk ({chunk!r}) must be K/N with 1 <= K <= N") from None
    check_transcribe(settings.transcribe)


def check_transcribe(tc: Transcribe) -> None:
    """The transcribe settings faster-whisper would silently misuse."""
    from scribeflow.config.models import LANGUAGES, ModelError, check_model_dir

    if tc.hallucination_silence_threshold is not None and not tc.word_timestamps:
        raise ConfigError("transcribe.hallucination_silence_threshold needs transcribe.word_timestamps: true "
                          "(faster-whisper ignores it otherwise)")
    if tc.language is not None and tc.language not in LANGUAGES:
        raise ConfigError(f"transcribe.language: {tc.language!r} is not a Whisper language code "
                          "(ja, en, zh, ...); null detects the language")
    try:
        check_model_dir(tc.model)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


# -- the typed settings -------------------------------------------------------------
# One frozen dataclass per object of the schema, one field per property, named as the
# key (tests/config/test_config.py checks that the two agree at every level). Values come
# from a validated dict, never from defaults written here: the schema holds those.


class _Section:
    """Read by attribute; a key the schema does not have fails with its dotted name."""

    KEY = ""  # the section's dotted key in the configuration

    @classmethod
    def _key(cls, name: str) -> str:
        return f"{cls.KEY}.{name}" if cls.KEY else name

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"no configuration key {self._key(name)!r}")

    @classmethod
    def from_validated(cls, values: dict):
        """The section of a validated (defaults filled) dict; lists become tuples."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                raise ConfigError(f"{cls._key(f.name)}: missing (validate the configuration first)")
            value = values[f.name]
            sub = _SECTIONS.get(cls._key(f.name))
            if sub is not None:
                value = sub.from_validated(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def as_dict(self) -> dict:
        """Plain data (lists, dicts) for what leaves the process: Snakemake, JSON, YAML."""
        def plain(value):
            if isinstance(value, _Section):
                return value.as_dict()
            return list(value) if isinstance(value, tuple) else value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


_frozen = dataclasses.dataclass(frozen=True)


@_frozen
class Cleanup(_Section):
    KEY = "disk_management.cleanup"
    delete_video_after_transcription: bool
    delete_audio_after_transcription: bool
    delete_transcript_after_tokenization: bool
    delete_tokens_after_analysis: bool


@_frozen
class DiskManagement(_Section):
    """The disk budget. The size keys left null are filled with defaults that scale with
    the budget when the settings are built (resolve_sizes), so each reads as a number."""

    KEY = "disk_management"
    hard_limit_gb: float
    pause_threshold_gb: float
    resume_threshold_gb: float
    in_flight_gb: float
    default_video_size_mb: float
    audio_headroom_mb: float
    min_free_gb: float
    stall_timeout_seconds: float
    check_interval_seconds: float
    reconcile_interval_seconds: float
    accounting_margin_mb: float
    outputs_per_episode_mb: float
    watch_interval_seconds: float
    max_write_rate_mb_per_s: float
    cache_duration_seconds: float
    max_concurrent_downloads: int
    max_concurrent_transcriptions: int
    cleanup: Cleanup

    @classmethod
    def from_validated(cls, values: dict) -> "DiskManagement":
        return super().from_validated(resolve_sizes(values))

    def download_slots(self, slots: int) -> int:
        """Downloads a run may hold at once: max_concurrent_downloads, and always one job
        slot (core, or cluster job) left for the extraction and transcription that free space."""
        return max(1, min(self.max_concurrent_downloads, slots - 1))


@_frozen
class Download(_Section):
    KEY = "download"
    format: str
    retries: int
    retry_backoff_seconds: float
    max_backoff_seconds: float
    max_attempts: int
    fragment_retries: int
    socket_timeout: float
    rate_limit: str | float | None
    sleep_interval: float
    max_sleep_interval: float | None
    cookies: str | None
    proxy: str | None
    max_filesize_mb: float | None
    user_agent: str | None
    sleep_interval_requests: float | None
    max_per_host: int
    min_start_interval_seconds: float
    exempt_hosts: tuple[str, ...]
    host_breaker_failures: int
    host_probe_seconds: float
    host_max_probe_seconds: float
    host_wait_seconds: float
    max_url_age_seconds: float
    size_estimate_margin: float
    hls_prefer_native: bool
    fixup: str


@_frozen
class LanguageDetection(_Section):
    KEY = "transcribe.language_detection"
    windows: int


@_frozen
class Hallucinations(_Section):
    KEY = "transcribe.hallucinations"
    action: str
    max_repeats: int
    phrases: tuple[str, ...]


@_frozen
class Worker(_Section):
    KEY = "transcribe.worker"
    enabled: bool
    idle_timeout_seconds: float
    start_timeout_seconds: float
    request_timeout_factor: float | None
    log_max_mb: float


@_frozen
class Transcribe(_Section):
    """The transcription settings. The model-loading and decoding code takes them as
    `as_dict()`: the same data goes to the worker process as JSON and into each transcript."""

    KEY = "transcribe"
    model: str
    device: str
    max_attempts: int
    language: str | None
    language_detection: LanguageDetection
    beam_size: int
    vad_filter: bool
    condition_on_previous_text: bool
    word_timestamps: bool
    hallucination_silence_threshold: float | None
    temperature: tuple[float, ...]
    batch_size: int | str
    compute_type: str
    cpu_threads: int
    num_workers: int
    initial_prompt: str | None
    formats: tuple[str, ...]
    gzip: bool
    hallucinations: Hallucinations
    worker: Worker


@_frozen
class Subtitles(_Section):
    KEY = "subtitles"
    policy: str
    sources: tuple[str, ...]
    folder: str | None
    languages: tuple[str, ...]
    automatic_captions: bool
    min_coverage: float
    min_script_share: float
    style_patterns: tuple[str, ...] | None
    sample_share: float


@_frozen
class Analysis(_Section):
    KEY = "analysis"
    lemma: str


@_frozen
class Settings(_Section):
    """The whole configuration, validated once (`validate`), immutable, read by attribute:
    `settings.disk_management.hard_limit_gb`. `as_dict()` gives it back as plain data."""

    catalogue: str
    data_dir: str
    storage_dir: str
    chunk: str | None
    corpus_only: bool
    snakemake_speedups: bool
    disk_management: DiskManagement
    download: Download
    transcribe: Transcribe
    subtitles: Subtitles
    analysis: Analysis


_SECTIONS: dict[str, type[_Section]] = {
    cls.KEY: cls for cls in (DiskManagement, Cleanup, Download, Transcribe, LanguageDetection,
                             Hallucinations, Worker, Subtitles, Analysis)
}


def updated(settings: Settings, changes: dict) -> Settings:
    """`settings` with `changes` ({"download": {"retries": 1}}) merged in, as Snakemake
    merges config files, and validated again."""
    from snakemake.utils import update_config

    config = settings.as_dict()
    update_config(config, copy.deepcopy(changes))
    return validate(config)
