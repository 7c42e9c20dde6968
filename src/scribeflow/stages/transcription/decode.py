"""Decoding: run_model() is the one place that calls faster-whisper. It runs in the job
itself or in the long-lived worker (worker.py), which returns the same plain dict."""

from __future__ import annotations

import contextlib
import math
import functools
import logging
import time
from pathlib import Path

from scribeflow.stages.media import SAMPLE_RATE
from scribeflow.stages.transcription import coverage, stand_in
from scribeflow.stages.transcription.language import LANGUAGE_WINDOWS, WINDOW_SECONDS, vote_language

log = logging.getLogger(__name__)

# `transcribe` config keys that are faster-whisper transcribe() options.
DECODE_KEYS = ("beam_size", "vad_filter", "condition_on_previous_text", "word_timestamps",
               "hallucination_silence_threshold", "temperature", "initial_prompt")


def decode_options(tc: dict, language: str | None) -> dict:
    """faster-whisper transcribe() options; batch_size > 0 selects BatchedInferencePipeline
    ("auto": GPU_BATCH_SIZE on a GPU, sequential on a CPU, decided where the model is loaded);
    `language_windows` (when the language is not given) how many windows vote on it."""
    options = {k: tc[k] for k in DECODE_KEYS if k in tc}
    if "temperature" in options:  # a list in JSON and in the transcript's options
        options["temperature"] = [float(t) for t in options["temperature"]]
    options["language"] = language
    batch_size = tc.get("batch_size", 0)
    batch_size = batch_size if batch_size in ("auto", None) or isinstance(batch_size, int) else int(batch_size)
    if batch_size:
        options["batch_size"] = batch_size
    windows = tc.get("language_detection", {}).get("windows", LANGUAGE_WINDOWS)
    if language is None and windows:
        options["language_windows"] = windows
    # How the segments' times are made (coverage.clips), recorded in the transcript's options.
    options["timing"] = {"method": CLIPS if options.get("vad_filter", True) else "whole",
                         "max_gap_s": coverage.MAX_GAP_S, "preroll_s": coverage.PREROLL_S}
    return options


# timing.method: "vad-clips", the speech decoded in clips that no long pause crosses, each
# segment stamped by its aligned words (coverage.clips); "vad-joined", faster-whisper's own
# vad_filter (all speech joined into one stream: a line after a long pause may be stamped
# from the pause's start), kept to compare with; "whole" without VAD.
CLIPS = "vad-clips"
VAD_JOINED = "vad-joined"


# batch_size "auto" on a GPU: 30-s windows decoded at once (a dense 24-min episode is ~53
# after VAD; two episodes at once put up to 32 in flight). Not measured on a GPU yet:
# benchmarks/episode_throughput.py --batch-sizes 8,16,32 (docs/transcription.md).
GPU_BATCH_SIZE = 16


class Cancelled(RuntimeError):
    pass


PROGRESS_SECONDS = 30.0  # a long transcription says where it is this often


