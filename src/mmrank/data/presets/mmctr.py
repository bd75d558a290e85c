"""MicroLens 1M MMCTR (the WWW 2025 multimodal CTR challenge, github reczoo/WWW2025_MMCTR_Challenge)::

    data/
      item_emb.parquet            item_id, item_emb_d128 (list<float>, 128): the item embeddings
      MicroLens_1M_x1/
        train.parquet             user_id, item_seq, likes_level, views_level, item_id, label
        valid.parquet             (the same columns)
        test.parquet              (no labels: not imported)
        item_info.parquet         item_id, item_tags (list<int>), item_emb_d128; item 0 is padding

``--events`` is ``data/`` or ``data/MicroLens_1M_x1/``; ``item_emb.parquet`` is looked for in the
folder given, then in ``MicroLens_1M_x1/`` and its parent. Each train / valid row is one impression
of ``item_id`` to ``user_id`` (a request of one item, position 0), a click when ``label`` is 1. The
catalog is ``item_info.parquet``'s items (item 0, the padding row, left out; the category is the first
tag), else the items the embeddings and rows name. The embedding column is ``item_emb_d128`` (else the
file's one list<float> column); an item 0 whose vector is all zeros (the padding row) is left out and
said so. ``--item-vectors`` replaces the file.

The files carry no time: row order stands in for it (train rows, then valid rows), so the split is
the files' (valid = mmrank's test). ``item_seq`` (the challenge's precomputed history) is not read:
mmrank builds each sample's history from the clicks before it. There are no titles, photos or queries
(item-to-item pre-training pairs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrank.data.image_folder import ImageFolder
from mmrank.data.readers import IdMap, col, to_int
from mmrank.data.source import Builder, Source, events_table, wide_to_long
from mmrank.errors import DataError

if TYPE_CHECKING:
    from mmrank.data.import_vectors import ItemVectors

FOLDER = "MicroLens_1M_x1"
VECTOR_COLUMN = "item_emb_d128"


def _folders(events: Path) -> tuple[Path, Path | None]:
    """``(the folder with train/valid.parquet, item_emb.parquet or None)``."""
    d = events if (events / "train.parquet").exists() else events / FOLDER
    if not (d / "train.parquet").exists():
        raise DataError(f"no train.parquet here or in {FOLDER}/ (the MMCTR layout)", file=str(events))
    for cand in (events / "item_emb.parquet", d / "item_emb.parquet", d.parent / "item_emb.parquet"):
        if cand.exists():
            return d, cand
    return d, None


def vector_column(path: Path) -> str:
    """``item_emb_d128``, else the file's one list<float> column."""
    schema = pq.read_schema(path)
    if VECTOR_COLUMN in schema.names:
        return VECTOR_COLUMN
    lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
             or pa.types.is_fixed_size_list(f.type)]
    if len(lists) != 1:
        raise DataError(f"expected column {VECTOR_COLUMN} or one list column (the file has: "
                        f"{', '.join(schema.names)})", file=str(path), row=0, column=VECTOR_COLUMN)
    return lists[0]


def read_embeddings(path: Path) -> ItemVectors:
    """``item_emb.parquet`` (or ``item_info.parquet``'s embedding column), padding row 0 left out."""
    from mmrank.data.import_vectors import read_parquet_vectors

    vec = read_parquet_vectors(path, "item_id", vector_column(path))
    if vec.keys is not None and "0" in vec.keys:
        r = vec.keys.index("0")
        if not vec.matrix[r].any():
            keep = [i for i in range(len(vec.keys)) if i != r]
            vec.keys = [vec.keys[i] for i in keep]
            vec.matrix = vec.matrix[keep]
            vec.notes.append(f"{path}: row {r} (item 0, all zeros) is MMCTR's padding row: left out")
    return vec


def _catalog(d: Path, vec_keys: list[str], event_items: np.ndarray) -> tuple[Path, pa.Table, np.ndarray]:
    info = d / "item_info.parquet"
    if info.exists():
        t = pq.read_table(info, columns=[c for c in ("item_id", "item_tags") if c in pq.read_schema(info).names])
        ids = to_int(col(t, "item_id", str(info)), str(info), "item_id")
        rows = np.flatnonzero(ids != 0)
        out = {"item_id": pa.array(ids[rows])}
        if "item_tags" in t.column_names:
            tags = t.column("item_tags").to_pylist()
            out["category"] = pa.array([f"tag {tags[r][0]}" if tags[r] else None for r in rows], pa.string())
        return info, pa.table(out), rows
    ids = np.union1d(np.asarray([int(k) for k in vec_keys], np.int64), event_items)
    return d / "train.parquet", pa.table({"item_id": pa.array(ids)}), np.arange(len(ids))


def load(items: Path | None, events: Path, images: ImageFolder | None) -> Source:
    d, emb = _folders(events)
    b = Builder("MicroLens MMCTR")
    notes = ["MMCTR rows carry no time: row order stands in for it (train rows, then valid rows); "
             "valid is mmrank's test",
             "item_seq (the challenge's precomputed history) is not read: histories come from the clicks "
             "before each sample"]
    parts = [(p, pq.read_table(p, columns=None)) for p in (d / "train.parquet", d / "valid.parquet") if p.exists()]
    raw_users = [u for _, t in parts for u in col(t, "user_id", str(d / "train.parquet")).to_pylist()]
    umap = IdMap(raw_users)
    offset, split, all_items = 0, None, []
    for p, t in parts:
        f, n = str(p), t.num_rows
        item = to_int(col(t, "item_id", f), f, "item_id")
        label = to_int(col(t, "label", f), f, "label")
        user = umap.map(col(t, "user_id", f).to_pylist())
        if p.name == "valid.parquet":
            split = offset
        rows, kinds = wide_to_long(n, {"click": label})
        ts = offset + np.arange(n, dtype=np.int64)
        b.add_events(p, events_table(ts=ts[rows], user_id=user[rows], item_id=item[rows], event=kinds,
                                     request_id=ts[rows], position=np.zeros(len(rows), np.int64)), rows)
        all_items.append(item)
        offset += n
    if (d / "test.parquet").exists():
        notes.append(f"{d / 'test.parquet'}: {pq.ParquetFile(d / 'test.parquet').metadata.num_rows} rows "
                     "without labels, not imported")
    vec = read_embeddings(emb) if emb is not None else None
    if vec is None:
        info = d / "item_info.parquet"
        if info.exists() and VECTOR_COLUMN in pq.read_schema(info).names:
            vec = read_embeddings(info)
    cat_file, cat, cat_rows = _catalog(d, vec.keys if vec is not None and vec.keys else [],
                                       np.unique(np.concatenate(all_items)) if all_items else np.zeros(0, np.int64))
    paths = [images.find(str(i)) if images is not None else None for i in cat.column("item_id").to_pylist()]
    b.add_items(cat_file, cat.append_column("image_path", pa.array(paths, pa.string())), cat_rows)
    src = b.build(has_impressions=True, notes=notes, split_ts=split)
    src.item_columns = {"item_id": "item_id"}
    src.event_columns = {"item_id": "item_id", "user_id": "user_id"}
    src.substitutes["time"] = "no timestamps: row order stands in for time (train rows, then valid rows)"
    src.vectors = vec
    if vec is None:
        src.notes.append("no item_emb.parquet found: no item vectors imported (give --item-vectors)")
    if items is not None:
        src.notes.append(f"{items}: the MMCTR preset reads item_info.parquet from the data folder; "
                         "--items is not read")
    return src
