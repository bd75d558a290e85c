"""Reading a source's raw files: CSV, Parquet or JSON Lines through PyArrow, and typed cells.

Every cell conversion names the file, the row (0-based data row) and the column at fault.
:func:`read_any` tells the format by the file's first bytes (Parquet's ``PAR1``, a JSON object's ``{``)
before its suffix, so a Parquet catalog named ``articles.csv`` still reads as Parquet.

Example::

    >>> from mmrank.data.readers import read_any, to_int
    >>> t = read_any("articles.parquet")                    # doctest: +SKIP
    >>> ids = to_int(t.column("article_id"), "articles.parquet", "article_id")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.errors import DataError

TS_LIMIT = 1 << 32


def read_csv(path: str | Path, names: list[str] | None = None, delimiter: str = ",") -> pa.Table:
    """A CSV file as a table of strings (no type guessing). ``names`` for a file without a header."""
    import pyarrow.csv as pcsv

    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    if names is None:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f, delimiter=delimiter), None)
        except UnicodeDecodeError:
            raise DataError("not a readable CSV file (not UTF-8 text; Parquet and JSON Lines are read "
                            "by their content)", file=str(path), row=0) from None
        if not header:
            raise DataError("empty file (no header row)", file=str(path), row=0)
        names = [h.strip() for h in header]
        skip = 1
    else:
        skip = 0
    try:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=skip, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=True, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as err:
        raise DataError(f"not a readable CSV file ({' '.join(str(err).split())})", file=str(path)) from None


def read_parquet(path: str | Path) -> pa.Table:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=str(path)) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """JSON Lines (one object per line; a bad line names its row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON ({err.msg})", file=str(path), row=i) from None
            if not isinstance(rec, dict):
                raise DataError("expected a JSON object", file=str(path), row=i)
            out.append(rec)
    return out


def file_format(path: str | Path) -> str:
    """``parquet``, ``jsonl`` or ``csv``: by the first bytes (``PAR1``; a ``{``), else by the suffix."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file", file=str(p))
    with open(p, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def read_any(path: str | Path, names: list[str] | None = None, delimiter: str = ",") -> pa.Table:
    """Parquet, JSON Lines or CSV (:func:`file_format`). ``names`` and ``delimiter`` apply to CSV only
    (a header-less file's column names); a Parquet or JSON file keeps its own names."""
    p = Path(path)
    kind = file_format(p)
    if kind == "parquet":
        return read_parquet(p)
    if kind == "jsonl":
        recs = read_jsonl(p)
        cols = list(dict.fromkeys(k for r in recs for k in r))
        return pa.table({n: pa.array([_plain(r.get(n)) for r in recs]) for n in cols}) if recs else pa.table({})
    return read_csv(p, names=names, delimiter=delimiter)


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool, bytes)) else json.dumps(v)


def col(table: pa.Table, name: str, file: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"missing column (the file has: {', '.join(table.column_names)})", file=file,
                        row=0, column=name)
    return table.column(name)


def _bad_row(values: list[Any], ok) -> int | None:  # noqa: ANN001
    for i, v in enumerate(values):
        if not ok(v):
            return i
    return None


