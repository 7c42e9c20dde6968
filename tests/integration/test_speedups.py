"""scribeflow.integration.internals: Snakemake's per-job planning costs paid once, with the
same plan and the same errors as without them (each case runs real Snakemake, with and
without); off by the switch, on another Snakemake and in a workflow used as a module; the
`--config` parsing and the profile lookup as Snakemake's own."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO  # noqa: E402

SNAKEFILE = f"""
import sys
sys.path.insert(0, {str(REPO / "src")!r})
from scribeflow.integration import internals as snakemake_internals
print("speedups:", ",".join(snakemake_internals.apply(workflow, config.get("snakemake_speedups", True))) or "none", file=sys.stderr)

IDS = config["ids"].split(",")

rule all:
    input: [f"out/{{e}}.txt" for e in IDS]

onstart:
    specs = sorted({{(j.rule.name, str(j.conda_env_spec and j.conda_env_spec.file.get_path_or_uri(True)))
                     for j in workflow.dag.needrun_jobs()}})
    print("conda:", specs, file=sys.stderr)

rule make:
    output: "mid/{{e}}.txt"
    params: length=lambda wc: len(wc.e)
    conda: "env.yml"
    script: "scripts/make.py"

rule per_id:
    input: "mid/{{e}}.txt"
    output: "out/{{e}}.txt"
    script: "scripts/{{wildcards.e}}.py"
"""

SCRIPT = 'open(snakemake.output[0], "w").write(f"{snakemake.rule} {snakemake.params.get(\'length\', \'\')}\\n")\n'


def snakemake(tmp: Path, ids: str, *args: str, speedups: bool = True, config=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCRIBEFLOW_SPEEDUPS": "1" if speedups else "0"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"ids={ids}", *config, *args],
                          cwd=tmp, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def workflow(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "env.yml").write_text("dependencies: [python]\n")
    (tmp_path / "scripts").mkdir()
    for name in ("make", "a", "b"):
        (tmp_path / "scripts" / f"{name}.py").write_text(SCRIPT)
    return tmp_path


def test_all_apply_on_this_snakemake(workflow):
    proc = snakemake(workflow, "a,b", "-n")
    assert proc.returncode == 0, proc.stderr
    assert "speedups: parse_uri,script_check,function_params,conda_env,directory_outputs,gc" in proc.stderr
    off = snakemake(workflow, "a,b", "-n", speedups=False)
    assert "speedups: none" in off.stderr
    off = snakemake(workflow, "a,b", "-n", config=["snakemake_speedups=False"])
    assert "speedups: none" in off.stderr


@pytest.mark.parametrize("speedups", [True, False])
def test_a_missing_script_is_still_refused(workflow, speedups):
    # Constant path: checked once per rule, still checked.
    (workflow / "scripts" / "make.py").unlink()
    proc = snakemake(workflow, "a,b", "-n", speedups=speedups)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No such file or directory" in out and "scripts/make.py" in out, out[-2000:]

    # A path of its own per job: every job is still checked.
    (workflow / "scripts" / "make.py").write_text(SCRIPT)
    proc = snakemake(workflow, "a,b,c", "-n", speedups=speedups)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No such file or directory" in out and "scripts/c.py" in out, out[-2000:]


def conda_line(proc) -> str:
    return next(line for line in proc.stderr.splitlines() if line.startswith("conda:"))


def test_the_run_is_the_same(workflow, tmp_path_factory):
    (workflow / "scripts" / "bb.py").write_text(SCRIPT)
    other = tmp_path_factory.mktemp("without")
    shutil.copytree(workflow, other, dirs_exist_ok=True)
    without = snakemake(other, "a,bb", speedups=False)
    proc = snakemake(workflow, "a,bb")
    assert proc.returncode == 0, proc.stderr
    assert conda_line(proc) == conda_line(without).replace(str(other), str(workflow))
    assert "env.yml" in conda_line(proc) and "('per_id', 'None')" in conda_line(proc)
    assert (workflow / "mid/bb.txt").read_text() == "make 2\n"
    assert (workflow / "out/a.txt").read_text() == "per_id \n"
    again = snakemake(workflow, "a,bb", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_cached_functions_answer_as_the_originals():
    from snakemake import common, sourcecache

    from scribeflow.integration import internals as snakemake_internals

    snakemake_internals.apply()
    assert sourcecache.parse_uri("/a/b.py") == sourcecache.parse_uri.__wrapped__("/a/b.py")
    assert sourcecache.parse_uri("https://x.org/s.py").scheme == "https"

    def f(wildcards, input, attempt):
        pass

    assert list(common.get_function_params(f)) == ["wildcards", "input", "attempt"]

    class Unhashable:
        __hash__ = None

        def __call__(self, wildcards):
            pass

    assert list(common.get_function_params(Unhashable())) == ["wildcards"]


NESTED = """
import sys
sys.path.insert(0, {src!r})
from scribeflow.integration import internals as snakemake_internals
snakemake_internals.apply(workflow, config.get("snakemake_speedups", True))

