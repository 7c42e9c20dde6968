"""Where everything lives on disk, given the config: the one place that names a folder
or a file of the workflow.

{storage_dir} (bulk disk) holds the videos and yt-dlp's partial and staging files;
{data_dir} (local SSD) everything else: audio, transcripts, tokens, analyses, the
ledger (jobs.db), the gate's and the hosts' state, failed markers, logs, benchmarks and
reports. Per-episode files are `{folder}/{id}{suffix}`: each has a pattern with an
`{episode}` placeholder (what the rules declare) and a method that gives the path the
pattern names for one episode.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# yt-dlp's names beside a download: `{out}.part`/`.ytdl` (its partial and resume
# files), and for the output `{id}.media` the staging files `{id}@dl.*`: the download
# itself under its real extension (ffmpeg's post-processors pick a muxer from it),
# fragment partials, per-format files and post-processing temporaries. An `@` cannot
# occur in an id, so the episode of any staging file is known.
PARTIAL_SUFFIXES = (".part", ".ytdl")
STAGING_MARK = "@dl."
VIDEO_SUFFIX = ".media"
AUDIO_SUFFIX = ".wav"
# Beside the WAV until the transcript exists: the VAD's output, saved by the extraction
# (stages/transcription/speech.py).
SPEECH_SUFFIX = ".speech.npz"
SUBTITLE_EXTENSIONS = (".ass", ".ssa", ".srt", ".vtt")  # the subtitle files read (pysubs2)
# analysis/fingerprints/: Chromaprint's raw fingerprint of an episode's audio, taken at extraction
# and kept for the songs and repeats its series shares (stages/songs.py).
FINGERPRINT_SUFFIX = ".chromaprint"
QUALITY_SUFFIX = ".json"  # quality/: the ASR's CER on a sampled subtitled episode
SUBTITLE_SUFFIX = ".subtitle.json"  # subtitles/: what was found of an episode's subtitles, and its dialogue
TOKENS_SUFFIX = ".parquet"
STATS_SUFFIX = ".json"
LEMMAS_SUFFIX = ".parquet"
MARKER_SUFFIX = ".json"
# The transcript's formats: the JSON (the workflow's target) and the optional renderings.
TRANSCRIPT_FORMATS = ("json", "srt", "vtt", "txt")

# The rules that run once per episode; each writes logs/RULE/{id}.log and
# benchmarks/RULE/{id}.tsv.
EPISODE_RULES = ("download", "extract_audio", "transcribe", "sample_asr", "analyse_episode")

# {data_dir}-relative names.
LEDGER_FILE = "jobs.db"
CHECK_STATE_FILE = "check.json"  # when `scribeflow check` last found every transcript valid
GATE_DIR = "gate"
HOSTS_DIR = "hosts"
FAILED_DIR = "failed"
LOGS_DIR = "logs"
BENCHMARKS_DIR = "benchmarks"
ROLLUP_DIR = "rollup"  # under logs/
# In the gate's and the hosts' folders: the shared state, the lock that guards it, and
# the disk accounting's record of the per-episode folders.
STATE_FILE = "state.json"
GATE_LOCK_FILE = "gate.lock"
HOSTS_LOCK_FILE = "hosts.lock"
ACCOUNTING_FILE = "accounting.json"
CORPUS_FILES = {
    "frequency": "lemma_frequency.tsv",
    "series_frequency": "series_lemma_frequency.tsv",
    "coverage": "coverage.tsv",
    "episodes": "episodes.tsv",
    "plot": "coverage.png",
    "shows": "shows.tsv",
    "shows_plot": "shows.png",
}
# The rules that run once per run: their log and benchmark record, under logs/ and benchmarks/.
RUN_RULES = {"corpus": "corpus/corpus", "corpus_index": "corpus/index", "plots": "plots"}
REPORT_FILES = {"disk": "disk_usage.png", "throughput": "throughput.png"}
# Beside Snakemake's own state in the run's --directory: the validated catalogue's cache
# and run-chunks' logs (chunks/).
WORKFLOW_CACHE = os.path.join(".snakemake", "scribeflow")


def transcript_suffix(fmt: str, gzip: bool) -> str:
    """A transcript file's suffix: .json, .srt, ... or .json.gz, .srt.gz, ..."""
    return f".{fmt}.gz" if gzip else f".{fmt}"


