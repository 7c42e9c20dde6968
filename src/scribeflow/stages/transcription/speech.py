"""Speech found on the CPU side, before the transcription: Silero VAD's output for an
episode's audio, computed where the audio is extracted (a CPU job, in parallel with other
episodes), saved beside the WAV, and handed to the transcription, so that no VAD runs in
the GPU worker's path.

faster-whisper (1.2) runs Silero VAD inside transcribe() over the whole audio, and the
language vote runs it on each of its windows: get_speech_timestamps() asks
faster_whisper.vad.get_vad_model() for the model and calls it once on the padded audio;
all it does besides is cheap arithmetic on the model's output, which does not depend on
the VAD options. So the model's output for the whole audio and for each vote window is
computed here, keyed by the padded audio's content (blake2b), and while `precomputed()`
is in force in a thread, get_vad_model() there returns a lookup that answers those same
inputs from the saved output: the speech found, and so the transcript, is the same as
without it (tests/stages/transcription/test_speech.py). Any other input, or no saved
output, goes to the real model.

This module is the one place that touches faster-whisper's VAD internals (faster-whisper
>=1.2.1,<2, pyproject.toml)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

from scribeflow.files import atomic_path
from scribeflow.stages.transcription.language import vote_windows

log = logging.getLogger(__name__)

FRAME = 512  # samples per Silero frame: get_speech_timestamps pads the audio to a multiple of it

_local = threading.local()
_installed = threading.Lock()
_real_get_vad_model = None


def _padded(audio: np.ndarray) -> np.ndarray:
    """The audio as get_speech_timestamps pads it before calling the model (always some padding)."""
    return np.pad(audio, (0, FRAME - audio.shape[0] % FRAME))


def _key(padded: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(padded).tobytes(), digest_size=16).hexdigest()


def _real_model():
    install()
    return _real_get_vad_model()


def compute(audio: np.ndarray, windows: int) -> dict[str, np.ndarray]:
    """The VAD model's output for every audio the transcription will give it: the whole
    episode, and each window of the language vote (`windows` of them; 0: no vote)."""
    model = _real_model()
    pieces = [audio] + ([audio[s:e] for s, e in vote_windows(len(audio), windows)] if windows else [])
    out = {}
    for piece in pieces:
        padded = _padded(piece)
        key = _key(padded)  # before the call: the model writes into its input (the last frame's context)
        if key not in out:
            out[key] = model(padded)
    return out


def save(probabilities: dict[str, np.ndarray], path: str | Path) -> int:
    """Written atomically (an .npz); returns its size in bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **probabilities)
    return Path(path).stat().st_size


def load(path: str | Path | None) -> dict[str, np.ndarray] | None:
    """The saved output, or None when there is none or it cannot be read (the real model
    then runs: a lost or damaged file costs time, never a transcript)."""
    if not path or not Path(path).is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the saved speech (%s); the VAD runs again", path, exc)
        return None


class _Lookup:
    """What get_vad_model() returns in a thread with saved output: the saved output for
    the audio it was computed from, the real model for anything else."""

    def __init__(self, probabilities: dict[str, np.ndarray]):
        self.probabilities = probabilities

    def __call__(self, audio: np.ndarray, *args, **kwargs):
        key = _key(audio)  # before the model: it writes into its input
        found = self.probabilities.get(key)
        if found is not None:
            _local.hits = getattr(_local, "hits", 0) + 1
            return found.copy()
        _local.misses = getattr(_local, "misses", 0) + 1
        found = _real_get_vad_model()(audio, *args, **kwargs)
        self.probabilities[key] = found.copy()  # asked again (the coverage check): answered
        return found


def _get_vad_model():
    if getattr(_local, "active", False):  # inside precomputed(): answered, or run, kept and counted
        return _Lookup(_local.probabilities)
    return _real_get_vad_model()


def install() -> None:
    """Route faster_whisper.vad.get_vad_model through the per-thread lookup (once)."""
    global _real_get_vad_model
    with _installed:
        if _real_get_vad_model is not None:
            return
        import faster_whisper.vad as vad

        _real_get_vad_model = vad.get_vad_model
        vad.get_vad_model = _get_vad_model


@contextlib.contextmanager
def precomputed(probabilities: dict[str, np.ndarray] | None):
    """Within: this thread's VAD answers from `probabilities` where it can, and keeps what
    it runs for a second call on the same audio. Yields a dict that holds, afterwards, how
    many VAD calls were answered ("saved") and how many ran."""
    install()
    counts = {"saved": 0, "ran": 0}
    _local.active, _local.probabilities, _local.hits, _local.misses = True, dict(probabilities or {}), 0, 0
    try:
        yield counts
    finally:
        counts["saved"], counts["ran"] = _local.hits, _local.misses
        _local.active, _local.probabilities = False, None