rule all:
    input: "d", "d-x/y.txt", "d.txt", {inner}

rule folder:
    output: directory("d")
    shell: "mkdir -p {{output}}"

rule file:
    output: "{{name}}.txt"
    wildcard_constraints: name="d-x/y|d|d/x/y"
    shell: "mkdir -p $(dirname {{output}}) && touch {{output}}"
"""


@pytest.mark.parametrize("speedups", [True, False])
@pytest.mark.parametrize("nested", [True, False])
def test_an_output_inside_another_jobs_directory_is_still_refused(tmp_path, speedups, nested):
    # "d-x/y.txt" and "d.txt" sort between "d" and "d/x/y.txt" as strings, not as paths.
    inner = '"d/x/y.txt"' if nested else ""
    (tmp_path / "Snakefile").write_text(NESTED.format(src=str(REPO / "src"), inner=inner))
    proc = snakemake(tmp_path, "", "-n", speedups=speedups)
    out = proc.stdout + proc.stderr
    if nested:
        assert proc.returncode != 0 and "is a child to another output" in out and "d/x/y.txt" in out, out[-2000:]
    else:
        assert proc.returncode == 0, out[-2000:]


def test_the_directory_check_sorts_strings_as_snakemake_sorts_paths():
    rng = __import__("random").Random(5)
    names = ["a", "a b", "a-b", "a.b", "a0", "b", "ab", "é", "A", "a~"]
    paths = {"/" + "/".join(rng.choice(names) for _ in range(rng.randint(1, 4))) for _ in range(3000)} | {"/"}
    as_paths = sorted(Path(p) for p in paths)
    as_strings = sorted("\0".join(Path(p).parts) for p in paths)
    assert [str(p) for p in as_paths] == [str(Path(*s.split("\0"))) for s in as_strings]


def test_the_pinned_versions():
    from snakemake import __version__

    from scribeflow.integration import internals as si

    assert si.supported(), f"Snakemake {__version__}: check the internals, then widen SUPPORTED"
    assert si.supported((9, 20, 0)) and si.supported((9, 27, 1)) and si.supported((9, 99))
    assert not si.supported((9, 19, 3)) and not si.supported((10, 0, 0))


def test_another_snakemake_plans_without_them(monkeypatch, capsys):
    from scribeflow.integration import internals as si

    monkeypatch.setattr(si, "snakemake_version", lambda: (10, 1, 0))
    monkeypatch.setattr(si, "_warned", False)
    assert si.apply() == [] and si.apply() == []
    assert capsys.readouterr().err.count("Snakemake 10.1.0 is not one") == 1
    # The --config parsing is then Snakemake's own.
    from snakemake.cli import parse_config

    entries = ["ab=1", "bc={'c': [1, 2]}", "de=True", "ef="]
    assert si.parse_overrides(entries) == parse_config(entries)


def test_the_switch_in_the_config(monkeypatch):
    from scribeflow.integration import internals as si

    monkeypatch.delenv("SCRIBEFLOW_SPEEDUPS", raising=False)
    assert si.enabled() and si.enabled(True)
    assert not si.enabled(False)
    monkeypatch.setenv("SCRIBEFLOW_SPEEDUPS", "0")
    assert not si.enabled(True) and si.apply() == []


def test_the_workflows_config_key_is_in_its_schema():
    from scribeflow.config import settings as cfg

    assert cfg.load_schema()["properties"]["snakemake_speedups"]["default"] is True


MAIN = """
module sub:
    snakefile: "sub/Snakefile"
    config: config

