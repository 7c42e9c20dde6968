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
- Whatever goes wrong with the worker (cannot start, dies), the job loads the model
  itself: a transcript never depends on the worker. A worker that dies with the request
  in hand counts first as a failed transcription of the episode (failures.worker_died):
  a file that kills it would kill the job as well. A request that was still waiting for
  the model when the worker went away was not its cause: it is not counted, and goes to
  a new worker. A failure of the transcription itself (bad audio, unknown language) is
  not retried; neither is a model that cannot be loaded (the environment's failure: the
  worker answers every request with it, naming the model, until it goes idle).
- While it serves a request, the worker sends a heartbeat a second: whether the request
  waits for the model (behind another request: the model works on one at a time) and
  how long it has been worked on. The request's timeout counts only that time, so a
  request queued behind a slow one never has a healthy worker killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import logging.handlers
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from scribeflow import child_env
from scribeflow.config.layout import Layout

log = logging.getLogger("scribeflow.stages.transcription.worker")

PROTOCOL = 2  # 2: heartbeats while a request is served
EXIT_ADDRESS_IN_USE = 3
HEARTBEAT_SECONDS = 1.0
# The files whose code a running worker executes: a change to any of them starts a new one.
_CODE = ("transcription/worker.py", "transcription/model.py", "transcription/language.py",
         "transcription/decode.py", "transcription/speech.py", "transcription/stand_in.py",
         "transcription/coverage.py", "media.py")
_started: list[subprocess.Popen] = []  # held, so Python does not warn that they still run


class WorkerUnavailable(RuntimeError):
    """No worker could serve the request; the caller transcribes in-process."""


class WorkerDied(WorkerUnavailable):
    """The worker took the request and died before it answered (killed for memory, a crash
    inside CTranslate2, kill -9): perhaps because of this very audio."""


class WorkerHung(WorkerDied):
    """The worker worked on the request longer than its timeout (a wedged CUDA call, a
    deadlock), or fell silent that long: it was killed, and the next request starts a new one."""


class WorkerLost(WorkerUnavailable):
    """The worker went away while the request still waited for the model (another
    request's crash or timeout, or a worker that could not start): not this episode's doing."""


class NoSecondModel(WorkerUnavailable):
    """On a GPU, the worker could not serve twice: the job does not load a second copy of
    the model beside one that may still hold the GPU's memory. The environment's
    failure, not the episode's (failures.kind): the next run tries again."""

    kind = "host"


class WorkerError(RuntimeError):
    """The worker ran the request and it failed (the same would fail in-process). `kind`:
    whose failure the worker said it was (failures.kind; "host" for a model that cannot be
    loaded), None for the episode's."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


def on_gpu(tc: dict) -> bool:
    """Whether the model runs on a GPU (device cuda, or auto with one present)."""
    device = tc.get("device", "auto")
    if device in ("cuda", "cpu"):
        return device == "cuda"
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:
        return False


def request_timeout(tc: dict, audio: str | Path) -> float:
    """How long a transcription request may take before the worker counts as hung: the
    model's load (start_timeout_seconds) plus request_timeout_factor (4 on a CPU, 1 on a
    GPU) seconds per second of audio. Counted while the worker works on the request, not
    while the request waits for the model behind another one (_Exchange)."""
    from scribeflow.stages.media import BYTES_PER_SECOND, WAV_HEADER

    wc = tc.get("worker", {})
    try:
        seconds = max(0, os.path.getsize(audio) - WAV_HEADER) / BYTES_PER_SECOND
    except OSError:
        seconds = 0.0
    factor = wc.get("request_timeout_factor") or (1.0 if on_gpu(tc) else 4.0)
    return wc.get("start_timeout_seconds", 120) + seconds * factor


def _code_version() -> str:
    h = hashlib.sha256()
    for name in _CODE:
        h.update((Path(__file__).parents[1] / name).read_bytes())
    return h.hexdigest()[:12]


def worker_key(tc: dict, data_dir: str | Path) -> str:
    from scribeflow.stages.transcription.model import LOAD_KEYS

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


def _peer_pid(sock: socket.socket) -> int:
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return pid


def _peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


# ---------------------------------------------------------------- client side


def enabled(tc: dict) -> bool:
    return tc.get("worker", {}).get("enabled", True)


def transcribe(tc: dict, data_dir: str | Path, audio: str | Path, options: dict, episode: str = "",
               on_worker_died=None, speech_file: str | Path | None = None) -> dict:
    """run_model()'s result for `audio`: from the worker when enabled, else (or when no worker
    can serve) from a model loaded in this process. `on_worker_died(exc)` is called first
    when the worker died with the request in hand; it may raise to stop there. `speech_file`:
    the VAD's output saved by the extraction (speech.py), when there is one."""
    if enabled(tc):
        message = {"op": "transcribe", "audio": os.path.abspath(audio), "options": options, "episode": episode,
                   "speech": speech_file and os.path.abspath(speech_file)}
        raw, failure = _by_worker(tc, data_dir, message, request_timeout(tc, audio), on_worker_died)
        if raw is not None:
            return raw
        if on_gpu(tc):
            raise NoSecondModel(f"{episode}: the transcription worker failed twice ({failure}); not loading a "
                                f"second copy of the model on the GPU. The next run tries again")
        log.warning("No transcription worker (%s): loading the model in this job", failure)
    from scribeflow.stages.transcription import speech
    from scribeflow.stages.transcription.model import load_model

    result = decode(load_model(tc), audio, options, label=episode, speech=speech.load(speech_file))
    result["memory"] = process_memory()
    return result


