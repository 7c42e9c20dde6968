"""The operator's view: what `scribeflow` tells the person running a months-long job."""

import subprocess
import sys

import yaml

from conftest import write_catalogue
from support.models import packaged_model

from scribeflow.config import catalogue as sf_catalogue
from scribeflow.config import settings as cfg
from scribeflow.config.layout import Layout
from scribeflow.ops.plan import plan, render


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`scribeflow status | head -5`: no BrokenPipeError traceback."""
    err = tmp_path / "err.txt"
    cmd = (f"{sys.executable} -m scribeflow.ops.cli status --config data_dir={tmp_path / 'data'} 2>{err} | true; "
           f"exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0
    assert "Traceback" not in err.read_text() and "BrokenPipe" not in err.read_text()


def test_plan_sizes_a_small_catalogue_with_the_slots_the_run_gets(tmp_path):
    rows = [{"id": f"ep{n:02d}", "url": f"https://example.org/{n}", "expected_size_mb": 260, "duration_s": 1440}
            for n in range(30)]
    path = write_catalogue(tmp_path / "episodes.csv", rows)
    config = cfg.validate({"catalogue": str(path), "data_dir": str(tmp_path / "data"),
                           "transcribe": {"model": str(packaged_model("tiny.en"))}})
    p = plan(config, sf_catalogue.load(path), [1, 4], {"cores": 2, "transcription_speed": 30})
    one = p["scenarios"][0]
    assert p["inputs"]["download_slots"] == 1  # --cores 2: one slot is kept for the work that frees space
    assert one["episodes_in_flight"] <= 30  # not thousands
    assert one["steady_state_disk_gb"] < 30 * 0.31  # 30 episodes, not the 265 GB of a full budget
    assert "fits below the pause threshold" in one["behaviour"]
    text = render(p)
    # 30 episodes at 30x real time on one GPU: about 24 minutes, not "0 h".
    assert " 0 h" not in text and "24 min" in text
    assert "only 2 of 4 GPUs" in text


def _ledger_with_samples(path, usage_bytes):
    import time

    from scribeflow.state.ledger import Ledger

    ledger = Ledger(path)
    t0 = time.time() - 3600
    with ledger.transaction() as c:
        for i, used in enumerate(usage_bytes):
            c.execute("INSERT INTO disk_samples VALUES (?, ?, 0, 0, 0, 0, 0, 0, 'h')", (t0 + 30 * i, used))
        for i in range(20):
            at = t0 + 150 * i
            c.execute("INSERT INTO jobs (id, stage, downloaded_at, extracted_at, transcribed_at) "
                      "VALUES (?, 'transcribed', ?, ?, ?)", (f"e{i}", at, at + 30, at + 90))
    return ledger


def test_plots_follow_the_data_and_show_the_limits_when_in_range(tmp_path):
    import matplotlib.pyplot as plt

    from scribeflow.ops import plots

    limits = cfg.validate({}).disk_management  # 300 / 280 / 250 GB
    pilot = _ledger_with_samples(tmp_path / "pilot.db", [int(2e9 + i * 1e7) for i in range(100)])
    fig = plots.disk_usage_figure(pilot, limits)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "disk usage (GB)" and 2.9 < ax.get_ylim()[1] < 4  # not a 0-300 GB axis
    assert "above this range: hard limit 300 GB" in ax.get_title()
    assert not [line for line in ax.get_lines() if "limit" in str(line.get_label())]
    plt.close(fig)

    full = _ledger_with_samples(tmp_path / "full.db", [int(2.6e11 + (i % 20) * 1e9) for i in range(100)])
    fig = plots.disk_usage_figure(full, limits)
    labels = [str(line.get_label()) for line in fig.axes[0].get_lines()]
    assert any(label.startswith("hard limit (300 GB)") for label in labels)
    assert any(label.startswith("resume downloads (250 GB)") for label in labels)
    plt.close(fig)

    fig = plots.throughput_figure(pilot)
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes] == [
        "downloads", "audio extractions", "transcriptions"]  # one panel each, nothing overlaps
    plt.close(fig)


def test_japanese_text_has_glyphs_in_plots():
    import warnings

    import matplotlib.pyplot as plt

    from scribeflow.ops import plots  # noqa: F401  (sets the fonts)

    fig, ax = plt.subplots()
    ax.set_title("アニメ 日本語のシリーズ")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    plt.close(fig)
    assert not [w for w in caught if "missing from font" in str(w.message)]


def _a_run(tmp_path):
    """A data_dir as a run leaves it: 5 episodes in the catalogue, 2 transcribed, one
    downloading, one given up, downloads paused now."""
    import json
    import time

    from scribeflow.budget.monitor import DiskUsage
    from scribeflow.state.ledger import Ledger

    rows = [{"id": f"ep{n}", "url": f"https://example.org/{n}"} for n in range(4)]
    rows.append({"id": "dead", "url": "https://example.org/dead"})
    path = write_catalogue(tmp_path / "episodes.csv", rows)
    data = tmp_path / "data"
    config = cfg.validate({"catalogue": str(path), "data_dir": str(data), "storage_dir": str(data)})
    with Ledger(data / "jobs.db") as ledger:
        ledger.enqueue([r["id"] for r in rows])
        for episode in ("ep0", "ep1"):
            ledger.set_stage(episode, "downloading")
            ledger.set_stage(episode, "transcribing")
            ledger.set_stage(episode, "transcribed")
        ledger.set_stage("ep2", "downloading")
        ledger.set_stage("dead", "failed", last_error="DownloadFailed: dead: HTTP 404 (Not Found)")
        ledger.sample_disk(DiskUsage(videos=int(2e9), transcripts=int(1e6)), paused=True)
        ledger.start_pause(int(281e9), "usage", at=time.time() - 60)
    Layout.of(data).failed.mkdir(parents=True)
    (Layout.of(data).failed / "dead.json").write_text(json.dumps({"id": "dead", "permanent": True}))
    (tmp_path / "run.yaml").write_text(f"catalogue: {path}\ndata_dir: {data}\nstorage_dir: {data}\n")
    return config, data


def test_metrics_in_prometheus_format(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    _a_run(tmp_path)
    out = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "metrics", "--configfile", "run.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True).stdout
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(out) for s in family.samples}
    assert values[("scribeflow_episodes", (("stage", "transcribed"),))] == 2
    assert values[("scribeflow_episodes", (("stage", "downloading"),))] == 1
    assert values[("scribeflow_catalogue_episodes", ())] == 5
    assert values[("scribeflow_disk_limit_bytes", (("limit", "hard_limit"),))] == 300e9
    assert values[("scribeflow_failed_episodes", (("given_up", "true"),))] == 1
    assert values[("scribeflow_downloads_paused", ())] == 1
    assert ("scribeflow_disk_bytes", (("kind", "transcripts"),)) in values
    # For node_exporter's textfile collector.
    subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "metrics", "--configfile", "run.yaml",
                    "--textfile", "scribeflow.prom"], cwd=tmp_path, timeout=120, check=True)
    assert "scribeflow_remaining_episodes 2.0" in (tmp_path / "scribeflow.prom").read_text()


def _chromium():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _dump_dom(url: str) -> str:
    """The page as a real headless browser renders it, once its script has run."""
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=8000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_dashboard_in_a_headless_browser(tmp_path):
    import re

    import pytest

    if not _chromium():
        pytest.skip("needs a headless browser (Debian: apt-get install chromium)")
    _, data = _a_run(tmp_path)
    from scribeflow.budget.hosts import HostLimiter

    breaker = HostLimiter(data / "hosts")
    for _ in range(5):  # a host whose downloads keep failing: paused by its circuit breaker
        breaker.failed("https://cdn.example.org/ep.mp4", "HTTP 503 (Service Unavailable)")
    proc = subprocess.Popen([sys.executable, "-m", "scribeflow.ops.cli", "dashboard", "--configfile", "run.yaml",
                             "--port", "0", "--refresh", "1"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        reading = proc.stdout.readline()  # first, what it reads
        assert reading.startswith(f"Reading {tmp_path / 'run.yaml'}; data folder {data}"), reading
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        page = _dump_dom(url)
        assert f"data folder {data}" in page
        assert re.search(r"<td>downloads</td><td><b>[^<]+</b></td><td><b>\d", page)  # this run, last hour, ...
        assert "2 of 5 episodes transcribed (40.0%)" in page  # written by the page's script
        assert re.search(r'id="disk-text"[^>]*>[\d.]+ [kMG]?B of 300 GB', page)
        assert 'id="gauge-used"' in page and "downloads paused" in page
        assert "dead" in page and "HTTP 404" in page and "1 failed</span> (1 given up" in page
        assert "2 episodes left" in page and "1 pause(s)" in page
        assert re.search(r"host cdn\.example\.org paused for [^:]+: HTTP 503", page), page[-3000:]
        # While the run goes: the next look shows the new figures.
        from scribeflow.state.ledger import Ledger

        with Ledger(data / "jobs.db") as ledger:
            ledger.set_stage("ep2", "transcribed")
        import time

        time.sleep(1.2)
        assert "3 of 5 episodes transcribed (60.0%)" in _dump_dom(url)
    finally:
        proc.terminate()
        proc.wait(10)


def _a_corpus(data):
    """The corpus index and shows.tsv of three Japanese episodes in two shows, as the
    analyses and the corpus step leave them."""
    import json

    from scribeflow.stages import shows
    from scribeflow.stages.analysis import write_tsv
    from scribeflow.stages.concordance import Index
    from scribeflow.stages.tokens import METADATA_KEY, tokenize_transcript

    layout = Layout.of(data)
    episodes = {"ep0": ("Alpha", ["猫が魚を食べた。", "明日も食べない。"]), "ep1": ("Alpha", ["雨が降っている。"]),
                "ep3": ("Beta", ["学校で昼ご飯を食べちゃった！"])}
    with Index(layout.corpus_index) as index:
        for episode, (series, lines) in episodes.items():
            segments = [{"start": 4.0 * i + 1, "end": 4.0 * i + 3, "text": t} for i, t in enumerate(lines)]
            table = tokenize_transcript({"id": episode, "segments": segments}, "ja")
            index.add(episode, table, json.loads(table.schema.metadata[METADATA_KEY]), segments, series)
        write_tsv(shows.show_table(index), layout.corpus_files()["shows"])


def test_export_out_takes_a_folder_or_a_file_and_leaves_no_temporary_file(tmp_path):
    import zipfile

    _, data = _a_run(tmp_path)
    _a_corpus(data)

    def export(*args):
        return subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "export", "yomitan", "--configfile",
                               "run.yaml", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    made = {}
    for out, where in (("dicts/", "dicts/scribeflow-frequency.zip"),  # a folder not there yet, as plots --out
                       ("data", "data/scribeflow-frequency-Alpha.zip"),  # a folder that exists
                       ("alpha.zip", "alpha.zip")):  # a file
        proc = export("--out", out, *(["--series", "Alpha"] if out == "data" else []))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Wrote {where}:" in proc.stdout
        made[where] = zipfile.ZipFile(tmp_path / where).namelist()
    assert all("index.json" in names for names in made.values()), made
    failed = export("--out", "dicts/", "--series", "Nope")  # nothing to export: one line, exit 2
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_the_dashboard_shows_the_hardest_shows_and_searches_the_corpus(tmp_path):
    import re

    import pytest

    if not _chromium():
        pytest.skip("needs a headless browser (Debian: apt-get install chromium)")
    _, data = _a_run(tmp_path)
    _a_corpus(data)
    proc = subprocess.Popen([sys.executable, "-m", "scribeflow.ops.cli", "dashboard", "--configfile", "run.yaml",
                             "--port", "0", "--refresh", "1"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("Reading ")
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        from urllib.parse import quote

        page = _dump_dom(url + "?q=" + quote("食べる"))  # the search box, filled from the address
        assert "the 2 hardest of 2" in page, page[-3000:]
        assert re.search(r"<td>1</td><td>(Alpha|Beta)</td><td><b>[\d.]+</b></td>", page)
        assert "食べる: 3 use(s) in 2 episode(s); 3 shown" in page
        assert "猫が魚を<mark>食べた</mark>。" in page and "学校で昼ご飯を<mark>食べちゃった</mark>！" in page
        assert "<td>0:00:05</td>" in page  # 明日も食べない。 at 5 s
        narrowed = _dump_dom(url + "?q=" + quote("食べる") + "&series=Beta")
        assert "3 use(s)" not in narrowed and "昼ご飯を<mark>食べちゃった</mark>" in narrowed
        assert "明日も" not in narrowed
    finally:
        proc.terminate()
        proc.wait(10)


def test_logs_of_an_episode(tmp_path):
    log = tmp_path / "data" / "logs" / "download" / "ep7.log"
    log.parent.mkdir(parents=True)
    log.write_text("Declared size of ep7: 12.3 MB (from Content-Length)\n")
    cmd = [sys.executable, "-m", "scribeflow.ops.cli", "logs", "ep7", "--config", f"data_dir={tmp_path / 'data'}"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "==> logs/download/ep7.log <==" in out.stdout and "12.3 MB" in out.stdout
    missing = subprocess.run([*cmd[:4], "nope", *cmd[5:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no log of nope" in missing.stderr


def _steady_ledger(tmp_path, now, run_minutes, per_hour, remaining, history=200):
    """A catalogue whose earlier run transcribed `history` episodes two days ago at 10/h,
    and whose current run started `run_minutes` ago and transcribes `per_hour`."""
    from scribeflow.state.ledger import Ledger

    tmp_path.mkdir(parents=True, exist_ok=True)
    done_now = int(run_minutes * per_hour / 60)
    total = history + done_now + remaining
    path = write_catalogue(tmp_path / "episodes.csv",
                           [{"id": f"e{i}", "url": f"https://example.org/{i}"} for i in range(total)])
    data = tmp_path / "data"
    config = cfg.validate({"catalogue": str(path), "data_dir": str(data), "storage_dir": str(data)})
    old = now - 2 * 86400
    with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
        c.execute("INSERT INTO runs (started_at, ended_at) VALUES (?, ?)", (old - history * 360, old))
        c.execute("INSERT INTO runs (started_at) VALUES (?)", (now - run_minutes * 60,))
        finished = [old - 360 * k for k in range(history)]
        finished += [now - run_minutes * 60 + 3600 / per_hour * (k + 1) for k in range(done_now)]
        for i, at in enumerate(finished):
            c.execute("INSERT INTO jobs (id, stage, downloading_at, downloaded_at, transcribed_at) "
                      "VALUES (?, 'transcribed', ?, ?, ?)", (f"e{i}", at - 300, at - 200, at))
    return config


def test_the_eta_after_a_restart_is_within_a_quarter_of_the_truth(tmp_path):
    import time

    from scribeflow.ops.status import snapshot

    now = time.time()
    # Ten minutes into a steady run at 30/h, 300 left: the truth is 10 h.
    eta = snapshot(_steady_ledger(tmp_path / "a", now, 10, 30, 300), now=now)["eta"]
    assert abs(eta["seconds"] - 10 * 3600) <= 0.25 * 10 * 3600, eta
    assert eta["basis"] == "this run (10 min 0 s)"
    # Twelve minutes into a run at 50/h with 6 left: minutes, not hours.
    eta = snapshot(_steady_ledger(tmp_path / "b", now, 12, 50, 6), now=now)["eta"]
    assert abs(eta["seconds"] - 6 / 50 * 3600) <= 0.25 * 6 / 50 * 3600, eta
    # Three hours into a run: the last hour.
    eta = snapshot(_steady_ledger(tmp_path / "c", now, 180, 20, 40), now=now)["eta"]
    assert eta["basis"] == "last hour" and abs(eta["seconds"] - 2 * 3600) <= 0.25 * 2 * 3600, eta


def test_status_says_whether_a_run_is_alive(tmp_path, monkeypatch):
    import json
    import os
    import socket

    from scribeflow.ops.status import render, snapshot
    from scribeflow.state.ledger import Ledger

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    config = cfg.validate({"catalogue": str(write_catalogue(tmp_path / "e.csv", [{"id": "a", "url": "https://e.org/a"}])),
                           "data_dir": str(data), "storage_dir": str(data)})
    with Ledger(data / "jobs.db") as ledger, ledger.transaction() as c:
        c.execute("INSERT INTO jobs (id, stage, downloading_at, updated_at) VALUES ('a', 'downloading', 1, 1)")
    gate = data / "gate"
    gate.mkdir()

    def holder(pid):
        (gate / "state.json").write_text(json.dumps({"reasons": [], "consumers": {}, "reservations": {
            "t": {"pid": pid, "host": socket.gethostname(), "beat": 0, "id": "a", "bytes": 1, "paths": [],
                  "kind": "download"}}}))

    holder(os.getpid())  # a live download
    s = snapshot(config)
    assert s["run"]["alive"] and "Run: alive (jobs in flight: 1 download)" in render(s)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder(dead.pid)  # killed with the episode in hand, Snakemake's lock left behind
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    text = render(snapshot(config))
    assert "Run: not running (no job in flight" in text and "snakemake --unlock" in text
    assert "1 episode(s) were in flight when it stopped" in text
    # Sizes in units a person reads, not 2.87e-05 GB.
    assert "e-0" not in text and "Disk: " in text and " of 300 GB" in text


def test_plan_uses_the_configured_model_and_device_and_formats_its_numbers(tmp_path):
    import re

    from scribeflow.ops.plan import model_size

    tiny = str(packaged_model("tiny.en"))
    rows = [{"id": f"ep{n}", "url": f"https://example.org/{n}", "duration_s": 1440} for n in range(3)]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)

    def plan_text(*args, **transcribe):
        configfile = tmp_path / "run.yaml"
        configfile.write_text(yaml.safe_dump({"catalogue": str(catalogue), "data_dir": str(tmp_path / "data"),
                                              "transcribe": {"model": tiny, **transcribe}}))
        proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "plan", "--configfile", str(configfile),
                               *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    cpu = plan_text(device="cpu", compute_type="int8")
    assert f"Transcription: {tiny} (tiny) on cpu, int8: 17.5x real time per machine [assumed (tiny.en's pipeline on 2 cores" in cpu
    assert "Permanent transcripts at the end: 150 kB" in cpu  # 3 x 50 KB, not "0 GB"
    assert "large-v3" not in cpu and "GPU" not in cpu and "slots" not in cpu
    assert re.search(r"^\s+CPU\s", cpu, re.M) and "the CPU: " in cpu
    assert not re.search(r"\d\.\d{4,}", cpu), cpu  # no 0.0941853 MB/s, no 6.33805x
    # The same model on a GPU: per GPU, at 1, 2, 4 and 8 GPUs.
    gpu = plan_text(device="cuda")
    assert "on cuda" in gpu and "x real time per GPU" in gpu and "2 GPUs: " not in gpu
    assert [int(line.split()[0]) for line in gpu.splitlines() if re.match(r"^\s+[1248]\s+\d", line)] == [1, 2, 4, 8]
    assert [model_size(m) for m in ("tiny.en", "Systran/faster-whisper-small", "large-v3-turbo", "medium", tiny)] \
        == ["tiny", "small", "large", "medium", "tiny"]


def test_bundled_model_prints_the_value_transcribe_model_takes(tmp_path):
    from scribeflow.config.models import check_model_dir

    def bundled(*args):
        proc = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "bundled-model", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    folder = bundled().strip()
    assert folder == str(packaged_model("tiny.en"))
    check_model_dir(folder)  # a model faster-whisper loads offline
    # --yaml: a config line that a run and `plan` take as it is.
    (tmp_path / "episodes.csv").write_text("id,url\nep1,https://example.org/1\n")
    (tmp_path / "run.yaml").write_text(f"catalogue: episodes.csv\n{bundled('--yaml')}")
    assert yaml.safe_load((tmp_path / "run.yaml").read_text())["transcribe"] == {"model": folder}
    plan = subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "plan", "--configfile", "run.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0 and f"Transcription: {folder} (tiny)" in plan.stdout, plan.stderr
