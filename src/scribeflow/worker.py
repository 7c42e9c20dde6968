"""A long-lived transcription worker, so that the model is loaded once, not once per job.

Each Snakemake transcribe job is a new Python process; loading the model there costs
seconds per episode (large-v3 on a GPU: about as long as transcribing). Instead the
first job starts a worker that loads the model and answers requests on a Unix socket;
later jobs connect to it. The job still reads nothing but the reply and writes its own
outputs atomically, so temp() deletion, the disk gate and dry-runs are unchanged.

- One worker per (user, host, data_dir, model settings, CUDA_VISIBLE_DEVICES, Slurm job,
  Python, code version): the key names an abstract Unix socket (Linux), which leaves no
  file behind after a crash and has no path-length limit. Binding it is the lock: of two
  workers started at once, the second exits.
- Both ends check the peer's uid (SO_PEERCRED): another user can neither use nor pose
  as the worker.
- The worker exits after `idle_timeout_seconds` without a request, when asked (the
  workflow's onsuccess/onerror), or, under Slurm, with its allocation.
- Whatever goes wrong with the worker (cannot start, dies, the model fails to load
  there), the job loads the model itself: a transcript never depends on the worker.
  A worker that dies with the request in hand counts first as a failed transcription
  of the episode (failures.worker_died): a file that kills it would kill the job as well.
  A failure of the transcription itself (bad audio, unknown language) is not retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import child_env
from .layout import Layout

log = logging.getLogger("scribeflow.worker")

PROTOCOL = 1
EXIT_ADDRESS_IN_USE = 3
_CODE = ("worker.py", "transcribe.py", "media.py")
_started: list[subprocess.Popen] = []  # held, so Python does not warn that they still run


class WorkerUnavailable(RuntimeError):
    """No worker could serve the request; the caller transcribes in-process."""


class WorkerDied(WorkerUnavailable):
    """The worker took the request and died before it answered (killed for memory, a crash
    inside CTranslate2, kill -9): perhaps because of this very audio."""


class WorkerError(RuntimeError):
    """The worker ran the request and it failed (the same would fail in-process)."""


def _code_version() -> str:
    h = hashlib.sha256()
    for name in _CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def worker_key(tc: dict, data_dir: str | Path) -> str:
    from .transcribe import LOAD_KEYS

    ident = {
        "protocol": PROTOCOL,
        "code": _code_version(),
        "load": {k: tc.get(k) for k in LOAD_KEYS},
        "data_dir": os.path.realpath(data_dir),
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "python": sys.executable,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def address(key: str) -> str:
    return f"\0scribeflow-transcribe-{key}"  # leading NUL: Linux abstract namespace


def log_path(data_dir: str | Path, key: str) -> Path:
    return Layout.of(data_dir).worker_logs / f"{socket.gethostname()}-{key}.log"


def _peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


# ---------------------------------------------------------------- client side


def enabled(tc: dict) -> bool:
    return tc.get("worker", {}).get("enabled", True)


def transcribe(tc: dict, data_dir: str | Path, audio: str | Path, options: dict, episode: str = "",
               on_worker_died=None) -> dict:
    """run_model()'s result for `audio`: from the worker when enabled, else (or when no worker
    can serve) from a model loaded in this process. `on_worker_died(exc)` is called first
    when the worker died with the request in hand; it may raise to stop there."""
    if enabled(tc):
        try:
            started = time.monotonic()
            raw = request(tc, data_dir, {"op": "transcribe", "audio": os.path.abspath(audio),
                                         "options": options, "episode": episode})
            log.info("Transcribed by the worker in %.1f s", time.monotonic() - started)
            return raw
        except WorkerUnavailable as exc:
            if isinstance(exc, WorkerDied) and on_worker_died is not None:
                on_worker_died(exc)
            log.warning("No transcription worker (%s): loading the model in this job", exc)
    from .transcribe import load_model, run_model

    result = run_model(load_model(tc), audio, options, label=episode)
    result["memory"] = process_memory()
    return result


def process_memory() -> dict:
    """The memory of the process that transcribed: resident now, its peak, and on a GPU
    the device memory nvidia-smi counts for it (None without one). What a transcription
    needs, for sizing a machine or Slurm's mem_mb."""
    import resource
    import shutil
    import subprocess

    import psutil

    gpu = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            gpu = sum(int(mib) * 2**20 for pid, mib in (line.split(",") for line in out.splitlines() if "," in line)
                      if int(pid) == os.getpid()) or None
        except (OSError, ValueError, subprocess.SubprocessError):
            gpu = None
    return {"rss_bytes": psutil.Process().memory_info().rss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "gpu_bytes": gpu}


def request(tc: dict, data_dir: str | Path, message: dict, start: bool = True) -> dict:
    key = worker_key(tc, data_dir)
    sock = _connect(key)
    if sock is None:
        if not start:
            raise WorkerUnavailable("no worker is running")
        sock = _start(tc, data_dir, key)
    with sock:
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            line = sock.makefile("rb").readline()
        except OSError as exc:
            raise WorkerDied(f"connection to the worker failed: {exc}") from None
    if not line:
        raise WorkerDied(f"the worker closed the connection; see {log_path(data_dir, key)}")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise WorkerError(reply.get("error", "unknown error"))
    return reply.get("result")


def stop(tc: dict, data_dir: str | Path) -> bool:
    """Ask this configuration's worker to exit once its requests in flight are answered."""
    try:
        request(tc, data_dir, {"op": "shutdown"}, start=False)
        return True
    except (WorkerUnavailable, WorkerError, OSError, ValueError):
        return False


