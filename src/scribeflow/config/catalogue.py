"""The episode catalogue: loading (CSV, TSV, Parquet), row validation and chunking.

Every bad row is reported in one error, before anything runs, so that a user fixes
the file once instead of once per bad row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a table is read: `scribeflow status` needs no pandas
    import pandas as pd

REQUIRED = ("id", "url")
NUMERIC = ("season", "episode", "duration_s", "expected_size_mb")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
URL_PATTERN = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)
TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
MAX_REPORTED = 200  # more would drown the message; the count is always given


class CatalogueError(ValueError):
    """The catalogue cannot be used; the message lists each bad row, column and reason."""


def read_table(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"catalogue {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in TEXT_SUFFIXES:
            sep = "," if suffix == ".csv" else "\t"
            # Everything as text: ids like 007 or 1e3 must stay as written.
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas raises many types for a malformed file
        raise CatalogueError(f"catalogue {path}: cannot be read as {suffix[1:]}: {exc}") from exc
    raise CatalogueError(
        f"catalogue {path}: unknown file type {suffix!r}; use .csv, .tsv or .parquet"
    )


def validate(df: pd.DataFrame, source: str = "catalogue", base: str | Path | None = None,
             path: str | Path | None = None) -> pd.DataFrame:
    """Return the catalogue with typed columns, or raise CatalogueError listing every bad row.

    A bad row of a CSV or TSV file `path` is named by its line in the file, as an editor
    numbers them (line 1 is the header); otherwise by its 1-based row (Parquet has no
    header line). `base`: the folder a relative `subtitle` path is read from (the
    catalogue's own).
    """
    import pandas as pd

    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CatalogueError(
            f"{source}: missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(map(str, df.columns)) or '(none)'}"
        )
    df = df.reset_index(drop=True).copy()
    problems: list[tuple[int, str, str]] = []

    ids = df["id"].astype("string").fillna("")
    bad_id = ~ids.str.fullmatch(ID_PATTERN.pattern).fillna(False).astype(bool)
    for i in bad_id[bad_id].index:
        problems.append((i, "id", _id_reason(ids[i])))
    dup = ids.duplicated(keep="first") & ~bad_id
    # Only a catalogue with duplicates pays for this per-row map.
    first_row = {v: i for i, v in reversed(list(ids.items()))} if dup.any() else {}
    for i in dup[dup].index:
        first = first_row[ids[i]]
        # Named as the rows are (line or row): written once the names are known.
        problems.append((i, "id", lambda where, v=ids[i], f=first: f"duplicate id {v!r} (first on {where(f)})"))

    urls = df["url"].astype("string").fillna("").str.strip()
    bad_url = ~urls.str.fullmatch(URL_PATTERN.pattern, case=False).fillna(False).astype(bool)
    bad_url |= ~urls.map(str.isprintable).astype(bool)  # control and invisible characters
    for i in bad_url[bad_url].index:
        problems.append((i, "url", _url_reason(urls[i])))
    df["url"] = urls

    for col in NUMERIC:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = (df[col].notna() & values.isna()) | (values < 0)
        for i in bad[bad].index:
            problems.append((i, col, f"not a non-negative number: {df[col][i]!r}"))
        df[col] = values

    if "language" in df.columns:
        from scribeflow.config.models import LANGUAGES

        # An empty cell leaves the config's language; a code in capitals is still the code.
        codes = df["language"].astype("string").str.strip().str.lower().replace("", pd.NA)
        bad = codes.notna() & ~codes.isin(LANGUAGES).fillna(False).astype(bool)
        for i in bad[bad].index:
            problems.append((i, "language", f"{df['language'][i]!r} is not a Whisper language code (ja, en, zh, ...)"))
        df["language"] = codes.astype(object).where(codes.notna(), None)

    if "subtitle" in df.columns:
        values = _subtitles(df["subtitle"], Path(base) if base else Path.cwd(), problems)
        df["subtitle"] = pd.Series(values, index=df.index, dtype=object)

    if problems:
        problems.sort(key=lambda p: p[:2])
        where = _row_names(path, len(df))
        lines = [f"{where(i)}, column {col}: {reason(where) if callable(reason) else reason}"
                 for i, col, reason in problems[:MAX_REPORTED]]
        more = len(problems) - len(lines)
        if more:
            lines.append(f"... and {more} more")
        raise CatalogueError(
            f"{source}: {len(problems)} problem(s) in {bad_rows(problems)} row(s); nothing was run:\n  "
            + "\n  ".join(lines)
        )
    df["id"] = ids.astype(str)
    return df


def _subtitles(column, base: Path, problems: list) -> list:
    """The subtitle column: an http(s) URL, or a subtitle file (relative to `base`) made
    absolute, so that every job finds it whatever its working directory."""
    from scribeflow.config.layout import SUBTITLE_EXTENSIONS

    values = []
    for i, value in enumerate(column.tolist()):
        value = value.strip() if isinstance(value, str) else None
        if not value:
            values.append(None)
            continue
        if URL_PATTERN.fullmatch(value):
            values.append(value)
            continue
        path = (base / value).absolute()
        if path.suffix.lower() not in SUBTITLE_EXTENSIONS:
            problems.append((i, "subtitle", f"{value!r} is neither an http(s) URL nor a subtitle file "
                                            f"({', '.join(SUBTITLE_EXTENSIONS)})"))
        elif not path.is_file():
            problems.append((i, "subtitle", f"no such file {str(path)!r} (a relative path is read from the "
                                            f"catalogue's folder)"))
        values.append(str(path))
    return values


def _row_names(path: str | Path | None, rows: int):
    """i (0-based data row) -> "line N" of a CSV/TSV file, else "row N". Read again only
    when there are problems: a quoted value may span lines, and pandas skips blank ones."""
    lines = _data_lines(Path(path)) if path and Path(path).suffix.lower() in TEXT_SUFFIXES else None
    if lines is None or len(lines) != rows:
        return lambda i: f"row {i + 1}"
    return lambda i: f"line {lines[i]}"


def _data_lines(path: Path) -> list[int] | None:
    """The line each data record of a CSV/TSV file starts on, blank lines skipped as pandas skips them."""
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    starts, end, header = [], 0, False
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f, delimiter=sep)
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if header:
                    starts.append(start)
                header = True
    except (OSError, csv.Error):
        return None
    return starts


def bad_rows(problems) -> int:
    return len({i for i, _, _ in problems})


def _id_reason(value: str) -> str:
    if value == "":
        return "empty id"
    if len(value) > 64:
        return f"id longer than 64 characters ({len(value)})"
    if value[0] in "-.":
        return f"id {value!r} starts with {value[0]!r}"
    return f"id {value!r} has characters outside [A-Za-z0-9._-]"


def _url_reason(value: str) -> str:
    if value == "":
        return "empty url"
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        return f"url {value[:80]!r} is not http or https"
    if not value.isprintable():
        return f"url {value[:80]!r} contains control or invisible characters"
    return f"url {value[:80]!r} is not a valid http(s) address"


def parse_chunk(chunk: str) -> tuple[int, int]:
    """"K/N" as (K, N); a ValueError unless both are integers and 1 <= K <= N."""
    k, n = (int(x) for x in chunk.split("/"))
    if not 1 <= k <= n:
        raise CatalogueError(f"chunk {chunk!r}: K must be between 1 and N")
    return k, n


def select_chunk(df: pd.DataFrame, chunk: str | None) -> pd.DataFrame:
    """The K-th of N contiguous, near-equal slices (1-based); the whole table for None."""
    if not chunk:
        return df
    k, n = parse_chunk(chunk)
    total = len(df)
    start, stop = (k - 1) * total // n, k * total // n
    return df.iloc[start:stop]


def load(path: str | Path, chunk: str | None = None, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Read, validate (the whole file: a bad row anywhere stops every chunk) and slice.

    With `cache_dir`, the validated table is kept there and reused while the file is
    unchanged: every Snakemake process (a chunk, a cluster job) parses the Snakefile,
    and reading plus validating 171,881 rows costs seconds, loading the cache ~0.05 s.
    """
    df = validated(path, cache_dir) if cache_dir else validate(read_table(path), source=f"catalogue {path}",
                                                              base=Path(path).parent, path=path)
    return select_chunk(df, chunk).set_index("id", drop=False)


def validated(path: str | Path, cache_dir: str | Path) -> pd.DataFrame:
    """The validated catalogue, from the cache when the file's identity has not changed.
    The cache is an Arrow (Feather) file with its key in the schema's metadata: data, not
    code, so a file someone put there cannot run anything when it is read."""
    import pyarrow as pa
    from pyarrow import feather

    path = Path(path)
    key = json.dumps(_cache_key(path))
    cache = Path(cache_dir) / f"catalogue-{hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:16]}.arrow"
    try:
        table = feather.read_table(cache)
        meta = table.schema.metadata or {}
        if meta.get(b"scribeflow_key") == key.encode():
            df = table.to_pandas()
            # Arrow gives strings back as pandas' str dtype with NaN; validation left them
            # Python objects with None (an empty language is None, not NaN).
            for column in json.loads(meta.get(b"scribeflow_objects", b"[]")):
                df[column] = df[column].astype(object).where(df[column].notna(), None)
            return df
    except (OSError, ValueError, pa.ArrowException):
        pass  # missing, stale or unreadable: validate again
    df = validate(read_table(path), source=f"catalogue {path}", base=path.parent, path=path)
    from scribeflow.files import atomic_path

    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
        objects = json.dumps([c for c in df.columns if df[c].dtype == object])
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"scribeflow_key": key.encode(),
                                               b"scribeflow_objects": objects.encode()})
        with atomic_path(cache) as tmp:
            feather.write_feather(table, tmp)
    except (OSError, pa.ArrowException):
        pass  # a read-only working directory (or a column Arrow cannot hold) only loses the speed-up
    return df


def _cache_key(path: Path) -> tuple:
    """What must be unchanged for a cached validation to hold: the file and the rules."""
    import pandas as pd

    try:
        st = path.stat()
    except FileNotFoundError:
        raise CatalogueError(f"catalogue {path}: no such file") from None
    rules = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()
    return (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino, rules, pd.__version__)
