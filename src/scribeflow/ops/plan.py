"""`scribeflow plan`: what a run of the catalogue will look like, before it starts.

An estimate of the whole run. Each stage has a capacity in episodes
per hour; the smallest is the bottleneck and sets the throughput and the ETA. The
disk then behaves in one of two ways:

- transcription (or extraction) is the bottleneck: downloads run ahead until the
  pause threshold, so usage saws between the resume and pause thresholds (mean in
  the middle) and the episodes in flight are whatever fits in that space;
- downloading is the bottleneck: videos are transcribed as soon as they land, so
  only the downloads in progress and the episodes being processed are on disk.

Rates come from the ledger when a run has measured them (download MB/s per job,
transcription and extraction speed in multiples of real time per job), else from
the options, whose defaults are stated with their source.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from scribeflow.config.layout import Layout
from scribeflow.config.settings import GB, MB, Settings
from scribeflow.files import human_bytes
from scribeflow.ops.rates import duration, measured
from scribeflow.stages.media import BYTES_PER_SECOND
from scribeflow.state.failures import given_up
from scribeflow.state.ledger import HOUR, TRANSCRIBED, LedgerReader

# Defaults when nothing is measured yet (the transcription's: transcription_default).
ASSUMED = {
    "download_mb_per_s": (10.0, "10 MB/s per download"),
    "transcription_speed": (None, "by the model and device"),
    "extraction_speed": (300.0, "PyAV decode + resample to 16 kHz mono, ~300x real time per core"),
    "duration_s": (24 * 60.0, "a 24-minute episode"),
    "transcript_kb": (50.0, "50 KB per transcript"),
}


# One transcription job's speed (x real time) when nothing is measured, by device and model size.
# GPU: faster-whisper's published benchmark (large-v3, fp16, beam 5, 13 min of audio in 52 s on
# an RTX 2080 Ti), taken for every size (smaller ones are faster: a first run measures them).
# CPU: the machine's cores shared by its transcriptions.
SPEEDS = {
    "cuda": {None: (15.0, "faster-whisper benchmark: large-v3 fp16 beam 5, ~15x real time per GPU")},
    # docs/transcription.md, benchmarks/episode_throughput.py: the whole pipeline, int8, 2 threads.
    "cpu": {"tiny": (17.5, "tiny.en's pipeline on 2 cores, int8: real-time factor 0.057, docs/transcription.md"),
            "base": (5.6, "base's pipeline on 2 cores, int8: real-time factor 0.177, docs/transcription.md"),
            "small": (5.6, "base's measured speed; small is slower: measure it (a first chunk, scribeflow evaluate)"),
            None: (1.0, "a guess for a medium or large model on CPU; measure yours (a first chunk, "
                        "scribeflow evaluate)")},
}
# A local model's size from its model.bin (fp16: tiny 75 MB, base 145 MB, small 484 MB, medium 1.5 GB).
SIZE_BY_BYTES = ((120e6, "tiny"), (300e6, "base"), (1e9, "small"), (2.2e9, "medium"))


def model_size(model: str) -> str:
    """tiny, base, small, medium or large: from the name (tiny.en, large-v3, distil-small.en,
    a hub id), else from a local folder's model.bin."""
    from pathlib import Path

    name = model.lower().rstrip("/").rsplit("/", 1)[-1]
    for size in ("tiny", "base", "small", "medium", "large", "turbo"):
        if size in name:
            return "large" if size == "turbo" else size
    try:
        n = (Path(model).expanduser() / "model.bin").stat().st_size
    except OSError:
        return "large"
    return next((size for limit, size in SIZE_BY_BYTES if n < limit), "large")


def transcription_default(settings: Settings) -> dict:
    """The configured model and the device it runs on (`auto`: a GPU where CTranslate2 sees
    one), its size, and the speed assumed for it until a run measures one."""
    from scribeflow.stages.transcription.model import resolve_device

    tc = settings.transcribe
    try:
        device, compute = resolve_device(tc.device, tc.compute_type)
    except RuntimeError:  # "cuda" named on a machine without CUDA (a login node planning a GPU run)
        device, compute = tc.device, tc.compute_type
    device = "cuda" if device.startswith("cuda") else "cpu"
    size = model_size(tc.model)
    speed, why = SPEEDS[device].get(size) or SPEEDS[device][None]
    return {"model": tc.model, "size": size, "device": device, "compute_type": compute, "speed": speed, "why": why}