def to_int(arr: pa.ChunkedArray | pa.Array, file: str, column: str, *, required: bool = True,
           rows: np.ndarray | None = None) -> np.ndarray:
    """Integers (int64); a null in a required column or a non-integer names its row."""
    a = arr if not isinstance(arr, pa.ChunkedArray) else arr.combine_chunks()
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        a = pc.utf8_trim_whitespace(a)
        a = pc.if_else(pc.equal(a, ""), pa.scalar(None, a.type), a)
    if required and a.null_count:
        r = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("empty where a value is required", file=file,
                        row=int(rows[r]) if rows is not None else r, column=column)
    try:
        out = pc.cast(a, pa.int64(), safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        def ok(v: Any) -> bool:
            if v is None:
                return True
            try:
                int(str(v))
                return True
            except ValueError:
                return False
        values = a.to_pylist()
        r = _bad_row(values, ok) or 0
        raise DataError(f"expected an integer, got {values[r]!r}", file=file,
                        row=int(rows[r]) if rows is not None else r, column=column) from None
    return out.to_numpy(zero_copy_only=False) if not out.null_count else \
        np.asarray(pc.fill_null(out, -1).to_numpy(zero_copy_only=False))


def to_float(arr: pa.ChunkedArray | pa.Array, file: str, column: str,
             rows: np.ndarray | None = None) -> np.ndarray:
    """Floats; empty cells (and 'None', 'null', '') become NaN; anything else non-numeric names its row."""
    values = arr.to_pylist()
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v.strip() in ("", "None", "null", "NaN", "nan", "-")):
            continue
        try:
            out[i] = float(str(v).replace("$", "").replace(",", "").strip())
        except ValueError:
            raise DataError(f"expected a number, got {v!r}", file=file,
                            row=int(rows[i]) if rows is not None else i, column=column) from None
    return out


def to_ts(arr: pa.ChunkedArray | pa.Array, file: str, column: str, fmt: str = "unix",
          rows: np.ndarray | None = None) -> np.ndarray:
    """Seconds since the epoch from ``unix`` (s), ``unix_ms``, ``date`` (YYYY-MM-DD) or ``iso``."""
    if fmt in ("unix", "unix_ms"):
        ts = to_int(arr, file, column, rows=rows)
        ts = ts // 1000 if fmt == "unix_ms" else ts
    elif fmt in ("date", "iso"):
        values = arr.to_pylist()
        ts = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            try:
                d = dt.datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
            except ValueError:
                raise DataError(f"expected a {'date YYYY-MM-DD' if fmt == 'date' else 'ISO time'}, "
                                f"got {v!r}", file=file, row=int(rows[i]) if rows is not None else i,
                                column=column) from None
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.timezone.utc)
            ts[i] = int(d.timestamp())
    else:
        raise DataError(f"unknown time format {fmt!r}; expected unix, unix_ms, date or iso", column=column)
    bad = np.flatnonzero((ts < 0) | (ts >= TS_LIMIT))
    if len(bad):
        r = int(bad[0])
        raise DataError(f"time {int(ts[r])} out of range (seconds since 1970, before 2106)", file=file,
                        row=int(rows[r]) if rows is not None else r, column=column)
    return ts.astype(np.int64)


def to_str(arr: pa.ChunkedArray | pa.Array) -> list[str | None]:
    return [None if v is None or (isinstance(v, str) and not v.strip()) else str(v).strip()
            for v in arr.to_pylist()]


class IdMap:
    """Item or user ids of a source: integers when every id is one, else codes (sorted, from 0)."""

    def __init__(self, values: list[Any]) -> None:
        vals = [str(v).strip() for v in values if v is not None]
        self.numeric = all(_is_int(v) for v in vals)
        self.codes: dict[str, int] = {}
        if not self.numeric:
            self.codes = {v: i for i, v in enumerate(sorted(set(vals)))}

    def map(self, values: list[Any]) -> np.ndarray:
        """int64 ids; -1 for a value not known (codes) or empty."""
        out = np.full(len(values), -1, np.int64)
        for i, v in enumerate(values):
            if v is None:
                continue
            s = str(v).strip()
            if self.numeric:
                out[i] = int(s) if _is_int(s) else -1
            else:
                out[i] = self.codes.get(s, -1)
        return out


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """One dict per row, nested values kept (JSON Lines as parsed; Parquet's lists and structs as
    Python lists and dicts; CSV cells as strings)."""
    if file_format(path) == "jsonl":
        return read_jsonl(path)
    return read_any(path).to_pylist()


TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".json")


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.csv`` (or .parquet, .pq, .jsonl, .json), the first that exists."""
    for suffix in TABLE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None
