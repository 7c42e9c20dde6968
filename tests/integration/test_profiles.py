"""The profiles as Snakemake itself reads them (snakemake.cli.parse_args), without running it."""

import yaml
from conftest import REPO


def parsed(monkeypatch, *argv):
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)  # where `snakemake --profile gpu` is typed
    return parse_args(["-n", *argv])[1]


def test_profile_gpu_gets_every_default_setting_and_its_own(monkeypatch):
    """profiles/gpu holds only what a GPU run changes: Snakemake applies profiles/default
    (the workflow profile) beside it, so every default setting still reaches the run."""
    defaults = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    gpu = yaml.safe_load((REPO / "profiles" / "gpu" / "config.yaml").read_text())
    plain, with_gpu = parsed(monkeypatch), parsed(monkeypatch, "--profile", "gpu", "--cores", "8")
    for key in defaults:
        dest = key.replace("-", "_")
        if key != "cores":  # given on the command line
            assert getattr(with_gpu, dest) == getattr(plain, dest), key
    assert {str(t.name).lower() for t in with_gpu.rerun_triggers} == {"mtime"}
    assert with_gpu.keep_going and with_gpu.rerun_incomplete and with_gpu.show_failed_logs
    assert with_gpu.scheduler == "greedy" and with_gpu.latency_wait == 5
    assert with_gpu.config == gpu["config"] and not plain.config
    assert with_gpu.cores == 8