def run_model(model, audio, options: dict, should_stop=None, label: str = "", speech=None, model_lock=None) -> dict:
    """Transcribe `audio` (a WAV path or float32 samples) into a plain, JSON-able dict:
    {"language", "language_probability", "duration", "segments": [{start, end, text[, words]}]}.
    `should_stop()`, asked after each segment, abandons the work (its job went away).
    Every PROGRESS_SECONDS the log says how far into the audio it is (`label`: the episode).

    `speech`: the VAD's output saved by the audio extraction (speech.py), so that no VAD
    runs here. `model_lock`: held while the model works (the vote's encoder, the
    decoding) and only then; the worker's, so that one request's CPU work (reading the
    WAV, features) overlaps another's decoding."""
    from scribeflow.stages.transcription import speech as saved_speech

    if isinstance(audio, (str, Path)):
        from scribeflow.stages.media import read_wav

        audio = read_wav(audio)
    options = dict(options)
    batch_size = options.pop("batch_size", 0)
    if batch_size == "auto":
        batch_size = GPU_BATCH_SIZE if model.model.device == "cuda" else 0
    windows = options.pop("language_windows", 0)
    timing = {"method": CLIPS, "max_gap_s": coverage.MAX_GAP_S, "preroll_s": coverage.PREROLL_S,
              **(options.pop("timing", None) or {})}
    detection = {"method": "given"} if options.get("language") else None
    model_lock = model_lock or contextlib.nullcontext()
    with saved_speech.precomputed(speech) as vad:
        if options.get("language") is None and windows and len(audio) >= SAMPLE_RATE:  # under 1 s: faster-whisper's
            detection = vote_language(model, audio, windows, model_lock)
            options["language"] = detection["language"]
        # The speech the coverage is measured on (answered from the saved VAD output too).
        speech_spans = _speech_spans(audio, 0, {}) if options.get("vad_filter", True) else None
        decoding, clip_spans, clip_list = _clipped(audio, batch_size, options, timing)
        if clip_list and decoding.get("language") is None and model.model.is_multilingual:
            # faster-whisper would detect from the first clip alone (an opening's first note):
            # from the speech joined, as its vad_filter would have. language_detection.windows: 0 only.
            with model_lock:
                decoding["language"], probability, _ = model.detect_language(audio=audio, vad_filter=True)
            detection = {"method": "faster-whisper", "probability": probability}
        # transcribe() does the VAD, the chunking and the features at once, and the model's
        # work when the segments are read (below); with no language, its detection too.
        with model_lock if options.get("language") is None else contextlib.nullcontext():
            if batch_size:
                from faster_whisper import BatchedInferencePipeline

                if not decoding.get("vad_filter", True) and not decoding.get("clip_timestamps") \
                        and len(audio) > WINDOW_SECONDS * SAMPLE_RATE:
                    # Without VAD the batched pipeline refuses audio over 30 s unless told where to cut.
                    step = WINDOW_SECONDS
                    decoding["clip_timestamps"] = [{"start": t, "end": min(t + step, len(audio) / SAMPLE_RATE)}
                                                  for t in range(0, -(-len(audio) // SAMPLE_RATE), step)]
                segments, info = BatchedInferencePipeline(model).transcribe(audio, batch_size=batch_size, **decoding)
            else:
                segments, info = model.transcribe(audio, **decoding)
        if stand_in.active():
            segments = stand_in.segments(_speech_spans(audio, batch_size, options))
    total = len(audio) / SAMPLE_RATE
    speech_report = None
    repaired = None
    # Decoded again (repair, refill) as the clips were: with word times when they are used.
    again = {**options, "language": info.language, "word_timestamps": decoding.get("word_timestamps", False)}
    item = functools.partial(_item, words=bool(options.get("word_timestamps")))
    with model_lock:  # a generator: decoding happens as it is read
        decoded = list(_progress(segments, should_stop, label, total))
        dropped = coverage.scraps(decoded, clip_list, clip_spans, options.get("no_speech_threshold", 0.6)) \
            if clip_list and not stand_in.active() else set()
        if dropped:
            log.info("%s: dropped as music the VAD took for speech: %s", label or "transcription",
                     ", ".join(f"{decoded[i].start:.1f}-{decoded[i].end:.1f} s {decoded[i].text.strip()[:20]!r}"
                               for i in sorted(dropped)))
            scrap_items = [item(decoded[i]) for i in sorted(dropped)]
            decoded = [seg for i, seg in enumerate(decoded) if i not in dropped]
        if _sampling(options) or stand_in.active():
            out = [item(seg) for seg in decoded]
        else:
            out, repaired = coverage.repair(model, audio, decoded, again, item, max_gap=timing["max_gap_s"])
            if repaired:
                log.warning("%s: %d window(s) failed the compression-ratio or log-probability test, decoded again "
                            "without sampling: %s", label or "transcription", len(repaired),
                            ", ".join(f"{r['start']:.0f}-{r['end']:.0f} s ({'replaced' if r['replaced'] else 'kept'})"
                                      for r in repaired))
        if speech_spans is not None and not stand_in.active():
            out, speech_report = coverage.refill(model, audio, out, speech_spans, again, item)
            speech_report["repaired"] = repaired or []
            speech_report["timing"] = _fitted(out, clip_spans, clip_list, timing)
            if clip_list:
                speech_report["timing"]["dropped"] = [{k: s[k] for k in ("start", "end", "text")}
                                                      for s in (scrap_items if dropped else [])]
            if speech_report["refilled"]:
                log.warning("%s: %d stretch(es) of speech no segment covered, decoded again: %s",
                            label or "transcription", len(speech_report["refilled"]),
                            ", ".join(f"{r['start']:.0f}-{r['end']:.0f} s ({r['segments']} segment(s), {r['how']})"
                                      for r in speech_report["refilled"]))
    if detection is None:  # faster-whisper's own detection (language_detection.windows: 0)
        detection = {"method": "faster-whisper"}
    probability = detection.get("probability", info.language_probability)
    # What CTranslate2 actually runs (int8 on a CPU is int8_float32), for the transcript's options.
    return {"language": info.language, "language_probability": round(probability, 4),
            "language_detection": detection,
            "duration": round(len(audio) / SAMPLE_RATE, 3), "segments": out,
            "device": model.model.device, "compute_type": model.model.compute_type, "batch_size": batch_size,
            "vad_calls": vad, "speech": speech_report}


def _clipped(audio, batch_size, options: dict, timing: dict) -> tuple[dict, list | None, list | None]:
    """`options` that decode the VAD's speech in clips no long pause crosses (coverage.clips):
    faster-whisper's own VAD is off, its clip_timestamps name the clips (a flat list of
    seconds sequentially; {start, end} of at most 30 s each for the batched pipeline). The
    same VAD settings as faster-whisper's, so the same speech. Returns (options, the VAD's
    speech spans, the clips), or the options unchanged when the timing is not by clips or there
    is no speech."""
    if timing.get("method") != CLIPS or not options.get("vad_filter", True) or options.get("clip_timestamps"):
        return dict(options), None, None
    spans = _speech_spans(audio, batch_size, options)
    found = coverage.clips(spans, timing.get("max_gap_s", coverage.MAX_GAP_S), WINDOW_SECONDS if batch_size else None,
                           timing.get("preroll_s", coverage.PREROLL_S))
    if not found:  # no speech: faster-whisper's VAD says so itself (an empty clip list decodes everything)
        return dict(options), None, None
    # Never past the audio's last sample: the clips are rounded to the millisecond, and
    # faster-whisper asserts that they hold no more than the audio (speech to the very end).
    last = math.floor(len(audio) / SAMPLE_RATE * 1000) / 1000
    found = [(a, min(b, last)) for a, b in found if a < last]
    clip_timestamps = ([{"start": a, "end": b} for a, b in found] if batch_size
                       else [t for clip in found for t in clip])
    # Word times (the cross-attention alignment) stamp each segment from its first word to its
    # last: Whisper's own segment timestamps drift by seconds where a clip opens on music.
    return {**options, "vad_filter": False, "clip_timestamps": clip_timestamps, "word_timestamps": True}, spans, found


def _fitted(segments: list[dict], clip_spans, clip_list, timing: dict) -> dict:
    """Segments fitted onto the speech they hold (coverage.fit), in place, when decoded in clips;
    what the transcript says of how its times were made."""
    if timing.get("method") != CLIPS:  # faster-whisper's own times (vad-joined)
        return {"method": timing.get("method"), "fitted": 0}
    moved = coverage.fit(segments, coverage.widened(clip_spans, clip_list), timing["max_gap_s"])[1] if clip_list else 0
    return {"method": CLIPS, "max_gap_s": timing["max_gap_s"], "preroll_s": timing["preroll_s"],
            "clips": len(clip_list or []), "fitted": moved}


def _sampling(options: dict) -> bool:
    """Whether faster-whisper's own fallback may sample (a temperature above 0)."""
    temperature = options.get("temperature", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))  # faster-whisper's default
    temperatures = temperature if isinstance(temperature, (list, tuple)) else [temperature]
    return any(t > 0 for t in temperatures)


def _progress(segments, should_stop, label: str, total: float):
    last_said = time.monotonic()
    for seg in segments:
        if should_stop is not None and should_stop():
            raise Cancelled("the job went away")
        if time.monotonic() - last_said >= PROGRESS_SECONDS:
            last_said = time.monotonic()
            log.info("%s: transcribed %.0f s of %.0f s (%.0f%%)", label or "transcription", seg.end, total,
                     100 * seg.end / total if total else 100)
        yield seg


def _item(seg, words: bool = True) -> dict:
    """Our segment; its words only when asked for (word_timestamps in the settings): the clips
    decode with word times to stamp the segments, which a transcript need not carry."""
    start, end = seg.start, seg.end
    if seg.words:  # the aligned words bound the segment (faster-whisper may keep its own timestamps)
        start, end = seg.words[0].start, seg.words[-1].end
    item = {"start": round(float(start), 3), "end": round(float(end), 3), "text": seg.text.strip()}
    if words and seg.words is not None:
        item["words"] = [{"start": round(float(w.start), 3), "end": round(float(w.end), 3), "word": w.word,
                          "probability": round(float(w.probability), 4)} for w in seg.words]
    return item


def _speech_spans(audio, batch_size, options: dict) -> list[tuple[float, float]]:
    """The stretches of speech (seconds) the decoding would read: the stand-in's segments."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if not options.get("vad_filter", True):
        return [(0.0, len(audio) / SAMPLE_RATE)]
    # The batched pipeline's VAD settings (faster_whisper.transcribe), else the default ones.
    vad = VadOptions(max_speech_duration_s=WINDOW_SECONDS, min_silence_duration_ms=160) if batch_size \
        else VadOptions(**(options.get("vad_parameters") or {}))
    return [(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in get_speech_timestamps(audio, vad)]
