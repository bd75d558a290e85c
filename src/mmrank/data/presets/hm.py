"""H&M Personalized Fashion Recommendations (Kaggle): Parquet, CSV or JSON Lines files.

* ``--items``: ``articles`` (``article_id, product_code, prod_name, product_type_no,
  product_type_name, product_group_name, ..., colour_group_name, ..., department_name, ...,
  detail_desc``);
* ``--events``: ``transactions_train`` (``t_dat, customer_id, article_id, price,
  sales_channel_id``); ``customers.{csv,parquet,jsonl}`` beside it is read when present;
* ``--images DIR`` (default: ``images/`` beside the articles): Kaggle's nested
  ``DIR/0xx/0xxxxxxxxx.jpg`` (the id zero-padded to 10 digits, in a folder named by its first 3), or a
  flat ``DIR/<article id>.jpg``, with or without the padding.

A transaction is a click and a purchase of the article on that day (``t_dat`` at 00:00 UTC, so a
customer's purchases of one day share a time, and repeats of one day are one event);
``sales_channel_id`` (1, 2) is the region (0, 1), default 1 when the file lacks the column; ``price``
(optional) is the price paid, from which prices are taken point-in-time: the catalog's from the
transactions before the train/test split, each list's from those before the list. The title is ``prod_name``; the category ``product_type_name``. Articles
without a photo get a grey one (counted). No impressions (sampled negatives), no queries (item-to-item
pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, col, read_any, to_float, to_int, to_str, to_ts
from mmrank.data.source import Builder, Source, events_table
from mmrank.errors import DataError

ATTRIBUTES = ("product_group_name", "colour_group_name", "department_name", "index_name",
              "garment_group_name", "detail_desc")


def _customers(events: Path, umap: IdMap) -> pa.Table | None:
    for suffix in (".csv", ".parquet", ".jsonl"):
        cp = events.parent / f"customers{suffix}"
        if cp.exists():
            ct, cf = read_any(cp), str(cp)
            uid = umap.map(to_str(col(ct, "customer_id", cf)))
            keep = uid >= 0
            return pa.table({"user_id": pa.array(uid[keep])} |
                            {c: pa.array(np.asarray(to_str(ct.column(c)), dtype=object)[keep].tolist(), pa.string())
                             for c in ("age", "club_member_status", "fashion_news_frequency") if c in ct.column_names})
    return None


def _transactions(b: Builder, events: Path) -> tuple[IdMap, dict[str, str]]:
    tx, tf = read_any(events), str(events)
    ts = to_ts(col(tx, "t_dat", tf), tf, "t_dat", "date")
    cust = to_str(col(tx, "customer_id", tf))
    for r, c in enumerate(cust):
        if c is None:
            raise DataError("empty where a value is required", file=tf, row=r, column="customer_id")
    umap = IdMap(cust)
    user, item = umap.map(cust), to_int(col(tx, "article_id", tf), tf, "article_id")
    n, defaults = tx.num_rows, {}
    price = to_float(tx.column("price"), tf, "price") if "price" in tx.column_names else np.full(n, np.nan)
    if "price" not in tx.column_names:
        defaults["price"] = "no price column in the transactions: items have no price (0)"
    if "sales_channel_id" in tx.column_names:
        channel = to_int(tx.column("sales_channel_id"), tf, "sales_channel_id")
        bad = np.flatnonzero((channel < 1) | (channel > 2))
        if len(bad):
            raise DataError(f"expected 1 or 2, got {int(channel[bad[0]])}", file=tf, row=int(bad[0]),
                            column="sales_channel_id")
    else:
        channel = np.ones(n, np.int64)
        defaults["sales_channel_id"] = "no sales_channel_id column: every transaction is channel 1 (region 0)"
    rows = np.repeat(np.arange(n), 2)
    b.add_events(events, events_table(ts=ts[rows], user_id=user[rows], item_id=item[rows],
                                      event=["click", "purchase"] * n, region=channel[rows] - 1,
                                      price=price[rows]), rows)
    return umap, defaults


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    if items is None:
        raise DataError("the hm preset needs --items (articles: Parquet, CSV or JSON Lines)")
    b = Builder("h&m personalized fashion")
    art, af = read_any(items), str(items)
    ids = to_int(col(art, "article_id", af), af, "article_id")
    umap, defaults = _transactions(b, events)
    cols = {"item_id": pa.array(ids), "title": pa.array(to_str(col(art, "prod_name", af)), pa.string()),
            "category": pa.array(to_str(col(art, "product_type_name", af)), pa.string()),
            "image_path": pa.array([images.find(f"{int(i):010d}") if images else None for i in ids],
                                   pa.string())}
    for c in ATTRIBUTES:
        if c in art.column_names:
            cols[c] = pa.array(to_str(art.column(c)), pa.string())
    b.add_items(items, pa.table(cols))
    src = b.build(has_impressions=False, users=_customers(events, umap), defaults=defaults,
                  notes=["a transaction is a click and a purchase at 00:00 UTC of its day",
                         "price = the article's mean transaction price before the train/test split; "
                         "in lists.parquet, each candidate's mean price paid before the list's time"])
    src.item_columns = {"item_id": "article_id", "title": "prod_name", "category": "product_type_name",
                        "image_path": "image"}
    src.event_columns = {"item_id": "article_id", "region": "sales_channel_id"}
    return src
