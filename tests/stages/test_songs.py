"""Songs and repeats: what a series' episodes share, found from Chromaprint fingerprints
(ffmpeg's chromaprint muxer on real audio) or from the same subtitle lines, marked, and left
out of the corpus's counts, the index's sums, the Yomitan export and the default search."""

import json
import shutil
import wave
from collections import Counter

import numpy as np
import pytest
from support.japanese import music

from scribeflow.config.layout import Layout
from scribeflow.config.settings import Settings, validate
from scribeflow.ops import export
from scribeflow.stages import concordance, songs, steps
from scribeflow.stages.analysis import read_tsv
from scribeflow.stages.tokens import tokenize_transcript


# -- what two fingerprints share ------------------------------------------------------------------
def noisy(values: np.ndarray, bits: int, rng, share: float = 0.6) -> np.ndarray:
    """The values with up to `bits` random bits flipped in a `share` of them: another
    encoding of the same audio (measured: most values equal, the rest a few bits off)."""
    flips = np.zeros(len(values), np.uint32)
    for _ in range(bits):
        flips |= np.uint32(1) << rng.integers(0, 32, len(values)).astype(np.uint32)
    return values ^ np.where(rng.random(len(values)) < share, flips, np.uint32(0))


def test_a_stretch_two_fingerprints_share_is_found_where_it_lies_in_each():
    rng = np.random.default_rng(1)
    song = rng.integers(0, 2**32, int(25 / songs.ITEM_S), dtype=np.uint32)
    a = np.concatenate([rng.integers(0, 2**32, 400, dtype=np.uint32), song,
                        rng.integers(0, 2**32, 300, dtype=np.uint32)])
    b = np.concatenate([rng.integers(0, 2**32, 123, dtype=np.uint32), noisy(song, 3, rng),
                        rng.integers(0, 2**32, 500, dtype=np.uint32)])
    [(a0, a1, b0, b1)] = songs.shared_audio(a, b)
    assert a0 == pytest.approx(400 * songs.ITEM_S, abs=1.0) and a1 - a0 == pytest.approx(25, abs=1.5)
    assert b0 == pytest.approx(123 * songs.ITEM_S, abs=1.0) and b1 - b0 == pytest.approx(25, abs=1.5)


def test_unrelated_audio_silence_and_short_stretches_are_not_shared():
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 2**32, 2000, dtype=np.uint32) for _ in range(2))
    assert songs.shared_audio(a, b) == []
    silence = np.full(2000, 0x5A5A5A5A, np.uint32)  # a held value agrees with itself anywhere
    assert songs.shared_audio(silence, silence.copy()) == []
    jingle = rng.integers(0, 2**32, int(10 / songs.ITEM_S), dtype=np.uint32)  # 10 s: under MIN_SHARED_S
    assert songs.shared_audio(np.concatenate([a, jingle]), np.concatenate([jingle, b])) == []


def test_what_a_shared_stretch_is_depends_on_where_it_lies():
    d = {"e1": 1440.0, "e2": 1440.0, "e3": 1440.0}
    order = list(d)
    marks = songs.classify(d, order, {
        ("e1", "e2"): [(0.0, 90.0, 0.0, 90.0),           # the opening of both: a song
                       (700.0, 760.0, 100.0, 160.0)],    # e1's scene recapped after e2's opening
        ("e2", "e3"): [(1300.0, 1390.0, 1310.0, 1400.0),  # the ending of both
                       (600.0, 640.0, 500.0, 540.0)],    # mid-episode in both: e3's copy repeats it
    })
    whole = {e: [[round(a), round(b), k] for a, b, k in r] for e, r in marks.items()}  # to the second
    assert whole["e1"] == [[0, 90, "song"]]  # the recapped scene is e1's own speech
    assert whole["e2"] == [[0, 90, "song"], [100, 160, "repeat"], [1300, 1390, "song"]]
    assert whole["e3"] == [[500, 540, "repeat"], [1310, 1400, "song"]]
    # An insert song: mid-episode in three episodes, a song in each.
    mid = songs.classify(d, order, {("e1", "e2"): [(600, 640, 700, 740)], ("e1", "e3"): [(600, 640, 650, 690)],
                                    ("e2", "e3"): [(700, 740, 650, 690)]})
    assert {e: [k for *_, k in r] for e, r in mid.items()} == {"e1": ["song"], "e2": ["song"], "e3": ["song"]}
    assert songs.classify(d, order, {}) == {}


def test_a_segment_takes_the_kind_that_covers_half_of_it_and_keeps_its_own():
    ranges = [[0.0, 30.0, "song"], [100.0, 120.0, "repeat"]]
    segments = [{"start": 2, "end": 8, "text": "a"}, {"start": 28, "end": 40, "text": "b"},
                {"start": 25, "end": 33, "text": "c"}, {"start": 110, "end": 112, "text": "d"},
                {"start": 50, "end": 55, "text": "e", "kind": "sound"}, {"start": 60, "end": 60, "text": "f"}]
    assert songs.segment_kinds(segments, ranges) == ["song", "speech", "song", "repeat", "sound", "speech"]


