"""`mmrank data import`: a team's own catalog and logs (or a public data set) -> a run directory.

A *source* (a preset for a public format, or a column mapping, see :mod:`mmrank.data.presets`) reads
the files and returns a :class:`Source`: items and events in mmrank's column names, typed, each row
remembering its file and row. :func:`import_source` then

1. checks the items (duplicate ids, undecodable images) and fills what the data lacks, counting it: a
   title from the category, a grey image, price 0, ``created_at`` = the item's first event;
2. keeps events naming unknown items out of the run (counted per file, never dropped silently);
3. when the log has no impressions, makes one list per interaction: the item the user interacted
   with and ``negatives_per_positive`` items sampled uniformly from the catalog items that exist at
   that time, in random slots (the sampled items are flagged ``sampled`` in events.parquet);
4. writes items, users, events (and query images) to a temporary run directory, builds the derived
   tables there (:func:`mmrank.data.samples.build_derived`), replaces the pre-training pairs by
   item-to-item pairs when the log has no queries, writes ``manifest.json``, and only then moves
   ``data/`` into the run directory. A failed import leaves the run directory as it was.

Whatever is substituted is recorded in ``manifest.json["substitutes"]``; later stages print it and the
report labels results with it.

Example::

    >>> from mmrank.data.importer import import_data
    >>> summary = import_data("runs/hm", preset="hm", items="articles.csv",
    ...                       events="transactions_train.csv", images="images/")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.data.config import DataConfig
from mmrank.data.schemas import EVENT_TYPES, SURFACES
from mmrank.errors import DataError

TS_LIMIT = 1 << 32
MAX_LIST = 1000  # positions must stay below the 1024 slots of a request


# ---------------------------------------------------------------------------------------------------
# Reading raw files: every cell conversion names the file, the row (0-based data row) and the column.

def read_csv(path: str | Path, names: list[str] | None = None, delimiter: str = ",") -> pa.Table:
    """A CSV file as a table of strings (no type guessing). ``names`` for a file without a header."""
    import pyarrow.csv as pcsv

    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    if names is None:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=delimiter), None)
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


def read_any(path: str | Path) -> pa.Table:
    """Parquet (``.parquet``/``.pq``), JSON Lines (``.jsonl``/``.json``) or CSV (anything else)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet(p)
    if suffix in (".jsonl", ".json"):
        recs = read_jsonl(p)
        names = list(dict.fromkeys(k for r in recs for k in r))
        return pa.table({n: pa.array([_plain(r.get(n)) for r in recs]) for n in names}) if recs else pa.table({})
    return read_csv(p)


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool, bytes)) else json.dumps(v)


def _strings(arr: pa.Array | pa.ChunkedArray) -> list[Any]:
    return arr.to_pylist()


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


# ---------------------------------------------------------------------------------------------------
# What a source returns

