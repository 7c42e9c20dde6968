"""Configuration: JSON-Schema validation with defaults, plus the rules a schema cannot say."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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


def validate(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults into `config` (in place) and refuse what the schema or the rules refuse."""
    import jsonschema

    schema = schema or load_schema()
    coerce_strings(config, schema)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    check_rules(config)
    return config


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


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a config file (default: config/config.yaml of the current directory, else the
    schema's defaults), apply overrides, validate."""
    config = (yaml.safe_load(Path(path).read_text()) or {}) if path else workflow_defaults()
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return validate(config)


def for_run(configfiles: list[str] = (), overrides: list[str] = (), directory: str | Path = ".",
            workflow_dir: str | Path | None = None) -> dict:
    """The config a `snakemake` run given these --configfile FILE and --config KEY=VALUE
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


_CONFIG_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


def parse_overrides(entries) -> dict:
    """`--config KEY=VALUE ...` parsed exactly as snakemake.cli.parse_config parses it
    (the tests compare the two), without importing snakemake.cli: ~1 s, a second of
    every `scribeflow status`."""
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


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def download_slots(dm: dict, slots: int) -> int:
    """Downloads a run may hold at once: max_concurrent_downloads, and always one job slot
    (core, or cluster job) left for the extraction and transcription that free space."""
    return max(1, min(dm["max_concurrent_downloads"], slots - 1))


def in_flight_gb(dm: dict) -> float:
    """The bytes (in GB) downloads in flight may add above the pause threshold."""
    if dm.get("in_flight_gb") is None:
        return dm["hard_limit_gb"] - dm["pause_threshold_gb"]
    return dm["in_flight_gb"]


# Size defaults for a large budget; each shrinks with a small one (resolve_sizes).
AUDIO_HEADROOM_MB = 200
DEFAULT_VIDEO_SIZE_MB = 600
MIN_FREE_GB = 1


def resolve_sizes(dm: dict) -> None:
    """Fill the size keys left null (in place) with defaults that scale with the budget,
    so that a 4 MB hard limit runs with its three thresholds alone."""
    margin_mb = max(0.0, (dm["hard_limit_gb"] - dm["pause_threshold_gb"]) * 1000)
    if dm.get("audio_headroom_mb") is None:
        dm["audio_headroom_mb"] = min(AUDIO_HEADROOM_MB, margin_mb / 4)
    if dm.get("default_video_size_mb") is None:
        room_mb = in_flight_gb(dm) * 1000 - dm["audio_headroom_mb"]  # what fits above the pause threshold
        dm["default_video_size_mb"] = min(DEFAULT_VIDEO_SIZE_MB, max(room_mb, margin_mb / 4))
    if dm.get("min_free_gb") is None:
        dm["min_free_gb"] = min(MIN_FREE_GB, dm["hard_limit_gb"] / 100)


def check_rules(config: dict) -> None:
    """Cross-key rules of the disk budget. Each message names the key at fault."""
    dm = config["disk_management"]
    hard, pause, resume = dm["hard_limit_gb"], dm["pause_threshold_gb"], dm["resume_threshold_gb"]
    resolve_sizes(dm)
    if not pause < hard:
        raise ConfigError(
            f"disk_management.pause_threshold_gb ({pause}) must be below hard_limit_gb ({hard})"
        )
    if not resume < pause:
        raise ConfigError(
            f"disk_management.resume_threshold_gb ({resume}) must be below pause_threshold_gb ({pause})"
        )
    if pause + in_flight_gb(dm) > hard + 1e-12:
        raise ConfigError(
            f"disk_management.in_flight_gb ({dm['in_flight_gb']}) + pause_threshold_gb ({pause}) "
            f"exceeds hard_limit_gb ({hard}): downloads in flight could cross the hard limit"
        )
    if dm["audio_headroom_mb"] * MB >= (hard - pause) * GB:
        raise ConfigError(
            f"disk_management.audio_headroom_mb ({dm['audio_headroom_mb']}) must be below "
            f"hard_limit_gb - pause_threshold_gb ({(hard - pause) * 1000:g} MB); leave it out (null) for a "
            f"default that scales with the budget"
        )
    if (dm["default_video_size_mb"] + dm["audio_headroom_mb"]) * MB > hard * GB:
        raise ConfigError(
            f"disk_management.default_video_size_mb ({dm['default_video_size_mb']}) + audio_headroom_mb "
            f"({dm['audio_headroom_mb']:g}) exceeds hard_limit_gb ({hard}): a download of unknown size could never "
            f"start; leave default_video_size_mb out (null) for a default that scales with the budget"
        )
    chunk = config.get("chunk")
    if chunk is not None:
        from .catalogue import CatalogueError, parse_chunk

        try:
            parse_chunk(chunk)
        except CatalogueError:
            raise ConfigError(f"chunk ({chunk!r}) must be K/N with 1 <= K <= N") from None
    if config.get("transcribe"):
        check_transcribe(config["transcribe"])


def check_transcribe(tc: dict) -> None:
    """The transcribe settings faster-whisper would silently misuse."""
    from .transcribe import LANGUAGES, ModelError, check_model_dir

    if tc.get("hallucination_silence_threshold") is not None and not tc.get("word_timestamps"):
        raise ConfigError("transcribe.hallucination_silence_threshold needs transcribe.word_timestamps: true "
                          "(faster-whisper ignores it otherwise)")
    if tc.get("language") is not None and tc["language"] not in LANGUAGES:
        raise ConfigError(f"transcribe.language: {tc['language']!r} is not a Whisper language code "
                          "(ja, en, zh, ...); null detects the language")
    try:
        check_model_dir(tc["model"])
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