def test_the_same_subtitle_lines_in_two_episodes_are_shared():
    line = lambda t, s: {"start": s, "end": s + 2.0, "text": t}  # noqa: E731
    recap = ["前回、僕たちは森で迷った。", "あの光は何だったんだろう。", "明日こそ見つけてみせる！"]
    a = [line("はい。", 0)] + [line(t, 10 + 3 * i) for i, t in enumerate(recap)] + [line("行こう。", 30)]
    b = [line(t, 1 + 3 * i) for i, t in enumerate(recap)] + [line("はい。", 20), line("え？", 22)]
    assert songs.shared_lines(a, b) == [(10, 18.0, 1, 9.0)]
    assert songs.shared_lines(a[:2], b[:1]) == []  # a line or two in common is chance


# -- fingerprints of real audio, and the corpus step ------------------------------------------------
RATE = 16000
OPENING = [(1.0, 9.0, "翼を広げて彼方へ飛んでいこう"), (10.0, 18.0, "虹の向こうに永遠の光が輝く")]
ENDING = [(1.0, 8.0, "さよならは言わないで"), (9.0, 17.0, "明日もまたここで会えるから")]
LYRIC_WORDS = ("翼", "彼方", "虹", "永遠", "輝く", "さよなら")
DIALOGUE = [["おはよう。今日は早く起きたね。", "朝ご飯はもう食べたの？", "まだだよ。パンを一つ買っていこうかな。"],
            ["先生、この問題がどうしても解けません。", "どこまで分かったか、まず説明してごらん。"],
            ["この部屋、なんだか寒くない？", "窓が少し開いていたみたい。今閉めるね。", "ついでに電気もつけてくれる？"],
            ["見て、海がすごくきれいだよ。", "本当だ。こんなに青い海は初めて見た。"]]


def episode_audio(n: int) -> tuple[np.ndarray, list[dict]]:
    """An opening (20 s), a scene of its own music with dialogue, an ending (20 s): the
    samples and the transcript's segments, lyrics as said over the songs."""
    scene = 30.0 + 3 * n  # the ending starts elsewhere in each episode
    audio = np.concatenate([music(20, seed=7, bpm=140), music(scene, seed=100 + n, bpm=90),
                            music(20, seed=11, bpm=140)])
    segments = [{"start": s, "end": e, "text": t} for s, e, t in OPENING]
    segments += [{"start": 21.0 + 4 * i, "end": 24.0 + 4 * i, "text": t} for i, t in enumerate(DIALOGUE[n % 4])]
    segments += [{"start": 20 + scene + s, "end": 20 + scene + e, "text": t} for s, e, t in ENDING]
    return audio, segments


def write_wav(path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory):
    """Episode n's fingerprint, by ffmpeg's chromaprint muxer, and its segments."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (bin/setup installs it)")
    folder = tmp_path_factory.mktemp("fingerprints")
    out = {}
    for n in range(5):
        audio, segments = episode_audio(n)
        write_wav(folder / f"{n}.wav", audio)
        path = folder / f"{n}.chromaprint"
        assert songs.keep_fingerprint(folder / f"{n}.wav", path) == path.stat().st_size
        out[n] = (path, segments, len(audio) / RATE)
    return out


def test_the_fingerprint_of_real_audio_has_about_eight_values_a_second(fingerprints):
    path, _, seconds = fingerprints[0]
    values = songs.read_fingerprint(path)
    assert 7.5 * seconds < len(values) < 8.2 * seconds and path.stat().st_size == 4 * len(values)
    [opening, ending] = songs.shared_audio(values, songs.read_fingerprint(fingerprints[1][0]))
    assert opening[0] < 1.0 and opening[1] == pytest.approx(20, abs=1.5)
    assert ending[1] - ending[0] == pytest.approx(20, abs=2.5) and ending[3] - ending[1] == pytest.approx(3, abs=0.3)


def test_without_ffmpeg_or_fpcalc_the_extraction_goes_on_and_says_why(fingerprints, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither tool to be found
    wav = fingerprints[0][0].with_suffix(".wav")
    assert songs.keep_fingerprint(wav, tmp_path / "x.chromaprint") is None
    assert not (tmp_path / "x.chromaprint").exists()
    assert "install Debian's ffmpeg" in caplog.text and "not looked for" in caplog.text


def make_settings(tmp_path, rows) -> Settings:
    catalogue = tmp_path / "episodes.csv"
    catalogue.write_text("id,url,series,language\n" + "".join(
        f"{e},http://127.0.0.1:9/{e}.mp4,{s},ja\n" for e, s in rows))
    return validate({"catalogue": str(catalogue), "data_dir": str(tmp_path / "data"),
                     "storage_dir": str(tmp_path / "data")})


def analyse(settings: Settings, fingerprints, episode: str, n: int, series: str) -> None:
    """As the workflow does: the extraction's fingerprint, the transcript, its analysis."""
    layout = Layout.from_config(settings)
    path, segments, seconds = fingerprints[n]
    layout.fingerprints.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, layout.fingerprint_file(episode))
    layout.transcripts.mkdir(parents=True, exist_ok=True)
    transcript = {"id": episode, "language": "ja", "duration": seconds, "segments": segments,
                  "text": "".join(s["text"] for s in segments)}
    layout.transcript(episode).write_text(json.dumps(transcript, ensure_ascii=False))
    steps.analyse_episode(settings=settings, episode=episode, transcript=str(layout.transcript(episode)),
                          tokens=str(layout.tokens_file(episode)), stats=str(layout.stats_file(episode)),
                          lemmas=str(layout.lemmas_file(episode)), language="ja", series=series)


