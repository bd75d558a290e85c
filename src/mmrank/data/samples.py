"""Derived tables, built from events with point-in-time correctness.

* :func:`build_pairs`: <query, purchased item> pairs; hard negatives = items clicked but not bought in
  the same request.
* :func:`build_ctr_samples`: one row per impression with the user's last ``L`` clicks **strictly
  before** the impression's timestamp (clicks of the same request share its timestamp and are never
  included).
* :func:`build_lists`: one row per request, with each candidate's sales counted strictly before the
  request.

All three are vectorised: a sort and ``searchsorted`` per table, no Python loop per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.errors import DataError

TS_LIMIT = 1 << 32


def _event_mask(events: pa.Table, name: str) -> np.ndarray:
    return pc.equal(events.column("event"), name).to_numpy(zero_copy_only=False)


def _np(table: pa.Table, col: str, mask: np.ndarray | None = None) -> np.ndarray:
    arr = table.column(col).to_numpy()
    return arr if mask is None else arr[mask]


def _key(hi: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(hi, ts) -> one sortable int64 key; ``ts`` must lie in [0, 2**32)."""
    if len(ts) and (ts.min() < 0 or ts.max() >= TS_LIMIT):
        raise DataError(f"ts must lie in [0, 2^32) seconds, got {ts.min()}..{ts.max()}", column="ts")
    return (hi.astype(np.int64) << 32) | ts.astype(np.int64)


