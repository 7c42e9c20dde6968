"""Speech videos for the tests (and the demo's bundled media): espeak-ng speaks, ffmpeg muxes a small video.

Needs the Debian packages espeak-ng and ffmpeg (test and demo-building time only;
the workflow itself decodes with PyAV and needs neither).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# Short, distinct sentences tiny.en transcribes reliably.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of the transcription pipeline.",
    "Snakemake runs the download before the transcription.",
    "Please remember to water the garden every morning.",
    "The weather today is sunny with a light breeze.",
    "Our team builds software for people who love stories.",
    "A red balloon floated high above the city park.",
    "Trains leave the central station every fifteen minutes.",
    "She opened the window and listened to the rain.",
    "Fresh bread smells wonderful early in the morning.",
    "Mountains covered in snow shine under the moon.",
    "Good music makes a long journey feel much shorter.",
]


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "ffmpeg") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install espeak-ng ffmpeg")


def make_speech_video(
    text: str, out: Path, pad_seconds: float = 0.0, video_kbps: int = 64, size: str = "160x120"
) -> Path:
    """An MP4 (H.264 + AAC, faststart) of `text` spoken, with a test-pattern picture.

    `pad_seconds` of silence and a higher `video_kbps` make a bigger file, for disk tests.
    """
    require_tools()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "135", "-w", str(wav), text], check=True)
        audio_filter = f"apad=pad_dur={pad_seconds}" if pad_seconds else "anull"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
             "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10",
             "-af", audio_filter, "-shortest",
             "-c:v", "libx264", "-preset", "ultrafast", "-b:v", f"{video_kbps}k",
             "-x264-params", f"nal-hrd=cbr:vbv-maxrate={video_kbps}:vbv-bufsize={video_kbps}",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "48k", "-ac", "1",
             "-movflags", "+faststart", str(out)],
            check=True,
        )
    return out
