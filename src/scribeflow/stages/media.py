"""Media checks and audio extraction with PyAV (no system ffmpeg needed at run time)."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

from scribeflow.files import atomic_path

SAMPLE_RATE = 16_000  # what Whisper consumes (transcribe.py reads it from here)
WAV_HEADER = 44
BYTES_PER_SECOND = SAMPLE_RATE * 2  # mono s16


class MediaError(ValueError):
    """A media file is unusable; the message says why. The episode's own failure, for good."""

    permanent = True


class AudioTooLong(MediaError):
    """The audio decodes longer than the room reserved for it: nothing past the
    reservation was written; `seconds` is the whole decoded duration, measured."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # seconds, from the audio packets actually present
    container_duration: float | None
    audio_codec: str
    track_duration: float | None = None  # what the audio track's own header says, where it says


def _open(path: Path):
    import av  # here, not at the top: the planners and transcribe.py need only the constants

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path.name}: not a readable media file ({exc})") from exc


def _audio_stream(container, path: Path):
    if not container.streams.audio:
        raise MediaError(f"{path.name}: has no audio stream")
    return container.streams.audio[0]


def validate(path: str | Path, min_coverage: float = 0.9) -> MediaInfo:
    """Demux every packet (no decoding: fast) and check that the audio present reaches
    what the audio track's own header says (MP4's track duration, Matroska's DURATION
    tag); without one, that the file's streams reach the container's duration. A
    truncated download fails here even when its header is intact, which is how yt-dlp's
    blind resumes and "already downloaded" files slip through. An audio track shorter
    than the video beside it is not truncation: the audio present is what is decoded."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise MediaError(f"{path.name}: missing or empty")
    with _open(path) as container:
        stream = _audio_stream(container, path)
        declared = container.duration / 1e6 if container.duration else None  # AV_TIME_BASE: microseconds
        track = _track_duration(stream)
        audio_end, file_end = _packet_ends(container, stream, path)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if track:
            reached, expected, said = audio_end - start, track, "its audio ends at {:.1f} s, but its audio track's"
        else:
            reached, expected, said = file_end - start, declared, "its streams end at {:.1f} s, but its container's"
        if expected and reached < min_coverage * expected - 1.0:
            raise MediaError(f"{path.name}: truncated: {said.format(reached)} header says {expected:.1f} s")
        return MediaInfo(audio_end - start, declared, stream.codec_context.name, track)


def _packet_ends(container, audio, path: Path) -> tuple[float, float]:
    """(end of the audio packets, end of the audio and video packets) in seconds."""
    import av

    audio_end = file_end = 0.0
    streams = [s for s in container.streams if s.type in ("audio", "video")]
    try:
        for packet in container.demux(streams):
            if packet.pts is None or packet.time_base is None:
                continue
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            file_end = max(file_end, end)
            if packet.stream.index == audio.index:
                audio_end = max(audio_end, end)
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path.name}: corrupt at {audio_end:.1f} s ({exc})") from exc
    if audio_end <= 0:
        raise MediaError(f"{path.name}: audio stream has no packets")
    return audio_end, file_end


def _track_duration(stream) -> float | None:
    """The audio track's own duration: the stream's (MP4), or its DURATION tag (Matroska,
    WebM: written by the muxer at the end, so a cut file has none)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    try:
        h, m, sec = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec) or None
    except ValueError:
        return None


def expected_audio_bytes(duration_s: float) -> int:
    return WAV_HEADER + int(duration_s * BYTES_PER_SECOND) + SAMPLE_RATE  # + 0.5 s of slack


def extract_audio(src: str | Path, dst: str | Path, max_bytes: int | None = None) -> float:
    """Decode the first audio stream of `src` into 16 kHz mono 16-bit WAV at `dst`
    (written atomically). Returns the audio duration in seconds.

    `max_bytes`: the WAV's reservation. Audio that decodes longer than that (timestamps
    that reset, a container that understates its duration) stops being written there;
    the rest is decoded only to measure it, and AudioTooLong says how long it is."""
    import av

    src, dst = Path(src), Path(dst)
    samples = 0
    room = None if max_bytes is None else max(0, max_bytes - WAV_HEADER)
    full = False
    with _open(src) as container, atomic_path(dst) as tmp:
        stream = _audio_stream(container, src)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)

            def write(frames) -> None:
                nonlocal samples, full
                for chunk in frames:
                    data = chunk.to_ndarray().tobytes()
                    full = full or (room is not None and 2 * samples + len(data) > room)
                    if not full:  # once full, the rest is only counted
                        out.writeframesraw(data)
                    samples += len(data) // 2

            try:
                for frame in container.decode(stream):
                    write(resampler.resample(frame))
                write(resampler.resample(None))  # what the resampler still holds
            except av.error.FFmpegError as exc:
                raise MediaError(f"{src.name}: audio cannot be decoded ({exc})") from exc
            if samples == 0:
                raise MediaError(f"{src.name}: no audio could be decoded")
            if full:
                seconds = samples / SAMPLE_RATE
                raise AudioTooLong(f"{src.name}: its audio decodes to {seconds:.1f} s, longer than the "
                                   f"{room / BYTES_PER_SECOND:.1f} s its container declares and its reservation "
                                   f"holds; nothing past the reservation was written", seconds)
    return samples / SAMPLE_RATE


def read_wav(path: str | Path):
    """The WAV written by extract_audio as float32 samples in [-1, 1], as Whisper expects."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise MediaError(f"{Path(path).name}: not 16 kHz mono 16-bit audio")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768.0
