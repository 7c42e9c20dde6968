"""Transcript formats (JSON, SRT, VTT, TXT, gzip) and the refusal of incomplete model directories."""

import gzip
import json
import re
import struct
from pathlib import Path

import pytest
from support import REPO

from scribeflow.config import settings as sf_config
from scribeflow.config.layout import Layout
from scribeflow.config.layout import transcript_suffix as suffix
from scribeflow.config.models import check_model_dir, model_mel_bins
from scribeflow.stages.transcription.transcript import (
    build_transcript,
    read_transcript,
    to_srt,
    to_txt,
    to_vtt,
    write_transcript,
)

TC = {"model": "tiny.en", "device": "cpu", "compute_type": "int8", "batch_size": 0,
      "hallucinations": {"action": "drop", "max_repeats": 4, "phrases": []}}


def transcript(n=3):
    raw = {"language": "ja", "language_probability": 0.98, "duration": 4000.0,
           "segments": [{"start": 3661.5 + 7 * i, "end": 3665.0004 + 7 * i, "text": f"台詞その{i}、行くぞ。"}
                        for i in range(n)]}
    raw["segments"].append({"start": 3999.0, "end": 4000.0, "text": "ご視聴ありがとうございました"})
    return build_transcript(raw, "ep1", TC, {"beam_size": 5, "language": None})


def test_json_is_canonical_and_counts_the_guard():
    t = transcript()
    assert set(t) >= {"id", "language", "duration", "model", "options", "text", "segments", "hallucinations"}
    assert t["text"] == "台詞その0、行くぞ。 台詞その1、行くぞ。 台詞その2、行くぞ。"
    assert t["hallucinations"]["phrase"] == 1 and len(t["segments"]) == 3
    assert t["options"]["beam_size"] == 5 and t["options"]["compute_type"] == "int8"