def _ranges(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of lists of ``length`` and the flat indices ``start[i] + 0..length[i]-1``."""
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    flat = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, flat


def _list(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, typ))


def _slot_key(request: np.ndarray, position: np.ndarray) -> np.ndarray:
    return request.astype(np.int64) * 1024 + position.astype(np.int64)


def _split(ts: np.ndarray, split_ts: int) -> pa.Array:
    return pa.array(np.where(ts < split_ts, "train", "test"))


def build_pairs(events: pa.Table, split_ts: int) -> pa.Table:
    """<query, purchased item> pairs with hard negatives (clicked, not bought, same request)."""
    buy, click = _event_mask(events, "purchase"), _event_mask(events, "click")
    b_req, b_item = _np(events, "request_id", buy), _np(events, "item_id", buy)
    c_req, c_item = _np(events, "request_id", click), _np(events, "item_id", click)
    bought_slots = _slot_key(b_req, _np(events, "position", buy))
    c_slots = _slot_key(c_req, _np(events, "position", click))
    neg = ~np.isin(c_slots, bought_slots)
    n_req, n_item = c_req[neg], c_item[neg]
    order = np.argsort(n_req, kind="stable")
    n_req, n_item = n_req[order], n_item[order]
    lo = np.searchsorted(n_req, b_req, side="left")
    hi = np.searchsorted(n_req, b_req, side="right")
    offsets, flat = _ranges(lo, hi - lo)
    idx = np.flatnonzero(buy)
    q_img = events.column("query_image").take(pa.array(idx))
    ts = _np(events, "ts", buy)
    return pa.table({
        "request_id": pa.array(b_req), "ts": pa.array(ts),
        "user_id": pa.array(_np(events, "user_id", buy)),
        "query_modality": pc.if_else(pc.is_null(q_img), "text", "image"),
        "query_text": events.column("query_text").take(pa.array(idx)),
        "query_image": q_img,
        "pos_item_id": pa.array(b_item),
        "hard_neg_item_ids": _list(offsets, n_item[flat], pa.int64()),
        "split": _split(ts, split_ts),
    })


def _item_index(items: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted item ids, the row of each in ``items``, and each item's category id (sorted vocab)."""
    ids = items.column("item_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    cats = np.asarray(items.column("category").to_pylist(), dtype=object).astype(str)
    _, cat_ids = np.unique(cats, return_inverse=True)
    return ids[order], order, cat_ids.astype(np.int32)


def _rows_of(item_ids: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, item_ids)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    bad = sorted_ids[pos] != item_ids
    if bad.any():
        raise DataError(f"unknown item_id {int(item_ids[np.flatnonzero(bad)[0]])}", column="item_id",
                        row=int(np.flatnonzero(bad)[0]))
    return order[pos]


def build_ctr_samples(events: pa.Table, items: pa.Table, split_ts: int, history_len: int = 50) -> pa.Table:
    """One row per impression; label = clicked; the user's last ``history_len`` clicks before ``ts``."""
    imp, click = _event_mask(events, "impression"), _event_mask(events, "click")
    sorted_ids, order, cat_ids = _item_index(items)
    i_req, i_pos = _np(events, "request_id", imp), _np(events, "position", imp)
    i_ts, i_user, i_item = _np(events, "ts", imp), _np(events, "user_id", imp), _np(events, "item_id", imp)
    c_req, c_pos = _np(events, "request_id", click), _np(events, "position", click)
    c_ts, c_user, c_item = _np(events, "ts", click), _np(events, "user_id", click), _np(events, "item_id", click)
    label = np.isin(_slot_key(i_req, i_pos), _slot_key(c_req, c_pos)).astype(np.int8)

    # Clicks by (user, ts); an impression sees its user's clicks with key < (user, ts): strictly before.
    c_key = _key(c_user, c_ts)
    c_order = np.argsort(c_key, kind="stable")
    c_key, c_item, c_ts = c_key[c_order], c_item[c_order], c_ts[c_order]
    end = np.searchsorted(c_key, _key(i_user, i_ts), side="left")
    start = np.searchsorted(c_key, _key(i_user, np.zeros_like(i_ts)), side="left")
    n = np.minimum(end - start, history_len)
    offsets, flat = _ranges(end - n, n)
    hist_items = c_item[flat]
    hist_cats = cat_ids[_rows_of(hist_items, sorted_ids, order)]
    return pa.table({
        "ts": pa.array(i_ts), "user_id": pa.array(i_user), "item_id": pa.array(i_item),
        "request_id": pa.array(i_req), "position": pa.array(i_pos),
        "region": pa.array(_np(events, "region", imp)),
        "category_id": pa.array(cat_ids[_rows_of(i_item, sorted_ids, order)]),
        "label": pa.array(label),
        "hist_item_ids": _list(offsets, hist_items, pa.int64()),
        "hist_category_ids": _list(offsets, hist_cats, pa.int32()),
        "hist_ts": _list(offsets, c_ts[flat], pa.int64()),
        "split": _split(i_ts, split_ts),
    })


def build_lists(events: pa.Table, items: pa.Table, split_ts: int) -> pa.Table:
    """One row per request: candidates in shown order, price, point-in-time sales and labels."""
    imp = _event_mask(events, "impression")
    sorted_ids, order, _ = _item_index(items)
    i_req, i_pos = _np(events, "request_id", imp), _np(events, "position", imp)
    i_item, i_ts = _np(events, "item_id", imp), _np(events, "ts", imp)
    o = np.lexsort((i_pos, i_req))
    i_req, i_pos, i_item, i_ts = i_req[o], i_pos[o], i_item[o], i_ts[o]
    rows = np.flatnonzero(imp)[o]
    slots = _slot_key(i_req, i_pos)
    labels = {}
    for name in ("click", "cart", "purchase"):
        m = _event_mask(events, name)
        labels[name] = np.isin(slots, _slot_key(_np(events, "request_id", m),
                                                _np(events, "position", m))).astype(np.int8)
    # Sales: purchases of the item strictly before the request's ts.
    buy = _event_mask(events, "purchase")
    b_rows = _rows_of(_np(events, "item_id", buy), sorted_ids, order)
    b_key = np.sort(_key(b_rows, _np(events, "ts", buy)))
    i_rows = _rows_of(i_item, sorted_ids, order)
    sales = (np.searchsorted(b_key, _key(i_rows, i_ts), side="left")
             - np.searchsorted(b_key, _key(i_rows, np.zeros_like(i_ts)), side="left"))
    price = items.column("price").to_numpy()[i_rows]
    starts = np.flatnonzero(np.r_[True, i_req[1:] != i_req[:-1]])
    offsets = np.r_[starts, len(i_req)].astype(np.int64)
    first = rows[starts]
    ts = i_ts[starts]
    return pa.table({
        "request_id": pa.array(i_req[starts]), "ts": pa.array(ts),
        "user_id": pa.array(_np(events, "user_id")[first]),
        "region": pa.array(_np(events, "region")[first]),
        "query_text": events.column("query_text").take(pa.array(first)),
        "query_image": events.column("query_image").take(pa.array(first)),
        "item_ids": _list(offsets, i_item, pa.int64()),
        "positions": _list(offsets, i_pos, pa.int16()),
        "prices": _list(offsets, price, pa.float64()),
        "sales": _list(offsets, sales.astype(np.int64), pa.int64()),
        "clicks": _list(offsets, labels["click"], pa.int8()),
        "carts": _list(offsets, labels["cart"], pa.int8()),
        "purchases": _list(offsets, labels["purchase"], pa.int8()),
        "split": _split(ts, split_ts),
    })


def build_derived(run: str | Path, split_ts: int, history_len: int = 50) -> dict[str, int]:
    """Rebuild pairs, CTR samples and lists under ``run/data/`` from its (validated) items and events."""
    from mmrank.data.io import read_table, validate_events, validate_items, write_table

    data = Path(run) / "data"
    ids = validate_items(data / "items.parquet", check_images=False)
    validate_events(data / "events.parquet", ids)
    items = read_table(data / "items.parquet", "items", columns=["item_id", "category", "price"])
    events = read_table(data / "events.parquet", "events")
    out = {"pairs": build_pairs(events, split_ts),
           "ctr_samples": build_ctr_samples(events, items, split_ts, history_len),
           "lists": build_lists(events, items, split_ts)}
    for name, table in out.items():
        write_table(table, data / f"{name}.parquet")
    return {name: t.num_rows for name, t in out.items()}
