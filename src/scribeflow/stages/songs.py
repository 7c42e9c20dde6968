"""Songs and repeats: the stretches a series' episodes share, found and marked, never deleted.

An opening, an ending or an insert song is the same audio in many episodes of a series; a
recap ("previously on") or a preview repeats a stretch of another episode. Counted as said,
every lyric would be counted once per episode. As media servers find intros (Jellyfin's
Intro Skipper), each episode's audio is fingerprinted with Chromaprint while it exists
(`keep_fingerprint`, in the extraction: ~8 32-bit values a second, ~4 bytes each, kept as
`{data_dir}/analysis/fingerprints/{id}.chromaprint`), and the corpus step compares each episode
with its neighbours in the series (`NEIGHBOURS` either side, catalogue order): a stretch of
at least `MIN_SHARED_S` seconds whose fingerprints agree is shared. Episodes from subtitles
have no audio: a run of at least `MIN_LINES` identical lines (`MIN_TEXT_CHARS` characters
or more) in two episodes is shared.

What a shared stretch is (E: the first or last quarter of an episode, at most 10 minutes):
- in E at the same end of both episodes (both openings, both endings): `song` in both;
- in E of one episode and elsewhere in the other: a recap or a preview, `repeat` where it is
  at the edge; the other copy is the scene itself and stays speech;
- elsewhere in both: `repeat` in the later episode, unless episodes share it with two or
  more others (an insert song): `song` in each.

The marks are kept per series (`{data_dir}/analysis/corpus/marks/{digest}.json`) with the
pairs compared, so an episode that arrives later costs its own comparisons, and its
earlier siblings are marked again when it changes what they share. A segment is marked
with the kind covering at least half of it (`segment_kinds`); the transcripts stay as
they are (the workflow's targets), and the corpus's sums are corrected per episode whose
marks changed (analysis.Aggregate). A series of one episode, or one whose episodes share
nothing, loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from scribeflow.files import atomic_path, atomic_write_text

log = logging.getLogger("scribeflow.stages.songs")

ITEM_S = 4096 / 3 / 11025  # one fingerprint value: Chromaprint's hop at its 11,025 Hz (0.124 s)
TAIL_S = 2.6               # the audio's last seconds, in no value of their own (its filters' width; measured)
MIN_SHARED_S = 15.0        # Intro Skipper's shortest intro
MAX_GAP_S = 3.5            # a disagreeing stretch this short (a sound over the song) does not split it
MEAN_BITS = 6.0            # of 32, averaged over a second: the same audio; unrelated audio differs by 11-16
SMOOTH_S = 1.0
CLOSE_BITS, EDGE_TRIM_S = 2, 2.0  # a run's ends: where values agree closely, within 2 s of them
MIN_DISTINCT = 24          # values in a shared stretch, at least: silence has one or two
EDGE_SHARE, EDGE_MAX_S = 0.25, 600.0
NEIGHBOURS = 3             # episodes compared either side, in the catalogue's order
MIN_LINES, MIN_TEXT_CHARS = 3, 20
KINDS = ("song", "repeat")
VERSION = 1


# -- fingerprints ---------------------------------------------------------------------------
def fingerprint(audio: str | Path) -> np.ndarray:
    """Chromaprint's raw fingerprint of `audio` (uint32, one per ITEM_S): ffmpeg's
    chromaprint muxer (Debian's ffmpeg has it), else fpcalc (libchromaprint-tools)."""
    if shutil.which("ffmpeg"):
        proc = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(audio), "-ac", "1",
                               "-f", "chromaprint", "-fp_format", "raw", "-"], capture_output=True, timeout=600)
        if proc.returncode == 0:
            return np.frombuffer(proc.stdout, "<u4").copy()
        why = proc.stderr.decode(errors="replace").strip()[-300:]
    else:
        why = "no ffmpeg"
    if shutil.which("fpcalc"):
        proc = subprocess.run(["fpcalc", "-raw", "-length", "0", "-plain", str(audio)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode == 0 and proc.stdout.strip():
            return np.array([int(v) & 0xFFFFFFFF for v in proc.stdout.strip().split(",")], "<u4")
        why += f"; fpcalc: {proc.stderr.strip()[-300:]}"
    raise RuntimeError(f"{audio}: no Chromaprint fingerprint ({why}); install Debian's ffmpeg (its chromaprint "
                       f"muxer) or libchromaprint-tools (fpcalc)")


def keep_fingerprint(audio: str | Path, target: str | Path) -> int | None:
    """The extraction's fingerprint of its audio, kept for the corpus step; its bytes.
    Best effort: without it the episode is compared with no sibling (nothing marked)."""
    started = time.monotonic()
    try:
        values = fingerprint(audio)
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(values.astype("<u4").tobytes())
    except Exception as exc:  # never the extraction's failure
        log.warning("%s: no fingerprint kept (%s): its songs and repeats are not looked for", audio, exc)
        return None
    size = Path(target).stat().st_size
    log.info("Fingerprinted the audio (Chromaprint) in %.1f s: %d values, %.1f kB, for the songs and repeats "
             "the series shares", time.monotonic() - started, len(values), size / 1e3)
    return size


def read_fingerprint(path: str | Path) -> np.ndarray:
    return np.frombuffer(Path(path).read_bytes(), "<u4")


# -- what two episodes share ----------------------------------------------------------------
def _candidate_shifts(a: np.ndarray, b: np.ndarray, top: int = 8) -> list[int]:
    """Offsets (index in a - index in b) at which equal values line up most often."""
    if not len(a) or not len(b):
        return []
    order = np.argsort(b, kind="stable")
    sb = b[order]
    lo, hi = np.searchsorted(sb, a, "left"), np.searchsorted(sb, a, "right")
    n = hi - lo
    # A value common in either episode (silence, a held note) says nothing of where.
    values, counts = np.unique(a, return_counts=True)
    common_a = np.isin(a, values[counts > 3])
    keep = np.flatnonzero((n > 0) & (n <= 3) & ~common_a)
    if not len(keep):
        return []
    reps = n[keep]
    first = np.repeat(lo[keep], reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
    shifts = np.repeat(keep, reps) - order[first]
    offsets, hits = np.unique(shifts, return_counts=True)
    ranked = offsets[np.argsort(-hits, kind="stable")][:top]
    return [int(s) for s in ranked if hits[np.searchsorted(offsets, s)] >= 2]


def _runs(ok: np.ndarray, max_gap: int, min_len: int) -> list[tuple[int, int]]:
    """[start, end) of the runs of True, gaps up to max_gap closed, at least min_len long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
    runs = []
    for start, end in zip(edges[::2], edges[1::2]):
        if runs and start - runs[-1][1] <= max_gap:
            runs[-1] = (runs[-1][0], int(end))
        else:
            runs.append((int(start), int(end)))
    return [(s, e) for s, e in runs if e - s >= min_len]


def _trimmed(bits: np.ndarray, s: int, e: int) -> tuple[int, int]:
    """A run from its first to its last close agreement within its first and last EDGE_TRIM_S:
    the second's average lets in the neighbouring audio of one episode (the last line)."""
    edge = int(EDGE_TRIM_S / ITEM_S)
    close = np.flatnonzero(bits[s:e] <= CLOSE_BITS)
    if not len(close):
        return s, s
    first, last = close[0], close[-1]
    return s + (first if first < edge else 0), s + (last + 1 if e - s - last - 1 < edge else e - s)


def shared_audio(a: np.ndarray, b: np.ndarray, min_s: float = MIN_SHARED_S) -> list[tuple[float, ...]]:
    """The stretches two fingerprints share: (a_start, a_end, b_start, b_end) in seconds."""
    min_len, gap, width = int(min_s / ITEM_S), int(MAX_GAP_S / ITEM_S), max(1, int(SMOOTH_S / ITEM_S))
    found: list[tuple[int, int, int]] = []
    for shift in _candidate_shifts(a, b):
        lo, hi = max(0, shift), min(len(a), len(b) + shift)
        if hi - lo < min_len:
            continue
        bits = np.bitwise_count(a[lo:hi] ^ b[lo - shift:hi - shift]).astype(np.float32)
        mean = np.convolve(bits, np.ones(width, np.float32) / width, mode="same")
        for s, e in _runs(mean <= MEAN_BITS, gap, min_len):
            s, e = _trimmed(bits, s, e)
            # Varied values: silence or a held tone agrees with any other (a looped bar repeats
            # its values, but dozens of them).
            if e - s >= min_len and len(np.unique(a[lo + s:lo + e])) >= max(MIN_DISTINCT, (e - s) // 16):
                found.append((lo + s, lo + e, shift))
    kept: list[tuple[int, int, int]] = []
    for s, e, shift in sorted(found, key=lambda f: f[0] - f[1]):  # longest first; overlaps are one stretch
        if all(e <= ks or s >= ke for ks, ke, _ in kept):
            kept.append((s, e, shift))
    return [(float(s * ITEM_S), float(e * ITEM_S), float((s - shift) * ITEM_S), float((e - shift) * ITEM_S))
            for s, e, shift in sorted(kept)]


def _normal(text: str) -> str:
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKC", text) if c.isalnum()).casefold()


def shared_lines(a: list[dict], b: list[dict]) -> list[tuple[float, ...]]:
    """Runs of the same lines in two episodes' segments (subtitles), as shared_audio's
    stretches; lines of another kind (a song's ♪ line) are none of them."""
    from difflib import SequenceMatcher

    a, b = ([s for s in x if (s.get("kind") or "speech") == "speech"] for x in (a, b))
    ta, tb = [_normal(s["text"]) for s in a], [_normal(s["text"]) for s in b]
    out = []
    for i, j, n in SequenceMatcher(None, ta, tb, autojunk=False).get_matching_blocks():
        if n >= MIN_LINES and sum(len(t) for t in ta[i:i + n]) >= MIN_TEXT_CHARS:
            out.append((a[i]["start"], a[i + n - 1]["end"], b[j]["start"], b[j + n - 1]["end"]))
    return out


# -- kinds ------------------------------------------------------------------------------------
def _edge(start: float, end: float, duration: float) -> str | None:
    margin = min(EDGE_SHARE * duration, EDGE_MAX_S)
    return "start" if start <= margin else "end" if end >= duration - margin else None


def classify(durations: dict[str, float], order: list[str], pairs: dict[tuple[str, str], list]) -> dict:
    """{episode: [[start, end, kind], ...]} from the stretches each pair of episodes shares
    (the module's rules); an episode with none is absent."""
    grid = {e: int(durations[e] / ITEM_S) + 1 for e in order}
    song = {e: np.zeros(grid[e], bool) for e in order}
    repeat = {e: np.zeros(grid[e], bool) for e in order}
    middle = {e: np.zeros(grid[e], np.int16) for e in order}
    rank = {e: i for i, e in enumerate(order)}

    def span(e, s, t):
        # A stretch to the fingerprint's last value runs to the episode's end (TAIL_S).
        end = grid[e] if t >= durations[e] - TAIL_S - 2 * ITEM_S else int(np.ceil(t / ITEM_S))
        return slice(max(0, int(s / ITEM_S)), min(grid[e], end))

    for (x, y), stretches in pairs.items():
        for xs, xe, ys, ye in stretches:
            ex, ey = _edge(xs, xe, durations[x]), _edge(ys, ye, durations[y])
            if ex and ex == ey:
                song[x][span(x, xs, xe)] = song[y][span(y, ys, ye)] = True
            elif ex and not ey:
                repeat[x][span(x, xs, xe)] = True
            elif ey and not ex:
                repeat[y][span(y, ys, ye)] = True
            else:
                later, (ls, le) = (y, (ys, ye)) if rank[y] > rank[x] else (x, (xs, xe))
                repeat[later][span(later, ls, le)] = True
                if not ex:
                    middle[x][span(x, xs, xe)] += 1
                    middle[y][span(y, ys, ye)] += 1
    marks = {}
    for e in order:
        is_song = song[e] | (middle[e] >= 2)
        ranges = [[round(s * ITEM_S, 2), round(t * ITEM_S, 2), kind]
                  for kind, mask in (("song", is_song), ("repeat", repeat[e] & ~is_song))
                  for s, t in _runs(mask, 0, 1)]
        if ranges:
            marks[e] = sorted(ranges)
    return marks


def segment_kinds(segments: list[dict], ranges: list) -> list[str]:
    """Each segment's kind: its own (a subtitle's `song` or `sound`), else the marked kind
    covering at least half of it, else speech."""
    out = []
    for seg in segments:
        own = seg.get("kind") or "speech"
        if own != "speech" or not ranges:
            out.append(own)
            continue
        start, end = seg["start"], max(seg["end"], seg["start"])
        covered = {k: 0.0 for k in KINDS}
        for s, t, kind in ranges:
            covered[kind] += max(0.0, min(end, t) - max(start, s))
        if end == start:  # a point: the range it lies in
            covered = {k: float(any(s <= start < t for s, t, kk in ranges if kk == k)) for k in KINDS}
        kind = max(KINDS, key=lambda k: covered[k])
        out.append(kind if covered[kind] and covered[kind] >= (end - start) / 2 else "speech")
    return out


def seconds(ranges: list) -> dict[str, float]:
    return {kind: round(sum(t - s for s, t, k in ranges if k == kind), 2) for kind in KINDS}


# -- the corpus step ------------------------------------------------------------------------
def _identity(path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


class Found:
    """What one corpus step found: `changes` {episode: (series, old correction, new
    correction, segment kinds)} for the episodes whose marks or analysis changed since the
    last step (a correction: analysis.marked_correction's, or None when nothing is marked),
    and the series' files to save once the corpus's sums hold them (`save`)."""

    def __init__(self, folder: Path, state: dict):
        self.folder, self.state = folder, state
        self.changes: dict[str, tuple] = {}
        self.dirty: dict[str, dict] = {}  # series -> its file's content, to be saved

    def series_file(self, series: str) -> Path:
        return self.folder / f"{_digest(series)}.json"

    def load(self, series: str) -> dict:
        try:
            data = json.loads(self.series_file(series).read_text(encoding="utf-8"))
            if data.get("version") == VERSION and data.get("series") == series:
                return data
        except (OSError, ValueError):
            pass
        return {"version": VERSION, "series": series, "episodes": {}, "pairs": {}}

    def corrections(self) -> dict[str, dict]:
        """Every marked episode's current correction (a full rebuild of the sums needs them all)."""
        out = {}
        for series in self.state.get("series", {}):
            data = self.dirty.get(series) or self.load(series)
            out.update({e: v["correction"] for e, v in data["episodes"].items() if v.get("correction")})
        return out

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for series, data in self.dirty.items():
            atomic_write_text(self.series_file(series), json.dumps(data, ensure_ascii=False))
        atomic_write_text(self.folder / "state.json", json.dumps(self.state, ensure_ascii=False))


def read_summary(folder: str | Path) -> dict:
    """The songs and repeats found per series (what `scribeflow status` shows); {} before any."""
    try:
        state = json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
        return {s: {k: v.get(k, 0) for k in ("episodes", "song_s", "repeat_s")} for s, v in state["series"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def series_marks(folder: str | Path, series: str) -> dict[str, list]:
    """{episode: [[start, end, kind], ...]} of a series as the last corpus step found them."""
    return {e: v.get("ranges", []) for e, v in Found(Path(folder), {}).load(series)["episodes"].items()}


def find(folder: str | Path, entries, files) -> Found:
    """The marks of every series whose episodes changed since the last step. `entries`:
    (episode, lemmas path, series) in the catalogue's order; `files`: the run's layout
    (config.layout.Layout), where each episode's files are."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        assert state.get("version") == VERSION
    except (OSError, ValueError, AssertionError):
        state = {"version": VERSION, "series": {}}
    found = Found(folder, state)
    by_series: dict[str, list] = {}
    for episode, lemmas, series in entries:
        if series is not None:
            by_series.setdefault(series, []).append(
                (episode, _identity(lemmas), _identity(files.fingerprint_file(episode)), lemmas))
    for series in set(state["series"]) - set(by_series):
        found.dirty[series] = {**found.load(series), "episodes": {}, "pairs": {}}
        for episode, old in found.dirty[series]["episodes"].items():
            found.changes[episode] = (series, old.get("correction"), None, None)
        del state["series"][series]
    for series, episodes in by_series.items():
        key = _digest([e[:3] for e in episodes])
        if state["series"].get(series, {}).get("key") == key:
            continue
        data = _mark_series(found, series, episodes, files)
        state["series"][series] = {"key": key, "episodes": len(episodes),
                                   **{f"{k}_s": round(sum(seconds(v.get("ranges", []))[k]
                                                         for v in data["episodes"].values()), 2) for k in KINDS}}
        found.dirty[series] = data
    return found


def _mark_series(found: Found, series: str, episodes: list, files) -> dict:
    """A series' marks found again: the pairs of neighbours not compared yet, then every
    episode's kinds; the corrections of those whose marks or analysis changed."""
    old = found.load(series)
    data = {"version": VERSION, "series": series, "episodes": {}, "pairs": {}}
    info = _sources(old, episodes, files)
    loaded: dict[str, object] = {}

    def content(e):
        if e not in loaded:
            loaded[e] = (read_fingerprint(files.fingerprint_file(e)) if info[e]["source"] == "audio"
                         else _segments(files, e))
        return loaded[e]

    for source in ("audio", "text"):
        order = [e for e, *_ in episodes if info[e]["source"] == source]
        pairs = {}
        for i, x in enumerate(order):
            for y in order[i + 1:i + 1 + NEIGHBOURS]:
                of, cached = [info[x]["of"], info[y]["of"]], old["pairs"].get(f"{x}\t{y}")
                if cached and cached["of"] == of:
                    pairs[(x, y)] = cached["stretches"]
                else:
                    a, b = content(x), content(y)
                    pairs[(x, y)] = [list(s) for s in (shared_audio(a, b) if source == "audio" else shared_lines(a, b))]
                data["pairs"][f"{x}\t{y}"] = {"of": of, "stretches": pairs[(x, y)]}
        for e in order:
            before = old["episodes"].get(e, {})
            info[e]["duration"] = (before["duration"] if before.get("of") == info[e]["of"] and "duration" in before
                                   else _duration(content(e), source))
        marks = classify({e: info[e]["duration"] for e in order}, order, pairs)
        for e in order:
            info[e]["ranges"] = marks.get(e, [])
    for episode, lemma_id, _, lemmas in episodes:
        before, entry = old["episodes"].get(episode, {}), {"ranges": [], **info[episode]}
        if not entry["ranges"] and not before.get("ranges"):
            entry["correction"] = None  # nothing marked, then or now
        elif before.get("ranges") == entry["ranges"] and before.get("lemmas") == lemma_id:
            entry["correction"] = before.get("correction")
        else:
            correction, kinds = _correction(files, episode, lemmas, entry["ranges"])
            entry["correction"] = correction
            found.changes[episode] = (series, before.get("correction"), correction, kinds)
        data["episodes"][episode] = entry
    log.info("Songs and repeats of series %s: %s", series, ", ".join(
        f"{k} {v:.0f} s" for k, v in seconds([r for v in data["episodes"].values() for r in v["ranges"]]).items()))
    return data


def _sources(old: dict, episodes: list, files) -> dict:
    """Per episode: what it is compared by (`audio`: a fingerprint; `text`: a subtitle's
    lines; `none`: an ASR episode without a fingerprint), and that file's identity."""
    info = {}
    for episode, lemma_id, fp_id, _ in episodes:
        before = old["episodes"].get(episode, {})
        source = "audio" if fp_id else before.get("source") if before.get("lemmas") == lemma_id else None
        if source is None:
            source = "text" if _source(files.stats_file(episode)) == "subtitles" else "none"
        info[episode] = {"source": source, "of": fp_id if source == "audio" else lemma_id, "lemmas": lemma_id}
    return info


def _source(stats_path) -> str | None:
    try:
        return json.loads(Path(stats_path).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError):
        return None


def _segments(files, episode: str) -> list[dict]:
    """An episode's segments: its transcript's, or as far as its tokens tell."""
    from scribeflow.stages.concordance import segments_from_tokens
    from scribeflow.stages.tokens import TokenizeError, checked_transcript, read_tokens

    transcript = Path(files.transcript(episode))
    if transcript.is_file():
        try:
            return checked_transcript(transcript)["segments"]
        except TokenizeError:
            pass
    tokens = Path(files.tokens_file(episode))
    return segments_from_tokens(read_tokens(tokens)[0]) if tokens.is_file() else []


def _duration(content, source: str) -> float:
    if source == "audio":
        return round(len(content) * ITEM_S + TAIL_S, 2)
    return max((s["end"] for s in content), default=0.0)


def _correction(files, episode: str, lemmas, ranges: list):
    """What the episode's counts lose to its marks (analysis.marked_correction), and its
    segments' kinds; (None, kinds) when nothing is marked or its tokens are gone."""
    from scribeflow.stages.analysis import marked_correction
    from scribeflow.stages.tokens import read_tokens

    segments = _segments(files, episode)
    kinds = segment_kinds(segments, ranges)
    if not ranges:
        return None, kinds
    tokens = Path(files.tokens_file(episode))
    if not tokens.is_file():
        log.warning("%s: songs or repeats found, but its tokens are gone (delete_tokens_after_analysis): its counts "
                    "still hold them", episode)
        return None, kinds
    table, meta = read_tokens(tokens)
    return marked_correction(table, meta, lemmas, segments, kinds, seconds(ranges)), kinds


def mark_index(index, found: Found, files, series_of: dict) -> int:
    """Give the corpus index (stages/concordance.Index) the segments' kinds: of the
    episodes whose marks changed, and of marked episodes added to it again since the last
    step (analysed again, or the index rebuilt from the tokens). Returns how many changed."""
    kinds = {e: change[3] for e, change in found.changes.items() if change[3] is not None}
    since = found.state.get("indexed_at", 0.0)
    latest = since
    for name, added_at in index.added_since(since):
        latest = max(latest, added_at or 0.0)
        series = series_of.get(name)
        if name in kinds or series is None:
            continue
        ranges = ((found.dirty.get(series) or found.load(series))["episodes"].get(name) or {}).get("ranges")
        if ranges:
            kinds[name] = segment_kinds(_segments(files, name), ranges)
    from scribeflow.stages.concordance import CorpusIndexError

    changed = 0
    for episode, segment_kinds_ in kinds.items():
        try:
            changed += bool(index.mark(episode, dict(enumerate(segment_kinds_))))
        except CorpusIndexError as exc:  # not in it: its tokens are gone (delete_tokens_after_analysis)
            log.info("%s", exc)
    found.state["indexed_at"] = latest
    return changed
