"""The download job's look for a subtitle at a URL: the catalogue's column, then the page's
tracks (from the extraction the download makes anyway: no page fetched twice, no media
requested). What it finds, or why nothing was taken, is the episode's verdict file. A
subtitle that cannot be fetched (404, 403, a timeout) is a reason in the verdict, never the
download's failure: the next source is tried, then the media is downloaded for the ASR."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from scribeflow.stages.subtitles.fetch import fetch_errors, fetch_url, page_tracks
from scribeflow.stages.subtitles.finder import is_url, languages_for
from scribeflow.stages.subtitles.verdicts import judge, read_verdict, write_verdict

log = logging.getLogger("scribeflow.stages.subtitles")


class UrlSearch:
    def __init__(self, settings, episode: str, column: str | None, language: str | None,
                 duration: float | None):
        self.settings, self.episode, self.column, self.duration = settings, episode, column, duration
        self.sub = settings.subtitles
        self.language = language or settings.transcribe.language or self.sub.languages[0]
        from scribeflow.config.layout import Layout

        self.path = Layout.from_config(settings).subtitle_verdict(episode)
        self.on = self.sub.policy != "never"
        self.found: dict | None = None
        self.refused: list[str] = list((read_verdict(self.path) or {}).get("refused") or [])

    def _refuse(self, *why: str) -> None:
        """Keep why nothing was taken (said once however often a run retries)."""
        self.refused = list(dict.fromkeys([*self.refused, *why]))

    def _keep_refusal(self) -> None:
        """The verdict says why the episode goes to the ASR; never fails the download."""
        try:
            write_verdict(self.path, {"usable": False, "found_by": "download", "language": self.language,
                                      "refused": self.refused})
        except OSError as exc:
            log.warning("%s: could not keep why its subtitles were not taken in %s (%s)", self.episode, self.path,
                        exc)

    def _judge(self, origin: str, paths: list[Path], name=None) -> dict | None:
        """The first usable of `paths`, kept as the verdict; `name(path)`: what the verdict
        calls the file (its URL: the temporary copy is gone once the job ends)."""
        verdict = judge([(origin, p) for p in paths], self.settings, self.language, self.duration)
        verdict["found_by"] = "download"
        if verdict["usable"] and name is not None:
            verdict["file"] = name(Path(verdict["file"]))
        self._refuse(*verdict["refused"])
        verdict["refused"] = self.refused
        try:
            write_verdict(self.path, verdict)
        except OSError as exc:  # a full disk: the transcript job could not read it; the ASR then
            log.warning("%s: could not keep its subtitle's verdict in %s (%s): the media is downloaded",
                        self.episode, self.path, exc)
            return None
        if verdict["usable"]:
            self.found = verdict
            log.info("%s: its transcript is the subtitle %s (%s, %d lines): no media is downloaded", self.episode,
                     verdict["file"], origin, len(verdict["segments"]))
        return self.found

    def from_column(self) -> dict | None:
        if not (self.on and "column" in self.sub.sources and self.column and is_url(self.column)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            name = Path(self.column.split("?")[0]).name or "subtitle.srt"
            try:
                path = fetch_url(self.column, Path(tmp) / f"{self.episode}.{name}",
                                 self.settings.download.socket_timeout)
            except fetch_errors() as exc:  # the subtitle is not there; the media may be
                self._refuse(f"{self.column}: could not be fetched ({exc})")
                log.warning("%s: its subtitle %s could not be fetched (%s): the next source, then the ASR",
                            self.episode, self.column, exc)
                self._keep_refusal()
                return None
            return self._judge("column", [path], name=lambda _: self.column)

    def from_page(self, ydl, info: dict) -> dict | None:
        """Called by the download with the page's extraction, before any media request."""
        if not (self.on and "page" in self.sub.sources and (info.get("subtitles") or (
                self.sub.automatic_captions and info.get("automatic_captions")))):
            return None
        wanted = languages_for(self.settings, self.language)
        failed: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            paths = page_tracks(ydl, info, self.episode, wanted, tmp, self.sub.automatic_captions, failed)
            for why in failed:
                log.warning("%s: %s: the next track, then the ASR", self.episode, why)
            self._refuse(*failed)
            if not paths:
                if not failed:
                    tracks = ", ".join(sorted({*(info.get("subtitles") or {}),
                                               *(info.get("automatic_captions") or {})}))
                    self._refuse(f"the page's tracks are in {tracks}: none in {', '.join(wanted)}")
                self._keep_refusal()
                return None
            return self._judge("page", paths, name=lambda path: f"{info.get('webpage_url') or ''}#{path.name}")

    def fail_if_only(self) -> None:
        if self.on and self.sub.policy == "only" and self.found is None:
            from scribeflow.stages.download import DownloadFailed

            why = "; ".join(self.refused) or "none was found"
            raise DownloadFailed(f"{self.episode}: no usable subtitle ({why}) and policy is only: "
                                 f"not downloaded", permanent=True)
