"""A small photographed catalog for the store's tests: coloured JPEGs whose titles name their colour."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from mmrank.data.io import write_table

WORDS = ["red", "blue", "green", "shirt", "dress", "jeans", "casual", "formal", "striped", "plain"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def jpeg(colour: str, seed: int, size: int = 24) -> bytes:
    """A ``size`` x ``size`` JPEG of ``colour`` (a key of COLOURS) with seeded noise."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_items(run: Path, n: int = 80, bad_row: int | None = None, empty_title_row: int | None = None):
    """Write ``run/data/items.parquet`` with ``n`` items (ids 5, 15, ...); a broken photo at ``bad_row``
    and a blank title at ``empty_title_row`` when asked. Returns ``(ids, titles, images)``."""
    rng = np.random.default_rng(0)
    colours = [list(COLOURS)[i % 3] for i in range(n)]
    titles = [f"{c} {' '.join(rng.choice(WORDS[3:], 2))}" for c in colours]
    images = [jpeg(c, i) for i, c in enumerate(colours)]
    if bad_row is not None:
        images[bad_row] = b"\xff\xd8 not a jpeg"
    if empty_title_row is not None:
        titles[empty_title_row] = "   "
    ids = np.arange(n, dtype=np.int64) * 10 + 5
    write_table(pa.table({"item_id": pa.array(ids), "title": titles, "image": images,
                          "category": ["c"] * n, "price": np.ones(n),
                          "created_at": pa.array(np.zeros(n, np.int64))}),
                run / "data" / "items.parquet")
    return ids, titles, images
