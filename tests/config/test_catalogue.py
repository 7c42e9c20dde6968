import pandas as pd
import pytest

from scribeflow.config.catalogue import CatalogueError, load, select_chunk, validate


def frame(rows):
    return pd.DataFrame(rows, dtype=object)


def errors_of(rows) -> str:
    with pytest.raises(CatalogueError) as info:
        validate(frame(rows))
    return str(info.value)


GOOD = {"id": "ep1", "url": "https://example.org/ep1.mp4"}


def test_valid_rows_pass_and_keep_ids_as_written(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,url,duration_s\n007,http://a.example/x,1440\n1e3,https://b.example/y,\n")
    df = load(path)
    assert list(df["id"]) == ["007", "1e3"]
    assert df.loc["007", "duration_s"] == 1440
    assert pd.isna(df.loc["1e3", "duration_s"])


@pytest.mark.parametrize(
    "bad_id, reason",
    [
        ("", "empty id"),
        ("-rf", "starts with '-'"),
        (".hidden", "starts with '.'"),
        ("../../x", "starts with '.'"),
        ("a b", "characters outside"),
        ("$(touch x)", "characters outside"),
        ("a/b", "characters outside"),
        ("é", "characters outside"),
        ("x" * 65, "longer than 64"),
    ],
)
def test_bad_ids_are_refused_with_row_column_and_reason(bad_id, reason):
    message = errors_of([GOOD, {"id": bad_id, "url": "https://e.org/v"}])
    assert "row 2, column id" in message
    assert reason in message


def test_id_of_64_characters_and_allowed_punctuation_pass():
    validate(frame([{"id": "a" * 64, "url": "http://e.org/1"}, {"id": "A_b-c.9", "url": "http://e.org/2"}]))


def test_duplicate_ids_name_the_first_row():
    message = errors_of([GOOD, {"id": "other", "url": "http://e.org"}, GOOD])
    assert "row 3, column id: duplicate id 'ep1' (first on row 1)" in message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://e.org/v.mp4", "javascript:alert(1)", "", "http://", "https:// e.org"]
)
def test_non_http_urls_are_refused(url):
    message = errors_of([{"id": "ep1", "url": url}])
    assert "row 1, column url" in message


def test_every_bad_row_is_reported_in_one_error():
    message = errors_of(
        [{"id": "-a", "url": "ftp://x"}, GOOD, {"id": "b c", "url": "https://ok.example"}, {"id": "ok2", "url": ""}]
    )
    assert "4 problem(s) in 3 row(s)" in message
    for fragment in ("row 1, column id", "row 1, column url", "row 3, column id", "row 4, column url"):
        assert fragment in message


