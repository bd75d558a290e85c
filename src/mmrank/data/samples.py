"""Derived tables, built from events with point-in-time correctness.

* :func:`build_pairs`: <query, purchased item> pairs of search requests; hard negatives = items
  clicked but not bought in the same request.
* :func:`build_ctr_samples`: one row per display impression (every impression when the log has no
  ``surface`` column) with the user's last ``L`` clicks, on any surface, **strictly before** the
  impression's timestamp (clicks of the same request share its timestamp and are never included).
* :func:`build_lists`: one row per search request with every logged candidate (shown or not, from
  ``candidates`` when given), each candidate's sales counted strictly before the request, and the
  user's last ``L`` clicks strictly before it.

Rows before ``start_ts`` (a burn-in period) feed histories and sales but yield no sample. All three
are vectorised: a sort and ``searchsorted`` per table, no Python loop per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.data.schemas import HISTORY_LEN
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


def _on_surface(events: pa.Table, surface: str) -> np.ndarray:
    """Rows of ``surface``; a log without a ``surface`` column is all search."""
    if "surface" not in events.column_names:
        return np.full(events.num_rows, surface == "search")
    return pc.fill_null(pc.equal(events.column("surface"), surface), False).to_numpy(zero_copy_only=False)


def _logged(events: pa.Table, start_ts: int) -> np.ndarray:
    return events.column("ts").to_numpy() >= start_ts


def build_pairs(events: pa.Table, split_ts: int, start_ts: int = 0) -> pa.Table:
    """<query, purchased item> pairs with hard negatives (clicked, not bought, same request)."""
    buy, click = _event_mask(events, "purchase"), _event_mask(events, "click")
    buy &= _on_surface(events, "search") & _logged(events, start_ts)
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
    q_txt = events.column("query_text").take(pa.array(idx))
    ts = _np(events, "ts", buy)
    return pa.table({
        "request_id": pa.array(b_req), "ts": pa.array(ts),
        "user_id": pa.array(_np(events, "user_id", buy)),
        "query_modality": pc.if_else(pc.is_null(q_img), "text",
                                     pc.if_else(pc.is_null(q_txt), "image", "both")),
        "query_text": q_txt,
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


class _History:
    """Every click of a log by (user, ts), to cut each sample's last L clicks strictly before its ts."""

    def __init__(self, events: pa.Table, items: pa.Table) -> None:
        click = _event_mask(events, "click")
        self.sorted_ids, self.order, self.cat_ids = _item_index(items)
        key = _key(_np(events, "user_id", click), _np(events, "ts", click))
        o = np.argsort(key, kind="stable")
        self.key, self.item, self.ts = key[o], _np(events, "item_id", click)[o], _np(events, "ts", click)[o]

    def columns(self, user: np.ndarray, ts: np.ndarray, history_len: int) -> dict[str, pa.Array]:
        end = np.searchsorted(self.key, _key(user, ts), side="left")
        start = np.searchsorted(self.key, _key(user, np.zeros_like(ts)), side="left")
        n = np.minimum(end - start, history_len)
        offsets, flat = _ranges(end - n, n)
        items = self.item[flat]
        cats = self.cat_ids[_rows_of(items, self.sorted_ids, self.order)]
        return {"hist_item_ids": _list(offsets, items, pa.int64()),
                "hist_category_ids": _list(offsets, cats, pa.int32()),
                "hist_ts": _list(offsets, self.ts[flat], pa.int64())}


