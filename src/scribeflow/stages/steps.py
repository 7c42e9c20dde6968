"""One function per rule: the work, the disk gate and the ledger, so the rules stay thin.

Each step records its stage transitions in the ledger and, on failure, the stage
'failed' with the reason before re-raising, so that `scribeflow status` can say what
went wrong and Snakemake still sees the job fail. A permanent failure (or one too
many) also gives the episode up, so that later runs skip it (failures.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from scribeflow.budget.gate import DownloadGate, gb
from scribeflow.budget.slots import Slots
from scribeflow.config.layout import Layout
from scribeflow.config.settings import MB, Settings
from scribeflow.files import human_bytes
from scribeflow.state import failures
from scribeflow.state.ledger import Ledger
from scribeflow.state.logs import setup_logging  # noqa: F401  (the rules' scripts call steps.setup_logging)

log = logging.getLogger("scribeflow")

# What a transcript records of its download (download.download_episode's result).
SOURCE_KEYS = ("format_id", "format", "ext", "protocol", "audio_only", "size_source")


def job_settings(snakemake) -> Settings:
    """A job's settings: its config was validated (defaults filled) when the workflow was
    parsed, so this only builds the typed object (no schema, no validation)."""
    return Settings.from_validated(snakemake.config)


@contextlib.contextmanager
def _ledger_and_gate(settings: Settings):
    """The ledger and the gate of a step: a ledger write that meets a full disk waits at
    the gate for space (and the download that needs it pauses there), instead of failing."""
    gate = DownloadGate.from_config(settings)
    with Ledger.for_config(settings, on_full=gate.wait_for_space) as ledger:
        gate.ledger = ledger
        yield ledger, gate


@contextlib.contextmanager
def _recorded(ledger: Ledger, episode: str, settings: Settings | None = None, step: str = ""):
    try:
        yield
    except BaseException as exc:
        if failures.interrupted(exc):
            log.warning("%s: %s interrupted (%s); the next run starts it again", episode, step or "step",
                        exc or "Ctrl-C")
        else:
            log.error("%s failed: %s", episode, exc)
        ledger.on_full = None  # recording a failure never waits for space
        with contextlib.suppress(Exception):
            if settings is None:
                if not failures.interrupted(exc):
                    ledger.set_stage(episode, "failed", last_error=f"{type(exc).__name__}: {exc}"[:2000])
            elif failures.record(settings, ledger, episode, step, exc):
                log.error("Gave %s up: later runs skip it until `scribeflow retry %s`", episode, episode)
        raise


def download(*, settings: Settings, episode: str, url: str, video: str,
             expected_size_mb: float | None = None, subtitle: str | None = None, language: str | None = None,
             duration: float | None = None, media_only: bool = False) -> None:
    """`subtitle`: the catalogue's subtitle column. With subtitles first, a usable subtitle
    at a URL (the column's, or a track of the page) is taken instead of the media: the
    video is then an empty marker that the next steps pass on. `media_only`: the episode
    has its subtitle and is downloaded to be sampled (sample_asr): no search."""
    from scribeflow.stages.download import download_episode
    from scribeflow.stages.subtitles import UrlSearch

    finder = UrlSearch(settings, episode, subtitle, language, duration)
    finder.on = finder.on and not media_only
    with _ledger_and_gate(settings) as (ledger, gate), _recorded(ledger, episode, settings, "download"):
        suspect = (ledger.job(episode) or {}).get("failure_kind") == failures.EPISODE
        ledger.set_stage(episode, "downloading")
        if finder.from_column() is not None:
            return _subtitle_marker(ledger, episode, video, finder)
        if "page" not in settings.subtitles.sources:
            finder.fail_if_only()  # no page to look at: not even its extraction
        result = download_episode(episode, url, Path(video), settings, gate=gate,
                                  expected_size_mb=expected_size_mb,
                                  on_extracted=lambda ydl, info: finder.from_page(ydl, info) or finder.fail_if_only(),
                                  suspect=suspect)
        if result.get("subtitles"):
            return _subtitle_marker(ledger, episode, video, finder)
        # What was downloaded, for the transcript (written by another job) and the ledger.
        source = {key: result.get(key) for key in SOURCE_KEYS}
        source.update(bytes=result["bytes"], declared_bytes=result["declared"])
        ledger.set_stage(episode, "downloaded", video_size_bytes=result["bytes"],
                         declared_bytes=result["declared"], video_deleted=0, source=json.dumps(source))


def extract_audio(*, settings: Settings, episode: str, video: str, audio: str, language: str | None = None) -> None:
    from scribeflow.stages import songs
    from scribeflow.stages.media import AudioTooLong, MediaError, expected_audio_bytes, validate
    from scribeflow.stages.media import extract_audio as extract

    if _is_marker(settings, episode, video):  # its download found a subtitle: nothing to extract
        Path(audio).parent.mkdir(parents=True, exist_ok=True)
        Path(audio).touch()
        return
    with _ledger_and_gate(settings) as (ledger, gate), _recorded(ledger, episode, settings, "extract_audio"):
        ledger.set_stage(episode, "extracting")
        info = validate(video)
        # Reserve the WAV's size: the audio is written while the video still exists. The
        # writer stops at the reservation; audio that decodes longer than its container
        # says is measured and extracted once more with what was measured reserved.
        reserve = expected_audio_bytes(max(info.duration, info.container_duration or 0))
        for retry in (False, True):
            # A consumer (work that frees space) only once admitted: one that waits frees nothing.
            with gate.admitted(episode, reserve, [audio], download=False), gate.consumer(episode, "extract"):
                try:
                    seconds = extract(video, audio, max_bytes=reserve)
                    break
                except AudioTooLong as exc:
                    if retry:
                        raise MediaError(f"{exc} (twice)") from None
                    log.warning("%s; extracting it once more with %s reserved", exc,
                                human_bytes(expected_audio_bytes(exc.seconds)))
                    reserve = expected_audio_bytes(exc.seconds)
        size = Path(audio).stat().st_size
        log.info("Extracted %.1f s of 16 kHz mono audio from %s: %.1f MB", seconds, episode, size / MB)
        _find_speech(settings, episode, audio, language)
        # While the audio exists: the songs and repeats of its series are found from it (songs.py).
        songs.keep_fingerprint(audio, Layout.from_config(settings).fingerprint_file(episode))
        ledger.set_stage(episode, "extracted", audio_size_bytes=size)


def _find_speech(settings: Settings, episode: str, audio: str, language: str | None) -> None:
    """The VAD's output for the transcription, found here, on a CPU job beside other
    episodes' work, so that none runs in the transcription worker's path (speech.py).
    Best effort: without it the transcription runs the VAD itself."""
    import time

    from scribeflow.stages.media import read_wav
    from scribeflow.stages.transcription import speech
    from scribeflow.stages.transcription.decode import decode_options

    options = decode_options(settings.transcribe.as_dict(), language or settings.transcribe.language)
    if not options.get("vad_filter", True):
        return
    target = Layout.from_config(settings).speech_file(episode)
    started = time.monotonic()
    try:
        size = speech.save(speech.compute(read_wav(audio), options.get("language_windows", 0)), target)
    except Exception as exc:  # never the extraction's failure
        log.warning("%s: could not find its speech ahead of the transcription (%s); the transcription will",
                    episode, exc)
        target.unlink(missing_ok=True)
        return
    log.info("Found the speech (Silero VAD) in %.1f s, for the transcription: %s", time.monotonic() - started,
             human_bytes(size))


def transcribe(*, settings: Settings, episode: str, audio: str | None, outputs: dict[str, str], video: str,
               language: str | None = None, subtitle: str | None = None, duration: float | None = None) -> None:
    """`outputs`: the rule's named outputs ({"json": ..., "srt": ...}), written by this job;
    `video`: the download's path (gone by now, unless kept); `subtitle`: the verdict of a
    usable subtitle, planned instead of the audio."""
    if subtitle or _is_marker(settings, episode, audio):
        return _transcript_from_subtitles(settings, episode, outputs, subtitle, language, duration)
    from scribeflow.stages.transcription.transcript import write_transcript

    with _ledger_and_gate(settings) as (ledger, gate), _recorded(ledger, episode, settings, "transcribe"):
        video_gone = not Path(video).exists()
        ledger.set_stage(episode, "transcribing", video_deleted=int(video_gone))
        job = ledger.job(episode) or {}
        video_mb = (job.get("video_size_bytes") or 0) / MB
        # Slots cap transcriptions across processes (overlapping chunk runs), not only in this one.
        with Slots.transcription(settings).hold(episode), gate.consumer(episode, "transcribe"):
            log.info("Transcribing %s, video size: %.1f MB", episode, video_mb)
            raw, result = _asr(settings, ledger, episode, audio, language)
            if job.get("source"):
                result["download"] = json.loads(job["source"])
            # Before the transcript exists: from then on a concurrent run's orphan cleanup may delete the audio.
            audio_mb = Path(audio).stat().st_size / MB
            size = write_transcript(result, outputs)
            Layout.from_config(settings).speech_file(episode).unlink(missing_ok=True)  # of no use any more
        # Snakemake deletes the temp() audio as soon as this job ends.
        audio_deleted = settings.disk_management.cleanup.delete_audio_after_transcription
        # The memory of the process that transcribed (the worker, or this job): for sizing.
        memory = raw.get("memory") or {}
        ledger.set_stage(episode, "transcribed", transcript_size_bytes=size, audio_deleted=int(audio_deleted),
                         transcript_source="asr",
                         worker_rss_bytes=memory.get("peak_rss_bytes"), worker_gpu_bytes=memory.get("gpu_bytes"))
        if memory:
            log.info("Transcription memory: %s resident at peak%s", human_bytes(memory.get("peak_rss_bytes") or 0),
                     f", {human_bytes(memory['gpu_bytes'])} of GPU memory" if memory.get("gpu_bytes") else "")
        log.info("Transcription complete (%.1f s of audio, %d segments), deleting video and audio",
                 result["duration"], len(result["segments"]))
        # What this step frees is its audio: the video went when its audio was extracted.
        freed = audio_mb if audio_deleted else 0
        log.info("Freed %.1f MB (audio; the video, %.1f MB, %s)", freed, video_mb,
                 "was freed when its audio was extracted" if video_gone else "is kept")
        # A fresh look at the gate: records a disk sample, and may resume downloads.
        usage, monitor = gate.check(download=False).usage, gate.monitor
        log.info("Current disk usage: %s/%s GB (%.0f%%)", gb(usage.total - audio_mb * MB),
                 gb(monitor.hard_limit), 100 * (usage.total - audio_mb * MB) / monitor.hard_limit)


def _asr(settings: Settings, ledger: Ledger, episode: str, audio: str, language: str | None,
         sampled: bool = False) -> tuple[dict, dict]:
    """The model's work on `audio` through the worker (the caller holds a slot): its raw
    result and the transcript built from it. The catalogue's language wins over the config's.
    A worker that dies with the episode in hand counts as a failed transcription, unless
    the episode is only `sampled` (its transcript is its subtitle): then the sample fails."""
    from scribeflow.stages.transcription import worker
    from scribeflow.stages.transcription.decode import decode_options
    from scribeflow.stages.transcription.transcript import build_transcript

    def worker_died(exc: Exception) -> None:
        if sampled:
            raise exc  # not tried in-process: a file that kills the worker would kill this job too
        failures.worker_died(settings, ledger, episode, exc)

    tc = settings.transcribe.as_dict()  # as plain data: it goes to the worker and into the transcript
    options = decode_options(tc, language or settings.transcribe.language)
    speech_file = Layout.from_config(settings).speech_file(episode)
    raw = worker.transcribe(tc, settings.data_dir, audio, options, episode, on_worker_died=worker_died,
                            speech_file=speech_file if speech_file.is_file() else None)
    vad = raw.get("vad_calls") or {}
    if vad.get("ran"):
        log.info("The VAD ran %d time(s) in the transcription (%d answered from the extraction's)",
                 vad["ran"], vad.get("saved", 0))
    return raw, build_transcript(raw, episode, tc, options)


def sample_asr(*, settings: Settings, episode: str, audio: str, quality: str, language: str | None = None) -> None:
    """A sampled episode whose transcript is its subtitle (subtitles.sample_share),
    transcribed as any other and compared with the subtitle: the ASR's character errors go
    to quality/{id}.json and the ledger (status shows the running CER); the episode's
    transcript stays the subtitle, made by its transcribe job after this one. A sampled ASR
    that fails is the quality check's failure, not the episode's: the quality file and the
    ledger's last_error say so, nothing is counted, and the transcript is still made."""
    from scribeflow.files import atomic_write_text
    from scribeflow.stages import subtitles
    from scribeflow.stages.transcription.quality import character_errors

    layout = Layout.from_config(settings)
    # No `step`: a failure here is recorded, never counted toward giving the episode up.
    with _ledger_and_gate(settings) as (ledger, gate), _recorded(ledger, episode):
        verdict = subtitles.read_verdict(layout.subtitle_verdict(episode))
        if not subtitles.usable(verdict):
            raise subtitles.SubtitleError(f"{layout.subtitle_verdict(episode)}: no usable subtitle to compare with; "
                                          f"run again: the episode is then transcribed")
        ledger.set_stage(episode, "transcribing")
        try:
            with Slots.transcription(settings).hold(episode), gate.consumer(episode, "transcribe"):
                _, result = _asr(settings, ledger, episode, audio, language, sampled=True)
        except Exception as exc:  # an interruption (KeyboardInterrupt) is not caught: the next run samples it
            return _sample_failed(ledger, episode, quality, verdict, exc)
        finally:
            layout.speech_file(episode).unlink(missing_ok=True)
        said = subtitles.speech(verdict["segments"])  # the songs and sounds a caption marks are no reference
        errors, chars = character_errors(" ".join(s["text"] for s in said), result["text"])
        record = {"id": episode, "model": result["model"], "options": result["options"], "errors": errors,
                  "reference_chars": chars, "cer": round(errors / chars, 4) if chars else None,
                  "subtitle": verdict.get("file"), "speech": result.get("speech"), "asr_text": result["text"]}
        atomic_write_text(quality, json.dumps(record, ensure_ascii=False, indent=1))
        ledger.update(episode, sample_errors=errors, sample_chars=chars)
        log.info("Sampled %s: the ASR (%s) against its subtitle: CER %s (%d errors in %d characters)", episode,
                 result["model"], f"{100 * errors / chars:.1f} %" if chars else "-", errors, chars)


def _sample_failed(ledger: Ledger, episode: str, quality: str, verdict: dict, exc: Exception) -> None:
    """The quality check of a sampled episode failed: said in its quality file (so that
    the run goes on to the subtitle's transcript), its log and the ledger's last_error."""
    from scribeflow.files import atomic_write_text

    reason = f"quality check (sampled ASR) failed: {type(exc).__name__}: {exc}"[:2000]
    log.error("%s: %s; not counted against the episode, whose transcript comes from its subtitle", episode, reason)
    atomic_write_text(quality, json.dumps({"id": episode, "failed": reason, "cer": None, "errors": None,
                                           "reference_chars": None, "subtitle": verdict.get("file")},
                                          ensure_ascii=False, indent=1))
    ledger.set_stage(episode, "extracted", last_error=reason)


# -- subtitles first -----------------------------------------------------------------------
def _subtitle_marker(ledger: Ledger, episode: str, video: str, finder) -> None:
    Path(video).parent.mkdir(parents=True, exist_ok=True)
    Path(video).touch()
    ledger.set_stage(episode, "downloaded", video_size_bytes=0, declared_bytes=0, video_deleted=0,
                     transcript_source="subtitles")


def _is_marker(settings: Settings, episode: str, path: str | None) -> bool:
    """An empty video or audio that a download left for a subtitle it found."""
    from scribeflow.stages import subtitles

    try:
        empty = path is not None and Path(path).stat().st_size == 0
    except OSError:
        return False
    return empty and subtitles.usable(subtitles.read_verdict(Layout.from_config(settings).subtitle_verdict(episode)))


def _transcript_from_subtitles(settings: Settings, episode: str, outputs: dict[str, str], subtitle: str | None,
                               language: str | None, duration: float | None) -> None:
    """The transcript of the subtitle the plan found (`subtitle`: the file, or the verdict
    a download job wrote), from its verdict, or judged again when it has none."""
    from scribeflow.stages import subtitles
    from scribeflow.stages.transcription.transcript import write_transcript

    path = Layout.from_config(settings).subtitle_verdict(episode)
    with Ledger.for_config(settings) as ledger, _recorded(ledger, episode, settings, "transcribe"):
        # The ledger before the first output: the disk accounting stats an active row's files.
        ledger.set_stage(episode, "transcribing")
        verdict = subtitles.read_verdict(path)
        if subtitle and Path(subtitle) != path and not (subtitles.usable(verdict) and verdict.get("file") == subtitle):
            language = language or settings.transcribe.language or settings.subtitles.languages[0]
            verdict = subtitles.judge([("file", Path(subtitle))], settings, language, duration)
            subtitles.write_verdict(path, verdict)
        if not subtitles.usable(verdict):
            why = "; ".join(verdict.get("refused") or []) if verdict else "no verdict"
            raise subtitles.SubtitleError(f"{subtitle or path}: no usable subtitle any more ({why}); run again: the "
                                          f"episode is then transcribed")
        result = subtitles.transcript(verdict, episode, duration)
        size = write_transcript(result, outputs)
        # No transcribed_at: the ASR's rates and ETA count the ASR's transcripts only.
        ledger.set_stage(episode, "transcribed", transcribed_at=None, transcript_size_bytes=size,
                         transcript_source="subtitles")
        log.info("Transcript of %s from its subtitle %s (%s): %d lines, no audio, no model", episode,
                 verdict.get("file"), verdict.get("origin"), len(result["segments"]))


def analyse_episode(*, settings: Settings, episode: str, transcript: str, tokens: str | None, stats: str,
                    lemmas: str, language: str | None = None, series: str | None = None,
                    season: str | None = None) -> None:
    """Tokenize a transcript and analyse the tokens, in one job: a job less per episode
    is ~1.5 ms less of Snakemake's planning per episode (docs/benchmarks.md). The episode
    is then added to the corpus index (its segments and words: searches, sums)."""
    from scribeflow.stages.analysis import analyse_tokens
    from scribeflow.stages.concordance import add_episode
    from scribeflow.stages.tokens import checked_transcript, tokenize_file

    with _ledger_and_gate(settings) as (ledger, _), _recorded(ledger, episode):
        read = checked_transcript(transcript)
        table, meta = tokenize_file(transcript, tokens, language, transcript=read)
        ledger.set_stage(episode, "tokenized")
        cleanup = settings.disk_management.cleanup
        if cleanup.delete_transcript_after_tokenization:
            log.info("delete_transcript_after_tokenization: Snakemake deletes %s now", transcript)
        analyse_tokens(table, meta, stats, lemmas)
        add_episode(Layout.from_config(settings).corpus_index, episode, table, meta, read["segments"],
                    _series_name(series), _season(season))
        ledger.set_stage(episode, "analyzed")
        if cleanup.delete_tokens_after_analysis:
            log.info("delete_tokens_after_analysis: the tokens of %s are not kept", episode)


def _analysed(settings: Settings, stats_pattern: str, lemmas_pattern: str):
    """The catalogue, and (episode, stats, lemma counts, series, season) of its analysed episodes."""
    from scribeflow.config.catalogue import load

    catalogue = load(settings.catalogue)
    series_of, season_of = _column(catalogue, "series"), _column(catalogue, "season")
    entries = []
    for episode in catalogue.index:
        stats, lemmas = (p.replace("{episode}", episode) for p in (stats_pattern, lemmas_pattern))
        if Path(stats).is_file() and Path(lemmas).is_file():
            entries.append((episode, stats, lemmas, _series_name(series_of.get(episode)),
                            _season(season_of.get(episode))))
    return catalogue, entries


def corpus_index(*, settings: Settings, stats_pattern: str, lemmas_pattern: str) -> None:
    """The corpus index rebuilt from the tokens: planned when it was lost."""
    from scribeflow.stages.concordance import complete

    layout = Layout.from_config(settings)
    _, entries = _analysed(settings, stats_pattern, lemmas_pattern)
    added = complete(layout.corpus_index, [(e, series, season) for e, _, _, series, season in entries],
                     layout.tokens_file, layout.transcript)
    log.info("Rebuilt the corpus index %s: %d of %d analysed episodes", layout.corpus_index, added, len(entries))


def corpus(*, settings: Settings, stats_pattern: str, lemmas_pattern: str, outputs: dict) -> None:
    """The corpus tables over every analysed episode of the whole catalogue: with
    `chunk`, the run of each slice adds its episodes to what earlier slices analysed.
    The sums are kept between rebuilds (analysis.Aggregate): a rebuild reads the episodes
    analysed since the last one. The corpus index is completed first (an episode it
    lacks is added from its tokens); then the per-show statistics come from it."""
    from scribeflow.stages import shows, songs
    from scribeflow.stages.analysis import build_corpus, write_tsv
    from scribeflow.stages.concordance import Index, complete

    layout = Layout.from_config(settings)
    catalogue, entries = _analysed(settings, stats_pattern, lemmas_pattern)
    log.info("Building the corpus from %d of %d catalogue episodes", len(entries), len(catalogue))
    complete(layout.corpus_index, [(e, series, season) for e, _, _, series, season in entries],
             layout.tokens_file, layout.transcript)
    # The songs and repeats each series' episodes share, left out of the tables and the index.
    found = songs.find(layout.marks, [(e, lemmas, series) for e, _, lemmas, series, _ in entries], layout)
    build_corpus([entry[:4] for entry in entries], outputs, lemma=settings.analysis.lemma, keep=layout.corpus,
                 found=found)
    with Index(layout.corpus_index) as index:
        songs.mark_index(index, found, layout, {e: series for e, _, _, series, _ in entries})
        table = shows.show_table(index, by_season="season" in catalogue.columns)
    found.save()  # last: what it says was found is in the sums and the index
    write_tsv(table, outputs["shows"])
    shows.plot(table, outputs["shows_plot"])
    log.info("Shows: %d ranked by difficulty (%s)", len(table), outputs["shows"])


def _column(catalogue, name: str) -> dict:
    return dict(zip(catalogue.index, catalogue[name].tolist())) if name in catalogue.columns else {}


def _season(value) -> str | None:
    """A season as it reads: 2, not 2.0 (numbers come from the catalogue as floats)."""
    if value is None or value != value:
        return None
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _series_name(value) -> str | None:
    if value is None or value != value:  # NaN: an empty cell
        return None
    return " ".join(str(value).split()) or None  # a tab or newline would break the TSVs