def _by_worker(tc: dict, data_dir, message: dict, timeout: float, on_worker_died) -> tuple[dict | None, Exception]:
    """(the worker's result, None), or (None, why no worker could serve it). A worker that
    dies or hangs with the request in hand is replaced once; one that goes away while the
    request waited for the model is replaced too, and nothing is counted."""
    failure: Exception = WorkerUnavailable("not tried")
    for attempt in (1, 2):
        try:
            started = time.monotonic()
            raw = request(tc, data_dir, message, timeout=timeout)
            log.info("Transcribed by the worker in %.1f s", time.monotonic() - started)
            return raw, None
        except WorkerDied as exc:
            if on_worker_died is not None and attempt == 1:  # counted once per job
                on_worker_died(exc)
            failure = exc
        except WorkerLost as exc:
            failure = exc
        except WorkerUnavailable as exc:
            return None, exc
        if attempt == 1:
            log.warning("%s; starting a new worker", failure)
    return None, failure


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


def request(tc: dict, data_dir: str | Path, message: dict, start: bool = True, timeout: float | None = None) -> dict:
    """Send `message` to this configuration's worker (started when needed) and return its
    result. `timeout`: seconds to wait for the answer; a worker that takes longer is
    killed (WorkerHung)."""
    key = worker_key(tc, data_dir)
    sock = _connect(key)
    if sock is None:
        if not start:
            raise WorkerUnavailable("no worker is running")
        sock = _start(tc, data_dir, key)
    exchange = _Exchange(timeout)
    with sock:
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = exchange.reply(sock)
        except socket.timeout:
            pid = _kill_peer(sock)
            if exchange.waiting:  # silent before it took the request: its start or model load is stuck
                raise WorkerLost(f"the transcription worker (pid {pid}) {exchange.why_hung()} before it took this "
                                 f"request: killed it; see {log_path(data_dir, key)}") from None
            raise WorkerHung(f"the transcription worker (pid {pid}) {exchange.why_hung()} (worker."
                             f"request_timeout_factor): killed it; see {log_path(data_dir, key)}") from None
        except OSError as exc:
            if not exchange.waiting:
                raise WorkerDied(f"connection to the worker failed: {exc}") from None
            reply = None
    if reply is None:
        if exchange.waiting:
            raise WorkerLost(f"the worker went away while this request waited for the model; see "
                             f"{log_path(data_dir, key)}")
        raise WorkerDied(f"the worker closed the connection; see {log_path(data_dir, key)}")
    if not reply.get("ok"):
        raise WorkerError(reply.get("error", "unknown error"), reply.get("kind"))
    return reply.get("result")


class _Exchange:
    """One request's wait for its reply, reading the worker's heartbeats on the way.
    `waiting`: the request was not being worked on at the last word from the worker
    (not accepted yet, or queued behind another request for the model). Hung: worked on
    for longer than `timeout`, or nothing at all heard for that long (the worker's
    process itself is stuck: its heartbeats stopped)."""

    def __init__(self, timeout: float | None):
        self.timeout, self.waiting, self.active = timeout, True, 0.0

    def reply(self, sock: socket.socket) -> dict | None:
        """The worker's reply, or None when it hung up first; socket.timeout when hung."""
        sock.settimeout(self.timeout)
        reader = sock.makefile("rb")
        while True:
            line = reader.readline()
            if not line:
                return None
            message = json.loads(line)
            beat = message.get("heartbeat")
            if beat is None:
                return message
            self.waiting, self.active = beat["waiting"], beat["active"]
            if self.timeout is not None and self.active > self.timeout:
                raise socket.timeout

    def why_hung(self) -> str:
        if self.timeout is not None and self.active > self.timeout:
            return f"worked on the request for {self.active:.0f} s, over its {self.timeout:.0f} s"
        return f"fell silent for {self.timeout:.0f} s"


