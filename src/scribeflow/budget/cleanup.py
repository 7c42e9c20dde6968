"""After a crash: remove the temporary files that no pending job needs.

Snakemake does not clean up temp() files of an interrupted run (snakemake #3742), and a
killed download leaves its .part behind. Files that a live process of a concurrent run
still holds (gate reservations) are left alone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scribeflow.budget.gate import DownloadGate
from scribeflow.config.layout import (
    AUDIO_SUFFIX,
    JSON_SUFFIXES,
    PARTIAL_SUFFIXES,
    SPEECH_SUFFIX,
    STAGING_MARK,
    TOKENS_SUFFIX,
    VIDEO_SUFFIX,
    Layout,
)
from scribeflow.config.settings import Settings
from scribeflow.files import allocated_bytes, entry_names, file_paths, is_temp
from scribeflow.state.failures import given_up

log = logging.getLogger(__name__)
STALE_TMP_SECONDS = 600  # an atomic-write temp file this old belongs to no live writer


def clean_orphans(settings: Settings, keep=()) -> tuple[int, int]:
    """Delete orphaned videos, audio, partial downloads and temp files. Returns (files, bytes).

    `keep`: paths that pending jobs need (the inputs of the jobs Snakemake is about to
    run); they are never deleted. The videos and audio of given-up episodes are orphans.
    """
    layout = Layout.from_config(settings)
    videos, audio, transcripts = layout.videos, layout.audio, layout.transcripts
    cleanup = settings.disk_management.cleanup
    busy, anyone_busy = DownloadGate.from_config(settings).held_paths()
    busy = busy | {str(Path(p).absolute()) for p in keep}
    abandoned = given_up(layout)
    now = time.time()
    doomed: list[Path] = []

    def done(episode: str) -> bool:
        # Either form: the gzip setting may have changed since the transcript was written.
        return any((transcripts / f"{episode}{ext}").is_file() for ext in JSON_SUFFIXES)

    # yt-dlp's files for {id}.media are {id}@dl.* (layout.STAGING_MARK): partials,
    # fragments, per-format and post-processing files. Those of a live download stay.
    downloading = {Path(p).name.split(STAGING_MARK)[0] for p in busy if STAGING_MARK in Path(p).name}
    for path in file_paths(videos):
        if str(path.absolute()) in busy:
            continue
        if STAGING_MARK in path.name:
            if path.name.split(STAGING_MARK)[0] not in downloading:
                doomed.append(path)
        elif path.name.endswith(PARTIAL_SUFFIXES):
            doomed.append(path)
        elif path.suffix == VIDEO_SUFFIX:
            episode = path.stem
            has_audio = layout.audio_file(episode).is_file()
            if episode in abandoned or (
                    cleanup.delete_video_after_transcription and (done(episode) or has_audio)):
                doomed.append(path)
    for path in file_paths(audio):
        if str(path.absolute()) in busy:
            continue
        if path.name.endswith(SPEECH_SUFFIX):  # useful only beside its WAV, until the transcript
            episode = path.name.removesuffix(SPEECH_SUFFIX)
            if episode in abandoned or done(episode) or not layout.audio_file(episode).is_file():
                doomed.append(path)
        elif path.suffix == AUDIO_SUFFIX and (
                path.stem in abandoned or (cleanup.delete_audio_after_transcription and done(path.stem))):
            doomed.append(path)
    # With the corpus cleanup flags, a transcript is temporary once tokenized, and
    # tokens once analysed (rules/corpus.smk's paths).
    tokens, analysed = layout.tokens, layout.episode_stats
    if cleanup.delete_transcript_after_tokenization:
        for path in file_paths(transcripts):
            name = path.name.removesuffix(".gz")
            if name.endswith(".json") and layout.tokens_file(name[:-5]).is_file():
                doomed.append(path)
    if cleanup.delete_tokens_after_analysis:
        doomed += [p for p in file_paths(tokens) if p.suffix == TOKENS_SUFFIX and layout.stats_file(p.stem).is_file()]
    corpus_folders = (tokens, analysed, layout.lemmas, layout.corpus)
    for folder in (videos, audio, transcripts, *corpus_folders):
        for path in _temp_files(folder):
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



def _temp_files(folder: Path) -> list[Path]:
    """Atomic writes' temporary files in `folder`. Names only, and the hidden ones first:
    the per-episode folders hold one entry per finished episode, and this runs at every
    run's start."""
    return [folder / name for name in entry_names(folder) if name[:1] == "." and is_temp(name)
            and (folder / name).is_file()]
