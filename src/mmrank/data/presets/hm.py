"""H&M Personalized Fashion Recommendations (Kaggle): CSV files with headers.

* ``--items``: ``articles.csv`` (``article_id, product_code, prod_name, product_type_no,
  product_type_name, product_group_name, ..., colour_group_name, ..., department_name, ...,
  detail_desc``);
* ``--events``: ``transactions_train.csv`` (``t_dat, customer_id, article_id, price,
  sales_channel_id``); ``customers.csv`` beside it is read when present;
* ``--images DIR`` (default: ``images/`` beside articles.csv): ``DIR/0xx/0xxxxxxxxx.jpg``, the
  article id zero-padded to 10 digits, in a folder named by its first 3.

A transaction is a click and a purchase of the article on that day (``t_dat`` at 00:00 UTC, so a
customer's purchases of one day share a time); ``sales_channel_id`` (1, 2) is the region (0, 1).
The title is ``prod_name``; the category ``product_type_name``; the price the median transaction price
of the article. Articles without a photo get a grey one (counted). No impressions (sampled negatives),
no queries (item-to-item pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.importer import IdMap, Source, col, read_csv, to_float, to_int, to_str, to_ts
from mmrank.errors import DataError


def image_path(images: Path | None, article_id: int) -> str | None:
    if images is None:
        return None
    key = f"{int(article_id):010d}"
    p = images / key[:3] / f"{key}.jpg"
    return str(p.resolve()) if p.is_file() else None


def load(items: Path | None, events: Path, images: Path | None) -> Source:
    from mmrank.data.presets import Builder, events_table

    if items is None:
        raise DataError("the hm preset needs --items (articles.csv)")
    images = images if images is not None else (items.parent / "images" if (items.parent / "images").is_dir() else None)
    b = Builder("h&m personalized fashion")
    art = read_csv(items)
    af = str(items)
    ids = to_int(col(art, "article_id", af), af, "article_id")
    tx = read_csv(events)
    tf = str(events)
    ts = to_ts(col(tx, "t_dat", tf), tf, "t_dat", "date")
    cust = to_str(col(tx, "customer_id", tf))
    for r, c in enumerate(cust):
        if c is None:
            raise DataError("empty where a value is required", file=tf, row=r, column="customer_id")
    umap = IdMap(cust)
    user = umap.map(cust)
    item = to_int(col(tx, "article_id", tf), tf, "article_id")
    price = to_float(col(tx, "price", tf), tf, "price")
    channel = to_int(col(tx, "sales_channel_id", tf), tf, "sales_channel_id")
    bad = np.flatnonzero((channel < 1) | (channel > 2))
    if len(bad):
        raise DataError(f"expected 1 or 2, got {int(channel[bad[0]])}", file=tf, row=int(bad[0]),
                        column="sales_channel_id")
    n = tx.num_rows
    rows = np.repeat(np.arange(n), 2)
    kinds = ["click", "purchase"] * n
    b.add_events(events, events_table(ts=ts[rows], user_id=user[rows], item_id=item[rows], event=kinds,
                                      region=channel[rows] - 1), rows)
    # median transaction price per article (NaN when never sold)
    med = np.full(len(ids), np.nan)
    o = np.argsort(item, kind="stable")
    si, sp = item[o], price[o]
    lo, hi = np.searchsorted(si, ids, "left"), np.searchsorted(si, ids, "right")
    for j in np.flatnonzero(hi > lo):
        vals = sp[lo[j]:hi[j]]
        vals = vals[~np.isnan(vals)]
        if len(vals):
            med[j] = float(np.median(vals))
    names = art.column_names
    cols = {"item_id": pa.array(ids), "title": pa.array(to_str(col(art, "prod_name", af)), pa.string()),
            "category": pa.array(to_str(col(art, "product_type_name", af)), pa.string()),
            "price": pa.array(med),
            "image_path": pa.array([image_path(images, i) for i in ids], pa.string())}
    for c in ("product_group_name", "colour_group_name", "department_name", "index_name",
              "garment_group_name", "detail_desc"):
        if c in names:
            cols[c] = pa.array(to_str(art.column(c)), pa.string())
    b.add_items(items, pa.table(cols))
    users_tbl = None
    cp = events.parent / "customers.csv"
    if cp.exists():
        ct = read_csv(cp)
        cf = str(cp)
        cid = to_str(col(ct, "customer_id", cf))
        uid = umap.map(cid)
        keep = uid >= 0
        users_tbl = pa.table({"user_id": pa.array(uid[keep])} |
                             {c: pa.array(np.asarray(to_str(ct.column(c)), dtype=object)[keep].tolist(), pa.string())
                              for c in ("age", "club_member_status", "fashion_news_frequency") if c in ct.column_names})
    src = b.build(has_impressions=False, users=users_tbl,
                  notes=["a transaction is a click and a purchase at 00:00 UTC of its day",
                         "price = the article's median transaction price over the whole log"])
    src.item_columns = {"item_id": "article_id", "title": "prod_name", "category": "product_type_name",
                        "image_path": "article_id"}
    src.event_columns = {"region": "sales_channel_id"}
    return src