def run_corpus(settings: Settings) -> dict:
    layout = Layout.from_config(settings)
    outputs = {k: str(v) for k, v in layout.corpus_files().items()}
    steps.corpus(settings=settings, stats_pattern=layout.stats_pattern(), lemmas_pattern=layout.lemmas_pattern(),
                 outputs=outputs)
    tables = {k: read_tsv(v) for k, v in outputs.items() if v.endswith(".tsv")}
    with concordance.Index(layout.corpus_index, readonly=True) as index:
        tables["yomitan"] = {term: uses for term, _, uses in export.frequencies(index)}
        tables["search"] = {w: concordance.search(index, w)["uses"] for w in LYRIC_WORDS + ("先生",)}
    return tables


def said(episodes) -> Counter:
    """An independent count of the dialogue's words: each line tokenized alone."""
    words = Counter()
    for n in episodes:
        table = tokenize_transcript({"language": "ja", "segments": [
            {"start": 0, "end": 1, "text": t} for t in DIALOGUE[n % 4]]})
        words.update(table.column("lemma").to_pylist())
    return words


def frequency(tables) -> Counter:
    return Counter(dict(zip(tables["frequency"]["lemma_unidic"], tables["frequency"]["count"])))


def test_songs_are_marked_and_left_out_once_siblings_arrive(tmp_path, fingerprints, caplog):
    settings = make_settings(tmp_path, [("a1", "anime"), ("solo", "alone")])
    analyse(settings, fingerprints, "a1", 1, "anime")
    analyse(settings, fingerprints, "solo", 0, "alone")
    # Alone in its series, an episode loses nothing: its lyrics are counted as said.
    first = run_corpus(settings)
    assert all(first["yomitan"].get(w, 0) == 2 for w in ("翼", "虹", "永遠"))
    assert list(first["coverage"]["song_s"]) == [0.0, 0.0, 0.0]

    # Its siblings arrive (as a later run analyses them): the first episode is marked too.
    settings = make_settings(tmp_path, [("a1", "anime"), ("solo", "alone"), ("a2", "anime"), ("a3", "anime")])
    for episode, n in (("a2", 2), ("a3", 3)):
        analyse(settings, fingerprints, episode, n, "anime")
    tables = run_corpus(settings)
    check_tables(tables, anime=[1, 2, 3], solo=[0])
    layout = Layout.from_config(settings)
    marks = json.loads(songs.Found(layout.marks, {}).series_file("anime").read_text())
    for episode in ("a1", "a2", "a3"):
        kinds = [k for *_, k in marks["episodes"][episode]["ranges"]]
        assert kinds == ["song", "song"], marks["episodes"][episode]
        # The transcript keeps every lyric; the marks say which segments are songs.
        transcript = json.loads(layout.transcript(episode).read_text())
        assert songs.segment_kinds(transcript["segments"], marks["episodes"][episode]["ranges"]) == (
            ["song"] * 2 + ["speech"] * (len(transcript["segments"]) - 4) + ["song"] * 2)
    assert songs.read_summary(layout.marks)["anime"]["song_s"] > 3 * 35
    assert songs.read_summary(layout.marks)["alone"]["song_s"] == 0

    # One more: only its series is compared again; the sums are corrected, not read again.
    settings = make_settings(tmp_path, [("a1", "anime"), ("solo", "alone"), ("a2", "anime"), ("a3", "anime"),
                                        ("a4", "anime")])
    analyse(settings, fingerprints, "a4", 4, "anime")
    caplog.clear()
    with caplog.at_level("INFO"):
        tables = run_corpus(settings)
    assert "read 1 new episode(s), 4 from the sums kept" in caplog.text and "reading every" not in caplog.text
    # Earlier episodes whose songs now reach further: their old correction out, the new one in.
    assert "corrected in the sums" in caplog.text and "(0 taken out again)" not in caplog.text
    check_tables(tables, anime=[1, 2, 3, 4], solo=[0])
    # A rebuild from nothing (the kept sums deleted) gives the same tables.
    for name in ("aggregate_counts.parquet", "aggregate_stats.parquet"):
        (layout.corpus / name).unlink()
    again = run_corpus(settings)
    for name in ("frequency", "series_frequency", "coverage"):
        assert again[name].equals(tables[name]), name