# Every suffix a transcript file may have, whatever the gzip setting it was written with.
TRANSCRIPT_SUFFIXES = tuple(transcript_suffix(fmt, gz) for fmt in TRANSCRIPT_FORMATS for gz in (True, False))
JSON_SUFFIXES = (transcript_suffix("json", False), transcript_suffix("json", True))


def _get(section, key: str, default):
    """A key of the run's settings (config.Settings, by attribute), or of a plain mapping
    (a partial config: a unit test's, the demo's), where a missing key is the default."""
    if isinstance(section, Mapping):
        return section[key] if key in section else default
    return getattr(section, key)


def _join(folder: Path, name: str) -> str:
    return str(folder / name)


@dataclass(frozen=True)
class Layout:
    """Every path of a run. `storage_dir` defaults to `data_dir`; `gzip` and `formats`
    (transcribe.*) decide the transcripts' names, `keep_tokens` (not
    delete_tokens_after_analysis) whether tokens are an output of the analysis."""

    data_dir: Path
    storage_dir: Path | None = None
    gzip: bool = False
    formats: tuple[str, ...] = ()
    keep_tokens: bool = True

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        storage = self.data_dir if self.storage_dir is None else self.storage_dir
        object.__setattr__(self, "storage_dir", Path(storage))
        object.__setattr__(self, "formats", tuple(self.formats))

    @classmethod
    def from_config(cls, config) -> Layout:
        # Keys a partial config (a unit test's, a command's) lacks take the schema's defaults.
        transcribe = _get(config, "transcribe", {})
        cleanup = _get(_get(config, "disk_management", {}), "cleanup", {})
        return cls(
            data_dir=_get(config, "data_dir", None),
            storage_dir=_get(config, "storage_dir", None),
            gzip=bool(_get(transcribe, "gzip", False)),
            formats=tuple(_get(transcribe, "formats", ())),
            keep_tokens=not _get(cleanup, "delete_tokens_after_analysis", False),
        )

    @classmethod
    def of(cls, data_dir: str | os.PathLike | Layout) -> Layout:
        """The layout of a data_dir (what commands given only the data_dir need)."""
        return data_dir if isinstance(data_dir, Layout) else cls(data_dir)

    def under(self, directory: str | os.PathLike) -> Layout:
        """This layout as seen from `directory` (a run's --directory): relative roots
        are taken from there."""
        return dataclasses.replace(self, data_dir=Path(directory) / self.data_dir,
                                   storage_dir=Path(directory) / self.storage_dir)

    # -- storage_dir ---------------------------------------------------------------------
    @property
    def videos(self) -> Path:
        return self.storage_dir / "videos"

    def video_pattern(self) -> str:
        return _join(self.videos, "{episode}" + VIDEO_SUFFIX)

    def video(self, episode: str) -> Path:
        return self.videos / f"{episode}{VIDEO_SUFFIX}"

    # -- data_dir: the episode's stages --------------------------------------------------
    @property
    def audio(self) -> Path:
        return self.data_dir / "audio"

    def audio_pattern(self) -> str:
        return _join(self.audio, "{episode}" + AUDIO_SUFFIX)

    def audio_file(self, episode: str) -> Path:
        return self.audio / f"{episode}{AUDIO_SUFFIX}"

    def speech_file(self, episode: str) -> Path:
        return self.audio / f"{episode}{SPEECH_SUFFIX}"

    @property
    def transcripts(self) -> Path:
        return self.data_dir / "transcripts"

    def transcript_pattern(self, fmt: str = "json") -> str:
        return _join(self.transcripts, "{episode}" + transcript_suffix(fmt, self.gzip))

    def transcript(self, episode: str, fmt: str = "json") -> Path:
        """Where the workflow puts an episode's transcript (the JSON is the target)."""
        return self.transcripts / f"{episode}{transcript_suffix(fmt, self.gzip)}"

    def transcript_patterns(self) -> dict[str, str]:
        """{format: pattern} of the transcript files a transcription writes, JSON first."""
        return {fmt: self.transcript_pattern(fmt) for fmt in ("json", *self.formats)}

    @property
    def tokens(self) -> Path:
        return self.data_dir / "tokens"

    def tokens_pattern(self) -> str:
        return _join(self.tokens, "{episode}" + TOKENS_SUFFIX)

    def tokens_file(self, episode: str) -> Path:
        return self.tokens / f"{episode}{TOKENS_SUFFIX}"

    @property
    def analysis(self) -> Path:
        return self.data_dir / "analysis"

    @property
    def episode_stats(self) -> Path:
        return self.analysis / "episodes"

    def stats_pattern(self) -> str:
        return _join(self.episode_stats, "{episode}" + STATS_SUFFIX)

    def stats_file(self, episode: str) -> Path:
        return self.episode_stats / f"{episode}{STATS_SUFFIX}"

    @property
    def lemmas(self) -> Path:
        return self.analysis / "lemmas"

    def lemmas_pattern(self) -> str:
        return _join(self.lemmas, "{episode}" + LEMMAS_SUFFIX)

    def lemmas_file(self, episode: str) -> Path:
        return self.lemmas / f"{episode}{LEMMAS_SUFFIX}"

    def analysis_patterns(self) -> dict[str, str]:
        """The per-episode analysis outputs: stats, lemmas, and tokens unless deleted."""
        outputs = {"stats": self.stats_pattern(), "lemmas": self.lemmas_pattern()}
        if self.keep_tokens:
            outputs["tokens"] = self.tokens_pattern()
        return outputs

    @property
    def corpus(self) -> Path:
        return self.analysis / "corpus"

    @property
    def corpus_index(self) -> Path:
        """The corpus index (stages/concordance.py): every episode's segments and words."""
        return self.corpus / "index.db"

    def corpus_files(self) -> dict[str, str]:
        """The corpus tables and plot: the workflow's final targets."""
        return {key: _join(self.corpus, name) for key, name in CORPUS_FILES.items()}

    @property
    def marks(self) -> Path:
        """The songs and repeats found per series (stages/songs.py): one file per series, state.json."""
        return self.corpus / "marks"

    @property
    def fingerprints(self) -> Path:
        """Chromaprint fingerprints of the episodes' audio (stages/songs.py): {id}.chromaprint."""
        return self.analysis / "fingerprints"

    def fingerprint_file(self, episode: str) -> Path:
        return self.fingerprints / f"{episode}{FINGERPRINT_SUFFIX}"

    @property
    def subtitles(self) -> Path:
        """What was found of each episode's subtitles (stages/subtitles/verdicts.py): {id}.subtitle.json."""
        return self.data_dir / "subtitles"

    def subtitle_verdict(self, episode: str) -> Path:
        return self.subtitles / f"{episode}{SUBTITLE_SUFFIX}"

    @property
    def quality(self) -> Path:
        """The ASR's error rate on the sampled subtitled episodes: quality/{id}.json."""
        return self.data_dir / "quality"

    def quality_pattern(self) -> str:
        return _join(self.quality, "{episode}" + QUALITY_SUFFIX)

    def quality_file(self, episode: str) -> Path:
        return self.quality / f"{episode}{QUALITY_SUFFIX}"

    @property
    def cache(self) -> Path:
        return self.data_dir / "cache"

    # -- data_dir: state ----------------------------------------------------------------
    @property
    def ledger(self) -> Path:
        return self.data_dir / LEDGER_FILE

    @property
    def check_state(self) -> Path:
        return self.data_dir / CHECK_STATE_FILE

    @property
    def gate(self) -> Path:
        """The download gate's state and lock, and the disk accounting's record."""
        return self.data_dir / GATE_DIR

    @property
    def gate_state(self) -> Path:
        return self.gate / STATE_FILE

    @property
    def gate_lock(self) -> Path:
        return self.gate / GATE_LOCK_FILE

    @property
    def accounting(self) -> Path:
        return self.gate / ACCOUNTING_FILE

    @property
    def transcription_slots(self) -> Path:
        return self.gate / "transcription"

    @property
    def hosts(self) -> Path:
        """The per-host download limiter's state and lock."""
        return self.data_dir / HOSTS_DIR

    @property
    def hosts_state(self) -> Path:
        return self.hosts / STATE_FILE

    @property
    def failed(self) -> Path:
        """Markers of the episodes given up: failed/{id}.json."""
        return self.data_dir / FAILED_DIR

    def failed_marker(self, episode: str) -> Path:
        return self.failed / f"{episode}{MARKER_SUFFIX}"

    # -- data_dir: logs, benchmarks, reports ------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.data_dir / LOGS_DIR

    @property
    def benchmarks(self) -> Path:
        return self.data_dir / BENCHMARKS_DIR

    def log_pattern(self, rule: str) -> str:
        return _join(self.logs / rule, "{episode}.log")

    def log_file(self, rule: str, episode: str) -> Path:
        return self.logs / rule / f"{episode}.log"

    def benchmark_pattern(self, rule: str) -> str:
        return _join(self.benchmarks / rule, "{episode}.tsv")

    def benchmark_file(self, rule: str, episode: str) -> Path:
        return self.benchmarks / rule / f"{episode}.tsv"

    def run_log(self, rule: str) -> str:
        """The log of a rule that runs once per run (RUN_RULES)."""
        return str(self.logs / f"{RUN_RULES[rule]}.log")

    def run_benchmark(self, rule: str) -> str:
        return str(self.benchmarks / f"{RUN_RULES[rule]}.tsv")

    @property
    def rollup(self) -> Path:
        """Finished episodes' logs and benchmark records, rolled up."""
        return self.logs / ROLLUP_DIR

    @property
    def worker_logs(self) -> Path:
        return self.logs / "transcribe_worker"

    @property
    def reports(self) -> Path:
        return self.data_dir / "reports"

    def report_files(self, folder: str | os.PathLike | None = None) -> dict[str, Path]:
        """The run's plots, in `folder` (default {data_dir}/reports)."""
        folder = Path(folder) if folder is not None else self.reports
        return {key: folder / name for key, name in REPORT_FILES.items()}

    # -- what the disk accounting counts per episode ----------------------------------------
    def per_episode_folders(self) -> dict[Path, tuple[str, tuple[str, ...]]]:
        """folder -> (disk category, the suffixes of its {id}SUFFIX files)."""
        return {
            self.transcripts: ("transcripts", TRANSCRIPT_SUFFIXES),
            self.tokens: ("tokens", (TOKENS_SUFFIX,)),
            self.episode_stats: ("analysis", (STATS_SUFFIX,)),
            self.lemmas: ("analysis", (LEMMAS_SUFFIX,)),
            self.failed: ("other", (MARKER_SUFFIX,)),
            self.subtitles: ("transcripts", (SUBTITLE_SUFFIX,)),
            self.quality: ("analysis", (QUALITY_SUFFIX,)),
            self.fingerprints: ("analysis", (FINGERPRINT_SUFFIX,)),
            **{self.logs / rule: ("logs", (".log",)) for rule in EPISODE_RULES},
            **{self.benchmarks / rule: ("logs", (".tsv",)) for rule in EPISODE_RULES},
        }
