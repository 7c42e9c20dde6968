import copy

import pytest
import yaml

from scribeflow import config as cfg


def base():
    return yaml.safe_load((cfg.SCHEMA_PATH.parent / "config.yaml").read_text())


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
