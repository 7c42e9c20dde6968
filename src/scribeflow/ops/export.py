"""`scribeflow export yomitan`: the corpus's word frequencies as a Yomitan frequency
dictionary, a zip Yomitan imports (Settings > Dictionaries > Import), so that a reader's
pop-up shows how often a word is used in these shows.

The zip holds `index.json` (format 3) and `term_meta_bank_N.json` files of at most 10,000
entries each, one entry per word as written in its dictionary form and its reading:

    ["食べる", "freq", {"reading": "たべる", "frequency": {"value": 152, "displayValue": "152 (4,310)"}}]

The term is UniDic's dictionary form as the transcripts usually write it (orthBase: 食べる,
とても), the reading its kana in hiragana (kanaBase), so that homographs with different
readings (生, 上手) keep their own frequencies. Rank-based by default (value: the rank, 1
the most used; displayValue: the rank and the uses), occurrence-based on request (value:
the uses). Words without a reading (not in UniDic: unknown words, numbers) are left out.
With `--series`, the frequencies are that show's alone.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from scribeflow.files import atomic_path

BANK_SIZE = 10_000
MODES = {"rank": "rank-based", "occurrence": "occurrence-based"}


class ExportError(ValueError):
    """What cannot be exported; the message says what to do."""


def default_name(series: str | None = None) -> str:
    return f"scribeflow-frequency{'-' + series if series else ''}.zip"


def output_path(out: str | os.PathLike | None, series: str | None = None) -> Path:
    """Where `--out` asks the zip to go: a file, or a folder (one that exists, or a name
    ending in /) to write the default name in; without it, the default name here."""
    if out is None:
        return Path(default_name(series))
    text = os.fspath(out)
    if Path(text).is_dir() or text.endswith(("/", os.sep)):
        return Path(text) / default_name(series)
    return Path(text)


def frequencies(index, series: str | None = None) -> list[tuple[str, str, int]]:
    """(term, hiragana reading, uses), most used first; ties in term order."""
    from scribeflow.stages.concordance import hiragana

    # One row per spelling and reading already (the index sums them); a word outside
    # UniDic has no reading, and Yomitan no use for it.
    freqs = [(written, hiragana(reading), uses) for written, reading, uses in index.written_frequencies(series)
             if reading]
    return sorted(freqs, key=lambda x: (-x[2], x[0], x[1]))


def entries(freqs: list[tuple[str, str, int]], mode: str = "rank") -> list[list]:
    out = []
    for rank, (term, reading, uses) in enumerate(freqs, 1):
        value = rank if mode == "rank" else uses
        display = f"{rank:,} ({uses:,})" if mode == "rank" else f"{uses:,}"
        out.append([term, "freq", {"reading": reading, "frequency": {"value": value, "displayValue": display}}])
    return out


def yomitan(index, out: str | Path, series: str | None = None, mode: str = "rank", title: str | None = None,
            revision: str | None = None, episodes: int | None = None) -> dict:
    """Write the dictionary's zip to `out`; returns its index.json with the entry count."""
    import time

    if mode not in MODES:
        raise ExportError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    freqs = frequencies(index, series)
    if not freqs:
        raise ExportError("no Japanese word with a reading in the corpus index" +
                          (f" for series {series!r} (the series as the catalogue writes it)" if series else "")
                          + ": analyse some episodes first")
    scope = f"the series {series}" if series else "the whole corpus"
    info = {
        "title": title or (f"scribeflow: {series}" if series else "scribeflow corpus"),
        "revision": revision or time.strftime("%Y-%m-%d"),
        "format": 3,
        "author": "scribeflow",
        "description": f"Word frequencies ({MODES[mode]}) of {scope}: {sum(n for *_, n in freqs):,} uses of "
                       f"{len(freqs):,} words" + (f" in {episodes:,} episodes" if episodes else "")
                       + ", transcribed and tokenized with UniDic.",
        "sourceLanguage": "ja",
        "frequencyMode": MODES[mode],
    }
    rows = entries(freqs, mode)
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder: write {out}/ to put {default_name(series)} in it, or name the zip")
    # atomic_path: a failed write leaves neither a half zip nor its temporary file.
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("index.json", json.dumps(info, ensure_ascii=False, indent=1))
        for n, start in enumerate(range(0, len(rows), BANK_SIZE), 1):
            z.writestr(f"term_meta_bank_{n}.json", json.dumps(rows[start:start + BANK_SIZE], ensure_ascii=False))
    return {**info, "entries": len(rows)}