def build_ctr_samples(events: pa.Table, items: pa.Table, split_ts: int, history_len: int = HISTORY_LEN,
                      start_ts: int = 0) -> pa.Table:
    """One row per display impression; label = clicked; the user's last ``history_len`` clicks
    (any surface) strictly before ``ts``."""
    imp, click = _event_mask(events, "impression"), _event_mask(events, "click")
    if "surface" in events.column_names:
        imp &= _on_surface(events, "display")
    imp &= _logged(events, start_ts)
    hist = _History(events, items)
    sorted_ids, order, cat_ids = hist.sorted_ids, hist.order, hist.cat_ids
    i_req, i_pos = _np(events, "request_id", imp), _np(events, "position", imp)
    i_ts, i_user, i_item = _np(events, "ts", imp), _np(events, "user_id", imp), _np(events, "item_id", imp)
    c_req, c_pos = _np(events, "request_id", click), _np(events, "position", click)
    label = np.isin(_slot_key(i_req, i_pos), _slot_key(c_req, c_pos)).astype(np.int8)
    return pa.table({
        "ts": pa.array(i_ts), "user_id": pa.array(i_user), "item_id": pa.array(i_item),
        "request_id": pa.array(i_req), "position": pa.array(i_pos),
        "region": pa.array(_np(events, "region", imp)),
        "category_id": pa.array(cat_ids[_rows_of(i_item, sorted_ids, order)]),
        "label": pa.array(label),
        **hist.columns(i_user, i_ts, history_len),
        "split": _split(i_ts, split_ts),
    })


def build_lists(events: pa.Table, items: pa.Table, split_ts: int, start_ts: int = 0,
                candidates: pa.Table | None = None, history_len: int = HISTORY_LEN) -> pa.Table:
    """One row per search request: candidates in the logged order, price, category, point-in-time
    sales, labels and the user's history.

    ``candidates`` (request_id, item_id, prod_score; each request's rows in the logged order) adds the
    retrieved items that were not shown (``positions`` -1); its ``propensity`` and ``position_probs``
    (a stochastic production policy's) become ``propensities`` and ``position_probs``. Without it the shown items are the
    candidates, and ``prod_scores`` is minus the position.
    """
    imp = _event_mask(events, "impression") & _on_surface(events, "search") & _logged(events, start_ts)
    hist = _History(events, items)
    sorted_ids, order = hist.sorted_ids, hist.order
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
    starts = np.flatnonzero(np.r_[True, i_req[1:] != i_req[:-1]]) if len(i_req) else np.zeros(0, np.int64)
    req_ids, first, ts = i_req[starts], rows[starts], i_ts[starts]
    if candidates is not None:
        c_req = candidates.column("request_id").to_numpy()
        keep = np.isin(c_req, req_ids)
        c_req = c_req[keep]
        c_item = candidates.column("item_id").to_numpy()[keep]
        c_score = candidates.column("prod_score").to_numpy()[keep].astype(np.float32)
        o = np.argsort(c_req, kind="stable")
        c_req, c_item, c_score = c_req[o], c_item[o], c_score[o]
        policy = {}
        if "propensity" in candidates.column_names:  # a stochastic production policy's propensities
            prop = candidates.column("propensity").to_numpy(zero_copy_only=False)[keep][o]
            policy["propensities"] = np.nan_to_num(prop.astype(np.float32), nan=0.0)
        if "position_probs" in candidates.column_names:
            marg = candidates.column("position_probs").combine_chunks()
            width = marg.type.list_size
            policy["position_probs"] = marg.flatten().to_numpy().reshape(-1, width)[keep][o].astype(np.float32)
        # Each candidate's shown position (-1 if not shown) and labels, by (request, item).
        c_pos = np.full(len(c_req), -1, np.int16)
        lab = {k: np.zeros(len(c_req), np.int8) for k in labels}
        skey = i_req.astype(np.int64) * (1 << 32) + _rows_of(i_item, sorted_ids, order)
        ckey = c_req.astype(np.int64) * (1 << 32) + _rows_of(c_item, sorted_ids, order)
        so = np.argsort(skey, kind="stable")
        at = np.clip(np.searchsorted(skey[so], ckey), 0, max(len(skey) - 1, 0))
        hit = (skey[so][at] == ckey) if len(skey) else np.zeros(len(ckey), bool)
        c_pos[hit] = i_pos[so][at[hit]]
        for k in labels:
            lab[k][hit] = labels[k][so][at[hit]]
        c_ts = np.repeat(ts, np.diff(np.r_[np.searchsorted(c_req, req_ids), len(c_req)]))
        offsets = np.r_[np.searchsorted(c_req, req_ids), len(c_req)].astype(np.int64)
        l_item, l_pos, l_score, l_ts, l_lab = c_item, c_pos, c_score, c_ts, lab
    else:
        offsets = np.r_[starts, len(i_req)].astype(np.int64)
        l_item, l_pos, l_score, l_ts = i_item, i_pos, -i_pos.astype(np.float32), i_ts
        l_lab = labels
        policy = {}
    # Sales: purchases of the item strictly before the request's ts.
    buy = _event_mask(events, "purchase")
    b_rows = _rows_of(_np(events, "item_id", buy), sorted_ids, order)
    b_key = np.sort(_key(b_rows, _np(events, "ts", buy)))
    l_rows = _rows_of(l_item, sorted_ids, order)
    sales = (np.searchsorted(b_key, _key(l_rows, l_ts), side="left")
             - np.searchsorted(b_key, _key(l_rows, np.zeros_like(l_ts)), side="left"))
    price = items.column("price").to_numpy()[l_rows]
    user = _np(events, "user_id")[first]
    return pa.table({
        "request_id": pa.array(req_ids), "ts": pa.array(ts),
        "user_id": pa.array(user),
        "region": pa.array(_np(events, "region")[first]),
        "query_text": events.column("query_text").take(pa.array(first)),
        "query_image": events.column("query_image").take(pa.array(first)),
        "item_ids": _list(offsets, l_item, pa.int64()),
        "positions": _list(offsets, l_pos.astype(np.int16), pa.int16()),
        "prod_scores": _list(offsets, l_score, pa.float32()),
        "prices": _list(offsets, price, pa.float64()),
        "sales": _list(offsets, sales.astype(np.int64), pa.int64()),
        "category_ids": _list(offsets, hist.cat_ids[l_rows], pa.int32()),
        "clicks": _list(offsets, l_lab["click"], pa.int8()),
        "carts": _list(offsets, l_lab["cart"], pa.int8()),
        "purchases": _list(offsets, l_lab["purchase"], pa.int8()),
        **hist.columns(user, ts, history_len),
        "split": _split(ts, split_ts),
        **_policy_columns(offsets, policy),
    })


