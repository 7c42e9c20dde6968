"""Subtitles as transcripts, one job a module (as yt-dlp's downloaders are):

- parse.py: a subtitle file (ASS, SSA, SRT, VTT, by pysubs2) read and reduced to what was
  heard: signs, comments and typesetting dropped, songs kept as songs;
- captions.py: closed-caption conventions (speaker labels, sound descriptions, song lines,
  reading glosses, markers) taken out of the text and counted;
- fetch.py: a page's tracks and a subtitle URL fetched (a failed fetch is a reason, never an error);
- verdicts.py: candidates judged (is it a transcript of the episode?) and the verdict kept
  in subtitles/{id}.subtitle.json, its bytes told to the disk accounting;
- finder.py: the plan's look at local files (the catalogue's column, the subtitle folder);
- search.py: the download job's look at URLs (the column's, the page's tracks);
- transcript.py: a usable verdict shaped as a transcript.

Callers import from here: `from scribeflow.stages import subtitles; subtitles.usable(...)`."""

from scribeflow.stages.subtitles.captions import Cleaned, caption_lines
from scribeflow.stages.subtitles.fetch import FORMATS, fetch_url, page_subtitles, page_tracks
from scribeflow.stages.subtitles.finder import Finder, folder_listing, is_url, languages_for, local_candidates, sampled
from scribeflow.stages.subtitles.parse import (STYLE_PATTERNS, SubtitleError, covered_seconds, dialogue, load,
                                               script_share, segments, speech)
from scribeflow.stages.subtitles.search import UrlSearch
from scribeflow.stages.subtitles.transcript import transcript
from scribeflow.stages.subtitles.verdicts import choose, judge, key_of, read_verdict, usable, write_verdict

__all__ = ["Cleaned", "caption_lines", "FORMATS", "fetch_url", "page_subtitles", "page_tracks", "Finder",
           "folder_listing", "is_url", "languages_for", "local_candidates", "sampled", "STYLE_PATTERNS",
           "SubtitleError", "covered_seconds", "dialogue", "load", "script_share", "segments", "speech", "UrlSearch",
           "transcript", "choose", "judge", "key_of", "read_verdict", "usable", "write_verdict"]
