import copy
import dataclasses

import pytest
import yaml
from conftest import REPO

from scribeflow.config import settings as cfg

SHIPPED = REPO / cfg.CONFIG_FILE


def base():
    return yaml.safe_load(SHIPPED.read_text())


def test_shipped_config_is_valid_and_gets_defaults():
    c = cfg.validate(base())
    assert c.disk_management.hard_limit_gb == 300
    assert c.download.format == "bestaudio/best"
    assert c.download.retries == 10
    assert c.transcribe.formats == ()


def test_empty_config_gets_every_default():
    c = cfg.validate({})
    assert c.data_dir == "data" and c.disk_management.cleanup.delete_video_after_transcription


@pytest.mark.parametrize(
    "path, value, named",
    [
        (("colour",), "red", "colour: unknown key; the known keys are analysis, catalogue, chunk,"),
        (("disk_management", "hard_limit_gbb"), 1, "hard_limit_gbb"),
        (("download", "formt"), "best", "formt"),
        (("disk_management", "hard_limit_gb"), -1, "disk_management.hard_limit_gb"),
        (("disk_management", "max_concurrent_downloads"), 0, "disk_management.max_concurrent_downloads"),
        (("transcribe", "device"), "tpu", "transcribe.device"),
        (("chunk",), "0/3", "chunk"),
        (("chunk",), "abc", "chunk"),
    ],
)
def test_unknown_keys_and_bad_values_name_the_key(path, value, named):
    c = base()
    node = c
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(c)
    assert named in str(info.value)


@pytest.mark.parametrize(
    "path, named",
    [
        (("transcribe", "devise"), "transcribe.devise: unknown key; did you mean device?"),
        (("dat_dir",), "dat_dir: unknown key; did you mean data_dir?"),
        (("disk_management", "cleanup", "delete_video_after_transcribe"),
         "disk_management.cleanup.delete_video_after_transcribe: unknown key; did you mean "
         "delete_video_after_transcription?"),
    ],
)
def test_an_unknown_key_is_named_in_full_with_the_closest_known_key(path, named):
    c = base()
    node = c
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = "x"
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(c)
    assert str(info.value) == f"invalid configuration:\n  {named}"


def test_each_unknown_key_gets_its_own_line():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate({"transcribe": {"modle": "tiny", "qqqq": 1}, "catalog": "e.csv"})
    lines = str(info.value).splitlines()[1:]
    assert lines[0] == "  catalog: unknown key; did you mean catalogue?"
    assert lines[1] == "  transcribe.modle: unknown key; did you mean model?"
    assert lines[2].startswith("  transcribe.qqqq: unknown key; the known keys are batch_size, beam_size,")
    assert len(lines) == 3


@pytest.mark.parametrize(
    "dm, named",
    [
        ({"resume_threshold_gb": 280}, "resume_threshold_gb"),
        ({"resume_threshold_gb": 290}, "resume_threshold_gb"),
        ({"pause_threshold_gb": 300}, "pause_threshold_gb"),
        ({"in_flight_gb": 25}, "in_flight_gb"),
        ({"audio_headroom_mb": 20000}, "audio_headroom_mb"),
    ],
)
def test_invalid_threshold_combinations_are_refused(dm, named):
    c = base()
    c["disk_management"].update(dm)
    with pytest.raises(cfg.ConfigError, match=named):
        cfg.validate(c)


def test_fractional_gigabytes_are_accepted_for_tiny_test_budgets():
    c = base()
    c["disk_management"].update(hard_limit_gb=0.02, pause_threshold_gb=0.015, resume_threshold_gb=0.01,
                                audio_headroom_mb=1)
    cfg.validate(c)


def test_load_applies_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    c = cfg.load(path, {"data_dir": "/ssd", "disk_management.max_concurrent_downloads": 3})
    assert c.data_dir == "/ssd" and c.disk_management.max_concurrent_downloads == 3
    assert copy.deepcopy(c) == c


def snakemake_sees(tmp_path, *args) -> cfg.Settings:
    """The settings a real `snakemake` run with these arguments sees, validated."""
    import json
    import subprocess
    import sys

    (tmp_path / "Snakefile").write_text(
        f'configfile: {str(SHIPPED)!r}\n'
        'import json\nopen("seen.json", "w").write(json.dumps(config))\n'
        'rule all:\n    output: "x"\n    shell: "touch {output}"\n')
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cfg.validate(json.loads((tmp_path / "seen.json").read_text()))


