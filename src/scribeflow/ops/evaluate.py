"""`scribeflow evaluate`: how good the transcripts are on the user's own episodes, before
weeks of GPU are spent on one model.

Each episode is a media file (video or audio) with its subtitle beside it
(`{stem}.{lang}.{ext}` in the configured subtitle languages' order, e.g. `.ja.srt` before
a plain `{stem}.ass`; another language's file is not a reference), named as releases are
("[Group] Show - 01 [1080p].mkv": the name is matched as written, brackets and all). Per model setting (a
faster-whisper model name or a CTranslate2 directory, e.g. a converted Japanese
fine-tune), every episode is transcribed with the run's transcribe settings and compared
with the subtitle's dialogue (stages/subtitles.py; the segments lying in its song and sound
cues are left out of the comparison, as the reference leaves them out):

- CER (jiwer, by character), both texts normalised first: Unicode NFKC (full-width
  letters and digits to their usual forms, half-width kana to full-width), lower case,
  and without punctuation, symbols, spaces and control characters, so that what is
  compared is what was said, not how it was written;
- the real-time factor (decode wall seconds over audio seconds);
- the hallucination guard's findings; the language found and the share of the vote's
  windows that voted for it; the speech coverage;
- the timing against the subtitle's cues: how far a segment reaches before the first cue
  it overlaps or after the last (the longest such stray, and how many stray over 1 s), and
  the characters transcribed where the subtitle has no cue at all (dialogue, song or sound:
  music and silence, where Whisper invents text).

Prints a table and the totals per setting; writes evaluate.tsv and evaluate.png."""

from __future__ import annotations

import csv
import glob
import logging
import tempfile
import time
from pathlib import Path

from scribeflow.config.layout import SUBTITLE_EXTENSIONS
from scribeflow.stages.subtitles import SubtitleError, dialogue, load, segments
from scribeflow.stages.transcription.quality import character_errors, normalise

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = (".mp4", ".mkv", ".webm", ".m4a", ".mp3", ".aac", ".opus", ".ogg", ".flac", ".wav", ".ts", ".avi",
                    ".mov", ".media")
COLUMNS = ("setting", "episode", "audio_seconds", "reference_chars", "errors", "cer", "rtf", "repetitions",
           "phrases", "language", "vote_agreement", "coverage", "timing_max_s", "mistimed", "uncued_chars")
# A segment reaching further than this outside the cues it overlaps is mistimed (the issue's bar).
TIMING_TOLERANCE_S = 1.0
DEFAULT_LANGUAGES = ("ja", "ja-JP", "jpn")  # subtitles.languages' default (config schema)


class EvaluateError(ValueError):
    """Input that cannot be evaluated; the message names the file and what to do."""


def pairs(paths: list[str | Path], languages=DEFAULT_LANGUAGES) -> list[tuple[str, Path, Path]]:
    """(episode, media, subtitle) for every media file given, or found in a folder given,
    that has a subtitle beside it in one of `languages` (the configuration's
    subtitles.languages, and the language evaluated), or one without a language tag."""
    media: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            media += sorted(f for f in p.iterdir() if f.suffix.lower() in MEDIA_EXTENSIONS)
        elif p.is_file():
            media.append(p)
        else:
            raise EvaluateError(f"{p}: no such file or folder")
    found = []
    for m in media:
        subtitle, others = subtitle_beside(m, languages)
        if subtitle:
            found.append((m.stem, m, subtitle))
        elif others:
            log.warning("%s: its subtitles (%s) are in no language of %s: not evaluated (--language, or "
                        "subtitles.languages in the configuration)", m, ", ".join(o.name for o in others),
                        ", ".join(languages))
        else:
            log.warning("%s: no subtitle beside it (%s.ass/.srt/.vtt): not evaluated", m, m.stem)
    if not found:
        raise EvaluateError("no episode with a subtitle beside it: give media files (or folders of them) with "
                            f"{'/'.join(SUBTITLE_EXTENSIONS)} files of the same name "
                            f"(NAME.{languages[0] if languages else 'ja'}.srt)")
    return found


def languages(settings, language: str | None = None) -> list[str]:
    """The subtitle languages a reference may be in: the configuration's subtitles.languages
    and the language evaluated (--language, or transcribe.language)."""
    from scribeflow.stages.subtitles import languages_for

    return languages_for(settings, language or settings.transcribe.language)


def subtitle_beside(media: Path, languages=DEFAULT_LANGUAGES) -> tuple[Path | None, list[Path]]:
    """The reference subtitle of `media`: `{stem}.{lang}.{ext}` in `languages`' order, then a
    plain `{stem}.{ext}`; and the subtitles beside it in other languages (not references)."""
    wanted = [lang.lower() for lang in languages]
    ranked, others = [], []
    # The stem as written: "[Group] Show - 01 [1080p]" holds glob's brackets.
    for f in media.parent.glob(f"{glob.escape(media.stem)}.*"):
        if f.suffix.lower() not in SUBTITLE_EXTENSIONS or f == media:
            continue
        tag = f.name[len(media.stem) + 1:-len(f.suffix)].split(".")[0].lower()  # "" when plain, "ja", "en"
        if not tag:
            ranked.append((len(wanted), f.name, f))
        elif tag in wanted:
            ranked.append((wanted.index(tag), f.name, f))
        else:
            others.append(f)
    return (min(ranked)[2] if ranked else None), sorted(others)