def _policy_columns(offsets: np.ndarray, policy: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """With a stochastic production policy: ``propensities`` (each shown candidate's probability at its
    slot given the slots above; 0 where not shown) and ``position_probs`` (each candidate's probability
    of being shown at each position)."""
    out = {}
    if "propensities" in policy:
        out["propensities"] = _list(offsets, policy["propensities"], pa.float32())
    if "position_probs" in policy:
        marg = policy["position_probs"]
        inner = pa.FixedSizeListArray.from_arrays(pa.array(marg.ravel(), pa.float32()), marg.shape[1])
        out["position_probs"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), inner)
    return out


def build_derived(run: str | Path, split_ts: int, history_len: int = HISTORY_LEN, start_ts: int = 0) -> dict[str, int]:
    """Rebuild pairs, CTR samples and lists under ``run/data/`` from its (validated) items and events
    (and ``candidates.parquet``, the logged candidate sets, when present)."""
    from mmrank.data.io import read_table, validate_events, validate_items, write_table

    data = Path(run) / "data"
    ids = validate_items(data / "items.parquet", check_images=False)
    validate_events(data / "events.parquet", ids)
    items = read_table(data / "items.parquet", "items", columns=["item_id", "category", "price"])
    events = read_table(data / "events.parquet", "events")
    cands = read_table(data / "candidates.parquet", "candidates") \
        if (data / "candidates.parquet").exists() else None
    out = {"pairs": build_pairs(events, split_ts, start_ts),
           "ctr_samples": build_ctr_samples(events, items, split_ts, history_len, start_ts),
           "lists": build_lists(events, items, split_ts, start_ts, cands, history_len)}
    for name, table in out.items():
        write_table(table, data / f"{name}.parquet")
    return {name: t.num_rows for name, t in out.items()}
