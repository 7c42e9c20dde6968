"""What finding songs and repeats costs: the fingerprint of a 24-min episode (time, bytes),
the comparison of two episodes, and the corpus step's marking of a series.

    python benchmarks/songs.py                 # 24-min episodes, a series of 24
    python benchmarks/songs.py --minutes 24 --series 24

Episodes: 16 kHz mono WAVs (what extraction writes) of 24 minutes, each an opening (90 s)
and an ending (90 s) shared by the series (tests/support/japanese.py's synthesised music) around
its own music; the fingerprint is ffmpeg's chromaprint muxer, as the extraction takes it.
Printed: the fingerprint's wall and CPU seconds and its bytes per episode; one pair's
comparison; the corpus step's marking of a whole series (songs.find, its files read) and
of the same series with one episode more (the comparisons the new episode needs only).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from support.japanese import SAMPLE_RATE, music  # noqa: E402

from scribeflow.config.layout import Layout  # noqa: E402
from scribeflow.stages import songs  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def episode(path: Path, n: int, minutes: float) -> None:
    body = minutes * 60 - 180
    audio = np.concatenate([music(90, seed=7, bpm=140), music(body, seed=1000 + n, bpm=90 + n % 40),
                            music(90, seed=11, bpm=140)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((audio * 32767).astype(np.int16).tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=24)
    ap.add_argument("--series", type=int, default=24)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="songs-bench-"))
    layout = Layout(root / "data")
    layout.fingerprints.mkdir(parents=True)
    walls, cpus, sizes = [], [], []
    for n in range(args.series + 1):
        wav = root / f"{n}.wav"
        episode(wav, n, args.minutes)
        before, start = children_cpu(), time.perf_counter()
        sizes.append(songs.keep_fingerprint(wav, layout.fingerprint_file(f"e{n:03d}")))
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu() - before)
        wav.unlink()
    print(f"Fingerprint of a {args.minutes:g}-min episode (ffmpeg's chromaprint muxer on its 16 kHz WAV): "
          f"{np.median(walls):.2f} s wall, {np.median(cpus):.2f} s CPU, {np.median(sizes) / 1e3:.1f} kB "
          f"(median of {len(walls)})")
    a, b = (songs.read_fingerprint(layout.fingerprint_file(f"e{n:03d}")) for n in (0, 1))
    start = time.perf_counter()
    for _ in range(10):
        shared = songs.shared_audio(a, b)
    print(f"One pair compared: {(time.perf_counter() - start) / 10 * 1e3:.0f} ms; shared: "
          + ", ".join(f"{s:.0f}-{e:.0f} s" for s, e, *_ in shared))
    lemmas = root / "none.parquet"  # no analysis: the marking alone
    entries = [(f"e{n:03d}", lemmas, "bench") for n in range(args.series)]
    start = time.perf_counter()
    found = songs.find(layout.marks, entries, layout)
    found.save()
    whole = time.perf_counter() - start
    marked = songs.read_summary(layout.marks)["bench"]
    start = time.perf_counter()
    again = songs.find(layout.marks, [*entries, (f"e{args.series:03d}", lemmas, "bench")], layout)
    again.save()
    one_more = time.perf_counter() - start
    print(f"A series of {args.series} marked: {whole:.2f} s ({marked['song_s'] / 60:.0f} min of songs); "
          f"one episode more: {one_more:.2f} s")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