def dialogue_of(segments: list[dict], cues: list[dict]) -> list[dict]:
    """The segments compared with the subtitle's dialogue: all but those lying mostly within
    its song and sound cues (the reference leaves those out, so must the transcript)."""
    other = [c for c in cues if c.get("kind") in ("song", "sound")]

    def inside(s: dict) -> float:
        return sum(max(0.0, min(s["end"], c["end"]) - max(s["start"], c["start"])) for c in other)

    return [s for s in segments if not other or inside(s) <= (s["end"] - s["start"]) / 2]


def timing(segments: list[dict], cues: list[dict], tolerance: float = TIMING_TOLERANCE_S) -> dict:
    """How a transcript's times agree with a subtitle's cues ({start, end}, dialogue, songs
    and sounds alike): per segment overlapping cues, how far it reaches before the first or
    after the last (a segment may hold half a cue: starting inside one is not wrong); the
    longest such stray, how many stray over `tolerance`, and the characters of segments that
    overlap no cue at all (said over music or silence, by the subtitle)."""
    strays, uncued = [], 0
    cues = sorted(cues, key=lambda c: c["start"])
    for s in segments:
        held = [c for c in cues if c["start"] < s["end"] and s["start"] < c["end"]]
        if not held:
            uncued += len(normalise(s["text"]))
            continue
        strays.append(max(0.0, held[0]["start"] - s["start"], s["end"] - max(c["end"] for c in held)))
    return {"timing_max_s": round(float(max(strays)), 3) if strays else None,
            "mistimed": sum(int(x > tolerance) for x in strays), "uncued_chars": uncued}


def variants(models: list[str], changes: list[str]) -> list[tuple[str, dict]]:
    """(label, transcribe settings changed) per model, as configured and with each of
    `changes` ("KEY=VALUE", the value read as YAML: temperature=[0,0.2,0.4], beam_size=1)."""
    import yaml

    out = []
    for model in models:
        out.append((model, {"model": model}))
        for change in changes:
            key, sep, value = change.partition("=")
            if not sep or not key.strip():
                raise EvaluateError(f"--vary {change!r}: write it KEY=VALUE (temperature=[0,0.2,0.4], beam_size=1)")
            out.append((f"{model} {key.strip()}={value.strip()}", {"model": model, key.strip(): yaml.safe_load(value)}))
    return out


def evaluate(episodes: list[tuple[str, Path, Path]], settings: list[str | tuple[str, dict]], tc: dict,
             language: str | None = None) -> list[dict]:
    """One row per setting and episode (COLUMNS). A setting: a model, or (label, the
    transcribe settings it changes)."""
    from scribeflow.stages.media import extract_audio
    from scribeflow.stages.transcription.decode import decode_options, run_model
    from scribeflow.stages.transcription.model import load_model
    from scribeflow.stages.transcription.transcript import build_transcript

    references, cues = {}, {}
    for episode, _media, subtitle in episodes:
        try:
            parsed = load(subtitle)
            references[episode] = " ".join(s["text"] for s in dialogue(parsed))
            cues[episode] = segments(parsed)
        except SubtitleError as exc:
            raise EvaluateError(str(exc)) from None
    rows = []
    with tempfile.TemporaryDirectory(prefix="scribeflow-evaluate-") as tmp:
        audio = {}
        for episode, media, _subtitle in episodes:
            audio[episode] = Path(tmp) / f"{episode}.wav"
            extract_audio(media, audio[episode])
        for setting in settings:
            setting, changes = (setting, {"model": setting}) if isinstance(setting, str) else setting
            model_tc = _checked({**tc, **changes}, setting)
            model = load_model(model_tc)
            options = decode_options(model_tc, language)
            for episode, _media, _subtitle in episodes:
                started = time.monotonic()
                raw = run_model(model, audio[episode], options, label=episode)
                seconds = time.monotonic() - started
                t = build_transcript(raw, episode, model_tc, options)
                heard = " ".join(s["text"] for s in dialogue_of(t["segments"], cues[episode]))
                errors, chars = character_errors(references[episode], heard)
                votes = [v for v in (t.get("language_detection") or {}).get("votes", []) if v.get("language")]
                rows.append({
                    "setting": setting, "episode": episode, "audio_seconds": round(t["duration"], 1),
                    "reference_chars": chars, "errors": errors,
                    "cer": round(errors / chars, 4) if chars else None,
                    "rtf": round(seconds / t["duration"], 4) if t["duration"] else None,
                    "repetitions": t["hallucinations"]["repetition"], "phrases": t["hallucinations"]["phrase"],
                    "language": t["language"],
                    "vote_agreement": round(sum(v["language"] == t["language"] for v in votes) / len(votes), 3)
                    if votes else None,
                    "coverage": (t.get("speech") or {}).get("coverage"),
                    **timing(t["segments"], cues[episode]),
                    "text": heard,  # for the files beside the table, not a column
                })
            del model
    return rows