def test_srt_and_vtt_timing_format():
    t = transcript()
    srt = to_srt(t)
    assert srt.startswith("1\n01:01:01,500 --> 01:01:05,000\n台詞その0、行くぞ。\n\n2\n01:01:08,500 --> ")
    assert len(re.findall(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$", srt, re.M)) == 3
    vtt = to_vtt(t)
    assert vtt.startswith("WEBVTT\n\n01:01:01.500 --> 01:01:05.000\n台詞その0、行くぞ。\n\n")
    assert "," not in re.sub(r"、", "", "".join(re.findall(r"^.* --> .*$", vtt, re.M)))
    assert to_txt(t).splitlines() == [s["text"] for s in t["segments"]]
    # Rounding carries into the next unit; empty segments make no cue.
    t["segments"] = [{"start": 59.9996, "end": 61.0, "text": "x"}, {"start": 62.0, "end": 63.0, "text": ""}]
    assert to_srt(t) == "1\n00:01:00,000 --> 00:01:01,000\nx\n\n"


def test_gzip_round_trip_is_deterministic_and_about_half_the_space(tmp_path):
    t = transcript(n=400)
    plain = {f: tmp_path / "plain" / f"ep1{suffix(f, False)}" for f in ("json", "srt", "vtt", "txt")}
    packed = {f: tmp_path / "gz" / f"ep1{suffix(f, True)}" for f in ("json", "srt", "vtt", "txt")}
    plain_size, packed_size = write_transcript(t, plain), write_transcript(t, packed)
    assert packed["json"].name == "ep1.json.gz" and packed["srt"].name == "ep1.srt.gz"
    assert read_transcript(packed["json"]) == read_transcript(plain["json"]) == json.loads(json.dumps(t))
    for f in ("srt", "vtt", "txt"):
        assert gzip.decompress(packed[f].read_bytes()) == plain[f].read_bytes()
    assert packed_size < 0.5 * plain_size
    first = packed["json"].read_bytes()
    write_transcript(t, packed)
    assert packed["json"].read_bytes() == first  # same transcript, same bytes (mtime 0)
    assert sorted(p.name for p in (tmp_path / "gz").iterdir()) == sorted(p.name for p in packed.values())


def test_transcript_path_follows_the_gzip_setting():
    config = {"data_dir": "d", "transcribe": {"gzip": True}}
    assert Layout.from_config(config).transcript("ep1") == Path("d/transcripts/ep1.json.gz")
    config["transcribe"]["gzip"] = False
    assert Layout.from_config(config).transcript("ep1", "srt") == Path("d/transcripts/ep1.srt")


def _model_copy(tmp_path, model_path, skip=()):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in Path(model_path).iterdir():
        if f.name not in skip:
            (folder / f.name).symlink_to(f)
    return folder


def test_the_bundled_80_mel_model_is_accepted_without_preprocessor_config(model_path):
    assert not (Path(model_path) / "preprocessor_config.json").exists()
    assert model_mel_bins(Path(model_path) / "model.bin") == 80
    check_model_dir(model_path)


def test_a_model_dir_without_tokenizer_is_refused_naming_the_file(tmp_path, model_path):
    folder = _model_copy(tmp_path, model_path, skip={"tokenizer.json"})
    with pytest.raises(sf_config.ConfigError, match=r"transcribe.model: .*model lacks tokenizer.json"):
        sf_config.load(overrides={"transcribe.model": str(folder)})


def test_a_128_mel_model_without_preprocessor_config_is_refused(tmp_path):
    # A model.bin index as CTranslate2 writes it, for a large-v3 shaped encoder (128 mel bins).
    folder = tmp_path / "large-v3"
    folder.mkdir()
    name = b"encoder/conv1/weight\0"
    header = struct.pack("<I", 6) + struct.pack("<H", 12) + b"WhisperSpec\0" + struct.pack("<II", 3, 1)
    header += struct.pack("<H", len(name)) + name + struct.pack("<B3I", 3, 1280, 128, 3) + struct.pack("<BI", 4, 16)
    (folder / "model.bin").write_bytes(header + bytes(16))
    for f in ("config.json", "tokenizer.json"):
        (folder / f).write_text("{}")
    with pytest.raises(ValueError, match="lacks preprocessor_config.json and the model takes 128 mel bins"):
        check_model_dir(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    check_model_dir(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_size": 80}))
    with pytest.raises(ValueError, match="says feature_size 80 but the model takes 128"):
        check_model_dir(str(folder))


def test_model_names_and_hub_ids_are_not_checked_as_directories():
    for name in ("large-v3", "tiny.en", "Systran/faster-whisper-large-v3"):
        check_model_dir(name)
    with pytest.raises(ValueError, match="is not a directory"):
        check_model_dir("./no/such/model")


def test_silence_threshold_without_word_timestamps_is_refused():
    with pytest.raises(sf_config.ConfigError, match="transcribe.hallucination_silence_threshold needs"):
        sf_config.load(overrides={"transcribe.hallucination_silence_threshold": 2.0})
    sf_config.load(overrides={"transcribe.hallucination_silence_threshold": 2.0, "transcribe.word_timestamps": True})


def test_auto_means_the_gpu_in_float16_where_there_is_one(monkeypatch):
    # No GPU exists here: CTranslate2's two answers about it are the only thing mocked.
    import ctranslate2

    from scribeflow.stages.transcription.model import resolve_device

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda d: {"float16", "int8_float16", "float32"})
    assert resolve_device("auto", "auto") == ("cuda", "float16")
    assert resolve_device("cuda", "int8_float16") == ("cuda", "int8_float16")  # a choice stays
    assert resolve_device("cpu", "auto") == ("cpu", "auto")
    monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda d: {"float32", "int8"})  # e.g. Pascal
    assert resolve_device("auto", "auto") == ("cuda", "auto")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert resolve_device("auto", "auto") == ("cpu", "auto")


def test_the_transcript_records_what_ctranslate2_ran(model_path, speech_dir):
    from faster_whisper import decode_audio

    from scribeflow.stages.transcription.decode import run_model
    from scribeflow.stages.transcription.model import load_model

    tc = sf_config.load(overrides={"transcribe.model": model_path}).transcribe.as_dict()  # device, compute_type: auto
    raw = run_model(load_model(tc), decode_audio(str(speech_dir / "ep01.mp4")), {"beam_size": 1})
    t = build_transcript(raw, "ep01", tc, {"beam_size": 1})
    assert (t["options"]["device"], t["options"]["compute_type"]) == ("cpu", "int8_float32")
    assert "quick" in t["text"].lower() and "lazy" in t["text"].lower()


def test_profile_gpu_decodes_batched_in_float16_two_at_once():
    """What `snakemake --profile gpu` runs with, parsed as Snakemake parses the profile's
    --config (nested values arrive as strings: '16')."""
    import yaml

    from scribeflow.stages.transcription.decode import decode_options

    entries = yaml.safe_load((REPO / "profiles" / "gpu" / "config.yaml").read_text())["config"]
    tc = sf_config.for_run(overrides=entries).transcribe.as_dict()
    assert (tc["device"], tc["compute_type"], tc["num_workers"]) == ("cuda", "float16", 2)
    options = decode_options(tc, None)
    assert options["batch_size"] == 16 and options["language_windows"] == 7
    assert decode_options(tc, "ja")["language"] == "ja" and "language_windows" not in decode_options(tc, "ja")
    # Without the profile (or with its line replaced by a --config of one's own): auto.
    assert decode_options(sf_config.load().transcribe.as_dict(), "ja")["batch_size"] == "auto"
    with pytest.raises(sf_config.ConfigError, match="batch_size"):
        sf_config.load(overrides={"transcribe.batch_size": "many"})


class _ReportsCuda:
    """A real CPU model that says it runs on "cuda": the only thing of a GPU that
    run_model() looks at to choose batch_size auto. No GPU here; all else is real."""

    def __init__(self, model):
        self._model = model
        self.model = type("Inner", (), {"device": "cuda", "__getattr__": lambda s, n: getattr(model.model, n)})()

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_batch_size_auto_batches_on_a_gpu_and_decodes_sequentially_on_a_cpu(model_path, speech_dir):
    from faster_whisper import decode_audio

    from scribeflow.stages.transcription.decode import GPU_BATCH_SIZE, decode_options, run_model
    from scribeflow.stages.transcription.model import load_model

    tc = sf_config.load(overrides={"transcribe.model": model_path, "transcribe.device": "cpu",
                                   "transcribe.compute_type": "int8"}).transcribe.as_dict()
    options = {**decode_options(tc, "en"), "beam_size": 1}
    model = load_model(tc)
    audio = decode_audio(str(speech_dir / "ep01.mp4"))
    on_cpu = run_model(model, audio, options)
    on_gpu = run_model(_ReportsCuda(model), audio, options)
    assert (on_cpu["batch_size"], on_gpu["batch_size"]) == (0, GPU_BATCH_SIZE)
    t = build_transcript(on_gpu, "ep01", tc, options)
    assert t["options"]["batch_size"] == GPU_BATCH_SIZE and t["options"]["device"] == "cuda"
    assert t["language_detection"] == {"method": "given"}
    for raw in (on_cpu, on_gpu):
        text = " ".join(s["text"] for s in raw["segments"]).lower()
        assert "quick" in text and "lazy" in text
    # An English-only model needs no vote.
    detected = run_model(model, audio, {**options, "language": None, "language_windows": 7})
    assert detected["language"] == "en" and detected["language_detection"]["method"] == "english-only model"


def test_batched_decoding_without_vad_cuts_long_audio_in_30_s_windows(model_path, speech_dir):
    """faster-whisper's batched pipeline refuses audio over 30 s without VAD ("No clip
    timestamps found"); vad_filter: false with batch_size > 0 must still transcribe."""
    import numpy as np
    from faster_whisper import decode_audio

    from scribeflow.stages.transcription.decode import run_model
    from scribeflow.stages.transcription.model import load_model

    tc = sf_config.load(overrides={"transcribe.model": model_path, "transcribe.device": "cpu",
                                   "transcribe.compute_type": "int8"}).transcribe.as_dict()
    clip = decode_audio(str(speech_dir / "ep01.mp4"))
    pause = np.zeros(16_000 * 8, np.float32)
    audio = np.concatenate([clip, pause] * (-(-45 * 16_000 // (len(clip) + len(pause)))))  # >= 45 s
    raw = run_model(load_model(tc), audio, {"language": "en", "beam_size": 1, "vad_filter": False, "batch_size": 4})
    assert raw["batch_size"] == 4 and raw["segments"][-1]["end"] > 30
    assert "quick" in " ".join(s["text"] for s in raw["segments"]).lower()