@dataclass
class Inputs:
    episodes: int
    remaining: int  # the episodes left for the ASR
    video_mb: float  # mean per episode
    duration_s: float  # mean per episode
    transcript_kb: float
    download_mb_per_s: float
    transcription_speed: float  # x real time, one job
    extraction_speed: float  # x real time, one job
    download_slots: int
    extraction_slots: int
    transcription_slots: int  # max_concurrent_transcriptions: a cap over all GPUs of one run
    sources: dict
    subtitled: int = 0  # transcripts made from subtitles
    subtitled_planned: int = 0  # not made yet, with a usable subtitle found (left out of `remaining`)
    subtitles_unjudged: int = 0  # not made yet, with a local subtitle file not judged yet (in `remaining`)
    transcriber: dict | None = None  # transcription_default: model, size, device, compute type


def subtitle_counts(settings: Settings, catalogue, done: set[str]) -> tuple[int, int]:
    """(episodes not done with a usable subtitle already found, those with a local subtitle
    file not judged yet): the verdicts kept in subtitles/ and the candidates' names, read
    without judging any (a run judges them when it is planned)."""
    from scribeflow.stages.subtitles import Finder, local_candidates

    if settings.subtitles.policy == "never":
        return 0, 0
    columns = {c: dict(zip(catalogue.index, catalogue[c].tolist())) for c in ("subtitle", "language", "duration_s")
               if c in catalogue.columns}

    def row(episode, column):
        value = columns.get(column, {}).get(episode)
        return None if value is None or value != value else value

    finder = Finder(settings, Layout.from_config(settings), row, judge=False, write=False)
    usable = unjudged = 0
    for episode in catalogue.index:
        if episode in done:
            continue
        if finder.subtitled(episode):
            usable += 1
        elif finder.verdict(episode) is None and local_candidates(episode, row(episode, "subtitle"), settings,
                                                                   finder.listing(), finder.language(episode)):
            unjudged += 1
    return usable, unjudged


