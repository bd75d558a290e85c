"""Amazon Reviews 2023 (McAuley Lab): a category's reviews and item metadata, JSON Lines.

* ``--events``: reviews, e.g. ``All_Beauty.jsonl``: ``{"rating", "title", "text", "images", "asin",
  "parent_asin", "user_id", "timestamp" (ms), "helpful_vote", "verified_purchase"}``;
* ``--items``: metadata, e.g. ``meta_All_Beauty.jsonl``: ``{"main_category", "title", "average_rating",
  "rating_number", "features", "description", "price", "images": [{"thumb", "large", "variant",
  "hi_res"}], "videos", "store", "categories", "details", "parent_asin", "bought_together"}``;
* ``--images DIR``: the photos, downloaded beforehand (this machine fetches nothing): the file named
  like the last part of an image URL (``71i77AuI9xL._SL1500_.jpg``), or ``<parent_asin>.jpg``.

An item is a ``parent_asin`` (ids become integer codes; the original is kept as ``source_item_id``);
its category is the last of ``categories`` (else ``main_category``). A review is a click on the item,
and a purchase when ``verified_purchase``. There are no impressions (sampled negatives) and no
queries (item-to-item pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, read_records, to_float, to_ts
from mmrank.data.source import Builder, Source, events_table
from mmrank.errors import DataError


def _image_file(images: ImageFolder | None, urls: list[str], asin: str) -> str | None:
    if images is None:
        return None
    for u in urls:
        name = u.rsplit("/", 1)[-1]
        found = images.file(name) if name else None
        if found:
            return found
    return images.find(asin)


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    if items is None:
        raise DataError("the amazon preset needs --items (the meta_<category>.jsonl file)")
    b = Builder("amazon reviews 2023")
    meta = read_records(items)
    mf = str(items)
    asins = []
    for r, m in enumerate(meta):
        a = m.get("parent_asin")
        if not a:
            raise DataError("empty where a value is required", file=mf, row=r, column="parent_asin")
        asins.append(str(a))
    imap = IdMap(asins)
    reviews = read_records(events)
    ef = str(events)
    for r, rv in enumerate(reviews):
        for c in ("user_id", "parent_asin", "timestamp"):
            if rv.get(c) in (None, ""):
                raise DataError("empty where a value is required", file=ef, row=r, column=c)
    umap = IdMap([rv["user_id"] for rv in reviews])
    ts = to_ts(pa.array([str(rv["timestamp"]) for rv in reviews]), ef, "timestamp", "unix_ms")
    user = umap.map([rv["user_id"] for rv in reviews])
    item = imap.map([str(rv["parent_asin"]) for rv in reviews])
    keep = np.flatnonzero(item >= 0)
    rows, kinds = [], []
    for r in keep:
        rows.append(r)
        kinds.append("click")
        if reviews[r].get("verified_purchase") is True:
            rows.append(r)
            kinds.append("purchase")
    rows = np.asarray(rows, np.int64)
    b.add_events(events, events_table(ts=ts[rows], user_id=user[rows], item_id=item[rows], event=kinds), rows)
    cats, titles, urls = [], [], []
    for m in meta:
        c = m.get("categories") or []
        cats.append(str(c[-1]) if c else (m.get("main_category") or None))
        titles.append(m.get("title") or None)
        urls.append([u for im in (m.get("images") or []) if isinstance(im, dict)
                     for u in (im.get("large"), im.get("hi_res"), im.get("thumb")) if u])
    price = to_float(pa.array([None if m.get("price") is None else str(m.get("price")) for m in meta]),
                     mf, "price")
    b.add_items(items, pa.table({
        "item_id": pa.array(imap.map(asins)), "source_item_id": pa.array(asins, pa.string()),
        "title": pa.array(titles, pa.string()), "category": pa.array(cats, pa.string()),
        "price": pa.array(price), "store": pa.array([m.get("store") for m in meta], pa.string()),
        "image_path": pa.array([_image_file(images, u, a) for u, a in zip(urls, asins)], pa.string()),
    }))
    src = b.build(has_impressions=False,
                  unknown_item_rows={ef: np.flatnonzero(item < 0).tolist()} if (item < 0).any() else {},
                  notes=["a review is a click on the item, and a purchase when verified_purchase"])
    # the events already hold known items only; unknown ones were counted above
    src.item_columns = {"item_id": "parent_asin", "price": "price", "image_path": "images"}
    src.event_columns = {"item_id": "parent_asin"}
    return src