def _checked(tc: dict, label: str) -> dict:
    """The transcribe settings of a variant, validated as the configuration's are."""
    from scribeflow.config.settings import ConfigError, validate

    try:
        return validate({"transcribe": tc}).transcribe.as_dict()
    except ConfigError as exc:
        raise EvaluateError(f"setting {label!r}: {exc}") from None


def totals(rows: list[dict]) -> list[dict]:
    """Per setting: CER over all its episodes (errors over reference characters), the mean RTF."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        chars = sum(r["reference_chars"] for r in mine)
        rtfs = [r["rtf"] for r in mine if r["rtf"] is not None]
        out.append({"setting": setting, "episodes": len(mine),
                    "cer": round(sum(r["errors"] for r in mine) / chars, 4) if chars else None,
                    "rtf": round(sum(rtfs) / len(rtfs), 4) if rtfs else None,
                    "hallucinations": sum(r["repetitions"] + r["phrases"] for r in mine),
                    "mistimed": sum(r.get("mistimed") or 0 for r in mine),
                    "timing_max_s": max((r["timing_max_s"] for r in mine if r.get("timing_max_s") is not None),
                                        default=None),
                    "uncued_chars": sum(r.get("uncued_chars") or 0 for r in mine)})
    return out


def render(rows: list[dict]) -> str:
    lines = [f"{'setting':40} {'episode':24} {'audio s':>8} {'chars':>6} {'CER':>7} {'RTF':>7} {'guard':>5} "
             f"{'lang':>4} {'vote':>5} {'cover':>6} {'stray s':>7} {'uncued':>6}"]
    for r in rows:
        lines.append(f"{short(r['setting'])[:40]:40} {_clipped(r['episode'], 24):24} {r['audio_seconds']:8.1f} "
                     f"{r['reference_chars']:6d} {_pct(r['cer']):>7} {_num(r['rtf']):>7} "
                     f"{r['repetitions'] + r['phrases']:5d} {r['language']:>4} {_pct(r['vote_agreement']):>5} "
                     f"{_pct(r['coverage']):>6} {_num(r.get('timing_max_s')):>7} {r.get('uncued_chars', 0):6d}")
    lines.append("")
    for t in totals(rows):
        lines.append(f"{short(t['setting'])}: CER {_pct(t['cer'])} over {t['episodes']} episode(s), "
                     f"RTF {_num(t['rtf'])}, {t['hallucinations']} hallucination-guard finding(s); "
                     f"{t['mistimed']} segment(s) more than {TIMING_TOLERANCE_S:g} s outside their cues "
                     f"(longest {_num(t['timing_max_s'])} s), {t['uncued_chars']} character(s) where the "
                     "subtitle has no cue")
    return "\n".join(lines)


def short(setting: str) -> str:
    """A setting's name for tables and folders: the model's own name, and what it changes."""
    model, _, change = setting.partition(" ")
    return " ".join(filter(None, (Path(model).name, change.replace("/", "_"))))


def _clipped(name: str, width: int) -> str:
    """A name cut to `width` in the middle: release names differ at their end ("... - 03 [1080p]")."""
    return name if len(name) <= width else f"{name[:width // 2 - 1]}…{name[-(width - width // 2):]}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def write(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """evaluate.tsv, evaluate.png (CER per episode, a bar per setting) and each transcript's
    text (transcripts/SETTING/EPISODE.txt) in `out`."""
    from scribeflow.figures import use_fonts

    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "evaluate.tsv"
    with tsv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for r in rows:  # what each setting heard, beside the table, to read against the subtitle
        text = out / "transcripts" / short(r["setting"]) / f"{r['episode']}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text(r["text"] + "\n", encoding="utf-8")
    import matplotlib.pyplot as plt

    use_fonts()
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    episodes = list(dict.fromkeys(r["episode"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(episodes) * len(settings) + 2), 4))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        cer = {r["episode"]: 100 * (r["cer"] or 0) for r in rows if r["setting"] == setting}
        ax.bar([j + i * width for j in range(len(episodes))], [cer.get(e, 0) for e in episodes], width,
               label=short(setting))
    ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(episodes))], episodes, rotation=30,
                  ha="right")
    ax.set_ylabel("CER (%)")
    ax.set_title("Character error rate against the subtitles")
    ax.legend(fontsize="small")
    fig.tight_layout()
    png = out / "evaluate.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return tsv, png