def test_a_text_catalogues_bad_rows_are_named_by_the_files_lines(tmp_path):
    # Line 1 is the header; a blank line and a quoted value over two lines count, as in an editor.
    path = tmp_path / "c.csv"
    path.write_text('id,url,title\n\nep1,http://e.org/1,"two\nlines"\n-bad,ftp://e.org/2,x\nep1,http://e.org/3,y\n')
    with pytest.raises(CatalogueError) as info:
        load(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "line 5, column id: id '-bad' starts with '-'" in message and "line 5, column url" in message
    assert "line 6, column id: duplicate id 'ep1' (first on line 3)" in message
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\turl\nok\thttp://e.org/1\nb c\thttp://e.org/2\n")
    with pytest.raises(CatalogueError, match="line 3, column id"):
        load(tsv)


def test_a_parquet_catalogues_bad_rows_are_named_by_row(tmp_path):
    path = tmp_path / "c.parquet"
    frame([GOOD, {"id": "-bad", "url": "https://e.org/2"}, GOOD]).to_parquet(path)
    with pytest.raises(CatalogueError) as info:
        load(path)
    message = str(info.value)
    assert "row 2, column id: id '-bad'" in message and "row 3, column id: duplicate id 'ep1' (first on row 1)" in message
    assert "line " not in message


def test_missing_required_columns_are_named():
    with pytest.raises(CatalogueError, match="missing required column.*url"):
        validate(frame([{"id": "a"}]))


def test_numeric_columns_must_be_numbers():
    message = errors_of([{**GOOD, "duration_s": "long"}, {"id": "b", "url": "http://e.org", "expected_size_mb": "-5"}])
    assert "row 1, column duration_s" in message and "row 2, column expected_size_mb" in message


def test_tsv_and_parquet(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\turl\ttitle\nep1\thttps://e.org/1\tOne\n")
    assert list(load(tsv)["title"]) == ["One"]
    pq = tmp_path / "c.parquet"
    pd.DataFrame([GOOD]).to_parquet(pq)
    assert list(load(pq).index) == ["ep1"]


def test_wrong_file_types_and_missing_files_are_clear(tmp_path):
    with pytest.raises(CatalogueError, match="no such file"):
        load(tmp_path / "none.csv")
    xlsx = tmp_path / "c.xlsx"
    xlsx.write_text("x")
    with pytest.raises(CatalogueError, match="unknown file type '.xlsx'"):
        load(xlsx)
    fake = tmp_path / "c.parquet"
    fake.write_text("id,url\n")
    with pytest.raises(CatalogueError, match="cannot be read as parquet"):
        load(fake)


def test_chunks_partition_the_catalogue_in_order():
    df = pd.DataFrame({"id": [f"e{i}" for i in range(10)]})
    parts = [list(select_chunk(df, f"{k}/3")["id"]) for k in (1, 2, 3)]
    assert sum(parts, []) == list(df["id"])
    assert [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(CatalogueError):
        select_chunk(df, "4/3")


def test_a_bad_row_outside_the_chunk_still_stops_the_run(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,url\nok1,http://e.org/1\nok2,http://e.org/2\n-bad,http://e.org/3\n")
    with pytest.raises(CatalogueError, match="line 4"):
        load(path, chunk="1/3")


def test_cached_catalogue_is_reused_until_the_file_changes(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,url\nep1,http://a.example/1\nep2,http://a.example/2\n")
    cache = tmp_path / "cache"
    assert list(load(path, cache_dir=cache).index) == ["ep1", "ep2"]
    (pkl,) = cache.glob("catalogue-*.arrow")
    stamp = pkl.stat().st_mtime_ns
    assert list(load(path, "2/2", cache_dir=cache).index) == ["ep2"]
    assert pkl.stat().st_mtime_ns == stamp  # reused, not rewritten

    # The file changes: it is read and validated again.
    path.write_text("id,url\nep1,http://a.example/1\nep3,ftp://a.example/3\n")
    with pytest.raises(CatalogueError, match="line 3, column url"):
        load(path, cache_dir=cache)
    path.write_text("id,url\nep1,http://a.example/1\nep3,http://a.example/3\n")
    assert list(load(path, cache_dir=cache).index) == ["ep1", "ep3"]


def test_unreadable_cache_is_replaced(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,url\nep1,http://a.example/1\n")
    cache = tmp_path / "cache"
    load(path, cache_dir=cache)
    (arrow,) = cache.glob("catalogue-*.arrow")
    arrow.write_bytes(b"not an Arrow file")
    assert list(load(path, cache_dir=cache).index) == ["ep1"]
    assert arrow.read_bytes() != b"not an Arrow file"


def test_the_cached_catalogue_is_the_validated_one_column_for_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,url,series,season,duration_s,expected_size_mb,language\n"
                    "a,http://a.example/1,Show A,1,1440,300.5,ja\nb,http://a.example/2,,,,,\n")
    cache = tmp_path / "cache"
    first, again = load(path, cache_dir=cache), load(path, cache_dir=cache)
    assert list(cache.glob("catalogue-*.arrow"))
    pd.testing.assert_frame_equal(first, again)


def test_a_language_is_a_whisper_code_refused_by_row_before_any_download(tmp_path):
    text = errors_of([{**GOOD, "language": "ja"}, {"id": "ep2", "url": GOOD["url"], "language": "japanese"},
                      {"id": "ep3", "url": GOOD["url"], "language": "jp"}])
    assert "row 2, column language: 'japanese' is not a Whisper language code" in text
    assert "row 3, column language: 'jp'" in text and "row 1" not in text
    path = tmp_path / "c.csv"
    path.write_text("id,url,language\na,http://a.example/x, JA \nb,http://a.example/y,\nc,http://a.example/z,yue\n")
    df = load(path)
    assert [df.loc[i, "language"] for i in "abc"] == ["ja", None, "yue"]


def test_the_language_codes_are_faster_whispers():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from scribeflow.config.models import LANGUAGES

    assert LANGUAGES == set(_LANGUAGE_CODES)


def test_the_subtitle_column_takes_urls_and_files_beside_the_catalogue(tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.ass").write_text("[Script Info]\n", encoding="utf-8")
    (tmp_path / "episodes.csv").write_text(
        "id,url,subtitle\n"
        "a,http://x/a.mp4,subs/a.ass\n"
        "b,http://x/b.mp4,https://subs.example/b.ja.srt\n"
        "c,http://x/c.mp4,\n", encoding="utf-8")
    df = load(tmp_path / "episodes.csv", cache_dir=tmp_path / "cache")
    assert df.at["a", "subtitle"] == str(tmp_path / "subs" / "a.ass")  # absolute: any job's directory finds it
    assert df.at["b", "subtitle"] == "https://subs.example/b.ja.srt" and df.at["c", "subtitle"] is None
    assert load(tmp_path / "episodes.csv", cache_dir=tmp_path / "cache").at["a", "subtitle"] == df.at["a", "subtitle"]


def test_a_missing_or_foreign_subtitle_file_is_named_with_its_row(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "url": ["http://x/a", "http://x/b"], "subtitle": ["gone.srt", "notes.txt"]})
    with pytest.raises(CatalogueError) as err:
        validate(df, base=tmp_path)
    message = str(err.value)
    assert f"row 1, column subtitle: no such file '{tmp_path / 'gone.srt'}'" in message
    assert "row 2, column subtitle: 'notes.txt' is neither an http(s) URL nor a subtitle file" in message
