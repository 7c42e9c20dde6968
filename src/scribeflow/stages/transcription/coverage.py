"""No speech left behind: the speech Silero VAD finds, against what the segments cover.

faster-whisper can skip speech without a word: a 30-s window judged silent (its
no-speech probability over `no_speech_threshold` with a low log probability), or one
that the temperature fallback's random sampling jumps over whole (a 30-s hole was
measured in one of eight speech-dense clips). So after decoding, every stretch of speech
that no segment covers and that lasts `min_seconds` or more is decoded again on its own:
greedy first, then with the fallback (the run's temperature ladder, or a wider beam when
the run decodes without sampling), never skipped as silent (the VAD says it is speech). The transcript records its speech coverage and what was decoded again."""

from __future__ import annotations

from scribeflow.stages.media import SAMPLE_RATE

# faster-whisper's tests of a window's decode: over this compression ratio it repeats itself,
# under this mean log probability it is unsure. The temperature ladder decodes a failing
# window again by sampling; without the ladder, repair() does it without sampling.
COMPRESSION_RATIO = 2.4
LOG_PROB = -1.0
MIN_SECONDS = 3.0  # a shorter uncovered stretch is a breath or a word at a window's edge
JOIN_SECONDS = 1.0  # stretches of speech closer than this are one hole
PAD_SECONDS = 0.2  # context on each side of a hole when it is decoded again


# Silero's spans are padded (speech_pad_ms 400) and segments stamped by their words end at
# the last word: speech this close to a segment counts as covered.
SLACK_S = 0.5


def uncovered(speech: list[tuple[float, float]], segments: list[dict], slack: float = SLACK_S) -> list[tuple[float, float]]:
    """The parts of the speech spans (seconds) that no segment covers (give or take `slack`), in time order."""
    covered = sorted((s["start"] - slack, s["end"] + slack) for s in segments if s["end"] > s["start"])
    holes = []
    for start, end in speech:
        at = start
        for c0, c1 in covered:
            if c1 <= at:
                continue
            if c0 >= end:
                break
            if c0 > at:
                holes.append((at, c0))
            at = max(at, c1)
            if at >= end:
                break
        if at < end:
            holes.append((at, end))
    return holes


def joined(holes: list[tuple[float, float]], gap: float = JOIN_SECONDS) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in holes:
        if out and start - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def seconds(spans) -> float:
    return sum(b - a for a, b in spans)


def report(speech: list[tuple[float, float]], segments: list[dict], refilled: list[dict]) -> dict:
    total = seconds(speech)
    missing = seconds(uncovered(speech, segments))
    return {"speech_seconds": round(total, 3), "covered_seconds": round(total - missing, 3),
            "coverage": round((total - missing) / total, 4) if total else 1.0, "refilled": refilled}


def refill(model, audio, segments: list[dict], speech: list[tuple[float, float]], options: dict, item,
           min_seconds: float = MIN_SECONDS) -> tuple[list[dict], dict]:
    """`segments` with every uncovered stretch of speech of `min_seconds` or more decoded
    again on its own (`item` turns faster-whisper's segments into ours), and the coverage
    report. Runs where the model may be used (the caller holds it)."""
    refilled, added = [], []
    # The run's options, on a piece of audio alone: no VAD, nothing skipped as silent.
    again = {k: v for k, v in options.items()
             if k not in ("batch_size", "clip_timestamps", "vad_parameters", "temperature")}
    again.update(vad_filter=False, no_speech_threshold=None, condition_on_previous_text=False)
    # When greedy finds nothing: the run's temperature ladder, or without one (a decode that
    # must give the same transcript every time) a wider beam that keeps what it finds.
    ladder = [t for t in options.get("temperature") or [] if t > 0]
    fallback = ({"temperature": [0.0, *ladder]} if ladder else
                {"temperature": 0.0, "beam_size": max(5, options.get("beam_size", 5)), "patience": 2.0,
                 "compression_ratio_threshold": None, "log_prob_threshold": None})
    for start, end in joined(uncovered(speech, segments)):
        if end - start < min_seconds:
            continue
        lo, hi = max(0.0, start - PAD_SECONDS), min(len(audio) / SAMPLE_RATE, end + PAD_SECONDS)
        piece = audio[int(lo * SAMPLE_RATE):int(hi * SAMPLE_RATE)]
        found, how = [], None
        for attempt, extra in (("greedy", {"temperature": 0.0}), ("fallback", fallback)):
            pieces, _ = model.transcribe(piece, **{**again, **extra})
            found = [item(s) for s in pieces]
            how = attempt
            if any(s["text"] for s in found):
                break
        for s in found:
            s["start"], s["end"] = round(s["start"] + lo, 3), round(s["end"] + lo, 3)
            for w in s.get("words") or []:
                w["start"], w["end"] = round(w["start"] + lo, 3), round(w["end"] + lo, 3)
        found = [s for s in found if s["text"]]
        added += found
        refilled.append({"start": round(start, 3), "end": round(end, 3), "segments": len(found), "how": how})
    merged = sorted(segments + added, key=lambda s: (s["start"], s["end"]))
    return merged, report(speech, merged, refilled)