use rule * from sub as sub_*

rule all:
    default_target: True
    input: rules.sub_all.input
"""


def test_not_applied_in_a_workflow_used_as_a_module(workflow, tmp_path_factory):
    # The same Snakefile, as the main workflow (test_all_apply_on_this_snakemake) and as a module.
    main = tmp_path_factory.mktemp("main")
    shutil.copytree(workflow, main / "sub")
    (main / "Snakefile").write_text(MAIN)
    shutil.copytree(workflow / "scripts", main / "scripts")
    (main / "env.yml").write_text("dependencies: [python]\n")
    proc = snakemake(main, "a,b", "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedups: none" in proc.stderr, proc.stderr[-3000:]


PROFILE_SNAKEFILE = """
import json, sys
print("config:", json.dumps(config, sort_keys=True), file=sys.stderr)

rule all:
    output: "x"
    shell: "touch {output}"
"""


def profile_dirs(tmp_path):
    (tmp_path / "Snakefile").write_text(PROFILE_SNAKEFILE)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.yaml").write_text(
        "cores: 1\nconfig:\n  data_dir: /x\n  n_items: '3'\n  nested: {a: 1}\n")
    (tmp_path / "q").mkdir()  # a versioned file name wins over config.yaml
    (tmp_path / "q" / "config.yaml").write_text("config: [data_dir=/old]\n")
    (tmp_path / "q" / "profile.v9+.yaml").write_text("config: [data_dir=/q, chunk_size=5]\n")
    return tmp_path


@pytest.mark.parametrize("args, env", [
    (["--profile", "p"], None),
    (["--profile=q"], None),
    (["--cores", "1"], "p"),               # SNAKEMAKE_PROFILE
    (["--profile", "q"], "p"),             # --profile wins over SNAKEMAKE_PROFILE
    (["--profile", "p", "--profile", "q"], None),
    (["--cores", "1"], None),
])
def test_the_profile_lookup_is_snakemakes(tmp_path, monkeypatch, args, env):
    from scribeflow.integration import internals as si

    directory = profile_dirs(tmp_path)
    if env:
        monkeypatch.setenv("SNAKEMAKE_PROFILE", env)
    else:
        monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    entries = si.profile_config(directory, args)
    cmd = [sys.executable, "-m", "snakemake", "-n", *args]
    proc = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **({"SNAKEMAKE_PROFILE": env} if env else {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = __import__("json").loads(next(x for x in proc.stderr.splitlines() if x.startswith("config:"))[7:])
    assert si.parse_overrides(entries) == seen
    # ... and the driver's --config, which replaces them, carries them over.
    again = subprocess.run([*cmd, "--config", *entries, "extra=1"], cwd=directory, capture_output=True,
                           text=True, timeout=120,
                           env={**os.environ, **({"SNAKEMAKE_PROFILE": env} if env else {})})
    seen_again = __import__("json").loads(
        next(x for x in again.stderr.splitlines() if x.startswith("config:"))[7:])
    assert seen_again == {**seen, "extra": 1}


def test_garbage_is_collected_less_often_and_not_at_exit():
    code = ("import atexit, gc, sys; from scribeflow.integration import internals as si; "
            "before = gc.get_threshold(); names = si.apply(); once = atexit._ncallbacks(); si.apply(); "
            "print(before, gc.get_threshold(), names, once == atexit._ncallbacks())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), "SCRIBEFLOW_SPEEDUPS": "gc"})
    assert out.returncode == 0, out.stderr
    # Applied twice, registered once.
    assert out.stdout.strip() == "(700, 10, 10) (10000, 10, 10) ['gc'] True", out.stdout
