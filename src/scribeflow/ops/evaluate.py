"""`scribeflow evaluate`: how good the transcripts are on the user's own episodes, before
weeks of GPU are spent on one model.

Each episode is a media file (video or audio) with its subtitle beside it
(`{stem}.{ass,ssa,srt,vtt}`, or `{stem}.{lang}.{ext}`). Per model setting (a
faster-whisper model name or a CTranslate2 directory, e.g. a converted Japanese
fine-tune), every episode is transcribed with the run's transcribe settings and compared
with the subtitle's dialogue (stages/subtitles.py):

- CER (jiwer, by character), both texts normalised first: Unicode NFKC (full-width
  letters and digits to their usual forms, half-width kana to full-width), lower case,
  and without punctuation, symbols, spaces and control characters, so that what is
  compared is what was said, not how it was written;
- the real-time factor (decode wall seconds over audio seconds);
- the hallucination guard's findings; the language found and the share of the vote's
  windows that voted for it; the speech coverage.

Prints a table and the totals per setting; writes evaluate.tsv and evaluate.png."""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from pathlib import Path

from scribeflow.config.layout import SUBTITLE_EXTENSIONS
from scribeflow.stages.subtitles import SubtitleError, dialogue, load
from scribeflow.stages.transcription.quality import character_errors, normalise  # noqa: F401  (evaluate.normalise)

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = (".mp4", ".mkv", ".webm", ".m4a", ".mp3", ".aac", ".opus", ".ogg", ".flac", ".wav", ".ts", ".avi",
                    ".mov", ".media")
COLUMNS = ("setting", "episode", "audio_seconds", "reference_chars", "errors", "cer", "rtf", "repetitions",
           "phrases", "language", "vote_agreement", "coverage")


class EvaluateError(ValueError):
    """Input that cannot be evaluated; the message names the file and what to do."""


def pairs(paths: list[str | Path]) -> list[tuple[str, Path, Path]]:
    """(episode, media, subtitle) for every media file given, or found in a folder given,
    that has a subtitle beside it."""
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
        subs = sorted(f for f in m.parent.glob(f"{m.stem}.*") if f.suffix.lower() in SUBTITLE_EXTENSIONS)
        if subs:
            found.append((m.stem, m, subs[0]))
        else:
            log.warning("%s: no subtitle beside it (%s.ass/.srt/.vtt): not evaluated", m, m.stem)
    if not found:
        raise EvaluateError("no episode with a subtitle beside it: give media files (or folders of them) with "
                            f"{'/'.join(SUBTITLE_EXTENSIONS)} files of the same name")
    return found


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

    references = {}
    for episode, _media, subtitle in episodes:
        try:
            references[episode] = " ".join(s["text"] for s in dialogue(load(subtitle)))
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
                errors, chars = character_errors(references[episode], t["text"])
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
                    "text": t["text"],  # for the files beside the table, not a column
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
                    "hallucinations": sum(r["repetitions"] + r["phrases"] for r in mine)})
    return out


def render(rows: list[dict]) -> str:
    lines = [f"{'setting':30} {'episode':16} {'audio s':>8} {'chars':>6} {'CER':>7} {'RTF':>7} {'guard':>5} "
             f"{'lang':>4} {'vote':>5} {'cover':>6}"]
    for r in rows:
        lines.append(f"{short(r['setting'])[:40]:40} {r['episode'][:16]:16} {r['audio_seconds']:8.1f} "
                     f"{r['reference_chars']:6d} {_pct(r['cer']):>7} {_num(r['rtf']):>7} "
                     f"{r['repetitions'] + r['phrases']:5d} {r['language']:>4} {_pct(r['vote_agreement']):>5} "
                     f"{_pct(r['coverage']):>6}")
    lines.append("")
    for t in totals(rows):
        lines.append(f"{short(t['setting'])}: CER {_pct(t['cer'])} over {t['episodes']} episode(s), "
                     f"RTF {_num(t['rtf'])}, {t['hallucinations']} hallucination-guard finding(s)")
    return "\n".join(lines)


def short(setting: str) -> str:
    """A setting's name for tables and folders: the model's own name, and what it changes."""
    model, _, change = setting.partition(" ")
    return " ".join(filter(None, (Path(model).name, change.replace("/", "_"))))


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
