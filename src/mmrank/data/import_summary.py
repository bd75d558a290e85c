"""The import's summary: what was read, what was counted, and what stands in for what the data lacks.

:func:`summarise` builds the dict (kept in ``manifest.json["import"]``), :func:`substitutes` the
labels later stages print (``manifest.json["substitutes"]``), :func:`format_summary` the lines a
person reads after ``mmrank data import``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrank.data.config import DataConfig
from mmrank.data.source import Source

FIRST_ROWS = 5  # unknown-item rows listed by number in the summary


def span(ts: np.ndarray) -> dict[str, Any]:
    if not len(ts):
        return {}
    lo, hi = int(ts.min()), int(ts.max())
    out: dict[str, Any] = {"first_ts": lo, "last_ts": hi, "days": round((hi - lo) / 86400, 2)}
    if lo >= 315_532_800:  # after 1980: a real clock, worth printing as dates
        out["first"] = dt.datetime.fromtimestamp(lo, dt.timezone.utc).isoformat(timespec="seconds")
        out["last"] = dt.datetime.fromtimestamp(hi, dt.timezone.utc).isoformat(timespec="seconds")
    return out


def substitutes(src: Source, cfg: DataConfig, pairs_kind: str, item_counts: dict[str, int], n_items: int,
                list_info: dict[str, Any]) -> dict[str, str]:
    """What the data lacked and what stands in for it, one line each."""
    out = dict(src.substitutes)
    if not src.has_impressions:
        out["impressions"] = (
            f"the log has no impressions: each click is a list of the clicked item and "
            f"{cfg.negatives_per_positive} items sampled uniformly from the catalog items that existed "
            f"then (flag 'sampled' in events.parquet); CTR labels and rates are against sampled negatives")
    if list_info.get("requests_derived"):
        out["requests"] = list_info["requests_derived"]
    if pairs_kind == "item-to-item":
        out["pairs"] = ("the log has no purchases with a search query: pre-training pairs are "
                        "item-to-item (query = title of the item the user clicked just before, "
                        "positive = the next item clicked); Acc@N is item-to-item retrieval, "
                        "and there are no image-query pairs")
    if item_counts.get("without_image"):
        out["images"] = (f"{item_counts['without_image']} of {n_items} items have no image: "
                         "a plain grey image stands in")
    if item_counts.get("without_title"):
        out["titles"] = (f"{item_counts['without_title']} of {n_items} items have no title: "
                         "'<category> item <id>' stands in")
    if item_counts.get("without_price"):
        out["prices"] = f"{item_counts['without_price']} of {n_items} items have no price: 0"
    for column, default in src.defaults.items():
        out[f"default {column}"] = default
    return out


def _count(events: pa.Table, kind: str) -> int:
    return int(pc.sum(pc.equal(events.column("event"), kind)).as_py() or 0)


def summarise(src: Source, items: pa.Table, events: pa.Table, n_users: int, *, item_counts: dict[str, int],
              photos: dict[str, Any], unknown: dict[str, list[int]], list_info: dict[str, Any],
              split_ts: int, has_queries: bool) -> dict[str, Any]:
    """The import summary (``manifest.json["import"]``)."""
    c = {k: _count(events, k) for k in ("impression", "click", "cart", "purchase")}
    return {
        "source": src.name, "files": src.files,
        "counts": {"items": items.num_rows, "users": n_users,
                   "requests": int(len(np.unique(events.column("request_id").to_numpy()))),
                   "impressions": c["impression"], "clicks": c["click"], "carts": c["cart"],
                   "purchases": c["purchase"], "events": events.num_rows},
        "span": span(events.column("ts").to_numpy()),
        "rates": {"click_per_impression": round(c["click"] / max(c["impression"], 1), 4),
                  "cart_per_click": round(c["cart"] / max(c["click"], 1), 4),
                  "purchase_per_click": round(c["purchase"] / max(c["click"], 1), 4),
                  "against_sampled_negatives": not src.has_impressions},
        "items_without": {k.removeprefix("without_"): v for k, v in item_counts.items()},
        "photos": photos | ({"folder": src.images_folder} if src.images_folder else {}),
        "events_naming_unknown_items": {f: len(rows) for f, rows in unknown.items()},
        "unknown_item_rows": {f: rows[:FIRST_ROWS] for f, rows in unknown.items()},
        "defaults": dict(src.defaults),
        "ignored": src.ignored,
        "lists": list_info,
        "split_ts": split_ts,
        "has_queries": has_queries,
        "notes": src.notes,
    }


REPEATS_RULE = ("an event repeated with the same user, item, type and time (and request) counts once, "
                "for every type; events at different times are kept")


def _unknown_line(s: dict[str, Any]) -> str:
    unk = s["events_naming_unknown_items"]
    if not unk:
        return "source rows naming unknown items (kept out): 0"
    rows = s.get("unknown_item_rows", {})
    parts = []
    for f, n in unk.items():
        first = rows.get(f, [])
        more = ", ..." if n > len(first) else ""
        parts.append(f"{n} in {f}" + (f" (rows {', '.join(map(str, first))}{more})" if first else ""))
    return "source rows naming unknown items (kept out; --strict stops instead): " + ", ".join(parts)


def _list_lines(s: dict[str, Any]) -> list[str]:
    lst, lines = s.get("lists") or {}, []
    merged = lst.get("repeats_merged") or {}
    lines.append(f"repeated events: {REPEATS_RULE}; merged: "
                 + (", ".join(f"{v} {k}s" for k, v in merged.items()) if merged else "none"))
    if lst.get("labels_without_impression"):
        lines.append(f"clicks/carts/purchases without an impression of the same slot: "
                     f"{lst['labels_without_impression']} (kept in events.parquet; no CTR sample)")
    if "sampled_impressions" in lst:
        lines.append(f"lists made from interactions: {lst['requests']} requests, "
                     f"{lst['sampled_impressions']} sampled impressions, {lst['implied_clicks']} clicks "
                     f"implied by a cart/purchase without one")
    return lines


def format_summary(s: dict[str, Any]) -> str:
    """The import summary as a few lines a person reads."""
    c = s["counts"]
    lines = [f"imported {s['source']}: {c['items']} items, {c['users']} users, {c['requests']} requests, "
             f"{c['impressions']} impressions, {c['clicks']} clicks, {c['carts']} carts, "
             f"{c['purchases']} purchases"]
    sp = s.get("span", {})
    if sp:
        when = f"{sp['first']} .. {sp['last']}" if "first" in sp else f"ts {sp['first_ts']} .. {sp['last_ts']}"
        lines.append(f"time span: {when} ({sp['days']} days); train/test split at ts {s['split_ts']}")
    r = s["rates"]
    lines.append(f"rates: click/impression {r['click_per_impression']:.4f}"
                 f"{' (against sampled negatives)' if r['against_sampled_negatives'] else ''}, "
                 f"cart/click {r['cart_per_click']:.4f}, purchase/click {r['purchase_per_click']:.4f}")
    iw = s["items_without"]
    lines.append(f"items without image: {iw.get('image', 0)}, without title: {iw.get('title', 0)}, "
                 f"without price: {iw.get('price', 0)}, without category: {iw.get('category', 0)}")
    ph = s.get("photos") or {}
    if ph.get("photos"):
        lines.append(f"photos: {ph['photos']} real, median {ph['median_width']}x{ph['median_height']} px "
                     f"(larger side {ph['min_side']}..{ph['max_side']})"
                     + (f", from {ph['folder']}" if ph.get("folder") else ""))
    lines.append(_unknown_line(s))
    if s["ignored"]:
        lines.append("source rows not used as events: " + ", ".join(f"{v} {k}" for k, v in s["ignored"].items()))
    lines += _list_lines(s)
    lines.append("derived: " + ", ".join(f"{k} {c[k]}" for k in ("pairs", "ctr_samples", "lists") if k in c))
    v = s.get("vectors")
    if v:
        lines.append(f"item vectors: {v['rows']} x {v['dim']} from {v['file']} ({v['order']}), the embedding "
                     f"table of version {v['version']}; {v['items_without_vector']} catalog items without one")
        lines += [f"note: {n}" for n in v.get("notes", [])]
    for k, v in s.get("substitutes", {}).items():
        lines.append(f"substitute ({k}): {v}")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
