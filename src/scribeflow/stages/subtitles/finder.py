"""Which episodes have a usable local subtitle, as a run is planned (rules/common.smk asks
per episode): the catalogue's column (a path) and the subtitle folder, judged once and
remembered (verdicts.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from scribeflow.config.layout import SUBTITLE_EXTENSIONS
from scribeflow.stages.subtitles.verdicts import judge, key_of, read_verdict, usable, write_verdict


def languages_for(settings, language: str | None) -> list[str]:
    """The configured subtitle languages, and the episode's catalogue language."""
    langs = list(settings.subtitles.languages)
    if language and language not in langs:
        langs.append(language)
    return langs


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def folder_listing(folder: str | Path | None) -> dict[str, list[Path]]:
    """{stem: [paths]} of the subtitle files of `folder` ({id}.ass, {id}.ja.srt): one
    directory read per process, not a stat per episode."""
    listing: dict[str, list[Path]] = {}
    if not folder:
        return listing
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return listing
    for entry in entries:
        stem, suffix = os.path.splitext(entry.name)
        if suffix.lower() in SUBTITLE_EXTENSIONS:
            listing.setdefault(stem, []).append(Path(entry.path))
    return listing


def local_candidates(episode: str, column: str | None, settings, listing: dict[str, list[Path]],
                     language: str | None = None) -> list[tuple[str, Path]]:
    """(origin, path) of the episode's local subtitle files, in the configured order: the
    catalogue's column (a path, not a URL) and the folder's {id}.{ext} and {id}.{lang}.{ext}
    in the languages' order."""
    found = []
    for source in settings.subtitles.sources:
        if source == "column" and column and not is_url(column):
            found.append(("column", Path(column)))
        elif source == "folder":
            for stem in (episode, *(f"{episode}.{lang}" for lang in languages_for(settings, language))):
                found.extend(("folder", path) for path in sorted(listing.get(stem, ())))
    return found


def sampled(episode: str, share: float) -> bool:
    """Whether `episode` is among `share` of the episodes: by a hash of its id, so the same
    episodes every run and on every machine."""
    return int.from_bytes(hashlib.blake2b(episode.encode(), digest_size=8).digest(), "big") < share * 2**64


class Finder:
    """Which episodes have a usable subtitle, as a run is planned: the rules ask it per
    episode. `row(episode, column)` reads the catalogue. A verdict on local files is made
    once and kept in subtitles/ (`judge`: this process may judge; a cluster job only
    reads what the planning process found); one made by a download job (a URL, a page
    track) is taken as it is."""

    PROGRESS_EVERY = 500  # judged files between two progress calls

    def __init__(self, settings, layout, row, judge: bool = True, write=True, progress=None):
        """`write`: whether verdicts are kept (or a function that says so when asked: a
        dry run, which writes nothing to data_dir, is known only once the DAG is built).
        `progress(n)`: told every PROGRESS_EVERY files judged (a chunk's first plan judges
        its subtitles at ~11 ms each)."""
        self.settings, self.layout, self.row, self.may_judge = settings, layout, row, judge
        self.progress = progress
        self.write = write if callable(write) else (lambda: write)
        self.sub = settings.subtitles
        self._verdicts: dict[str, dict | None] = {}
        self._listing = None
        self._kept: set[str] | None = None  # the episodes with a verdict file: one directory read
        self.judged = 0

    @property
    def enabled(self) -> bool:
        return self.sub.policy != "never"

    @property
    def only(self) -> bool:
        return self.sub.policy == "only"

    def listing(self) -> dict[str, list[Path]]:
        if self._listing is None:
            self._listing = folder_listing(self.sub.folder if "folder" in self.sub.sources else None)
        return self._listing

    def language(self, episode: str) -> str:
        return self.row(episode, "language") or self.settings.transcribe.language or self.sub.languages[0]

    def verdict(self, episode: str) -> dict | None:
        if not self.enabled:
            return None
        if episode not in self._verdicts:
            self._verdicts[episode] = self._verdict(episode)
        return self._verdicts[episode]

    def _kept_verdict(self, episode: str) -> dict | None:
        from scribeflow.config.layout import SUBTITLE_SUFFIX
        from scribeflow.files import ids_with_suffix

        if self._kept is None:
            self._kept = ids_with_suffix(self.layout.subtitles, SUBTITLE_SUFFIX)
        return read_verdict(self.layout.subtitle_verdict(episode)) if episode in self._kept else None

    def _verdict(self, episode: str) -> dict | None:
        kept = self._kept_verdict(episode)
        if kept and kept.get("found_by") == "download" and kept.get("usable"):
            return kept  # found by a download job
        column = self.row(episode, "subtitle")
        if not self.listing() and not (column and not is_url(column)):
            return kept  # no local file to judge: what a planned run asks of most episodes, at once
        language = self.language(episode)
        candidates = local_candidates(episode, column, self.settings, self.listing(), language)
        if not candidates:
            return kept
        duration = self.row(episode, "duration_s")
        key = key_of(candidates, self.settings, language, duration)
        if kept and (kept.get("key") == key or not self.may_judge):
            return kept
        if not self.may_judge:
            return None
        verdict = judge(candidates, self.settings, language, duration, key)
        self.judged += 1
        if self.progress is not None and self.judged % self.PROGRESS_EVERY == 0:
            self.progress(self.judged)
        if self.write():
            try:
                write_verdict(self.layout.subtitle_verdict(episode), verdict)
            except OSError:
                pass  # a read-only or full data_dir: judged again next time
        return verdict

    def subtitled(self, episode: str) -> bool:
        """A usable subtitle is known: the episode's transcript is made from it."""
        return usable(self.verdict(episode))

    def source_file(self, episode: str) -> str:
        """What a subtitled episode's transcript job reads: the local subtitle file (a dry
        run writes no verdict), or the verdict a download job wrote for a URL or a track."""
        verdict = self.verdict(episode) or {}
        if verdict.get("found_by") != "download" and verdict.get("file"):
            return verdict["file"]
        return str(self.layout.subtitle_verdict(episode))

    def may_find(self, episode: str) -> bool:
        """A download job may still find one: a URL in the column, or the page's tracks."""
        column = self.row(episode, "subtitle")
        return ("column" in self.sub.sources and bool(column) and is_url(column)) or "page" in self.sub.sources
