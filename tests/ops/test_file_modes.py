"""Outputs follow the user's umask: a corpus is shared with a reader, a web server or a
cluster's group, so transcripts, tokens, corpus tables and plots are 0644 under umask 022
(not the 0600 of the temporary file an atomic write starts from)."""

import contextlib
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_snakemake, workflow_config, write_catalogue


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(paths) -> dict:
    return {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


def test_atomic_writes_and_plots_follow_the_umask(tmp_path):
    from scribeflow.budget.statefile import StateFile
    from scribeflow.files import atomic_path, atomic_write_text
    from scribeflow.stages.analysis import plot_coverage

    coverage = pd.DataFrame([{"scope": "corpus", "series": None, "episodes": 1, "tokens": 10,
                              "lemmas_80": 2, "lemmas_90": 3, "lemmas_95": 4, "lemmas_98": 5}])
    curves = {"corpus": np.linspace(0.2, 1.0, 5)}
    for mask, expected in ((0o022, "0o644"), (0o027, "0o640"), (0o077, "0o600")):
        folder = tmp_path / oct(mask)
        with umask(mask):
            atomic_write_text(folder / "transcript.json", "{}")
            with atomic_path(folder / "tokens.parquet") as tmp:  # as the tokens and corpus tables are written
                pq.write_table(pa.table({"lemma": ["a"]}), tmp)
            plot_coverage(curves, coverage, folder / "coverage.png")
            with StateFile(folder / "gate").locked() as (state, _):  # the gate's shared state
                state["x"] = 1
        written = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        assert len(written) == 4 and set(modes(written).values()) == {expected}, modes(written)


@pytest.mark.slow
def test_a_real_run_writes_files_others_can_read(tmp_path, media_server, model_path):
    rows = [{"id": "ep01", "url": media_server.url("ep01.mp4"), "series": "Demo", "language": "en"}]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    config = workflow_config(tmp_path, catalogue, model_path, transcribe={"formats": ["srt"]})
    with umask(0o022):  # the children (Snakemake and its jobs) inherit it
        run_snakemake(tmp_path, config, "--cores", "2")
        proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "plots", "--configfile", "config.yaml"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    outputs = [*(data / "transcripts").iterdir(), *(data / "tokens").iterdir(),
               *(data / "analysis" / "corpus").iterdir(), *(data / "reports").iterdir(),
               *(tmp_path / "scribeflow-plots").iterdir()]
    names = {p.name for p in outputs}
    assert {"ep01.json", "ep01.srt", "ep01.parquet", "lemma_frequency.tsv", "coverage.tsv", "coverage.png",
            "shows.png", "disk_usage.png", "throughput.png"} <= names, names
    assert set(modes(p for p in outputs if p.is_file()).values()) == {"0o644"}, modes(outputs)
