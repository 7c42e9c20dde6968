"""Configuration: JSON-Schema validation with defaults, plus the rules a schema cannot say."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .snakemake_internals import parse_overrides

GB = 1_000_000_000
MB = 1_000_000

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


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


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a config file (default config/config.yaml), apply overrides, validate."""
    path = Path(path) if path else SCHEMA_PATH.parent / "config.yaml"
    config = yaml.safe_load(path.read_text()) or {}
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return validate(config)


def for_run(configfiles: list[str] = (), overrides: list[str] = (), directory: str | Path = ".") -> dict:
    """The config a `snakemake` run given these --configfile FILE and --config KEY=VALUE
    arguments sees: config/config.yaml (the Snakefile's configfile), updated by each file,
    then by the overrides, parsed as Snakemake parses them and merged by its own
    update_config. What the `scribeflow` commands read, so that they see what the run
    sees. (`load` is for code and tests: one file, dotted overrides.)"""
    from snakemake.utils import update_config

    config = yaml.safe_load((SCHEMA_PATH.parent / "config.yaml").read_text()) or {}
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
        k, n = (int(x) for x in chunk.split("/"))
        if not 1 <= k <= n:
            raise ConfigError(f"chunk ({chunk!r}) must be K/N with 1 <= K <= N")
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