# Times a reader can trust. faster-whisper's vad_filter joins every stretch of speech into
# one stream before decoding: a false 0.6-s "speech" at the start of an instrumental opening
# and the first line 31 s later share a 30-s window, and the line's segment is stamped from
# 0:00. So the speech is decoded in clips (faster-whisper's clip_timestamps, the real audio):
# stretches closer than MAX_GAP_S form one clip, a longer pause starts a new one, and no
# window, so no segment, reaches across it. A longer gap costs nothing; a clip shorter
# than a window costs an encoder pass of its own.
MAX_GAP_S = 3.0
# Silero's state after a long stretch of music hears the first word of a line late or not at
# all (measured: a line 1.5 s after a 30-s instrumental, its first 1.5 s at probabilities
# 0.0-0.3); a clip starts this much before the speech the VAD found, so Whisper hears it.
PREROLL_S = 1.0


def clips(speech: list[tuple[float, float]], max_gap: float = MAX_GAP_S, max_seconds: float | None = None,
          preroll: float = PREROLL_S) -> list[tuple[float, float]]:
    """The VAD's speech spans (seconds) grouped into clips: spans less than `max_gap` apart
    share a clip, and each clip starts `preroll` before its speech (never before the previous
    clip's end). `max_seconds` (the batched pipeline's 30-s limit per clip) starts a new clip
    where the next span would make it longer (a span alone never is: its VAD splits them)."""
    out: list[list[float]] = []
    for start, end in speech:
        if out and start - out[-1][1] <= max_gap and (max_seconds is None or end - out[-1][0] <= max_seconds):
            out[-1][1] = max(out[-1][1], end)
        else:
            lead = min(preroll, max(0.0, (max_seconds or float("inf")) - (end - start)))
            out.append([max(start - lead, out[-1][1] if out else 0.0), end])
    return [(round(float(a), 3), round(float(b), 3)) for a, b in out]


# A clip holding less speech than this, alone between long pauses, whose every segment
# Whisper's no-speech head doubts, is a scrap of music the VAD took for speech (an opening's
# first note: "うううう…" at a no-speech probability of 0.83, measured).
SCRAP_S = 2.0


def scraps(decoded: list, found: list[tuple[float, float]], speech: list[tuple[float, float]],
           no_speech: float | None) -> set[int]:
    """Which of faster-whisper's segments (`decoded`) lie in a clip of `found` with under
    SCRAP_S of `speech` and all have a no-speech probability over `no_speech` (the run's
    no_speech_threshold): text invented over music, dropped with the clip."""
    if no_speech is None:
        return set()
    by_clip: dict[int, list[int]] = {}
    for i, seg in enumerate(decoded):
        middle = (seg.start + seg.end) / 2
        k = next((k for k, (a, b) in enumerate(found) if a <= middle <= b), None)
        if k is not None:
            by_clip.setdefault(k, []).append(i)
    out = set()
    for k, members in by_clip.items():
        a, b = found[k]
        voiced = sum(max(0.0, min(b, e) - max(a, s)) for s, e in speech)
        if voiced < SCRAP_S and all(decoded[i].no_speech_prob > no_speech for i in members):
            out.update(members)
    return out