def _kill_peer(sock: socket.socket) -> int:
    """Kill the worker at the other end, and wait until it is gone (and its socket with it)."""
    import psutil

    pid = _peer_pid(sock)
    with contextlib.suppress(OSError, psutil.Error):
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10)
    return pid


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
        # The worker logs to `logfile` itself, rotated (main); this file holds what no
        # logger writes (a native crash's last words), from this start only.
        out = open(logfile.with_name(logfile.name + ".stderr"), "wb")
    except OSError as exc:
        raise WorkerUnavailable(f"cannot write the worker's log {logfile}: {exc}") from None
    from scribeflow.stages.transcription.model import thread_env

    # Not the threads of the job that happens to start it; the code its key names: this package.
    env = child_env(thread_env(tc, os.environ))
    spec = json.dumps({"tc": tc, "data_dir": str(data_dir), "key": key, "log": str(logfile)})
    with out:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "scribeflow.stages.transcription.worker", spec],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
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


class ModelTime:
    """The model, one request's work at a time, and how long it was busy. A request reads
    its WAV and computes its features without it, so that the next request's inputs are
    ready while this one decodes; `busy` over `wall` (first request to last reply) is the
    share of the worker's time the model worked: on a GPU, the share it could be busy.
    The request served by the calling thread (`serving`) is told when it starts and stops
    waiting for the model, which its heartbeats report."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stats = threading.Lock()
        self._serving = threading.local()
        self.busy, self.first, self.last, self.requests, self.vad_saved, self.vad_ran = 0.0, None, None, 0, 0, 0

    @contextlib.contextmanager
    def serving(self, served: "_Served"):
        self._serving.request = served
        try:
            yield served
        finally:
            self._serving.request = None

    def __enter__(self):
        served = getattr(self._serving, "request", None)
        if served is not None:
            served.wait_for_model()
        self._lock.acquire()
        self._since = time.monotonic()
        if served is not None:
            served.got_model()
        return self

    def __exit__(self, *exc):
        self.busy += time.monotonic() - self._since
        self._lock.release()

    def request(self, started: float, vad: dict | None) -> None:
        with self._stats:
            self.first = started if self.first is None else min(self.first, started)
            self.last, self.requests = time.monotonic(), self.requests + 1
            self.vad_saved += (vad or {}).get("saved", 0)
            self.vad_ran += (vad or {}).get("ran", 0)

    def stats(self) -> dict:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = (self.last - self.first) if self.first is not None else 0.0
        return {"requests": self.requests, "model_busy": self._lock.locked(),
                "busy_seconds": round(self.busy, 3), "wall_seconds": round(wall, 3),
                "busy_share": round(self.busy / wall, 4) if wall else None,
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
                "vad_saved": self.vad_saved, "vad_ran": self.vad_ran}


class _Served:
    """A request in the worker's hands: how long it has waited for the model, and its
    heartbeats to the job, sent every HEARTBEAT_SECONDS and at once when it starts or
    stops waiting (so that the job knows, whatever happens next, whether the model had it)."""

    def __init__(self, conn: socket.socket):
        self.conn, self.started, self.waited, self.waiting_since = conn, time.monotonic(), 0.0, None
        self._send, self._done = threading.Lock(), threading.Event()

    def active(self) -> float:
        """Seconds worked on: since it came in, less its time waiting for the model."""
        now = time.monotonic()
        return now - self.started - self.waited - (now - self.waiting_since if self.waiting_since else 0.0)

    def beat(self) -> None:
        line = json.dumps({"heartbeat": {"waiting": self.waiting_since is not None,
                                         "active": round(self.active(), 3)}}).encode() + b"\n"
        with self._send, contextlib.suppress(OSError):  # a job that went away: its request stops soon
            self.conn.sendall(line)

    def wait_for_model(self) -> None:
        self.waiting_since = time.monotonic()
        self.beat()

    def got_model(self) -> None:
        self.waited += time.monotonic() - self.waiting_since
        self.waiting_since = None
        self.beat()

    @contextlib.contextmanager
    def beating(self):
        self.beat()
        thread = threading.Thread(target=self._beat_until_done, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._done.set()
            thread.join()

    def _beat_until_done(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self.beat()


class _Server:
    def __init__(self, tc: dict, key: str):
        self.tc, self.key = tc, key
        self.idle = tc.get("worker", {}).get("idle_timeout_seconds", 120)
        self.lock = threading.Lock()
        self.active, self.last, self.stopping, self.served = 0, time.monotonic(), False, 0
        self.model_time = ModelTime()

    def run(self) -> int:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(address(self.key))
        except OSError:
            log.info("Another worker holds this key; exiting")
            return EXIT_ADDRESS_IN_USE
        listener.listen(64)
        log.info("Worker %d listening (key %s); loading the model", os.getpid(), self.key)
        from scribeflow.stages.transcription.model import load_model

        self.model, self.load_error = None, None
        try:
            self.model = load_model(self.tc)
        except Exception as exc:  # the environment's: every request is answered with it, naming the model
            log.exception("Could not load the model")
            self.load_error = str(exc)
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
        log.info("Worker stats: %s", json.dumps(self.model_time.stats()))
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
            return {"ok": True, "result": {"pid": os.getpid(), "key": self.key, "served": self.served,
                                           "stats": self.model_time.stats()}}
        if op == "shutdown":
            self.stopping = True
            return {"ok": True, "result": None}
        if op != "transcribe":
            return {"ok": False, "error": f"unknown op {op!r}"}
        if self.model is None:
            from scribeflow.state.failures import HOST

            return {"ok": False, "error": self.load_error, "kind": HOST}
        from scribeflow.stages.transcription import speech

        started = time.monotonic()
        try:
            with self.model_time.serving(_Served(conn)) as served, served.beating():
                result = decode(self.model, message["audio"], message["options"], should_stop=lambda: _hung_up(conn),
                                label=message.get("episode", ""), speech=speech.load(message.get("speech")),
                                model_lock=self.model_time)
            self.model_time.request(started, result.get("vad_calls"))
            result["memory"] = process_memory()
        except Exception as exc:  # reported to the job, which fails with it
            log.exception("%s failed", message.get("episode"))
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.served += 1
        log.info("%s: %.1f s of audio in %.1f s", message.get("episode"), result["duration"],
                 time.monotonic() - started)
        return {"ok": True, "result": result}


class OutOfMemory(RuntimeError):
    """Out of GPU memory with one window at a time: the episode's failure (failures.kind),
    counted, and given up after transcribe.max_attempts runs."""


def decode(model, audio, options: dict, label: str = "", **kwargs) -> dict:
    """run_model on `model`; out of GPU memory, the same request again with half the batch,
    down to one window at a time, before anything else. Out of memory even then: OutOfMemory."""
    from scribeflow.stages.transcription.decode import GPU_BATCH_SIZE, run_model
    from scribeflow.state.failures import out_of_memory

    options, tried = dict(options), []
    while True:
        try:
            _test_fault(options)
            return run_model(model, audio, options, label=label, **kwargs)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            batch = options.get("batch_size") or 0
            if batch == "auto":
                batch = GPU_BATCH_SIZE if model.model.device == "cuda" else 0
            tried.append(batch)
            if not isinstance(batch, int) or batch <= 1:
                raise OutOfMemory(f"out of GPU memory with batch {', '.join(map(str, tried))}: even one window at "
                                  f"a time does not fit beside what else the GPU holds ({exc})") from None
            options["batch_size"] = batch // 2
            log.warning("%s: out of GPU memory with batch %d (%s): again with batch %d on the same model",
                        label, batch, exc, batch // 2)


def _test_fault(options: dict) -> None:
    """SCRIBEFLOW_TEST_WORKER_FAULT, for the tests only (there is no GPU to run out of):
    "hang-once:FILE" hangs the first request while FILE exists (deleting it), "oom-above:N"
    fails every batch larger than N as CUDA does when the GPU's memory is full ("oom-above:0":
    every batch size, down to one window at a time)."""
    fault = os.environ.get("SCRIBEFLOW_TEST_WORKER_FAULT", "")
    what, _, arg = fault.partition(":")
    if what == "hang-once" and os.path.exists(arg):
        os.unlink(arg)
        log.warning("test hook: hanging")
        threading.Event().wait()
    batch = options.get("batch_size") or 0
    if what == "oom-above" and isinstance(batch, int) and batch > int(arg):
        raise RuntimeError(f"CUDA failed with error out of memory (test hook, batch {batch})")


def _hung_up(conn: socket.socket) -> bool:
    """The job sends nothing after its request: readable now means it went away."""
    try:
        return bool(select.select([conn], [], [], 0)[0]) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def main(argv: list[str]) -> int:
    from scribeflow.state.logs import setup_logging

    spec = json.loads(argv[0])
    setup_logging(None)
    if spec.get("log"):  # a worker lives for days: its log rotates
        max_bytes = int(spec["tc"].get("worker", {}).get("log_max_mb", 20) * 1_000_000)
        handler = logging.handlers.RotatingFileHandler(spec["log"], maxBytes=max_bytes, backupCount=3)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
        logging.getLogger().handlers = [handler]
    return _Server(spec["tc"], spec["key"]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