def gather(settings: Settings, catalogue, options: dict) -> Inputs:
    """Combine the catalogue, the ledger's measurements and the options (which win)."""
    dm = settings.disk_management
    seen: dict = {}
    db = Layout.from_config(settings).ledger
    done, subtitled, finished = 0, 0, set()
    if db.exists():
        with LedgerReader(db) as ledger:
            seen = measured(ledger)
            done = ledger.transcribed_count()
            subtitled, _ = ledger.subtitled_counts()
            finished = ledger.ids_in(TRANSCRIBED)
    gave_up = given_up(settings.data_dir)
    done += len(gave_up)  # failed for good: not to be done again
    # Transcripts from subtitles take no download, audio or model: those found are left out
    # of what remains (the ETA is the ASR's).
    subtitled_todo, unjudged = subtitle_counts(settings, catalogue, finished | set(gave_up))
    n_measured = seen.pop("episodes", 0)
    sources, values = {}, {}
    transcriber = transcription_default(settings)
    assumed = {**ASSUMED, "transcription_speed": (transcriber["speed"], transcriber["why"])}
    for key, (default, why) in assumed.items():
        if options.get(key) is not None:
            values[key], sources[key] = options[key], "given"
        elif key in seen:
            values[key], sources[key] = seen[key], f"measured on {n_measured} episode(s)"
        else:
            values[key], sources[key] = default, f"assumed ({why})"

    # The catalogue's own sizes and durations where it has them.
    def column_mean(col, fallback):
        if col in catalogue.columns and catalogue[col].notna().any():
            known = catalogue[col].notna().sum()
            mean = catalogue[col].fillna(fallback).astype(float).mean()
            return mean, f"catalogue ({known} of {len(catalogue)} rows; the rest {fallback:g})"
        return fallback, None

    fallback_video = seen.get("video_mb", dm.default_video_size_mb)
    video_mb, src = column_mean("expected_size_mb", fallback_video)
    sources["video_mb"] = src or (f"measured on {n_measured} episode(s)" if "video_mb" in seen
                                  else f"default_video_size_mb ({dm.default_video_size_mb:g})")
    duration, src = column_mean("duration_s", values["duration_s"])
    sources["duration_s"] = src or sources["duration_s"]
    cores = options.get("cores") or os.cpu_count() or 1
    # The slots the run really gets: one job slot left for the work that frees space, and
    # Snakemake's disk_gb units (whole GB, at least one per download).
    downloads = min(dm.download_slots(cores), max(1, int(dm.in_flight_gb)) // max(1, -(-int(video_mb) // 1000)))
    sources["download_slots"] = (f"min(max_concurrent_downloads {dm.max_concurrent_downloads}, {cores} cores - 1, "
                                 f"disk_gb units)")
    return Inputs(
        episodes=len(catalogue), remaining=max(0, len(catalogue) - done - subtitled_todo), video_mb=video_mb,
        subtitled=subtitled, subtitled_planned=subtitled_todo, subtitles_unjudged=unjudged,
        duration_s=duration, transcript_kb=values["transcript_kb"],
        download_mb_per_s=values["download_mb_per_s"], transcription_speed=values["transcription_speed"],
        extraction_speed=values["extraction_speed"],
        download_slots=max(1, downloads), extraction_slots=max(1, cores - max(1, downloads)),
        transcription_slots=dm.max_concurrent_transcriptions, sources=sources, transcriber=transcriber,
    )


def estimate(settings: Settings, inp: Inputs, gpus: int) -> dict:
    """Capacities, bottleneck, steady-state disk and ETA with `gpus` transcription workers."""
    dm = settings.disk_management
    hard, pause, resume = (x * GB for x in (dm.hard_limit_gb, dm.pause_threshold_gb, dm.resume_threshold_gb))
    video = inp.video_mb * MB
    audio = inp.duration_s * BYTES_PER_SECOND
    workers = min(gpus, inp.transcription_slots)
    capacity = {
        "download": inp.download_slots * inp.download_mb_per_s * MB / video * HOUR,
        "extract_audio": inp.extraction_slots * inp.extraction_speed * HOUR / inp.duration_s,
        "transcribe": workers * inp.transcription_speed * HOUR / inp.duration_s,
    }
    bottleneck = min(capacity, key=capacity.get)
    rate = capacity[bottleneck]
    # Permanent outputs grow through the run; take their mean over it.
    permanent_end = inp.episodes * inp.transcript_kb * 1000
    permanent_mean = (inp.episodes - inp.remaining / 2) * inp.transcript_kb * 1000
    remaining_bytes = inp.remaining * (video + audio)
    if permanent_end + remaining_bytes < pause:
        # Everything left fits below the pause threshold: downloads never pause.
        in_flight = inp.remaining
        usage = permanent_mean + remaining_bytes / 2
        behaviour = (f"everything left ({remaining_bytes / GB:.3g} GB of video and audio) fits below the "
                     f"pause threshold: downloads never pause")
    elif bottleneck == "download":
        # Videos are consumed as they land: downloads in progress (half done on average)
        # plus the episodes being extracted or transcribed.
        processing = min(gpus, inp.download_slots)
        in_flight = inp.download_slots + processing
        usage = permanent_mean + inp.download_slots * video / 2 + processing * (video + audio)
        behaviour = "downloads are the bottleneck: the disk stays well below the pause threshold"
    else:
        usage = (pause + resume) / 2
        in_flight = min(inp.remaining, max(0.0, (usage - permanent_mean) / video))
        behaviour = (f"{bottleneck} is the bottleneck: downloads run ahead and pause, usage saws between "
                     f"the resume and pause thresholds")
    hours = inp.remaining / rate if rate else float("inf")
    warnings = []
    if permanent_end > resume:
        warnings.append(f"the permanent outputs alone ({permanent_end / GB:.0f} GB) would pass the resume "
                        f"threshold: downloads would stall before the end")
    if workers < gpus:
        warnings.append(f"max_concurrent_transcriptions ({inp.transcription_slots}) lets only {workers} of "
                        f"{gpus} GPUs work: raise it to use them all")
    if video + audio > hard - pause:
        warnings.append(f"one episode ({(video + audio) / GB:.2f} GB of video and audio) is larger than the "
                        f"margin above the pause threshold ({(hard - pause) / GB:.0f} GB)")
    return {
        "gpus": gpus,
        "capacity_per_hour": {k: round(v, 2) for k, v in capacity.items()},
        "bottleneck": bottleneck,
        "episodes_per_hour": round(rate, 2),
        "steady_state_disk_gb": round(usage / GB, 3),
        "episodes_in_flight": round(in_flight),
        "behaviour": behaviour,
        "permanent_outputs_at_end_gb": round(permanent_end / GB, 2),
        "eta_hours": round(hours, 3),
        "eta_days": round(hours / 24, 1),
        "warnings": warnings,
    }


GPU_SCENARIOS = [1, 2, 4, 8]


def plan(settings: Settings, catalogue, gpus: list[int] | None, options: dict) -> dict:
    """The estimate for each count of transcription workers in `gpus` (default: 1, 2, 4 and 8
    GPUs where the model runs on a GPU; on CPU, the one machine, whose cores its transcriptions
    share)."""
    inp = gather(settings, catalogue, options)
    on_gpu = inp.transcriber["device"] == "cuda"
    workers = "GPUs" if on_gpu else "workers" if gpus else "CPU"
    gpus = gpus or (GPU_SCENARIOS if on_gpu else [1])
    return {"inputs": asdict(inp), "workers": workers, "scenarios": [estimate(settings, inp, g) for g in gpus],
            "model_warning": check_model(settings, catalogue, inp.remaining > 0)}


def check_model(settings: Settings, catalogue, needed: bool) -> str | None:
    """The run's own model check (config/models.py): a model this machine cannot load is
    refused (ConfigError, as the run's start refuses it) when episodes are left for it;
    the warning about the languages asked of an English-only model is returned."""
    from scribeflow.config.models import check_model as checked
    from scribeflow.config.settings import ConfigError

    languages = catalogue["language"].tolist() if "language" in catalogue.columns else []
    problem, warning = checked(settings.transcribe.model, settings.transcribe.language, languages)
    if problem and needed:
        raise ConfigError(problem)
    return warning


def _num(x: float) -> str:
    """A measured or assumed figure as a person reads it: 0.094, 6.34, 27, 1,190."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _scenario(p: dict, s: dict) -> str:
    """A scenario's name: 2 GPUs, the CPU, 3 workers."""
    kind = p.get("workers", "GPUs")
    return "the CPU" if kind == "CPU" else _count(s["gpus"], kind[:-1])


def render(p: dict) -> str:
    i = p["inputs"]
    src = i["sources"]
    t = i.get("transcriber") or {"model": "?", "size": "?", "device": "cuda", "compute_type": "?"}
    gpu = t["device"] == "cuda"
    lines = [
        f"Catalogue: {_count(i['episodes'], 'episode')}, {i['remaining']} still to transcribe"
        + (f" ({i['subtitled']} transcripts from subtitles, {i['subtitled_planned']} more with a usable subtitle: "
           f"not in the ETA)" if i["subtitled"] or i["subtitled_planned"] else "")
        + (f"; {i['subtitles_unjudged']} have a subtitle file not judged yet (judged when a run is planned; "
           f"counted for the ASR here)" if i.get("subtitles_unjudged") else ""),
        f"Per episode: {_num(i['video_mb'])} MB of video [{src['video_mb']}], "
        f"{_num(i['duration_s'] / 60)} min [{src['duration_s']}], "
        f"{_num(i['transcript_kb'])} KB transcript [{src['transcript_kb']}]",
        f"Transcription: {t['model']} ({t['size']}) on {t['device']}, {t['compute_type']}: "
        f"{_num(i['transcription_speed'])}x real time per {'GPU' if gpu else 'machine'} [{src['transcription_speed']}]",
        f"Downloads: {_num(i['download_mb_per_s'])} MB/s each [{src['download_mb_per_s']}], "
        f"{i['download_slots']} at a time [{src['download_slots']}]; audio extraction: "
        f"{_num(i['extraction_speed'])}x real time [{src['extraction_speed']}] on "
        f"{_count(i['extraction_slots'], 'core')}",
        "",
        f"{'' if p.get('workers') == 'CPU' else p.get('workers', 'GPUs'):>7}  {'download/h':>10}  {'extract/h':>9}  {'transcribe/h':>12}  {'bottleneck':<13}"
        f"{'disk GB':>8}  {'in flight':>9}  {'ETA':>12}",
    ]
    for s in p["scenarios"]:
        c = s["capacity_per_hour"]
        eta = duration(s["eta_hours"] * HOUR) if s["eta_hours"] != float("inf") else "never"
        lines.append(f"{'CPU' if p.get('workers') == 'CPU' else s['gpus']:>7}  {c['download']:>10.1f}  {c['extract_audio']:>9.1f}  "
                     f"{c['transcribe']:>12.1f}  {s['bottleneck']:<13}{s['steady_state_disk_gb']:>8.3g}  "
                     f"{s['episodes_in_flight']:>9}  {eta:>12}")
    seen = set()
    for s in p["scenarios"]:
        if s["behaviour"] not in seen:
            seen.add(s["behaviour"])
            lines.append(f"  {_scenario(p, s)}: {s['behaviour']}")
        lines += [f"  warning ({_scenario(p, s)}): {w}" for w in s["warnings"]]
    lines.append(f"Permanent transcripts at the end: {human_bytes(i['episodes'] * i['transcript_kb'] * 1000)}")
    if p.get("model_warning"):
        lines.append(f"warning: {p['model_warning']}")
    return "\n".join(lines)
