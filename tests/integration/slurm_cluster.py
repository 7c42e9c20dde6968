"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd started as plain
daemons on 127.0.0.1, everything (config, keys, state, logs, sockets) in a private
folder, and only those three processes stopped, by PID, at the end.

The node declares what the slurm profile asks for: two partitions (cpu, gpu) and one
GPU of a made-up type, with SlurmdParameters=config_overrides so that slurmd takes the
declared CPUs, memory and GPU as given. The GPU is the one mocked part (no GPU here):
sbatch's real --gpus request is scheduled against it, and the transcription itself then
runs on the CPU as the test's config says.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
GPU_TYPE = "testgpu"
NODE = "sfnode"


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None
            and not Path("/usr/sbin", b).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    """n distinct free ports on loopback (held open together, so they cannot repeat)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full")

    def __init__(self, cpus: int = 16, memory_mb: int = 64000, gpus: int = 3, min_job_age: int = 600):
        self.cpus, self.memory_mb, self.gpus, self.min_job_age = cpus, memory_mb, gpus, min_job_age
        self.procs: dict[str, subprocess.Popen] = {}
        # Short path: munge's socket path must fit in sun_path (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="sf-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """Environment for anything that talks to this cluster (clients, Snakemake)."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "bin"):
            (r / d).mkdir()
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, slurmd_port = _free_ports(2)
        # Slurm wants a device file per GPU; any will do, nothing opens them.
        (r / "gres.conf").write_text("".join(f"NodeName={NODE} Name=gpu Type={GPU_TYPE} File={dev}\n"
                                             for dev in self.GPU_FILES[: self.gpus]))
        self.conf.write_text(f"""\
ClusterName=sftest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge.sock
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge={self.min_job_age}
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{GPU_TYPE}:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP
""")
        # The slurm-jobstep plugin runs `srun` inside each job with every SLURM_* variable
        # removed, SLURM_CONF included; this private cluster's srun needs it back.
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {_binary('srun')} \"$@\"\n")
        srun.chmod(0o755)

    def _start(self, name: str, *args: str) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as log:
            self.procs[name] = subprocess.Popen([_binary(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, **self.env}, start_new_session=True)

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              env={**os.environ, **self.env}, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}\n{self.logs()}")
        return proc.stdout

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def start(self, timeout: float = 30) -> "LocalSlurm":
        self._write_config()
        r = self.root
        self._start("munged", "--foreground", "--force", f"--key-file={r}/munge.key", f"--socket={r}/munge.sock",
                    f"--pid-file={r}/munged.pid", f"--log-file={r}/log/munged.log", f"--seed-file={r}/munged.seed")
        deadline = time.monotonic() + timeout
        while not (r / "munge.sock").exists():
            self._alive_or_fail(deadline)
        self._start("slurmctld", "-D", "-f", str(self.conf))
        self._start("slurmd", "-D", "-f", str(self.conf), "-N", NODE)
        while True:
            self._alive_or_fail(deadline)
            state = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).split()
            if state and all(s == "idle" for s in state):
                return self

    def _alive_or_fail(self, deadline: float) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"Slurm did not start ({', '.join(dead) or 'timeout'}):\n{self.logs()}")
        time.sleep(0.2)

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still remembers (finished ones for MinJobAge seconds)."""
        fields = ("JobID", "Partition", "State", "Comment", "tres-per-job", "MinMemory", "TimeLimit", "NumCPUs",
                  "StartTime", "EndTime")
        out = self.run("squeue", "-h", "-t", "all", "-O", ",".join(f"{f}:|" for f in fields))
        rows = []
        for line in out.splitlines():
            values = [v.strip() for v in line.split("|")][: len(fields)]
            rows.append(dict(zip(fields, values)))
        return rows

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", str(os.getuid()), check=False)
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