def _connect(key: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address(key))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    if _peer_uid(sock) != os.getuid():
        sock.close()
        raise WorkerUnavailable("the worker's socket belongs to another user")
    return sock


def prestart(tc: dict, data_dir: str | Path) -> bool:
    """Start this configuration's worker now, without waiting for it: the run calls this
    at its start, so that the model loads while the first audio is extracted rather than
    after. False when the worker is disabled, already runs, or cannot start (the first
    job then starts one, or loads the model itself)."""
    if not enabled(tc):
        return False
    key = worker_key(tc, data_dir)
    try:
        sock = _connect(key)
        if sock is not None:
            sock.close()
            return False
        _spawn(tc, data_dir, key)
    except WorkerUnavailable as exc:
        log.warning("Could not start a transcription worker early: %s", exc)
        return False
    return True


def _spawn(tc: dict, data_dir: str | Path, key: str) -> tuple[subprocess.Popen, Path]:
    """A worker process, detached (it outlives the job or run that starts it), and its log."""
    logfile = log_path(data_dir, key)
    try:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        out = open(logfile, "ab")
    except OSError as exc:
        raise WorkerUnavailable(f"cannot write the worker's log {logfile}: {exc}") from None
    from .transcribe import thread_env

    # Not the threads of the job that happens to start it; the code its key names: this package.
    env = child_env(thread_env(tc, os.environ))
    spec = json.dumps({"tc": tc, "data_dir": str(data_dir), "key": key})
    with out:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "scribeflow.worker", spec], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            raise WorkerUnavailable(f"cannot start a worker: {exc}") from None
    _started.append(proc)
    log.info("Started a transcription worker (pid %d, log %s)", proc.pid, logfile)
    return proc, logfile


def _start(tc: dict, data_dir: str | Path, key: str) -> socket.socket:
    """Start a worker and connect to it. The worker listens before it loads the model, so
    this returns quickly; the request then waits for the load."""
    wc = tc.get("worker", {})
    proc, logfile = _spawn(tc, data_dir, key)
    deadline = time.monotonic() + wc.get("start_timeout_seconds", 120)
    while time.monotonic() < deadline:
        sock = _connect(key)
        if sock is not None:
            return sock
        code = proc.poll()
        if code is not None and code != EXIT_ADDRESS_IN_USE:
            raise WorkerUnavailable(f"the worker exited with code {code}; see {logfile}")
        time.sleep(0.02)
    raise WorkerUnavailable(f"the worker did not listen within {wc.get('start_timeout_seconds', 120)} s")


# ---------------------------------------------------------------- worker side


class _Server:
    def __init__(self, tc: dict, key: str):
        self.tc, self.key = tc, key
        self.idle = tc.get("worker", {}).get("idle_timeout_seconds", 120)
        self.lock = threading.Lock()
        self.active, self.last, self.stopping, self.served = 0, time.monotonic(), False, 0

    def run(self) -> int:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address(self.key))
        except OSError:
            log.info("Another worker holds this key; exiting")
            return EXIT_ADDRESS_IN_USE
        listener.listen(64)
        log.info("Worker %d listening (key %s); loading the model", os.getpid(), self.key)
        from .transcribe import load_model

        try:
            self.model = load_model(self.tc)
        except Exception:  # the jobs waiting get EOF and load the model themselves, with its error
            log.exception("Could not load the model")
            return 1
        with self.lock:  # idle from now: a slow load must not use up the wait for the first job
            self.last = time.monotonic()
        listener.settimeout(0.2)
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                with self.lock:
                    quiet = self.active == 0 and (self.stopping or time.monotonic() - self.last > self.idle)
                if quiet:
                    break
                continue
            if _peer_uid(conn) != os.getuid():
                conn.close()
                continue
            with self.lock:
                self.active += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        listener.close()
        log.info("Worker %d exiting after %d transcription(s)%s", os.getpid(), self.served,
                 " (asked to)" if self.stopping else f" ({self.idle:g} s idle)")
        return 0

    def handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                line = conn.makefile("rb").readline()
                if not line:
                    return
                message = json.loads(line)
                reply = self.answer(message, conn)
                conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as exc:
            log.warning("Connection lost: %s", exc)
        finally:
            with self.lock:
                self.active -= 1
                self.last = time.monotonic()

    def answer(self, message: dict, conn: socket.socket) -> dict:
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "result": {"pid": os.getpid(), "key": self.key, "served": self.served}}
        if op == "shutdown":
            self.stopping = True
            return {"ok": True, "result": None}
        if op != "transcribe":
            return {"ok": False, "error": f"unknown op {op!r}"}
        from .transcribe import run_model

        started = time.monotonic()
        try:
            result = run_model(self.model, message["audio"], message["options"],
                               should_stop=lambda: _hung_up(conn), label=message.get("episode", ""))
            result["memory"] = process_memory()
        except Exception as exc:  # reported to the job, which fails with it
            log.exception("%s failed", message.get("episode"))
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.served += 1
        log.info("%s: %.1f s of audio in %.1f s", message.get("episode"), result["duration"],
                 time.monotonic() - started)
        return {"ok": True, "result": result}


def _hung_up(conn: socket.socket) -> bool:
    """The job sends nothing after its request: readable now means it went away."""
    try:
        return bool(select.select([conn], [], [], 0)[0]) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def main(argv: list[str]) -> int:
    from .steps import setup_logging

    spec = json.loads(argv[0])
    setup_logging(None)
    return _Server(spec["tc"], spec["key"]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