def widened(speech: list[tuple[float, float]], found: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The speech spans with each clip's first one starting where its clip starts (the preroll):
    what fit() may move a segment's start to."""
    starts = {}
    for a, b in found:
        first = next((s for s in speech if s[0] >= a and s[1] <= b + 1e-6), None)
        if first is not None:
            starts[first] = a
    return [(starts.get(s, s[0]), s[1]) for s in speech]


def fit(segments: list[dict], speech: list[tuple[float, float]], max_gap: float = MAX_GAP_S) -> tuple[list[dict], int]:
    """Each segment's start and end moved onto the speech it holds: a start in a pause the
    VAD found moves to where the speech resumes, an end to where it stopped (words too),
    so a segment never begins in the music before a line nor ends in the silence after it.
    A segment that holds no speech, or whose speech lies across a pause over `max_gap`
    (it cannot be told which side its text is on), keeps its times. Returns (segments,
    how many were moved)."""
    import bisect

    starts = [a for a, _ in speech]
    moved = 0
    for seg in segments:
        lo, hi = seg["start"], seg["end"]
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        inside = []
        while i < len(speech) and speech[i][0] < hi:
            if speech[i][1] > lo:
                inside.append(speech[i])
            i += 1
        if not inside or any(b[0] - a[1] > max_gap for a, b in zip(inside, inside[1:])):
            continue
        start, end = round(float(max(lo, inside[0][0])), 3), round(float(min(hi, inside[-1][1])), 3)
        if (start, end) != (lo, hi) and end > start:
            seg["start"], seg["end"] = start, end
            for w in seg.get("words") or []:
                w["start"], w["end"] = min(max(w["start"], start), end), min(max(w["end"], start), end)
            moved += 1
    return segments, moved


def failures(seg, ratio: float | None = COMPRESSION_RATIO, log_prob: float | None = LOG_PROB) -> int:
    """How many of faster-whisper's two tests a decoded segment (its window) fails."""
    return (int(ratio is not None and seg.compression_ratio > ratio)
            + int(log_prob is not None and seg.avg_logprob < log_prob))


def repair(model, audio, decoded: list, options: dict, item, max_gap: float = MAX_GAP_S) -> tuple[list[dict], list[dict]]:
    """Without the temperature ladder (a decode that gives the same transcript every time),
    the windows that fail the compression-ratio or log-probability test are decoded again
    on their own, still without sampling: a wider beam that may not repeat a 3-gram (what
    breaks a repetition loop), nothing skipped as silent. The new decode replaces the old
    when it fails fewer tests, or as many with a better log probability.
    `decoded`: faster-whisper's segments. Returns (our segments, what was repaired)."""
    import functools
    import statistics

    failures_of = functools.partial(failures, ratio=options.get("compression_ratio_threshold", COMPRESSION_RATIO),
                                    log_prob=options.get("log_prob_threshold", LOG_PROB))
    out, repaired, i = [], [], 0
    again = {k: v for k, v in options.items()
             if k not in ("batch_size", "clip_timestamps", "vad_parameters", "temperature")}
    again.update(vad_filter=False, no_speech_threshold=None, condition_on_previous_text=False, temperature=0.0,
                 beam_size=max(5, options.get("beam_size", 5)), no_repeat_ngram_size=3,
                 compression_ratio_threshold=None, log_prob_threshold=None)
    while i < len(decoded):
        if not failures_of(decoded[i]):
            out.append(item(decoded[i]))
            i += 1
            continue
        j = i + 1
        # A run of failing windows is decoded again as one piece, never across a pause that
        # the clips kept apart (it would join them again).
        while j < len(decoded) and failures_of(decoded[j]) and decoded[j].start - decoded[j - 1].end <= max_gap:
            j += 1
        bad = decoded[i:j]
        lo, hi = max(0.0, bad[0].start - PAD_SECONDS), min(len(audio) / SAMPLE_RATE, bad[-1].end + PAD_SECONDS)
        pieces, _ = model.transcribe(audio[int(lo * SAMPLE_RATE):int(hi * SAMPLE_RATE)], **again)
        pieces = [p for p in pieces if p.text.strip()]
        old = (max(map(failures_of, bad)), -statistics.fmean(s.avg_logprob for s in bad))
        new = (max(map(failures_of, pieces)), -statistics.fmean(s.avg_logprob for s in pieces)) if pieces else None
        better = new is not None and new < old
        if better:
            for p in pieces:
                seg = item(p)
                seg["start"], seg["end"] = round(seg["start"] + lo, 3), round(seg["end"] + lo, 3)
                for w in seg.get("words") or []:
                    w["start"], w["end"] = round(w["start"] + lo, 3), round(w["end"] + lo, 3)
                out.append(seg)
        else:
            out += [item(s) for s in bad]
        repaired.append({"start": round(bad[0].start, 3), "end": round(bad[-1].end, 3), "replaced": better,
                         "failed": [failures_of(s) for s in bad]})
        i = j
    return out, repaired
