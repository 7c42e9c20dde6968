"""After a crash: remove the temporary files that no pending job needs.

Snakemake does not clean up temp() files of an interrupted run (snakemake #3742), and a
killed download leaves its .part behind. Files that a live process of a concurrent run
still holds (gate reservations) are left alone.

clean_orphans reads top to bottom: what is held, then the orphans of each folder
(_video_orphans, _audio_orphans, _corpus_orphans, _stale_temp_files), then their removal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    held, anyone_busy = DownloadGate.from_config(settings).held_paths()
    scope = _Scope(layout, settings.disk_management.cleanup, held | {str(Path(p).absolute()) for p in keep},
                   given_up(layout))
    doomed = [*_video_orphans(scope), *_audio_orphans(scope), *_corpus_orphans(layout, scope.cleanup),
              *_stale_temp_files(layout, anyone_busy)]
    return len(doomed), _remove(doomed)


@dataclass
class _Scope:
    """What decides whether an episode's file is still needed."""

    layout: Layout
    cleanup: object  # settings.disk_management.cleanup: which finished files are temporary
    busy: set[str]  # absolute paths held by a live job or kept for a pending one
    abandoned: set[str]  # the given-up episodes

    def held(self, path: Path) -> bool:
        return str(path.absolute()) in self.busy

    def done(self, episode: str) -> bool:
        """Transcribed. Either form: the gzip setting may have changed since it was written."""
        return any((self.layout.transcripts / f"{episode}{ext}").is_file() for ext in JSON_SUFFIXES)


def _video_orphans(scope: _Scope) -> list[Path]:
    """Partial downloads, yt-dlp's files of no live download, and the videos of given-up
    episodes and (when they are temporary) of those extracted or transcribed."""
    layout, doomed = scope.layout, []
    # yt-dlp's files for {id}.media are {id}@dl.* (layout.STAGING_MARK): partials,
    # fragments, per-format and post-processing files. Those of a live download stay.
    downloading = {Path(p).name.split(STAGING_MARK)[0] for p in scope.busy if STAGING_MARK in Path(p).name}
    for path in file_paths(layout.videos):
        if scope.held(path):
            continue
        if STAGING_MARK in path.name:
            orphan = path.name.split(STAGING_MARK)[0] not in downloading
        elif path.name.endswith(PARTIAL_SUFFIXES):
            orphan = True
        elif path.suffix == VIDEO_SUFFIX:
            episode = path.stem
            orphan = episode in scope.abandoned or (scope.cleanup.delete_video_after_transcription and (
                scope.done(episode) or layout.audio_file(episode).is_file()))
        else:
            orphan = False
        if orphan:
            doomed.append(path)
    return doomed


def _audio_orphans(scope: _Scope) -> list[Path]:
    """Speech maps without their WAV or transcript to serve, and the WAVs of given-up
    episodes and (when they are temporary) of transcribed ones."""
    layout, doomed = scope.layout, []
    for path in file_paths(layout.audio):
        if scope.held(path):
            continue
        if path.name.endswith(SPEECH_SUFFIX):  # useful only beside its WAV, until the transcript
            episode = path.name.removesuffix(SPEECH_SUFFIX)
            orphan = episode in scope.abandoned or scope.done(episode) or not layout.audio_file(episode).is_file()
        else:
            orphan = path.suffix == AUDIO_SUFFIX and (
                path.stem in scope.abandoned or (scope.cleanup.delete_audio_after_transcription
                                                 and scope.done(path.stem)))
        if orphan:
            doomed.append(path)
    return doomed


def _corpus_orphans(layout: Layout, cleanup) -> list[Path]:
    """With the corpus cleanup flags, a transcript is temporary once tokenized, and tokens
    once analysed (rules/corpus.smk's paths)."""
    doomed = []
    if cleanup.delete_transcript_after_tokenization:
        for path in file_paths(layout.transcripts):
            name = path.name.removesuffix(".gz")
            if name.endswith(".json") and layout.tokens_file(name[:-5]).is_file():
                doomed.append(path)
    if cleanup.delete_tokens_after_analysis:
        doomed += [p for p in file_paths(layout.tokens)
                   if p.suffix == TOKENS_SUFFIX and layout.stats_file(p.stem).is_file()]
    return doomed


def _stale_temp_files(layout: Layout, anyone_busy: bool) -> list[Path]:
    """Atomic writes' temporaries: all of them when no job runs, else those too old to
    belong to a live writer."""
    now = time.time()
    folders = (layout.videos, layout.audio, layout.transcripts, layout.tokens, layout.episode_stats, layout.lemmas,
               layout.corpus)
    return [path for folder in folders for path in _temp_files(folder)
            if not anyone_busy or now - path.stat().st_mtime > STALE_TMP_SECONDS]


def _remove(doomed: list[Path]) -> int:
    """Delete `doomed`; the bytes freed (a file already gone is skipped)."""
    freed = 0
    for path in doomed:
        try:
            freed += allocated_bytes(path.stat())
            path.unlink()
            log.info("Removed orphaned %s", path)
        except FileNotFoundError:
            pass
    return freed


def _temp_files(folder: Path) -> list[Path]:
    """Atomic writes' temporary files in `folder`. Names only, and the hidden ones first:
    the per-episode folders hold one entry per finished episode, and this runs at every
    run's start."""
    return [folder / name for name in entry_names(folder) if name[:1] == "." and is_temp(name)
            and (folder / name).is_file()]
