"""MMRec (github enoche/MMRec): a data set folder such as ``data/baby/`` with::

    baby.inter        tab-separated, a header row: userID  itemID  rating  timestamp  x_label
    image_feat.npy    (n_items, D_image) float: row i is item i
    text_feat.npy     (n_items, D_text)  float: row i is item i

MMRec's preprocessing re-indexes items to ``0 .. n_items - 1`` (``itemID``), and its feature files are
in that order; the interactions are ratings (reviews) with a train / valid / test label (``x_label``
0 / 1 / 2).

``--events`` is the folder (or the ``.inter`` file; the ``.npy`` files are read beside it). The
catalog is every item of the feature files (items 0 .. n-1, no titles or photos: MMRec ships the
features only); each interaction is a click (no impressions: lists are made with sampled negatives;
no queries: item-to-item pre-training pairs). The item vectors are the two feature files, each row
L2-normalised, concatenated (scaled so every row has norm 1): the run's embedding table, so every
CTR strategy and search by item run without pre-training; with one feature file, that file alone.
``--item-vectors`` replaces them.

``x_label`` is not used: mmrank splits by time (``data.split_ts``, default the 80% quantile of the
interactions' time), so a test interaction is never older than a training one; MMRec's own split is
per user. The summary says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, col, read_any, to_int, to_ts
from mmrank.data.source import Builder, Source, events_table
from mmrank.errors import DataError

if TYPE_CHECKING:
    from mmrank.data.import_vectors import ItemVectors

FEATURES = ("image_feat.npy", "text_feat.npy")


def _files(events: Path) -> tuple[Path, Path]:
    """``(the .inter file, its folder)``."""
    if events.is_dir():
        inter = sorted(events.glob("*.inter"))
        if len(inter) != 1:
            raise DataError(f"expected one <name>.inter file here, found {len(inter)}"
                            + (f" ({', '.join(p.name for p in inter)})" if inter else ""), file=str(events))
        return inter[0], events
    if not events.exists():
        raise DataError("no such file or folder", file=str(events))
    return events, events.parent


def read_features(folder: Path) -> ItemVectors:
    """The feature files of ``folder`` (row i = item i), fused as the module docstring says."""
    from mmrank.data.import_vectors import fuse, read_npy_vectors

    found = [folder / f for f in FEATURES if (folder / f).exists()]
    if not found:
        raise DataError(f"no MMRec feature file here (expected {' and/or '.join(FEATURES)})", file=str(folder))
    parts = []
    for p in found:
        n = np.load(p, mmap_mode="r", allow_pickle=False).shape[0]
        parts.append(read_npy_vectors(p, [str(i) for i in range(n)]))
    if len(parts) == 1:
        parts[0].order = "row i is item i (MMRec's item index)"
        return parts[0]
    vec = fuse(parts, "MMRec features")
    vec.order = "row i is item i (MMRec's item index)"
    return vec


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    inter, folder = _files(events)
    f = str(inter)
    t = read_any(inter, delimiter="\t")
    vec = read_features(folder)
    n_items = len(vec.matrix)
    raw_users = col(t, "userID", f).to_pylist()
    users = IdMap(raw_users).map(raw_users)
    bad = np.flatnonzero(users < 0)
    if len(bad):
        raise DataError("empty where a value is required", file=f, row=int(bad[0]), column="userID")
    item = to_int(col(t, "itemID", f), f, "itemID")
    ts = to_ts(col(t, "timestamp", f), f, "timestamp", "unix")
    b = Builder("MMRec")
    keep = np.flatnonzero((item >= 0) & (item < n_items))
    b.add_events(inter, events_table(ts=ts[keep], user_id=users[keep], item_id=item[keep],
                                     event=["click"] * len(keep)), keep)
    feat = folder / FEATURES[0] if (folder / FEATURES[0]).exists() else folder / FEATURES[1]
    ids = np.arange(n_items, dtype=np.int64)
    paths = [images.find(str(i)) if images is not None else None for i in ids]
    b.add_items(feat, pa.table({"item_id": pa.array(ids), "image_path": pa.array(paths, pa.string())}))
    unknown = np.flatnonzero((item < 0) | (item >= n_items))
    notes = ["an interaction (a rating) is a click on the item",
             "x_label (MMRec's per-user train/valid/test split) is not used: mmrank splits by time"]
    src = b.build(has_impressions=False, unknown_item_rows={f: unknown.tolist()} if len(unknown) else {},
                  notes=notes)
    src.item_columns = {"item_id": "itemID"}
    src.event_columns = {"item_id": "itemID", "user_id": "userID", "ts": "timestamp"}
    src.vectors = vec
    if items is not None:
        src.notes.append(f"{items}: MMRec has no catalog file; --items is not read")
    return src
