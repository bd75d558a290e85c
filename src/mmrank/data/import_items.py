"""The import's items step: check a source's items and fill what they lack, counting it.

Duplicate ids stop the import (naming the row); a missing (or blank) title becomes ``<category> item <id>``, a
missing category ``unknown``, a missing price 0, a missing ``created_at`` the item's first event, a
missing photo the grey placeholder (:func:`mmrank.data.photos.placeholder_image`). Every photo is
decoded (``DataConfig.check_images``); an undecodable one names the items file, the row and the image
column (or the photo file). The items table records ``has_image`` / ``has_title`` (false where a
stand-in was filled), the market's columns of the same name.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmrank.data.photos import photo_size, placeholder_image
from mmrank.data.readers import to_str
from mmrank.data.source import Source
from mmrank.errors import DataError


def where(src: Source, kind: str, i: int) -> tuple[str, int]:
    """(file, row) of row ``i`` of the source's ``items`` or ``events``."""
    f = src.items_file if kind == "items" else src.events_file
    r = src.items_row if kind == "items" else src.events_row
    return src.files[int(f[i])], int(r[i])


def check_unique_ids(src: Source, ids: np.ndarray) -> None:
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        i = int(order[dup[0] + 1])
        f, r = where(src, "items", i)
        raise DataError(f"duplicate item id {int(ids[i])}", file=f, row=r,
                        column=src.item_columns.get("item_id", "item_id"))


def _text(t: pa.Table, ids: np.ndarray, counts: Counter) -> tuple[list[str], list[str]]:
    n = t.num_rows
    raw_cats = to_str(t.column("category")) if "category" in t.column_names else [None] * n
    counts["without_category"] = sum(c is None for c in raw_cats)
    cats = [c if c is not None else "unknown" for c in raw_cats]
    titles = to_str(t.column("title")) if "title" in t.column_names else [None] * n
    for i, tt in enumerate(titles):
        if tt is None or not tt.strip():
            titles[i] = f"{cats[i]} item {int(ids[i])}"
            counts["without_title"] += 1
    return titles, cats


def _numbers(t: pa.Table, ids: np.ndarray, first_ts: dict[int, int], fallback_ts: int,
             counts: Counter) -> tuple[np.ndarray, np.ndarray]:
    n = t.num_rows
    names = t.column_names
    price = (t.column("price").to_numpy(zero_copy_only=False).astype(np.float64) if "price" in names
             else np.full(n, np.nan))
    counts["without_price"] = int(np.isnan(price).sum())
    price = np.where(np.isnan(price), 0.0, price)
    created = (t.column("created_at").to_numpy(zero_copy_only=False).astype(np.float64)
               if "created_at" in names else np.full(n, np.nan))
    created_out = np.array([int(c) if not np.isnan(c) else first_ts.get(int(i), fallback_ts)
                            for c, i in zip(created, ids)], np.int64)
    return price, created_out


def _photos(src: Source, check: bool, counts: Counter) -> tuple[list[bytes | None], list[str | None], list]:
    """Each row's image bytes (or None and its absolute path) and the real photos' (width, height)."""
    from mmrank.data.io import decode_image

    t, n = src.items, src.items.num_rows
    blobs = t.column("image").to_pylist() if "image" in t.column_names else [None] * n
    paths = t.column("image_path").to_pylist() if "image_path" in t.column_names else [None] * n
    image, image_path, sizes = [], [], []
    for i, (b, p) in enumerate(zip(blobs, paths)):
        if b is None and p is None:
            image.append(placeholder_image())
            image_path.append(None)
            counts["without_image"] += 1
            continue
        column = src.item_columns.get("image" if b is not None else "image_path", "image")
        try:
            data = b if b is not None else Path(p).read_bytes()
            if check:
                decode_image(data)
            sizes.append(photo_size(data))
        except (ValueError, OSError) as err:
            f, r = where(src, "items", i)
            what = "no such image file" if isinstance(err, FileNotFoundError) else \
                getattr(err, "strerror", None) or str(err)
            raise DataError(f"{what}" + (f" ({p})" if p else ""), file=f, row=r, column=column) from None
        image.append(b)
        image_path.append(None if b is not None else str(Path(p).resolve()))
    return image, image_path, [s for s in sizes if s is not None]


def photo_stats(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    """How many real photos and their sizes (median width, height and larger side; smallest, largest)."""
    if not sizes:
        return {"photos": 0}
    wh = np.asarray(sizes, np.int64)
    side = wh.max(axis=1)
    return {"photos": len(sizes), "median_width": int(np.median(wh[:, 0])),
            "median_height": int(np.median(wh[:, 1])), "median_side": int(np.median(side)),
            "min_side": int(side.min()), "max_side": int(side.max())}


def item_table(src: Source, first_ts: dict[int, int], fallback_ts: int,
               check_images: bool) -> tuple[pa.Table, dict[str, int], dict[str, Any]]:
    """The run's items table, what was filled (counts) and the real photos' sizes."""
    t = src.items
    ids = t.column("item_id").to_numpy().astype(np.int64)
    check_unique_ids(src, ids)
    counts: Counter = Counter()
    titles, cats = _text(t, ids, counts)
    price, created = _numbers(t, ids, first_ts, fallback_ts, counts)
    raw_titles = (to_str(t.column("title")) if "title" in t.column_names else [None] * t.num_rows)
    has_title = [x is not None and bool(x.strip()) for x in raw_titles]
    image, image_path, sizes = _photos(src, check_images, counts)
    grey = placeholder_image()
    has_image = [not (p is None and (b is None or b == grey)) for b, p in zip(image, image_path)]
    out = {"item_id": pa.array(ids), "title": pa.array(titles, pa.string()),
           "image": pa.array(image, pa.binary()), "image_path": pa.array(image_path, pa.string()),
           "category": pa.array(cats, pa.string()), "price": pa.array(price),
           "created_at": pa.array(created)}
    for c in t.column_names:
        if c not in out and c not in ("has_image", "has_title"):
            out[c] = t.column(c)
    # issue 20: which items came without a photo / a usable title (the stand-ins above fill them)
    out["has_image"] = pa.array(has_image, pa.bool_())
    out["has_title"] = pa.array(has_title, pa.bool_())
    return pa.table(out), dict(counts), photo_stats(sizes)