def check_tables(tables, anime: list[int], solo: list[int]) -> None:
    expected = said(anime) + said(solo)
    solo_lyrics = tokenize_transcript({"language": "ja", "segments": [
        {"start": 0, "end": 1, "text": t} for *_, t in OPENING + ENDING]})
    expected.update(solo_lyrics.column("lemma").to_pylist())  # the series of one keeps its songs
    assert frequency(tables) == expected
    series = tables["series_frequency"]
    anime_counts = Counter(dict(zip(series.loc[series["series"] == "anime", "lemma_unidic"],
                                    series.loc[series["series"] == "anime", "count"])))
    assert anime_counts == said(anime) and not any(w in anime_counts for w in LYRIC_WORDS)
    # The index (Yomitan export, default search) holds the lyrics once: the solo episode's.
    assert tables["yomitan"]["翼"] == 1 and tables["search"]["翼"] == 1
    assert tables["search"]["先生"] == said(anime)["先生"] + said(solo)["先生"]
    coverage = tables["coverage"].set_index(tables["coverage"]["series"].fillna(""))
    assert coverage.loc["anime", "song_s"] == pytest.approx(40 * len(anime), abs=3 * len(anime))
    assert coverage.loc["alone", "song_s"] == 0 and coverage.loc["anime", "repeat_s"] == 0
    episodes = tables["episodes"].set_index("id")
    assert episodes.loc["a1", "tokens"] == sum(said([1]).values())


def subtitled(settings: Settings, episode: str, segments: list[dict], series: str) -> None:
    """A transcript from a subtitle (no audio, no fingerprint), analysed as the workflow does."""
    layout = Layout.from_config(settings)
    layout.transcripts.mkdir(parents=True, exist_ok=True)
    transcript = {"id": episode, "language": "ja", "duration": 60.0, "segments": segments, "source": "subtitles",
                  "text": "".join(s["text"] for s in segments)}
    layout.transcript(episode).write_text(json.dumps(transcript, ensure_ascii=False))
    steps.analyse_episode(settings=settings, episode=episode, transcript=str(layout.transcript(episode)),
                          tokens=str(layout.tokens_file(episode)), stats=str(layout.stats_file(episode)),
                          lemmas=str(layout.lemmas_file(episode)), language="ja", series=series)


def test_a_recap_in_subtitles_is_a_repeat_where_it_is_repeated_and_songs_are_never_counted(tmp_path):
    scene = ["前回、僕たちは森で迷った。", "あの光は何だったんだろう。", "明日こそ見つけてみせる！"]
    line = lambda s, t, kind=None: {"start": s, "end": s + 3.0, "text": t, **({"kind": kind} if kind else {})}  # noqa: E731
    song = [line(0, "翼を広げて", "song")]  # the subtitle parser's ♪ line
    first = song + [line(20 + 4 * i, t) for i, t in enumerate(scene)] + [line(40, "先生、おはよう。")]
    second = song + [line(5 + 4 * i, t) for i, t in enumerate(scene)] + [line(30, "海がきれいだよ。")]
    settings = make_settings(tmp_path, [("s1", "subbed"), ("s2", "subbed")])
    subtitled(settings, "s1", first, "subbed")
    subtitled(settings, "s2", second, "subbed")
    tables = run_corpus(settings)
    marks = songs.series_marks(Layout.from_config(settings).marks, "subbed")
    # The scene is s1's own dialogue; s2 opens with it: a recap.
    assert marks["s1"] == [] and [[round(s), round(t), k] for s, t, k in marks["s2"]] == [[5, 16, "repeat"]]
    counts = frequency(tables)
    assert counts["森"] == 1 and counts["光"] == 1 and counts["先生"] == 1 and counts["海"] == 1
    assert counts["翼"] == 0 and tables["search"]["翼"] == 0  # a ♪ line is a song wherever it is
    coverage = tables["coverage"].set_index(tables["coverage"]["series"].fillna(""))
    assert coverage.loc["subbed", "repeat_s"] == pytest.approx(11, abs=0.3)
    assert coverage.loc["subbed", "song_s"] == 6.0  # the ♪ lines' own seconds
