"""AliExpress multi-country search (the learning-to-rank / multi-task release, Tianchi data set 74690).

One folder per country, ``AliExpress_<CC>/`` (NL, ES, FR, US, RU), each with ``train.csv`` and
``test.csv``, one row per item shown in a search::

    search_id,categorical_1,...,categorical_15,numerical_1,...,numerical_63,click,conversion

``--events`` is the folder holding the country folders (or one country folder). Rows of one
``search_id`` form one list (its items in file order; the events carry no ``surface``, so both the
CTR samples and the re-ranking lists hold every impression); the country is the region (sorted country codes
-> 0, 1, ...), so the lists carry a region for the re-ranker. Click and conversion become click and
purchase labels.

The release is anonymised: it has no timestamps (row order stands in for time: every country's
train rows, then every country's test rows, so the split is the files'), no user ids (each search is
its own user), no titles, photos or queries (item-to-item pre-training pairs). Nor does it say which
categorical feature identifies the item: this preset takes ``ITEM_COLUMN`` (``categorical_1``) as the
item id, and says so in the summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, col, find_file, read_any, to_int, to_str
from mmrank.data.source import Builder, Source, events_table, wide_to_long
from mmrank.errors import DataError

ITEM_COLUMN = "categorical_1"


def _countries(events: Path) -> list[tuple[str, Path]]:
    if find_file(events, "train") or find_file(events, "test"):
        return [(events.name.removeprefix("AliExpress_"), events)]
    found = sorted((p.name.removeprefix("AliExpress_"), p) for p in events.glob("AliExpress_*") if p.is_dir())
    if not found:
        raise DataError("no AliExpress_<CC>/ folder with train / test (.csv, .parquet or .jsonl) here", file=str(events))
    return found


def _add_events(b: Builder, tables: list[tuple[str, str, Path, pa.Table]], smap: IdMap, imap: IdMap,
                region_of: dict[str, int]) -> tuple[int | None, dict[int, tuple[Path, int]]]:
    """Each file's impressions, clicks and purchases (row order is time; a search's rows share the
    time of its first); the test files' first time (the split) and each item's first (file, row)."""
    offset, split = 0, None
    first_row: dict[int, tuple[Path, int]] = {}
    for part, cc, p, t in tables:
        f, n = str(p), t.num_rows
        sid = to_str(col(t, "search_id", f))
        raw_item = to_str(col(t, ITEM_COLUMN, f))
        for column, values in (("search_id", sid), (ITEM_COLUMN, raw_item)):
            for r, s in enumerate(values):
                if s is None:
                    raise DataError("empty where a value is required", file=f, row=r, column=column)
        click = to_int(col(t, "click", f), f, "click")
        conv = to_int(col(t, "conversion", f), f, "conversion")
        req = smap.map([f"{cc}:{s}" for s in sid])
        item = imap.map(raw_item)
        if part == "test" and split is None and offset:
            split = offset
        ts = offset + np.arange(n, dtype=np.int64)
        uniq, first = np.unique(req, return_index=True)
        ts = ts[first][np.searchsorted(uniq, req)]
        rows, kinds = wide_to_long(n, {"click": click, "purchase": conv})
        b.add_events(p, events_table(ts=ts[rows], user_id=req[rows], item_id=item[rows], event=kinds,
                                     request_id=req[rows], region=np.full(len(rows), region_of[cc])),
                     rows)
        for r, i in enumerate(item):
            first_row.setdefault(int(i), (p, r))
        offset += n
    return split, first_row


def _add_items(b: Builder, first_row: dict[int, tuple[Path, int]], imap: IdMap,
               images: ImageFolder | None) -> None:
    """The items the searches name, each from the file and row it first appears in."""
    by_file: dict[str, list[int]] = {}
    for i, (p, r) in first_row.items():
        by_file.setdefault(str(p), []).append(i)
    keys_of = {v: k for k, v in imap.codes.items()} if not imap.numeric else {}
    for path, ids in by_file.items():
        ids.sort()
        b.add_items(path, pa.table({
            "item_id": pa.array(ids, pa.int64()),
            "source_item_id": pa.array([keys_of.get(i, str(i)) for i in ids], pa.string()),
            "image_path": pa.array([images.find(keys_of.get(i, str(i))) if images else None for i in ids],
                                   pa.string()),
        }), np.asarray([first_row[i][1] for i in ids], np.int64))


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    b = Builder("aliexpress")
    countries = _countries(events)
    region_of = {cc: i for i, (cc, _) in enumerate(countries)}
    tables = []
    for part in ("train", "test"):
        for cc, folder in countries:
            p = find_file(folder, part)
            if p is not None:
                tables.append((part, cc, p, read_any(p)))
    keys: list[str] = []
    item_keys: list[str] = []
    for _, cc, p, t in tables:
        f = str(p)
        keys += [f"{cc}:{s}" for s in to_str(col(t, "search_id", f))]
        item_keys += [str(v) for v in to_str(col(t, ITEM_COLUMN, f))]
    smap = IdMap(keys)
    imap = IdMap(item_keys)
    split, first_row = _add_events(b, tables, smap, imap, region_of)
    _add_items(b, first_row, imap, images)
    notes = [f"countries -> regions: {', '.join(f'{cc}={i}' for cc, i in region_of.items())}",
             f"item id assumed to be {ITEM_COLUMN} (the release does not name its item feature)",
             "no user ids: each search is its own user (GAUC is per search)",
             "search lists with no surface column: the CTR samples and the re-ranking lists both hold "
             "every impression"]
    src = b.build(has_impressions=True, notes=notes, split_ts=split)
    src.substitutes["time"] = "no timestamps: row order stands in for time (train files, then test files)"
    src.event_columns = {"item_id": ITEM_COLUMN, "request_id": "search_id"}
    return src