def test_the_commands_read_the_config_the_run_sees(tmp_path):
    # A partial file updates the shipped defaults; a nested --config merges into its key.
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"data_dir": "/ssd", "disk_management": {
        "pause_threshold_gb": 400, "resume_threshold_gb": 350}}))
    overrides = ["disk_management={'hard_limit_gb': 500}", "transcribe={'beam_size': 2}", "catalogue=eps.csv"]
    ours = cfg.for_run(["mine.yaml"], overrides, tmp_path)
    dm = ours.disk_management
    assert (dm.hard_limit_gb, dm.pause_threshold_gb, dm.resume_threshold_gb) == (500, 400, 350)
    assert ours.transcribe.beam_size == 2 and ours.transcribe.model == "large-v3"
    assert (ours.data_dir, ours.catalogue) == ("/ssd", "eps.csv")
    assert ours == snakemake_sees(tmp_path, "--configfile", "mine.yaml", "--config", *overrides)


def test_a_dotted_key_is_refused_with_the_way_to_write_it(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"disk_management\.hard_limit_gb.*\{'sub_key': value\}"):
        cfg.for_run([], ["disk_management.hard_limit_gb=500"], tmp_path)
    with pytest.raises(cfg.ConfigError, match=r"config file .*missing\.yaml"):
        cfg.for_run(["missing.yaml"], [], tmp_path)


