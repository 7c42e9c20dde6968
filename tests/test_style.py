"""The habits CI holds every change to: Snakemake's linter, snakefmt and ruff clean."""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(REPO / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (bin/setup test installs it)")
    proc = run(ruff, "check", "--output-format", "concise", "src", "tests", "benchmarks", "scripts")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_snakemake_lint_is_clean(tmp_path):
    catalogue = tmp_path / "episodes.csv"
    catalogue.write_text("id,url\nep01,https://example.org/1\n")
    proc = run(sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(tmp_path), "--config", f"catalogue={catalogue}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
