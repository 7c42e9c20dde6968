"""scribeflow.speedups: Snakemake's per-job planning costs paid once, with the same plan
and the same errors as without them (each case runs real Snakemake, with and without)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = f"""
import sys
sys.path.insert(0, {str(REPO / "src")!r})
from scribeflow import speedups
print("speedups:", ",".join(speedups.apply()) or "none", file=sys.stderr)

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


def snakemake(tmp: Path, ids: str, *args: str, speedups: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCRIBEFLOW_SPEEDUPS": "1" if speedups else "0"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"ids={ids}", *args],
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
    assert "speedups: parse_uri,script_check,function_params,conda_env,directory_outputs" in proc.stderr
    off = snakemake(workflow, "a,b", "-n", speedups=False)
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

    from scribeflow import speedups

    speedups.apply()
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
from scribeflow import speedups
speedups.apply()

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