@dataclass
class Source:
    """Items and events in mmrank's columns, typed; ``*_file``/``*_row`` locate each row in its file.

    ``items`` columns: item_id (int64) and any of title, category, price, created_at, image (bytes),
    image_path (absolute), plus free attribute columns. ``events`` columns: ts, user_id, item_id, event
    (one of EVENT_TYPES) and any of request_id, position, region, query_text, query_image, surface.
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
    unknown_items: dict[str, int] = field(default_factory=dict)  # filled by the preset for joins
    split_ts: int | None = None
    users: pa.Table | None = None
    query_images: pa.Table | None = None
    item_columns: dict[str, str] = field(default_factory=dict)   # mmrank column -> source column
    event_columns: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# From a source to the run's tables

_GREY: list[bytes] = []


def placeholder_image() -> bytes:
    """A 32x32 mid-grey JPEG: the photo of an item that has none (counted, and labelled)."""
    if not _GREY:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, "JPEG", quality=90)
        _GREY.append(buf.getvalue())
    return _GREY[0]


def _where(src: Source, kind: str, i: int) -> tuple[str, int]:
    f = src.items_file if kind == "items" else src.events_file
    r = src.items_row if kind == "items" else src.events_row
    return src.files[int(f[i])], int(r[i])


def _item_table(src: Source, first_ts: dict[int, int], fallback_ts: int,
                check_images: bool) -> tuple[pa.Table, dict[str, int]]:
    from mmrank.data.io import decode_image

    t = src.items
    n = t.num_rows
    ids = t.column("item_id").to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        i = int(order[dup[0] + 1])
        f, r = _where(src, "items", i)
        raise DataError(f"duplicate item id {int(ids[i])}", file=f, row=r,
                        column=src.item_columns.get("item_id", "item_id"))
    counts = Counter()
    names = t.column_names
    cats = to_str(t.column("category")) if "category" in names else [None] * n
    cats = [c if c is not None else "unknown" for c in cats]
    counts["without_category"] = sum(1 for c in (to_str(t.column("category")) if "category" in names
                                                 else [None] * n) if c is None)
    titles = to_str(t.column("title")) if "title" in names else [None] * n
    for i, tt in enumerate(titles):
        if tt is None:
            titles[i] = f"{cats[i]} item {int(ids[i])}"
            counts["without_title"] += 1
    price = t.column("price").to_numpy(zero_copy_only=False).astype(np.float64) if "price" in names \
        else np.full(n, np.nan)
    counts["without_price"] = int(np.isnan(price).sum())
    price = np.where(np.isnan(price), 0.0, price)
    created = (t.column("created_at").to_numpy(zero_copy_only=False).astype(np.float64)
               if "created_at" in names else np.full(n, np.nan))
    created_out = np.empty(n, np.int64)
    for i in range(n):
        created_out[i] = int(created[i]) if not np.isnan(created[i]) else \
            first_ts.get(int(ids[i]), fallback_ts)
    blobs = t.column("image").to_pylist() if "image" in names else [None] * n
    paths = t.column("image_path").to_pylist() if "image_path" in names else [None] * n
    image: list[bytes | None] = []
    image_path: list[str | None] = []
    for i in range(n):
        b, p = blobs[i], paths[i]
        if b is None and p is not None and not Path(p).is_file():
            f, r = _where(src, "items", i)
            raise DataError(f"no such image file {p}", file=f, row=r,
                            column=src.item_columns.get("image_path", "image_path"))
        if b is None and p is None:
            b = placeholder_image()
            counts["without_image"] += 1
        elif check_images:
            try:
                decode_image(b if b is not None else Path(p).read_bytes())
            except (ValueError, OSError) as err:
                f, r = _where(src, "items", i)
                col_name = src.item_columns.get("image" if b is not None else "image_path", "image")
                raise DataError(f"{err}" + (f" ({p})" if p else ""), file=f, row=r, column=col_name) from None
        image.append(b)
        image_path.append(None if b is not None else str(Path(p).resolve()))
    out = {"item_id": pa.array(ids), "title": pa.array(titles, pa.string()),
           "image": pa.array(image, pa.binary()), "image_path": pa.array(image_path, pa.string()),
           "category": pa.array(cats, pa.string()), "price": pa.array(price),
           "created_at": pa.array(created_out)}
    for c in names:
        if c not in out:
            out[c] = t.column(c)
    return pa.table(out), dict(counts)


def _order_in_request(req: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal ``req`` values (rows sorted by request)."""
    n = len(req)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[True, req[1:] != req[:-1]]
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - first


RANK = {"impression": 0, "click": 1, "cart": 2, "purchase": 3}


