"""The operator's read-only commands (status, plan, failed, metrics, plots) on a data_dir
mounted read-only, on a damaged ledger, and the dashboard on a port in use: they write
nothing, never move the ledger, and say in one line what is wrong."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.models import packaged_model

from scribeflow.state.ledger import Ledger


def _data_dir(root: Path) -> Path:
    """A data_dir as a run leaves it: a ledger with episodes in several stages, a given-up one."""
    data = root / "data"
    with Ledger(data / "jobs.db") as ledger:
        ledger.enqueue(["a", "b", "c", "d"])
        ledger.set_stage("a", "downloading")
        ledger.set_stage("a", "downloaded", video_size_bytes=5_000_000, declared_bytes=5_000_000)
        ledger.set_stage("b", "transcribed", transcript_size_bytes=2000)
        ledger.set_stage("c", "failed", last_error="DownloadFailed: c: HTTP 404 (Not Found)")
        ledger.start_pause(10, "usage", at=time.time() - 60)
        ledger.end_pause(5, at=time.time() - 30)
    (data / "failed").mkdir()
    (data / "failed" / "c.json").write_text('{"id": "c", "step": "download", "permanent": true}')
    (data / "transcripts").mkdir()
    (data / "transcripts" / "b.json").write_text('{"id": "b", "segments": []}')
    return data


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _config(tmp: Path, data: Path) -> Path:
    catalogue = tmp / "episodes.csv"
    catalogue.write_text("id,url\n" + "".join(f"{e},http://127.0.0.1:9/{e}.mp4\n" for e in "abcd"))
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump({"catalogue": str(catalogue), "data_dir": str(data),
                                          "storage_dir": str(data),
                                          "transcribe": {"model": str(packaged_model("tiny.en"))}}))
    return configfile


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


COMMANDS = [["status"], ["status", "--json"], ["plan"], ["failed"], ["metrics"]]


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only bind mount of a data_dir (root only: for root, chmod a-w changes nothing)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to bind-mount a folder read-only")
    source = _data_dir(tmp_path / "source")
    target = tmp_path / "ro" / "data"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        proc = subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot remount read-only here: {proc.stderr.strip()}")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_read_only_commands_work_on_a_read_only_data_dir(tmp_path, read_only_mount):
    data = read_only_mount
    with pytest.raises(OSError):
        (data / "probe").write_text("x")  # really read-only
    configfile = _config(tmp_path, data)
    before = _tree(data)
    for command in COMMANDS:
        proc = _run(tmp_path, *command, "--configfile", str(configfile))
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    status = _run(tmp_path, "status", "--configfile", str(configfile)).stdout
    assert "1 of 4 transcribed" in status and "HTTP 404" in status
    assert "c  [permanent" in _run(tmp_path, "failed", "--configfile", str(configfile)).stdout
    plots = _run(tmp_path, "plots", "--configfile", str(configfile))
    assert plots.returncode == 0, plots.stderr[-3000:]
    # Where the operator is, in a folder of its own, and said: not in data_dir.
    assert f"Wrote {tmp_path / 'scribeflow-plots' / 'disk_usage.png'}" in plots.stdout
    assert (tmp_path / "scribeflow-plots" / "disk_usage.png").stat().st_size > 1000
    assert _tree(data) == before


def test_read_only_commands_write_nothing_and_never_move_a_damaged_ledger(tmp_path):
    data = _data_dir(tmp_path)
    configfile = _config(tmp_path, data)
    before = _tree(data)
    for command in COMMANDS:
        assert _run(tmp_path, *command, "--configfile", str(configfile)).returncode == 0
    assert _tree(data) == before  # no migration, no accounting record, no thinning
    garbage = b"this is not a database " * 400
    (data / "jobs.db").write_bytes(garbage)
    for command in COMMANDS:
        proc = _run(tmp_path, *command, "--configfile", str(configfile))
        assert proc.returncode != 0, command
        # One line says what is wrong (beside the line that says what it reads, where that goes to stderr).
        lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Reading ")]
        assert len(lines) == 1 and "cannot read the ledger" in lines[0] and str(data / "jobs.db") in lines[0], \
            (command, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert (data / "jobs.db").read_bytes() == garbage and not list(data.glob("jobs.db.corrupt*"))


def test_the_dashboard_on_a_port_in_use_says_so_in_one_line(tmp_path):
    data = _data_dir(tmp_path)
    configfile = _config(tmp_path, data)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _run(tmp_path, "dashboard", "--port", str(port), "--configfile", str(configfile))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], proc.stderr


def test_every_read_command_says_first_what_it_reads(tmp_path):
    data = _data_dir(tmp_path)
    configfile = _config(tmp_path, data)
    said = f"Reading {configfile}; data folder {data}"
    for command in (["status"], ["failed"], ["failed", "--json"], ["plan"], ["check"], ["plots"], ["metrics"],
                    ["search", "猫"], ["export", "yomitan"]):
        proc = _run(tmp_path, *command, "--configfile", str(configfile))
        first = (proc.stderr if command[0] in ("metrics", "search") or "--json" in command else proc.stdout)
        assert first.splitlines()[0] == said, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    dashboard = subprocess.Popen([sys.executable, "-m", "scribeflow.ops.cli", "dashboard", "--port", "0",
                                  "--configfile", str(configfile)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert dashboard.stdout.readline().rstrip("\n") == said
    finally:
        dashboard.terminate()
        dashboard.wait(10)
    # Run from elsewhere without the run's config: it says so, whatever the command.
    for command in (["failed"], ["check"]):
        lines = _run(tmp_path / "data", *command).stdout.splitlines()
        assert lines[1].startswith(f"no data folder at {data / 'data'}: is this the run's --configfile?"), lines
