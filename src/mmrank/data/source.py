"""What a source (a preset or a column mapping) hands the importer: a :class:`Source`.

Items and events in mmrank's column names, typed, each row remembering its file and row, plus what
the source knows about itself (notes, substitutes, defaults it filled). :class:`Builder` collects the
parts a preset reads; :func:`events_table`, :func:`event_kinds` and :func:`wide_to_long` are the
conversions every preset shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmrank.data.schemas import EVENT_TYPES
from mmrank.errors import ConfigError, DataError


@dataclass
class Source:
    """Items and events in mmrank's columns, typed; ``*_file``/``*_row`` locate each row in its file.

    ``items`` columns: item_id (int64) and any of title, category, price, created_at, image (bytes),
    image_path (absolute), plus free attribute columns. ``events`` columns: ts, user_id, item_id, event
    (one of EVENT_TYPES) and any of request_id, position, region, query_text, query_image, surface, and
    ``price`` (the price paid, when the log has it: the items' price is then derived point-in-time).
    """

    name: str
    items: pa.Table
    events: pa.Table
    files: list[str]
    items_file: np.ndarray        # index into files, per items row
    items_row: np.ndarray
    events_file: np.ndarray
    events_row: np.ndarray
    has_impressions: bool
    notes: list[str] = field(default_factory=list)
    substitutes: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)   # raw rows not mapped to events, by reason
    unknown_item_rows: dict[str, list[int]] = field(default_factory=dict)  # rows a preset kept out (joins)
    split_ts: int | None = None
    users: pa.Table | None = None
    query_images: pa.Table | None = None
    item_columns: dict[str, str] = field(default_factory=dict)   # mmrank column -> source column
    event_columns: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)  # optional source column -> the default it took
    images_folder: str | None = None  # the folder photos were found in, and its layout (summary)
    vectors: Any = None  # mmrank.data.import_vectors.ItemVectors: item vectors the source brings


class Builder:
    """Collects items and events (with their file and row) and returns a :class:`Source`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.files: list[str] = []
        self.items: list[tuple[int, pa.Table, np.ndarray]] = []
        self.events: list[tuple[int, pa.Table, np.ndarray]] = []

    def file(self, path: Path | str) -> int:
        s = str(path)
        if s not in self.files:
            self.files.append(s)
        return self.files.index(s)

    def add_items(self, path: Path | str, table: pa.Table, rows: np.ndarray | None = None) -> None:
        self.items.append((self.file(path), table, np.arange(table.num_rows) if rows is None else rows))

    def add_events(self, path: Path | str, table: pa.Table, rows: np.ndarray | None = None) -> None:
        self.events.append((self.file(path), table, np.arange(table.num_rows) if rows is None else rows))

    def build(self, *, has_impressions: bool, **kw: Any) -> Source:
        def cat(parts: list[tuple[int, pa.Table, np.ndarray]]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
            if not parts:
                return pa.table({"item_id": pa.array([], pa.int64())}), np.zeros(0, np.int64), np.zeros(0, np.int64)
            t = pa.concat_tables([p[1] for p in parts], promote_options="default")
            return (t, np.concatenate([np.full(p[1].num_rows, p[0]) for p in parts]).astype(np.int64),
                    np.concatenate([p[2] for p in parts]).astype(np.int64))

        it, itf, itr = cat(self.items)
        ev, evf, evr = cat(self.events)
        return Source(self.name, it, ev, self.files, itf, itr, evf, evr, has_impressions, **kw)


def event_kinds(values: list[Any], mapping: dict[str, Any], file: str, column: str,
                rows: np.ndarray | None = None) -> tuple[list[str | None], dict[str, int]]:
    """Raw event values -> EVENT_TYPES (None: not an event, counted by value); an unmapped value names its row."""
    out: list[str | None] = []
    ignored: dict[str, int] = {}
    table = {str(k): v for k, v in mapping.items()}
    for i, v in enumerate(values):
        key = None if v is None else str(v).strip()
        if key not in table:
            raise DataError(f"unknown event value {v!r}; the mapping knows {', '.join(map(repr, table))}",
                            file=file, row=int(rows[i]) if rows is not None else i, column=column)
        kind = table[key]
        if kind is None:
            ignored[f"'{key}' rows in {Path(file).name}"] = ignored.get(f"'{key}' rows in {Path(file).name}", 0) + 1
        elif kind not in EVENT_TYPES:
            raise ConfigError(f"event_values: {key!r} -> {kind!r}; expected one of {', '.join(EVENT_TYPES)} or null")
        out.append(kind)
    return out, ignored


def events_table(*, ts: np.ndarray, user_id: np.ndarray, item_id: np.ndarray, event: list[str],
                 **optional: Any) -> pa.Table:
    cols: dict[str, Any] = {"ts": pa.array(ts, pa.int64()), "user_id": pa.array(user_id, pa.int64()),
                            "item_id": pa.array(item_id, pa.int64()), "event": pa.array(event, pa.string())}
    for k, v in optional.items():
        if v is not None:
            cols[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
    return pa.table(cols)


def wide_to_long(n: int, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """One impression per row plus one event per positive label: ``(source row of each, kinds)``."""
    rows = [np.arange(n)]
    kinds = [np.full(n, "impression", dtype=object)]
    for kind in ("click", "cart", "purchase"):
        if kind in labels:
            hit = np.flatnonzero(labels[kind] > 0)
            rows.append(hit)
            kinds.append(np.full(len(hit), kind, dtype=object))
    return np.concatenate(rows), np.concatenate(kinds).tolist()