def test_a_status_command_names_a_bad_override(tmp_path, capsys):
    from scribeflow.ops import cli

    assert cli.main(["status", "--config", "disk_management={'hard_limit_gb': -1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scribeflow status: ") and "hard_limit_gb" in err


def test_a_language_that_is_not_a_whisper_code_is_refused():
    c = base()
    c["transcribe"] = {**c["transcribe"], "language": "japanese"}
    with pytest.raises(cfg.ConfigError, match=r"transcribe.language: 'japanese' is not a Whisper language code"):
        cfg.validate(c)
    c["transcribe"]["language"] = "ja"
    assert cfg.validate(c).transcribe.language == "ja"


@pytest.mark.parametrize("entries", [
    ["aa=1", "bb=2.5", "cc=True", "dd=true", "ee=", "ff=x y", "gg='quoted'", "hh=[1, 2]",
     "ii={'x': 1, 'y': {'z': 'w'}}"],
    ["chunk=3/10", "transcribe={'model': 'large-v3', 'device': 'cuda', 'compute_type': 'float16'}"],
    ["k1=1e3", "k2=-4", "k3=null", "k4=None", "k5=a=b", "k6=\"{'n': 2}\""],
    ["aa={'x': 1}", "aa={'y': 2}"],
])
def test_overrides_are_parsed_as_snakemake_parses_them(entries):
    from snakemake.cli import parse_config

    assert cfg.parse_overrides(entries) == parse_config(entries)


@pytest.mark.parametrize("bad", ["novalue", "1a=2", "aa.bb=1", "=x", "a=1"])
def test_bad_overrides_are_refused_as_snakemake_refuses_them(bad):
    from snakemake.cli import parse_config

    with pytest.raises(ValueError) as ours:
        cfg.parse_overrides([bad])
    with pytest.raises(ValueError) as theirs:
        parse_config([bad])
    assert str(ours.value) == str(theirs.value)


# -- the typed settings ------------------------------------------------------------------
def _sections(schema: dict, cls=cfg.Settings, where=""):
    """(dotted key, schema node, dataclass) of every object of the schema."""
    yield where, schema, cls
    for f in dataclasses.fields(cls):
        if isinstance(f.type, str) and f.type in vars(cfg) and isinstance(vars(cfg)[f.type], type):
            yield from _sections(schema["properties"][f.name], vars(cfg)[f.type], f"{where}{f.name}.")


def test_the_settings_have_exactly_the_schemas_keys_at_every_level():
    seen = 0
    for where, node, cls in _sections(cfg.load_schema()):
        assert [f.name for f in dataclasses.fields(cls)] == list(node["properties"]), where or "(top level)"
        assert cls.KEY == where.rstrip(".")
        seen += 1
    objects = sum(1 for _ in _objects(cfg.load_schema()))
    assert seen == objects == 10


def _objects(node):
    if node.get("type") == "object":
        yield node
        for sub in node.get("properties", {}).values():
            yield from _objects(sub)


def _defaults(node):
    return {k: _defaults(sub) if sub.get("type") == "object" else sub["default"]
            for k, sub in node["properties"].items()}


# Null in the schema; a default that scales with the budget in the settings.
DERIVED = {"in_flight_gb", "default_video_size_mb", "audio_headroom_mb", "min_free_gb", "accounting_margin_mb",
           "outputs_per_episode_mb", "max_write_rate_mb_per_s"}


def test_the_defaults_are_the_schemas():
    expected = _defaults(cfg.load_schema())
    got = cfg.validate({}).as_dict()
    assert set(DERIVED) <= set(got["disk_management"])
    for key in DERIVED:
        assert expected["disk_management"].pop(key) is None and got["disk_management"].pop(key) is not None
    assert got == expected


def test_settings_are_read_by_attribute_immutable_and_a_wrong_name_says_which_key():
    s = cfg.validate({"download": {"retries": 3}, "transcribe": {"formats": ["srt"]}})
    assert s.download.retries == 3 and s.transcribe.formats == ("srt",)
    assert s.disk_management.cleanup.delete_audio_after_transcription is True
    with pytest.raises(AttributeError, match=r"'download\.retriez'"):
        s.download.retriez
    with pytest.raises(AttributeError, match=r"'disk_management\.cleanup\.delete_all'"):
        s.disk_management.cleanup.delete_all
    with pytest.raises(AttributeError, match=r"'data_dirr'"):
        s.data_dirr
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.download.retries = 1
    with pytest.raises(TypeError):
        s["download"]  # no dict access: attributes only
    assert cfg.updated(s, {"download": {"retries": 1}}).download.retries == 1 and s.download.retries == 3
    # Plain data again, for YAML and JSON; built again from it, the same settings.
    assert cfg.Settings.from_validated(s.as_dict()) == s
    assert s.as_dict()["transcribe"]["formats"] == ["srt"]


@pytest.mark.parametrize("dm", [
    {},
    {"hard_limit_gb": 0.004, "pause_threshold_gb": 0.003, "resume_threshold_gb": 0.002},
    {"hard_limit_gb": 0.02, "pause_threshold_gb": 0.015, "resume_threshold_gb": 0.01, "in_flight_gb": 0.004},
    {"hard_limit_gb": 10, "pause_threshold_gb": 8, "resume_threshold_gb": 5, "audio_headroom_mb": 50,
     "default_video_size_mb": 300, "min_free_gb": 2, "accounting_margin_mb": 10},
])
def test_derived_sizes_are_filled_when_the_settings_are_built(dm):
    raw = {"disk_management": dict(dm)}
    dms = cfg.validate(raw).disk_management
    # The dict keeps what was given (null); the settings hold the numbers.
    assert {k: raw["disk_management"][k] for k in DERIVED} == {k: dm.get(k) for k in DERIVED}
    hard, pause = dms.hard_limit_gb, dms.pause_threshold_gb
    margin_mb = (hard - pause) * 1000
    in_flight = dm.get("in_flight_gb", hard - pause)
    headroom = dm.get("audio_headroom_mb", min(200, margin_mb / 4))
    assert dms.in_flight_gb == pytest.approx(in_flight)
    assert dms.audio_headroom_mb == pytest.approx(headroom)
    assert dms.default_video_size_mb == pytest.approx(
        dm.get("default_video_size_mb", min(600, max(in_flight * 1000 - headroom, margin_mb / 4))))
    assert dms.min_free_gb == pytest.approx(dm.get("min_free_gb", min(1, hard / 100)))
    assert dms.accounting_margin_mb == pytest.approx(dm.get("accounting_margin_mb", min(64, hard * 10)))
    assert [dms.download_slots(n) for n in (1, 2, 4, 64)] == [1, 1, 3, dms.max_concurrent_downloads]


def test_one_loading_path_file_commands_and_the_snakefile_give_equal_settings(tmp_path):
    import json
    import subprocess
    import sys

    root = REPO
    (tmp_path / "episodes.csv").write_text("id,url\nep1,https://e.org/1\n")
    mine = {"catalogue": "episodes.csv", "data_dir": "d", "disk_management": {
        "hard_limit_gb": 0.02, "pause_threshold_gb": 0.015, "resume_threshold_gb": 0.01},
        "transcribe": {"formats": ["srt"]}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    from_file = cfg.load(tmp_path / "mine.yaml")
    # Everything a file leaves out comes from config/config.yaml for a run; the same here.
    assert from_file == cfg.load(None, {k: v for k, v in mine.items() if k != "disk_management"} | {
        f"disk_management.{k}": v for k, v in mine["disk_management"].items()})
    commands = cfg.for_run(["mine.yaml"], [], tmp_path)
    assert commands == from_file
    # The workflow's own SETTINGS (rules/common.smk), and what a job rebuilds from its config.
    (tmp_path / "Snakefile").write_text(
        f'configfile: {str(root / "config" / "config.yaml")!r}\n'
        f'include: {str(root / "rules" / "common.smk")!r}\n'
        'import json\nfrom scribeflow.stages.steps import job_settings\n'
        'class Job:\n    config = config\n'
        'assert job_settings(Job) == SETTINGS\n'
        'open("settings.json", "w").write(json.dumps(SETTINGS.as_dict()))\n'
        'rule all:\n    output: "x"\n    shell: "touch {output}"\n')
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "mine.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cfg.Settings.from_validated(json.loads((tmp_path / "settings.json").read_text())) == commands
