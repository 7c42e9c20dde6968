"""Media checks on real files made by ffmpeg: an audio track shorter than its video is
decoded as it is; a file cut short is refused as truncated, whatever its container."""

import subprocess
import wave

import pytest

from scribeflow.stages.media import MediaError, extract_audio, validate


def short_audio_video(path, video_s=20, audio_s=10):
    """A video of `video_s` seconds whose audio track (a tone) lasts `audio_s`: real episodes'
    tracks differ in length, by far less, but the same way."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=d={video_s}:s=64x48:r=10",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={audio_s}",
                    "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
                    "-c:a", "aac", "-b:a", "32k", "-movflags", "+faststart", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    mp4 = short_audio_video(folder / "short.mp4")
    mkv = folder / "short.mkv"  # Matroska: the track's length is a DURATION tag, not the stream's
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(mp4), "-c", "copy", str(mkv)],
                   check=True)
    return {"mp4": mp4, "mkv": mkv}


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_an_audio_track_shorter_than_its_video_is_decoded_as_it_is(short_audio, kind, tmp_path):
    info = validate(short_audio[kind])
    assert info.container_duration == pytest.approx(20, abs=0.2)
    assert info.duration == pytest.approx(10, abs=0.2) and info.track_duration == pytest.approx(10, abs=0.2)
    seconds = extract_audio(short_audio[kind], tmp_path / "a.wav")
    assert seconds == pytest.approx(10, abs=0.2)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(10, abs=0.2)


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_a_file_cut_short_is_still_refused_as_truncated(short_audio, kind, tmp_path):
    data = short_audio[kind].read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"truncated: its audio ends at [0-9.]+ s, but its audio track's header "
                                         r"says 10\.\d s") as info:
        validate(cut)
    assert info.value.permanent


def test_without_a_track_length_a_file_is_truncated_when_every_stream_ends_early(tmp_path):
    # A WebM whose track carries no length (its DURATION tag renamed, as muxers that write
    # none leave it): the container's length is what the streams, not only the audio, must reach.
    made = tmp_path / "tagged.webm"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=10", "-c:a", "libopus", str(made)], check=True)
    data = made.read_bytes().replace(b"DURATION", b"XURATION")
    untagged, cut = tmp_path / "a.webm", tmp_path / "cut.webm"
    untagged.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    info = validate(untagged)
    assert info.track_duration is None and info.duration == pytest.approx(10, abs=0.1)
    with pytest.raises(MediaError, match=r"truncated: its streams end at [0-9.]+ s, but its container's header "
                                         r"says 10\.0 s"):
        validate(cut)
