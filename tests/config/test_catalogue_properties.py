"""Property-based tests (hypothesis) of catalogue parsing and id/url validation:
whatever a catalogue holds, an accepted id is one safe path component, an accepted
url is http(s), and a bad file is refused with CatalogueError and nothing else."""

import os
import shlex
import string
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from scribeflow.config.catalogue import CatalogueError, load, validate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GOOD_URL = "https://example.org/v.mp4"

# Ids and urls as hostile as text gets: separators, shell syntax, control and non-ASCII characters.
hostile_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=string.printable, max_size=80),
    st.sampled_from(["../../x", "..", ".", "$(touch x)", "`id`", "-rf", "a b", "a/b", "a\\b", "x" * 65,
                     "é", "ep\x00", "ep\n", "~root", "*", "ep;rm -rf ~", "%(title)s", "CON", "ep\u202e"]),
)


def assert_safe_component(episode: str, base: Path) -> None:
    assert 1 <= len(episode) <= 64 and episode.isascii()
    assert episode not in (".", "..") and not episode.startswith(("-", "."))
    assert os.sep not in episode and "\0" not in episode and Path(episode).name == episode
    target = (base / f"{episode}.media").resolve()
    assert target.parent == base.resolve()  # inside the folder it was meant for
    assert shlex.quote(episode) == episode  # nothing a shell would interpret
    assert "%" not in episode  # nothing a yt-dlp output template would expand


@SETTINGS
@given(episode=hostile_text)
@example(episode="a" * 64)
def test_an_id_is_accepted_only_if_it_is_a_safe_path_component(episode, tmp_path):
    try:
        df = validate(pd.DataFrame({"id": [episode], "url": [GOOD_URL]}, dtype=object))
    except CatalogueError as exc:
        assert "row 1, column id" in str(exc)
        return
    assert list(df["id"]) == [episode]
    assert_safe_component(episode, tmp_path)


@SETTINGS
@given(url=hostile_text | st.from_regex(r"\A(https?|ftp|file|javascript|data):[^\n]{0,40}\Z"))
@example(url="http://127.0.0.1\x00/x")
@example(url="http://e.org/\x7f")
def test_a_url_is_accepted_only_if_it_is_http_or_https(url):
    try:
        df = validate(pd.DataFrame({"id": ["ep1"], "url": [url]}, dtype=object))
    except CatalogueError as exc:
        assert "row 1, column url" in str(exc)
        return
    accepted = df["url"][0]
    parts = urlsplit(accepted)
    assert parts.scheme.lower() in ("http", "https") and parts.netloc
    assert accepted.isprintable() and not any(c.isspace() for c in accepted)


@SETTINGS
@given(ids=st.lists(st.sampled_from(["a", "b", "ep1", "007", "x.y"]), min_size=2, max_size=8))
def test_every_duplicate_is_reported_with_its_first_row(ids):
    assume(len(set(ids)) < len(ids))
    with pytest.raises(CatalogueError) as info:
        validate(pd.DataFrame({"id": ids, "url": [GOOD_URL] * len(ids)}, dtype=object))
    message = str(info.value)
    for row, episode in enumerate(ids):
        first = ids.index(episode)
        if first != row:
            assert f"row {row + 1}, column id: duplicate id {episode!r} (first on row {first + 1})" in message


@SETTINGS
@given(content=st.binary(max_size=400) | st.text(max_size=400).map(str.encode),
       suffix=st.sampled_from([".csv", ".tsv", ".parquet", ".txt", ".json", ".xlsx", ""]))
@example(content=b"id,url\n../../x,file:///etc/passwd\n", suffix=".csv")
@example(content=b"id,url\n", suffix=".csv")
@example(content=b"", suffix=".csv")
@example(content=b"url\nhttps://e.org\n", suffix=".csv")
@example(content=b"PAR1\x00\x00garbage", suffix=".parquet")
@example(content=b'id,url\n"unterminated,https://e.org\n', suffix=".csv")
@example(content=b"id,url\n\xff\xfe,https://e.org\n", suffix=".csv")
def test_any_file_either_loads_safely_or_raises_catalogue_error(content, suffix, tmp_path):
    path = tmp_path / f"catalogue{suffix}"
    path.write_bytes(content)
    try:
        df = load(path)
    except CatalogueError as exc:
        assert str(path) in str(exc)  # the error names the file
        return
    assert list(df.index) == list(df["id"])
    assert len(set(df["id"])) == len(df)
    for episode, url in zip(df["id"], df["url"]):
        assert_safe_component(episode, tmp_path)
        assert urlsplit(url).scheme.lower() in ("http", "https")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written


cell = st.one_of(st.none(), st.integers(-10, 10**6), st.floats(allow_nan=True), hostile_text)


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"id": cell, "url": cell}, optional={"duration_s": cell,
                                                                                "expected_size_mb": cell}),
                     max_size=6))
def test_any_table_either_validates_or_raises_catalogue_error(rows, tmp_path):
    try:
        df = validate(pd.DataFrame(rows, dtype=object) if rows else pd.DataFrame(columns=["id", "url"]))
    except CatalogueError as exc:
        assert "problem(s)" in str(exc) or "missing required column" in str(exc)
        return
    for episode in df["id"]:
        assert_safe_component(episode, tmp_path)
    for col in ("duration_s", "expected_size_mb"):
        if col in df:
            assert ((df[col] >= 0) | df[col].isna()).all()