def _lists_from_interactions(ev: dict[str, np.ndarray], item_ids: np.ndarray, created: np.ndarray,
                             k: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Logs without impressions -> one list per click: the clicked item and ``k`` sampled items.

    Every click opens a request; a cart or purchase joins the latest request of the same user and
    item (or opens one, with the click implied). Sampled items exist at the request's time
    (``created_at <= ts``), differ from the clicked item, and take random slots with it.
    """
    rng = np.random.default_rng(seed)
    ts, user, item, kind = ev["ts"], ev["user_id"], ev["item_id"], ev["event_rank"]
    o = np.lexsort((kind, ts, item, user))
    ts, user, item, kind = ts[o], user[o], item[o], kind[o]
    same_pair = np.r_[False, (user[1:] == user[:-1]) & (item[1:] == item[:-1])]
    starts = (kind == RANK["click"]) | ~same_pair
    req = np.cumsum(starts) - 1
    n_req = int(req[-1]) + 1 if len(req) else 0
    anchor = np.flatnonzero(starts)
    implied = int((kind[anchor] != RANK["click"]).sum())
    # one label of each kind per request (a second cart of the same item in one request is the same slot)
    key = req.astype(np.int64) * 4 + kind
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), bool)
    keep[first] = True
    merged = int(len(key) - keep.sum())
    # slots: the interacted item and k sampled items, shuffled
    slots = np.argsort(rng.random((n_req, k + 1)), axis=1).astype(np.int64)  # slot of column j
    pos_slot = slots[:, 0]
    c_order = np.argsort(created, kind="stable")
    c_sorted = created[c_order]
    r_ts = ts[anchor]
    avail = np.maximum(np.searchsorted(c_sorted, r_ts, side="right"), 1)
    pick = (rng.random((n_req, k)) * avail[:, None]).astype(np.int64)
    neg = item_ids[c_order][pick]

    def clashes() -> np.ndarray:  # the clicked item itself, or an item already earlier in the list
        bad = neg == item[anchor][:, None]
        for j in range(1, k):
            bad[:, j] |= (neg[:, :j] == neg[:, j:j + 1]).any(axis=1)
        return bad

    clash = clashes()
    for _ in range(3):  # draw again; what still clashes (a catalog too small) is left out of the list
        if not clash.any():
            break
        re = (rng.random(clash.sum()) * np.repeat(avail, clash.sum(axis=1))).astype(np.int64)
        neg[clash] = item_ids[c_order][re]
        clash = clashes()
    # events: impression + click of the interacted item at its slot, its later labels, sampled impressions
    r_user = user[anchor]
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("ts", "user_id", "item_id", "request_id",
                                                          "position", "event_rank", "sampled", "src")}

    def add(ts_, user_, item_, req_, pos_, rank_, sampled_, src_) -> None:  # noqa: ANN001
        for c, v in zip(parts, (ts_, user_, item_, req_, pos_, rank_, sampled_, src_)):
            parts[c].append(np.asarray(v))

    reqs = np.arange(n_req)
    add(r_ts, r_user, item[anchor], reqs, pos_slot, np.zeros(n_req, np.int64), np.zeros(n_req, bool), anchor)
    add(r_ts, r_user, item[anchor], reqs, pos_slot, np.ones(n_req, np.int64), np.zeros(n_req, bool), anchor)
    later = keep & (kind > RANK["click"])
    add(ts[later], user[later], item[later], req[later], pos_slot[req[later]], kind[later],
        np.zeros(later.sum(), bool), np.flatnonzero(later))
    rr, jj = np.nonzero(~clash)
    add(r_ts[rr], r_user[rr], neg[rr, jj], rr, slots[rr, jj + 1], np.zeros(len(rr), np.int64),
        np.ones(len(rr), bool), anchor[rr])
    out = {c: np.concatenate(v) for c, v in parts.items()}
    out["src"] = o[out["src"]]  # back to the source event row
    return out, {"implied_clicks": implied, "merged_repeats": merged, "requests": n_req,
                 "sampled_impressions": int(len(rr))}


def _events_table(src: Source, keep: np.ndarray, items: pa.Table, cfg: DataConfig) -> tuple[pa.Table, dict]:
    t = src.events
    names = t.column_names
    ev = {"ts": t.column("ts").to_numpy()[keep].astype(np.int64),
          "user_id": t.column("user_id").to_numpy()[keep].astype(np.int64),
          "item_id": t.column("item_id").to_numpy()[keep].astype(np.int64)}
    kinds = t.column("event").to_pylist()
    ev["event_rank"] = np.asarray([RANK[k] for k in kinds], np.int64)[keep]
    src_rows = np.flatnonzero(keep)
    info: dict[str, int] = {}
    if src.has_impressions:
        req = t.column("request_id").to_numpy()[keep].astype(np.int64)
        if "position" in names:
            pos = t.column("position").to_numpy()[keep].astype(np.int64)
        else:  # slots in row order within each request (the impression rows of the file)
            o = np.lexsort((np.arange(len(req)), req))
            pos = np.empty(len(req), np.int64)
            imp = ev["event_rank"][o] == 0
            order = _order_in_request(req[o][imp])
            # labels sit at their impression's slot: match by (request, item)
            slot_of = dict(zip(zip(req[o][imp].tolist(), ev["item_id"][o][imp].tolist()), order.tolist()))
            for j, r in enumerate(o):
                pos[r] = slot_of.get((int(req[r]), int(ev["item_id"][r])), 0)
        bad = np.flatnonzero((pos < 0) | (pos >= MAX_LIST))
        if len(bad):
            f, r = _where(src, "events", int(src_rows[bad[0]]))
            raise DataError(f"position {int(pos[bad[0]])} outside 0..{MAX_LIST - 1}", file=f, row=r,
                            column=src.event_columns.get("position", "position"))
        ev.update(request_id=req, position=pos, sampled=np.zeros(len(req), bool), src=src_rows)
        slot = req * 1024 + pos
        is_imp = ev["event_rank"] == 0
        info = {"labels_without_impression": int((~np.isin(slot[~is_imp], slot[is_imp])).sum())}
    else:
        created = items.column("created_at").to_numpy()
        ids = items.column("item_id").to_numpy()
        ev, info = _lists_from_interactions(ev, ids, created, cfg.negatives_per_positive, cfg.seed)
        ev["src"] = src_rows[ev["src"]]
    rows = ev["src"]
    region = (t.column("region").to_numpy(zero_copy_only=False)[rows].astype(np.int64)
              if "region" in names else np.zeros(len(rows), np.int64))
    if len(region) and (region.min() < 0 or region.max() > 32767):
        i = int(np.flatnonzero((region < 0) | (region > 32767))[0])
        f, r = _where(src, "events", int(rows[i]))
        raise DataError(f"region {int(region[i])} outside 0..32767", file=f, row=r,
                        column=src.event_columns.get("region", "region"))
    o = np.lexsort((ev["event_rank"], ev["position"], ev["request_id"], ev["ts"]))
    cols: dict[str, pa.Array] = {
        "ts": pa.array(ev["ts"][o]), "user_id": pa.array(ev["user_id"][o]),
        "item_id": pa.array(ev["item_id"][o]), "request_id": pa.array(ev["request_id"][o]),
        "position": pa.array(ev["position"][o].astype(np.int16)),
        "event": pa.array(np.asarray(EVENT_TYPES, dtype=object)[ev["event_rank"][o]].tolist(), pa.string()),
    }
    for c in ("query_text", "query_image"):
        cols[c] = (t.column(c).combine_chunks().take(pa.array(rows[o])).cast(pa.string())
                   if c in names else pa.nulls(len(o), pa.string()))
    cols["region"] = pa.array(region[o].astype(np.int16))
    if "surface" in names:
        cols["surface"] = t.column("surface").combine_chunks().take(pa.array(rows[o])).cast(pa.string())
        bad = pc.invert(pc.fill_null(pc.is_in(cols["surface"], pa.array(SURFACES)), True))
        if pc.any(bad).as_py():
            i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            f, r = _where(src, "events", int(rows[o][i]))
            raise DataError(f"surface {cols['surface'][i].as_py()!r}: expected display or search",
                            file=f, row=r, column=src.event_columns.get("surface", "surface"))
    cols["sampled"] = pa.array(ev["sampled"][o])
    return pa.table(cols), info


def item_to_item_pairs(events: pa.Table, items: pa.Table, split_ts: int) -> pa.Table:
    """Pre-training pairs for a log without queries: the title of the item a user clicked just before
    (query, text) -> the next different item the same user clicked (positive), at the later click's ts."""
    from mmrank.data.schemas import PAIRS

    ev = events.filter(pc.equal(events.column("event"), "click"))
    user, item = ev.column("user_id").to_numpy(), ev.column("item_id").to_numpy()
    ts, req = ev.column("ts").to_numpy(), ev.column("request_id").to_numpy()
    o = np.lexsort((req, ts, user))
    user, item, ts, req = user[o], item[o], ts[o], req[o]
    ok = np.r_[False, (user[1:] == user[:-1]) & (item[1:] != item[:-1])]
    nxt = np.flatnonzero(ok)
    prev = nxt - 1
    ids = items.column("item_id").to_numpy()
    io_ = np.argsort(ids)
    titles = np.asarray(items.column("title").to_pylist(), dtype=object)
    q = titles[io_[np.searchsorted(ids[io_], item[prev])]]
    n = len(nxt)
    return pa.table({
        "request_id": pa.array(req[nxt]), "ts": pa.array(ts[nxt]), "user_id": pa.array(user[nxt]),
        "query_modality": pa.array(["text"] * n, pa.string()),
        "query_text": pa.array(q.tolist(), pa.string()), "query_image": pa.nulls(n, pa.string()),
        "pos_item_id": pa.array(item[nxt]),
        "hard_neg_item_ids": pa.array([[] for _ in range(n)], pa.list_(pa.int64())),
        "split": pa.array(np.where(ts[nxt] < split_ts, "train", "test").tolist(), pa.string()),
    }, schema=PAIRS)


def _span(ts: np.ndarray) -> dict[str, Any]:
    if not len(ts):
        return {}
    lo, hi = int(ts.min()), int(ts.max())
    out: dict[str, Any] = {"first_ts": lo, "last_ts": hi, "days": round((hi - lo) / 86400, 2)}
    if lo >= 315_532_800:  # after 1980: a real clock, worth printing as dates
        out["first"] = dt.datetime.fromtimestamp(lo, dt.timezone.utc).isoformat(timespec="seconds")
        out["last"] = dt.datetime.fromtimestamp(hi, dt.timezone.utc).isoformat(timespec="seconds")
    return out


class _Phases:
    """A one-line status of the import's current phase on stderr (rich), when asked for."""

    def __init__(self, enabled: bool) -> None:
        self.status = None
        if enabled:
            from rich.console import Console

            self.status = Console(stderr=True).status("import")
            self.status.start()

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status.update(f"import: {text}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def import_source(run: str | Path, src: Source, cfg: DataConfig | None = None, *,
                  replace: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write ``src`` into ``run/data`` (see the module docstring); returns the summary (also in the
    manifest). Nothing is written to ``run`` unless every step succeeds."""
    phase = _Phases(progress)
    try:
        return _import_source(run, src, cfg or DataConfig(), replace, phase)
    finally:
        phase.stop()


def _import_source(run: str | Path, src: Source, cfg: DataConfig, replace: bool, phase: _Phases) -> dict[str, Any]:
    from mmrank.data.io import write_table
    from mmrank.data.samples import build_derived

    run = Path(run)
    if (run / "data").exists() and not replace:
        raise DataError(f"{run}/data exists: import into a new run directory, or pass --replace",
                        file=str(run / "data"))
    ev_ids = src.events.column("item_id").to_numpy().astype(np.int64)
    all_ts = src.events.column("ts").to_numpy().astype(np.int64)
    item_ids = src.items.column("item_id").to_numpy().astype(np.int64)
    known = np.isin(ev_ids, item_ids)
    unknown = dict(src.unknown_items)
    for fi in np.unique(src.events_file[~known]):
        unknown[src.files[int(fi)]] = unknown.get(src.files[int(fi)], 0) + \
            int(((src.events_file == fi) & ~known).sum())
    first_ts: dict[int, int] = {}
    if len(ev_ids):
        o = np.lexsort((all_ts, ev_ids))
        starts = np.r_[True, ev_ids[o][1:] != ev_ids[o][:-1]]
        first_ts = dict(zip(ev_ids[o][starts].tolist(), all_ts[o][starts].tolist()))
    fallback = int(all_ts.min()) if len(all_ts) else 0
    phase(f"checking {src.items.num_rows} items and their photos")
    items, item_counts = _item_table(src, first_ts, fallback, cfg.check_images)
    if not known.any():
        raise DataError("no event names a known item: check the item id columns of both files",
                        file=src.files[int(src.events_file[0])] if len(ev_ids) else None)
    phase(f"arranging {int(known.sum())} events into lists")
    events, list_info = _events_table(src, known, items, cfg)

    ts = events.column("ts").to_numpy()
    imp = pc.equal(events.column("event"), "impression").to_numpy(zero_copy_only=False)
    if cfg.split_ts is not None:
        split_ts = int(cfg.split_ts)
    elif src.split_ts is not None:
        split_ts = int(src.split_ts)
    else:
        split_ts = int(np.quantile(ts[imp], 1.0 - cfg.test_share, method="higher")) if imp.any() else 0
        if split_ts <= int(ts.min()):
            split_ts = int(ts.min()) + 1
    has_queries = bool(pc.sum(pc.invert(pc.and_(pc.is_null(events.column("query_text")),
                                                 pc.is_null(events.column("query_image"))))).as_py() or 0)
    purchases_with_query = bool(pc.any(pc.and_(
        pc.equal(events.column("event"), "purchase"),
        pc.invert(pc.and_(pc.is_null(events.column("query_text")),
                          pc.is_null(events.column("query_image")))))).as_py())
    pairs_kind = cfg.pairs
    if pairs_kind == "auto":
        pairs_kind = "queries" if purchases_with_query else "item-to-item"
    if pairs_kind == "queries" and not purchases_with_query:
        raise DataError("data.pairs is 'queries' but no purchase in the log has a query "
                        "(query_text or query_image); use 'item-to-item' or 'auto'")

    substitutes = dict(src.substitutes)
    if not src.has_impressions:
        substitutes["impressions"] = (
            f"the log has no impressions: each click is a list of the clicked item and "
            f"{cfg.negatives_per_positive} items sampled uniformly from the catalog items that existed "
            f"then (flag 'sampled' in events.parquet); CTR labels and rates are against sampled negatives")
    if pairs_kind == "item-to-item":
        substitutes["pairs"] = ("the log has no purchases with a search query: pre-training pairs are "
                                "item-to-item (query = title of the item the user clicked just before, "
                                "positive = the next item clicked); Acc@N is item-to-item retrieval, "
                                "and there are no image-query pairs")
    if item_counts.get("without_image"):
        substitutes["images"] = (f"{item_counts['without_image']} of {items.num_rows} items have no image: "
                                 "a plain grey image stands in")
    if item_counts.get("without_title"):
        substitutes["titles"] = (f"{item_counts['without_title']} of {items.num_rows} items have no title: "
                                 "'<category> item <id>' stands in")
    if item_counts.get("without_price"):
        substitutes["prices"] = f"{item_counts['without_price']} of {items.num_rows} items have no price: 0"

    users = src.users
    u_ids, u_first = np.unique(events.column("user_id").to_numpy(), return_index=True)
    regions = events.column("region").to_numpy()[u_first]
    user_tbl = pa.table({"user_id": pa.array(u_ids), "region": pa.array(regions.astype(np.int16))})
    if users is not None and users.num_rows:
        extra = {c: users.column(c) for c in users.column_names if c not in ("user_id", "region")}
        if extra:
            uid = users.column("user_id").to_numpy()
            o = np.argsort(uid)
            pos = np.clip(np.searchsorted(uid[o], u_ids), 0, len(uid) - 1)
            hit = uid[o][pos] == u_ids
            take = pa.array(np.where(hit, o[pos], -1)).cast(pa.int64())
            take = pc.if_else(pa.array(hit), take, pa.scalar(None, pa.int64()))
            for c, a in extra.items():
                user_tbl = user_tbl.append_column(c, a.combine_chunks().take(take))

    clicks = int(pc.sum(pc.equal(events.column("event"), "click")).as_py() or 0)
    carts = int(pc.sum(pc.equal(events.column("event"), "cart")).as_py() or 0)
    buys = int(pc.sum(pc.equal(events.column("event"), "purchase")).as_py() or 0)
    n_imp = int(imp.sum())
    summary: dict[str, Any] = {
        "source": src.name, "files": src.files,
        "counts": {"items": items.num_rows, "users": len(u_ids),
                   "requests": int(len(np.unique(events.column("request_id").to_numpy()))),
                   "impressions": n_imp, "clicks": clicks, "carts": carts, "purchases": buys,
                   "events": events.num_rows},
        "span": _span(ts),
        "rates": {"click_per_impression": round(clicks / max(n_imp, 1), 4),
                  "cart_per_click": round(carts / max(clicks, 1), 4),
                  "purchase_per_click": round(buys / max(clicks, 1), 4),
                  "against_sampled_negatives": not src.has_impressions},
        "items_without": {k.removeprefix("without_"): v for k, v in item_counts.items()},
        "events_naming_unknown_items": unknown,
        "ignored": src.ignored,
        "lists": list_info,
        "split_ts": split_ts,
        "has_queries": has_queries,
        "notes": src.notes,
    }

    parent = run.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{run.name}.import-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        data = tmp / "data"
        data.mkdir(parents=True)
        phase("writing items, events and users")
        write_table(items, data / "items.parquet", row_group_size=2048)
        write_table(events, data / "events.parquet")
        write_table(user_tbl, data / "users.parquet")
        if src.query_images is not None:
            write_table(src.query_images, data / "query_images.parquet")
        phase("building pairs, CTR samples and lists")
        derived = build_derived(tmp, split_ts, cfg.history_len, cfg.start_ts)
        if pairs_kind == "item-to-item":
            pairs = item_to_item_pairs(events, items, split_ts)
            write_table(pairs, data / "pairs.parquet")
            derived["pairs"] = pairs.num_rows
        summary["counts"].update(derived)
        manifest = {
            "simulated": False,
            "imported": True,
            "source": f"imported ({src.name}) from {', '.join(src.files)}",
            "preset": src.name,
            "counts": summary["counts"],
            "ctr": summary["rates"]["click_per_impression"],
            "oracle_auc": None,
            "split_ts": split_ts,
            "new_item_ts": split_ts,
            "history_len": cfg.history_len,
            "substitutes": substitutes,
            "import": summary,
        }
        (data / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=int))
        run.mkdir(parents=True, exist_ok=True)
        old = run / f".data.old-{os.getpid()}"
        if (run / "data").exists():
            os.replace(run / "data", old)
        os.replace(data, run / "data")
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from mmrank.config import record

    record(run, "data", cfg.model_copy(update={"split_ts": split_ts}))
    summary["substitutes"] = substitutes
    return summary


def substitutes_of(run: str | Path) -> dict[str, str]:
    """What the run's data lacked and what stands in for it (``manifest.json["substitutes"]``)."""
    p = Path(run) / "data" / "manifest.json"
    if not p.exists():
        return {}
    try:
        return dict(json.loads(p.read_text()).get("substitutes") or {})
    except (ValueError, AttributeError):
        return {}


def format_summary(s: dict[str, Any]) -> str:
    """The import summary as a few lines a person reads."""
    c = s["counts"]
    lines = [f"imported {s['source']}: {c['items']} items, {c['users']} users, {c['requests']} requests, "
             f"{c['impressions']} impressions, {c['clicks']} clicks, {c['carts']} carts, "
             f"{c['purchases']} purchases"]
    span = s.get("span", {})
    if span:
        when = f"{span['first']} .. {span['last']}" if "first" in span else \
            f"ts {span['first_ts']} .. {span['last_ts']}"
        lines.append(f"time span: {when} ({span['days']} days); train/test split at ts {s['split_ts']}")
    r = s["rates"]
    lines.append(f"rates: click/impression {r['click_per_impression']:.4f}"
                 f"{' (against sampled negatives)' if r['against_sampled_negatives'] else ''}, "
                 f"cart/click {r['cart_per_click']:.4f}, purchase/click {r['purchase_per_click']:.4f}")
    iw = s["items_without"]
    lines.append(f"items without image: {iw.get('image', 0)}, without title: {iw.get('title', 0)}, "
                 f"without price: {iw.get('price', 0)}, without category: {iw.get('category', 0)}")
    unk = s["events_naming_unknown_items"]
    lines.append("events naming unknown items (kept out): " +
                 (", ".join(f"{v} in {k}" for k, v in unk.items()) if unk else "0"))
    if s["ignored"]:
        lines.append("source rows not used as events: " +
                     ", ".join(f"{v} {k}" for k, v in s["ignored"].items()))
    lst = s.get("lists") or {}
    if lst.get("labels_without_impression"):
        lines.append(f"clicks/carts/purchases without an impression of the same slot: "
                     f"{lst['labels_without_impression']} (kept in events.parquet; no CTR sample)")
    if "requests" in lst:
        lines.append(f"lists made from interactions: {lst['requests']} requests, "
                     f"{lst['sampled_impressions']} sampled impressions, {lst['implied_clicks']} clicks "
                     f"implied by a cart/purchase without one, {lst['merged_repeats']} repeated labels merged")
    lines.append("derived: " + ", ".join(f"{k} {c[k]}" for k in ("pairs", "ctr_samples", "lists") if k in c))
    for k, v in s.get("substitutes", {}).items():
        lines.append(f"substitute ({k}): {v}")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def import_data(run: str | Path, *, items: str | Path | None = None, events: str | Path | None = None,
                images: str | Path | None = None, queries: str | Path | None = None,
                mapping: str | Path | None = None, preset: str | None = None,
                cfg: DataConfig | None = None, replace: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Read the files with a preset or a mapping, then :func:`import_source`."""
    from mmrank.data.presets import load_source

    src = load_source(preset=preset, mapping=mapping, items=items, events=events, images=images,
                      queries=queries)
    return import_source(run, src, cfg, replace=replace, progress=progress)
