"""The import's events step: a source's events -> the run's events table, arranged into lists.

One rule for repeated events, the same for every event type (:func:`merge_repeats`): an event
repeated with the same user, item, type, time (and request, where the log has them) counts once;
events at different times are kept, each its own label.

* A log with impressions keeps its requests; one without request ids gets them derived
  (:func:`derive_requests`): the impressions a user saw at one time (or within ``session_gap``
  seconds of the previous one) are one request, and a click, cart or purchase joins the user's latest
  request at or before it that showed the item.
* A log without impressions gets one list per interaction (:func:`lists_from_interactions`): the item
  and ``negatives_per_positive`` items sampled from the catalog items that exist at that time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.data.config import DataConfig
from mmrank.data.import_items import where
from mmrank.data.schemas import EVENT_TYPES, PAIRS, SURFACES
from mmrank.data.source import Source
from mmrank.errors import DataError

MAX_LIST = 1000  # positions must stay below the 1024 slots of a request
RANK = {"impression": 0, "click": 1, "cart": 2, "purchase": 3}


def merge_repeats(ev: dict[str, np.ndarray], also: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, dict[str, int]]:
    """Rows to keep: the first of each (user, item, type, time, ``also`` (the request and position,
    where logged)); the merged count by type."""
    cols = [*also, ev["event_rank"], ev["ts"], ev["item_id"], ev["user_id"]]
    o = np.lexsort(cols)
    same = np.ones(max(len(o) - 1, 0), bool)
    for c in cols:
        same &= c[o][1:] == c[o][:-1]
    keep = np.ones(len(o), bool)
    keep[o[1:][same]] = False
    merged = {k: int(((ev["event_rank"] == r) & ~keep).sum()) for k, r in RANK.items()}
    return keep, {k: v for k, v in merged.items() if v}


def order_in_request(req: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal ``req`` values (rows sorted by request)."""
    n = len(req)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[True, req[1:] != req[:-1]]
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def _pair(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    _, inv = np.unique(np.stack([user, item], 1), axis=0, return_inverse=True)
    return inv.reshape(-1)


def derive_requests(ev: dict[str, np.ndarray], session_gap: int) -> tuple[np.ndarray, str]:
    """Request ids for a log with impressions and no request ids, and how they were made (a line)."""
    n, rank = len(ev["ts"]), ev["event_rank"]
    user, item, ts = ev["user_id"], ev["item_id"], ev["ts"]
    req = np.full(n, -1, np.int64)
    imp = np.flatnonzero(rank == 0)
    o = imp[np.lexsort((ts[imp], user[imp]))]
    new = np.r_[True, (user[o][1:] != user[o][:-1]) | (ts[o][1:] - ts[o][:-1] > session_gap)]
    req[o] = np.cumsum(new) - 1
    pair = _pair(user, item)
    key = (pair.astype(np.int64) << 32) | ts.astype(np.int64)
    ik = np.argsort(key[imp], kind="stable")
    lab = np.flatnonzero(rank > 0)
    at = np.searchsorted(key[imp][ik], key[lab], side="right") - 1
    hit = (at >= 0) & (pair[imp][ik][np.maximum(at, 0)] == pair[lab])
    req[lab[hit]] = req[imp][ik][at[hit]]
    n_req = int(req.max()) + 1 if n else 0
    req[lab[~hit]] = n_req + np.arange(int((~hit).sum()))  # a label without an impression: its own
    how = ("the log has no request ids: a request is the impressions a user saw at one time"
           + (f" (or within {session_gap} s of the previous one, data.session_gap)" if session_gap else
              " (data.session_gap 0)")
           + "; a click, cart or purchase joins the user's latest request at or before it that showed the item")
    return req, how


def _request_starts(kind: np.ndarray, same_pair: np.ndarray) -> np.ndarray:
    """A click opens a list; a cart or purchase joins the (user, item)'s latest list unless that list
    already has a label of its type (then it opens one, the click implied): every label is kept."""
    starts = (kind == RANK["click"]) | ~same_pair
    while True:
        req = np.cumsum(starts) - 1
        key = req.astype(np.int64) * 4 + kind
        _, first = np.unique(key, return_index=True)
        again = np.ones(len(key), bool)
        again[first] = False
        if not again.any():
            return starts
        starts = starts | again


def _sample_negatives(rng: np.random.Generator, item_ids: np.ndarray, created: np.ndarray,
                      r_ts: np.ndarray, pos_item: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` catalog items per list that exist at its time (``created_at <= ts``) and differ from the
    interacted item and each other; ``clash`` marks draws left out (a catalog too small)."""
    c_order = np.argsort(created, kind="stable")
    avail = np.maximum(np.searchsorted(created[c_order], r_ts, side="right"), 1)
    neg = item_ids[c_order][(rng.random((len(r_ts), k)) * avail[:, None]).astype(np.int64)]

    def clashes() -> np.ndarray:
        bad = neg == pos_item[:, None]
        for j in range(1, k):
            bad[:, j] |= (neg[:, :j] == neg[:, j:j + 1]).any(axis=1)
        return bad

    clash = clashes()
    for _ in range(3):  # draw again; what still clashes is left out of the list
        if not clash.any():
            break
        re = (rng.random(clash.sum()) * np.repeat(avail, clash.sum(axis=1))).astype(np.int64)
        neg[clash] = item_ids[c_order][re]
        clash = clashes()
    return neg, clash


def lists_from_interactions(ev: dict[str, np.ndarray], item_ids: np.ndarray, created: np.ndarray,
                            k: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Logs without impressions -> one list per click: the clicked item and ``k`` sampled items, in
    random slots; a cart or purchase sits at its list's slot (:func:`_request_starts`)."""
    rng = np.random.default_rng(seed)
    ts, user, item, kind = ev["ts"], ev["user_id"], ev["item_id"], ev["event_rank"]
    o = np.lexsort((kind, ts, item, user))
    ts, user, item, kind = ts[o], user[o], item[o], kind[o]
    same_pair = np.r_[False, (user[1:] == user[:-1]) & (item[1:] == item[:-1])]
    starts = _request_starts(kind, same_pair)
    req = np.cumsum(starts) - 1
    n_req = int(req[-1]) + 1 if len(req) else 0
    anchor = np.flatnonzero(starts)
    slots = np.argsort(rng.random((n_req, k + 1)), axis=1).astype(np.int64)  # slot of column j
    pos_slot = slots[:, 0]
    r_ts, r_user = ts[anchor], user[anchor]
    neg, clash = _sample_negatives(rng, item_ids, created, r_ts, item[anchor], k)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("ts", "user_id", "item_id", "request_id",
                                                          "position", "event_rank", "sampled", "src")}

    def add(*cols: Any) -> None:
        for c, v in zip(parts, cols):
            parts[c].append(np.asarray(v))

    reqs, zero, no = np.arange(n_req), np.zeros(n_req, np.int64), np.zeros(n_req, bool)
    add(r_ts, r_user, item[anchor], reqs, pos_slot, zero, no, anchor)       # the item's impression
    add(r_ts, r_user, item[anchor], reqs, pos_slot, zero + 1, no, anchor)   # its click (or implied)
    later = kind > RANK["click"]
    add(ts[later], user[later], item[later], req[later], pos_slot[req[later]], kind[later],
        np.zeros(later.sum(), bool), np.flatnonzero(later))
    rr, jj = np.nonzero(~clash)
    add(r_ts[rr], r_user[rr], neg[rr, jj], rr, slots[rr, jj + 1], np.zeros(len(rr), np.int64),
        np.ones(len(rr), bool), anchor[rr])
    out = {c: np.concatenate(v) for c, v in parts.items()}
    out["src"] = o[out["src"]]  # back to the source event row
    return out, {"requests": n_req, "implied_clicks": int((kind[anchor] != RANK["click"]).sum()),
                 "sampled_impressions": int(len(rr))}


def _positions(src: Source, ev: dict[str, np.ndarray], req: np.ndarray, src_rows: np.ndarray) -> np.ndarray:
    """The logged position, else the impression's order in its request (labels at their impression's slot)."""
    if "position" in src.events.column_names:
        pos = src.events.column("position").to_numpy()[src_rows].astype(np.int64)
    else:
        o = np.lexsort((np.arange(len(req)), req))
        pos = np.zeros(len(req), np.int64)
        imp = ev["event_rank"][o] == 0
        slot_of = dict(zip(zip(req[o][imp].tolist(), ev["item_id"][o][imp].tolist()),
                           order_in_request(req[o][imp]).tolist()))
        for r in o:
            pos[r] = slot_of.get((int(req[r]), int(ev["item_id"][r])), 0)
    bad = np.flatnonzero((pos < 0) | (pos >= MAX_LIST))
    if len(bad):
        f, r = where(src, "events", int(src_rows[bad[0]]))
        raise DataError(f"position {int(pos[bad[0]])} outside 0..{MAX_LIST - 1}", file=f, row=r,
                        column=src.event_columns.get("position", "position"))
    return pos


def _logged_lists(src: Source, ev: dict[str, np.ndarray], src_rows: np.ndarray,
                  cfg: DataConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    info: dict[str, Any] = {}
    if "request_id" in src.events.column_names:
        req = src.events.column("request_id").to_numpy()[src_rows].astype(np.int64)
    else:
        req, info["requests_derived"] = derive_requests(ev, cfg.session_gap)
    pos = _positions(src, ev, req, src_rows)
    ev.update(request_id=req, position=pos, sampled=np.zeros(len(req), bool), src=src_rows)
    slot = req * 1024 + pos
    is_imp = ev["event_rank"] == 0
    info["labels_without_impression"] = int((~np.isin(slot[~is_imp], slot[is_imp])).sum())
    return ev, info


def _region(src: Source, rows: np.ndarray) -> np.ndarray:
    t = src.events
    region = (t.column("region").to_numpy(zero_copy_only=False)[rows].astype(np.int64)
              if "region" in t.column_names else np.zeros(len(rows), np.int64))
    bad = np.flatnonzero((region < 0) | (region > 32767))
    if len(bad):
        f, r = where(src, "events", int(rows[bad[0]]))
        raise DataError(f"region {int(region[bad[0]])} outside 0..32767", file=f, row=r,
                        column=src.event_columns.get("region", "region"))
    return region


def _table(src: Source, ev: dict[str, np.ndarray], region: np.ndarray) -> pa.Table:
    t, rows = src.events, ev["src"]
    o = np.lexsort((ev["event_rank"], ev["position"], ev["request_id"], ev["ts"]))
    cols: dict[str, pa.Array] = {
        "ts": pa.array(ev["ts"][o]), "user_id": pa.array(ev["user_id"][o]),
        "item_id": pa.array(ev["item_id"][o]), "request_id": pa.array(ev["request_id"][o]),
        "position": pa.array(ev["position"][o].astype(np.int16)),
        "event": pa.array(np.asarray(EVENT_TYPES, dtype=object)[ev["event_rank"][o]].tolist(), pa.string()),
    }
    for c in ("query_text", "query_image"):
        cols[c] = (t.column(c).combine_chunks().take(pa.array(rows[o])).cast(pa.string())
                   if c in t.column_names else pa.nulls(len(o), pa.string()))
    cols["region"] = pa.array(region[o].astype(np.int16))
    if "surface" in t.column_names:
        cols["surface"] = t.column("surface").combine_chunks().take(pa.array(rows[o])).cast(pa.string())
        bad = pc.invert(pc.fill_null(pc.is_in(cols["surface"], pa.array(SURFACES)), True))
        if pc.any(bad).as_py():
            i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            f, r = where(src, "events", int(rows[o][i]))
            raise DataError(f"surface {cols['surface'][i].as_py()!r}: expected display or search",
                            file=f, row=r, column=src.event_columns.get("surface", "surface"))
    cols["sampled"] = pa.array(ev["sampled"][o])
    return pa.table(cols)


def events_table(src: Source, keep: np.ndarray, items: pa.Table, cfg: DataConfig) -> tuple[pa.Table, dict]:
    """The run's events from the source's rows ``keep`` (known items), arranged into lists; and what
    was done (repeats merged, requests made or derived, labels without an impression)."""
    t = src.events
    ev = {c: t.column(c).to_numpy()[keep].astype(np.int64) for c in ("ts", "user_id", "item_id")}
    ev["event_rank"] = np.asarray([RANK[k] for k in t.column("event").to_pylist()], np.int64)[keep]
    also = tuple(t.column(c).to_numpy()[keep].astype(np.int64) for c in ("request_id", "position")
                 if c in t.column_names)
    src_rows = np.flatnonzero(keep)
    once, merged = merge_repeats(ev, also)
    ev = {c: v[once] for c, v in ev.items()}
    src_rows = src_rows[once]
    if src.has_impressions:
        ev, info = _logged_lists(src, ev, src_rows, cfg)
    else:
        ev, info = lists_from_interactions(ev, items.column("item_id").to_numpy(),
                                           items.column("created_at").to_numpy(),
                                           cfg.negatives_per_positive, cfg.seed)
        ev["src"] = src_rows[ev["src"]]
    info["repeats_merged"] = merged
    return _table(src, ev, _region(src, ev["src"])), info


def item_to_item_pairs(events: pa.Table, items: pa.Table, split_ts: int) -> pa.Table:
    """Pre-training pairs for a log without queries: the title of the item a user clicked just before
    (query, text) -> the next different item the same user clicked (positive), at the later click's ts."""
    ev = events.filter(pc.equal(events.column("event"), "click"))
    user, item = ev.column("user_id").to_numpy(), ev.column("item_id").to_numpy()
    ts, req = ev.column("ts").to_numpy(), ev.column("request_id").to_numpy()
    o = np.lexsort((req, ts, user))
    user, item, ts, req = user[o], item[o], ts[o], req[o]
    nxt = np.flatnonzero(np.r_[False, (user[1:] == user[:-1]) & (item[1:] != item[:-1])])
    ids = items.column("item_id").to_numpy()
    io_ = np.argsort(ids)
    titles = np.asarray(items.column("title").to_pylist(), dtype=object)
    q = titles[io_[np.searchsorted(ids[io_], item[nxt - 1])]]
    n = len(nxt)
    return pa.table({
        "request_id": pa.array(req[nxt]), "ts": pa.array(ts[nxt]), "user_id": pa.array(user[nxt]),
        "query_modality": pa.array(["text"] * n, pa.string()),
        "query_text": pa.array(q.tolist(), pa.string()), "query_image": pa.nulls(n, pa.string()),
        "pos_item_id": pa.array(item[nxt]),
        "hard_neg_item_ids": pa.array([[] for _ in range(n)], pa.list_(pa.int64())),
        "split": pa.array(np.where(ts[nxt] < split_ts, "train", "test").tolist(), pa.string()),
    }, schema=PAIRS)
