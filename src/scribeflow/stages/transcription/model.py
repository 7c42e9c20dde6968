"""Loading the Whisper model: its thread settings, its device and compute type."""

from __future__ import annotations

import logging
import os
import time

from scribeflow.config.models import ModelError, check_model_dir, instead
from scribeflow.stages.transcription import stand_in

log = logging.getLogger(__name__)

# Keys that decide the loaded model (a worker serves one combination).
LOAD_KEYS = ("model", "device", "compute_type", "cpu_threads", "num_workers")
# What Snakemake sets to a job's thread count (snakemake/shell.py).
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def thread_env(tc: dict, env) -> dict:
    """`env` with the model's thread settings. Snakemake sets OMP_NUM_THREADS, MKL_NUM_THREADS,
    OPENBLAS_NUM_THREADS, ... to the job's threads (1); they would slow the model (and numpy's
    feature extraction) down and even change the text. The model's threads are
    transcribe.cpu_threads (0: the libraries' defaults)."""
    env = dict(env)
    for var in THREAD_VARS:
        if tc.get("cpu_threads"):
            env[var] = str(tc["cpu_threads"])
        else:
            env.pop(var, None)
    return env


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    """`auto` made concrete: the GPU whenever CTranslate2 sees one, and there float16
    (faster-whisper's choice for GPUs; CTranslate2's own `auto` would pick the quantized
    int8_float16). A GPU that lacks float16 and every CPU keep CTranslate2's `auto`.
    So a run gets the GPU and float16 even where `--config` on the command line has
    replaced `--profile gpu`'s settings."""
    import ctranslate2

    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if compute_type == "auto" and device == "cuda" and "float16" in ctranslate2.get_supported_compute_types("cuda"):
        compute_type = "float16"
    return device, compute_type


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded on this machine (not in the cache with the hub out of
    reach, a folder that is not a model, out of memory at load): the environment's failure,
    never counted against an episode (failures.kind). The message names the model."""

    kind = "host"


def load_model(tc: dict):
    """The WhisperModel of transcribe.*; ModelUnavailable, naming the model, when it cannot be loaded."""
    try:
        return _load(tc)
    except ModelError as exc:
        raise ModelUnavailable(f"{exc}; {instead()}") from None
    except Exception as exc:
        raise ModelUnavailable(f"transcribe.model: {tc['model']} could not be loaded ({type(exc).__name__}: "
                               f"{exc}); {instead()}") from None


def _load(tc: dict):
    check_model_dir(tc["model"])
    # Before CTranslate2 and its MKL are loaded: they read these once.
    env = thread_env(tc, os.environ)
    for var in THREAD_VARS:
        if var in env:
            os.environ[var] = env[var]
        else:
            os.environ.pop(var, None)
    from faster_whisper import WhisperModel

    started = time.monotonic()
    device, compute_type = resolve_device(tc["device"], tc["compute_type"])
    model = WhisperModel(tc["model"], device=device, compute_type=compute_type,
                         cpu_threads=tc.get("cpu_threads", 0), num_workers=tc.get("num_workers", 1))
    log.info("Loaded model %s (%s, %s) in %.1f s", tc["model"], model.model.device, model.model.compute_type,
             time.monotonic() - started)
    if stand_in.active():
        model.feature_extractor = stand_in.feature_extractor()
        log.warning("%s is set: the model's work is stood in (benchmarks/cpu_budget.py); the transcripts are "
                    "placeholder text", stand_in.ENV)
    return model
