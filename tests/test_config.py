import copy

import pytest
import yaml

from conftest import REPO
from scribeflow import config as cfg

SHIPPED = REPO / cfg.CONFIG_FILE


def base():
    return yaml.safe_load(SHIPPED.read_text())


def test_shipped_config_is_valid_and_gets_defaults():
    c = cfg.validate(base())
    assert c["disk_management"]["hard_limit_gb"] == 300
    assert c["download"]["format"] == "bestaudio/best"
    assert c["download"]["retries"] == 10
    assert c["transcribe"]["formats"] == []


def test_empty_config_gets_every_default():
    c = cfg.validate({})
    assert c["data_dir"] == "data" and c["disk_management"]["cleanup"]["delete_video_after_transcription"]


@pytest.mark.parametrize(
    "path, value, named",
    [
        (("colour",), "red", "'colour' was unexpected"),
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
    assert c["data_dir"] == "/ssd" and c["disk_management"]["max_concurrent_downloads"] == 3
    assert copy.deepcopy(c) == c


def snakemake_sees(tmp_path, *args) -> dict:
    """The config a real `snakemake` run with these arguments sees, validated."""
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
    dm = ours["disk_management"]
    assert (dm["hard_limit_gb"], dm["pause_threshold_gb"], dm["resume_threshold_gb"]) == (500, 400, 350)
    assert ours["transcribe"]["beam_size"] == 2 and ours["transcribe"]["model"] == "large-v3"
    assert (ours["data_dir"], ours["catalogue"]) == ("/ssd", "eps.csv")
    assert ours == snakemake_sees(tmp_path, "--configfile", "mine.yaml", "--config", *overrides)


def test_a_dotted_key_is_refused_with_the_way_to_write_it(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"disk_management\.hard_limit_gb.*\{'sub_key': value\}"):
        cfg.for_run([], ["disk_management.hard_limit_gb=500"], tmp_path)
    with pytest.raises(cfg.ConfigError, match=r"config file .*missing\.yaml"):
        cfg.for_run(["missing.yaml"], [], tmp_path)


def test_a_status_command_names_a_bad_override(tmp_path, capsys):
    from scribeflow import cli

    assert cli.main(["status", "--config", "disk_management={'hard_limit_gb': -1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scribeflow status: ") and "hard_limit_gb" in err


def test_a_language_that_is_not_a_whisper_code_is_refused():
    c = base()
    c["transcribe"] = {**c["transcribe"], "language": "japanese"}
    with pytest.raises(cfg.ConfigError, match=r"transcribe.language: 'japanese' is not a Whisper language code"):
        cfg.validate(c)
    c["transcribe"]["language"] = "ja"
    assert cfg.validate(c)["transcribe"]["language"] == "ja"


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
