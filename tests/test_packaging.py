"""The package as it is installed: its dependencies are what the runtime imports, pip's
and conda's lists agree, and a non-editable install runs the workflow from a checkout
without src/."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO, workflow_config, write_catalogue

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The extras the runtime may import when present (it says what to install otherwise).
OPTIONAL_EXTRAS = ("demo", "slurm")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip()).group(0))


def first_party() -> set[str]:
    return {p.name for p in (REPO / "src").iterdir() if (p / "__init__.py").is_file()}


def runtime_imports() -> dict[str, set[str]]:
    """Top-level modules imported by the runtime (src/, scripts/, the rules), outside the
    standard library and this repository: {module: files}."""
    found: dict[str, set[str]] = {}
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(REPO)))
    # The rules are not Python that ast reads; their imports are plain lines.
    for path in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        for name in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return {name: files for name, files in found.items()
            if name not in sys.stdlib_module_names and name not in first_party()}


@functools.cache
def installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    return {normalise(d) for d in installed().get(module, [])}


def test_the_runtime_imports_only_declared_dependencies():
    runtime = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {requirement_name(r) for extra in OPTIONAL_EXTRAS
                for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    imports = runtime_imports()
    undeclared = {m: sorted(files) for m, files in imports.items() if not distributions(m) & (runtime | optional)}
    assert not undeclared, f"imported by the runtime, not a dependency in pyproject.toml: {undeclared}"
    # And no dependency the runtime does not import (test tools belong to the test extra).
    imported = set().union(*(distributions(m) for m in imports))
    assert runtime <= imported, f"dependencies the runtime never imports: {sorted(runtime - imported)}"


def test_the_runtime_never_imports_the_test_tools():
    assert not {"support", "tests", "conftest", "pytest"} & set(runtime_imports())
    assert not (REPO / "src" / "scribeflow" / "server.py").exists()


def test_pyproject_and_environment_yml_name_the_same_dependencies():
    env = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    specs = [s for item in env for s in (item["pip"] if isinstance(item, dict) else [item])]
    conda = {requirement_name(s) for s in specs} - {"python", "pip"}
    pip = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert conda == pip, f"only in environment.yml: {sorted(conda - pip)}; only in pyproject.toml: {sorted(pip - conda)}"


def test_the_schema_is_package_data():
    from scribeflow.config import settings as config

    assert config.SCHEMA_PATH.is_file() and config.SCHEMA_PATH.parent == REPO / "src" / "scribeflow" / "config"
    assert "schema.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["scribeflow.config"]


def site_packages() -> list[str]:
    """This interpreter's site-packages folders: the dependencies, already installed."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]


@pytest.mark.slow
def test_a_non_editable_install_runs_the_workflow_from_a_checkout_without_src(tmp_path, media_server, model_path):
    # setuptools builds the wheel with the `wheel` package (the test extra) below 70.1.
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 70 and importlib.util.find_spec("wheel") is None:
        pytest.fail(f"setuptools {setuptools.__version__} cannot build a wheel without the `wheel` package "
                    "(in the test extra): pip install -e '.[test]'")
    # A fresh venv that sees the installed dependencies (pip and setuptools too) through
    # plain path lines, so that no .pth there, such as an editable scribeflow's, is processed.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (Path(own) / "dependencies.pth").write_text("".join(f"{p}\n" for p in site_packages()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    # pip install . (not editable), offline, from a copy: the checkout gets no build files.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          str(source)], capture_output=True, text=True, env=env, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    where = subprocess.run([python, "-c", "import scribeflow; print(scribeflow.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    # The workflow and `scribeflow status` from a checkout without src/, with the venv's binaries.
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, symlinks=True, ignore=shutil.ignore_patterns(
        "src", ".git", ".venv", "data", "demo-run", ".snakemake", "__pycache__", "tests", "benchmarks", "docs"))
    catalogue = write_catalogue(tmp_path / "episodes.csv", [{"id": "ep01", "url": media_server.url("ep01.mp4"),
                                                             "language": "en"}])
    config = workflow_config(tmp_path, catalogue, model_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([python, "-m", "snakemake", "--cores", "2", "--configfile", str(tmp_path / "run.yaml")],
                         cwd=checkout, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-6000:]
    transcript = json.loads((tmp_path / "data" / "transcripts" / "ep01.json").read_text())
    assert transcript["id"] == "ep01" and transcript["text"].strip()
    status = subprocess.run([venv / "bin" / "scribeflow", "status", "--json", "--configfile",
                             str(tmp_path / "run.yaml")], cwd=checkout, capture_output=True, text=True, env=env,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    snap = json.loads(status.stdout)
    assert snap["catalogue_episodes"] == 1 and snap["stages"]["analyzed"] == 1, snap["stages"]
