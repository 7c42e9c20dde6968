"""After a crash: remove temporary files that no pending job needs, and check that
the ledger agrees with the files on disk.

Snakemake does not clean up temp() files of an interrupted run (snakemake #3742),
and a killed download leaves its .part behind. Files that a live process of a
concurrent run still holds (gate reservations) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .disk import PARTIAL_SUFFIXES
from .failures import given_up
from .files import allocated_bytes
from .gate import DownloadGate

log = logging.getLogger("scribeflow.recovery")
STALE_TMP_SECONDS = 600  # an atomic-write temp file this old belongs to no live writer


def clean_orphans(config: dict, keep=()) -> tuple[int, int]:
    """Delete orphaned videos, audio, partial downloads and temp files. Returns (files, bytes).

    `keep`: paths that pending jobs need (the inputs of the jobs Snakemake is about to
    run); they are never deleted. The videos and audio of given-up episodes are orphans.
    """
    data, storage = Path(config["data_dir"]), Path(config["storage_dir"])
    videos, audio, transcripts = storage / "videos", data / "audio", data / "transcripts"
    cleanup = config["disk_management"]["cleanup"]
    busy, anyone_busy = DownloadGate.from_config(config).held_paths()
    busy = busy | {str(Path(p).absolute()) for p in keep}
    abandoned = given_up(data)
    now = time.time()
    doomed: list[Path] = []

    def done(episode: str) -> bool:
        # Either form: the gzip setting may have changed since the transcript was written.
        return any((transcripts / f"{episode}{ext}").is_file() for ext in (".json", ".json.gz"))

    for path in _files(videos):
        if str(path.absolute()) in busy:
            continue
        if path.name.endswith(PARTIAL_SUFFIXES):
            doomed.append(path)
        elif path.suffix == ".media":
            episode = path.stem
            has_audio = (audio / f"{episode}.wav").is_file()
            if episode in abandoned or (
                    cleanup["delete_video_after_transcription"] and (done(episode) or has_audio)):
                doomed.append(path)
    for path in _files(audio):
        if str(path.absolute()) in busy or path.suffix != ".wav":
            continue
        if path.stem in abandoned or (cleanup["delete_audio_after_transcription"] and done(path.stem)):
            doomed.append(path)
    # With the corpus cleanup flags, a transcript is temporary once tokenized, and
    # tokens once analysed (rules/corpus.smk's paths).
    tokens, analysed = data / "tokens", data / "analysis" / "episodes"
    if cleanup["delete_transcript_after_tokenization"]:
        for path in _files(transcripts):
            name = path.name.removesuffix(".gz")
            if name.endswith(".json") and (tokens / f"{name[:-5]}.parquet").is_file():
                doomed.append(path)
    if cleanup["delete_tokens_after_analysis"]:
        doomed += [p for p in _files(tokens) if p.suffix == ".parquet" and (analysed / f"{p.stem}.json").is_file()]
    corpus_folders = (tokens, analysed, data / "analysis" / "lemmas", data / "analysis" / "corpus")
    for folder in (videos, audio, transcripts, *corpus_folders):
        for path in _files(folder):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                if not anyone_busy or now - path.stat().st_mtime > STALE_TMP_SECONDS:
                    doomed.append(path)

    freed = 0
    for path in doomed:
        try:
            freed += allocated_bytes(path.stat())
            path.unlink()
            log.info("Removed orphaned %s", path)
        except FileNotFoundError:
            pass
    return len(doomed), freed


def _files(folder: Path):
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def check_consistency(config: dict) -> list[str]:
    """What disagrees between the ledger (jobs.db), the failed markers and the files on
    disk; an empty list when all agree. Checks that need the pipeline at rest
    (leftover partial files, a transcript the ledger has not caught up with) are
    skipped while a job holds the gate. `scribeflow check` prints the result."""
    from .failures import marker_dir
    from .ledger import TRANSCRIBED, Ledger

    data, storage = Path(config["data_dir"]), Path(config["storage_dir"])
    videos, audio, transcripts = storage / "videos", data / "audio", data / "transcripts"
    cleanup = config["disk_management"]["cleanup"]
    _, running = DownloadGate.from_config(config).held_paths()
    problems: list[str] = []
    jobs: dict[str, dict] = {}
    if (data / "jobs.db").exists():
        with Ledger(data / "jobs.db") as ledger:
            cur = ledger.conn.execute("SELECT * FROM jobs")
            names = [d[0] for d in cur.description]
            jobs = {row[0]: dict(zip(names, row)) for row in cur.fetchall()}
    markers = given_up(data)

    for episode, job in sorted(jobs.items()):
        stage, transcript = job["stage"], transcripts / f"{episode}.json"
        if stage in TRANSCRIBED:
            gone_by_design = stage != "transcribed" and cleanup["delete_transcript_after_tokenization"]
            problem = None if gone_by_design and not transcript.exists() else _transcript_problem(transcript, episode)
            if problem:
                problems.append(f"{episode}: ledger says {stage} but {problem}")
            if job["video_deleted"] and (videos / f"{episode}.media").exists():
                problems.append(f"{episode}: ledger says the video was deleted but it is on disk")
            if job["audio_deleted"] and (audio / f"{episode}.wav").exists():
                problems.append(f"{episode}: ledger says the audio was deleted but it is on disk")
        elif transcript.exists() and not running:
            problems.append(f"{episode}: a transcript exists but the ledger says {stage}")
        if episode in markers and stage != "failed":
            problems.append(f"{episode}: marked failed ({marker_dir(data) / episode}.json) but the ledger "
                            f"says {stage}")
    for episode in sorted(markers - set(jobs)):
        problems.append(f"{episode}: marked failed but not in the ledger")
    for path in sorted(transcripts.glob("*.json")):
        if path.stem not in jobs and not running:
            problems.append(f"{path.stem}: a transcript exists but the ledger has no row for it")

    if not running:
        for path in _files(videos):
            episode = path.name.split(".")[0]
            if path.name.endswith(PARTIAL_SUFFIXES):
                problems.append(f"{path}: partial download left behind")
            elif episode in markers or (cleanup["delete_video_after_transcription"]
                                        and jobs.get(episode, {}).get("stage") in TRANSCRIBED):
                problems.append(f"{path}: video of a finished or failed episode left behind")
        for path in _files(audio):
            episode = path.name.split(".")[0]
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                problems.append(f"{path}: half-written audio left behind")
            elif episode in markers or (cleanup["delete_audio_after_transcription"]
                                        and jobs.get(episode, {}).get("stage") in TRANSCRIBED):
                problems.append(f"{path}: audio of a finished or failed episode left behind")
        for path in _files(transcripts):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                problems.append(f"{path}: half-written transcript left behind")
    return problems


def _transcript_problem(path: Path, episode: str) -> str | None:
    """Why `path` is not a complete transcript of `episode`, or None."""
    try:
        t = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as exc:
        return f"{path} is not valid JSON ({exc})"
    if not isinstance(t, dict) or t.get("id") != episode:
        return f"{path} is not the transcript of {episode}"
    missing = [k for k in ("language", "duration", "model", "options", "text", "segments") if k not in t]
    if missing:
        return f"{path} lacks {', '.join(missing)}"
    return None
