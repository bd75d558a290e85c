"""Parquet IO and validation of the shared tables, streamed in record batches.

Every check names the file, the row (0-based, counted over the whole file) and the column::

    items.parquet: row 17, column 'price': NaN where a number is required

Items and their photos are read by one function for every stage, :func:`read_items` (or
:func:`iter_items` in batches): each row's photo as bytes, whether the file holds it in ``image``,
as a path in ``image_path``, or as a file named by the item id in an images folder.

Example::

    >>> from mmrank.data.io import iter_batches
    >>> for batch in iter_batches("runs/demo/data/events.parquet", "events", columns=["ts", "item_id"]):
    ...     pass  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from mmrank.data.image_folder import ImageFolder
from mmrank.data.schemas import EVENT_TYPES, EVENTS_OPTIONAL, ITEMS_OPTIONAL, TABLES
from mmrank.durable import commit_file, temp_path
from mmrank.errors import DataError

BATCH_ROWS = 65_536


def write_table(table: pa.Table, path: str | Path, row_group_size: int = 262_144) -> Path:
    """Write ``table`` to ``path`` atomically and durably (:mod:`mmrank.durable`); the same table
    gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size,
                   write_statistics=True, store_schema=True)
    commit_file(tmp, path)
    return path


def _open(path: Path) -> ds.Dataset:
    if not path.exists():
        raise DataError("no such file", file=str(path))
    try:
        return ds.dataset(path, format="parquet")
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=str(path)) from None


def _first_bad_number(arr: pa.Array) -> tuple[int, object]:
    for i, v in enumerate(arr.to_pylist()):
        if v is None:
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return i, v
    return 0, None


def _conform(batch: pa.RecordBatch, schema: pa.Schema, path: Path, offset: int) -> pa.RecordBatch:
    """Cast ``batch`` to ``schema``'s types (keeping extra columns); raise on the first bad cell."""
    cols, fields = [], []
    for name in batch.schema.names:
        col = batch.column(name)
        if name not in schema.names:
            cols.append(col)
            fields.append(batch.schema.field(name))
            continue
        field = schema.field(name)
        if not col.type.equals(field.type):
            try:
                col = pc.cast(col, field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
                    row, value = _first_bad_number(batch.column(name))
                    raise DataError(f"expected a number ({field.type}), got {value!r}"
                                    if value is not None else
                                    f"expected {field.type}, got {batch.column(name).type}",
                                    file=str(path), row=offset + row, column=name) from None
                raise DataError(f"expected {field.type}, got {col.type}", file=str(path),
                                row=offset, column=name) from None
        if not field.nullable and col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("empty (null) where a value is required", file=str(path),
                            row=offset + row, column=name)
        if pa.types.is_floating(field.type):
            nan = pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
            if nan.any():
                raise DataError("NaN where a number is required", file=str(path),
                                row=offset + int(np.flatnonzero(nan)[0]), column=name)
        cols.append(col)
        fields.append(pa.field(name, field.type, nullable=field.nullable))
    return pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))


def check_columns(names: list[str], kind: str, path: Path) -> None:
    """Raise on the first column of ``kind``'s schema that ``names`` lacks."""
    schema = TABLES[kind]
    optional = {"items": ITEMS_OPTIONAL, "events": EVENTS_OPTIONAL}.get(kind, ())
    for field in schema:
        if field.name not in names and field.name not in optional:
            raise DataError(f"missing column (expected {field.type})", file=str(path), row=0,
                            column=field.name)
    if kind == "items" and not any(c in names for c in ITEMS_OPTIONAL):
        raise DataError("missing column: an items table needs 'image' (bytes) or 'image_path'",
                        file=str(path), row=0, column="image")


def iter_batches(path: str | Path, kind: str, columns: list[str] | None = None,
                 batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream ``path`` in record batches, each cast to ``kind``'s schema and checked cell by cell.

    Checks types, nulls and NaN; the whole-table checks (duplicate ids, unknown items, images) are in
    :func:`validate_items` and :func:`validate_events`.
    """
    path = Path(path)
    dataset = _open(path)
    check_columns(dataset.schema.names, kind, path)
    if columns is not None:
        for c in columns:
            if c not in dataset.schema.names:
                raise DataError(f"missing column (asked for {c!r})", file=str(path), row=0, column=c)
    offset = 0
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
        yield _conform(batch, TABLES[kind], path, offset)
        offset += batch.num_rows


def read_table(path: str | Path, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole (checked) table; prefer :func:`iter_batches` for large files."""
    batches = list(iter_batches(path, kind, columns))
    if not batches:
        schema = TABLES[kind]
        names = columns or schema.names
        return pa.table({n: pa.array([], schema.field(n).type if n in schema.names else pa.null())
                         for n in names})
    return pa.Table.from_batches(batches)


def read_clicks(run: str | Path, cutoff: int, reader: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user, item, ts)`` (int64) of every ``click`` of ``R/data/events.parquet`` strictly before
    ``cutoff``, in the file's order: what post-training and click-supervised pre-training learn from
    (point-in-time by construction). ``reader`` names the stage in the error for a missing file."""
    path = Path(run) / "data" / "events.parquet"
    if not path.exists():
        raise DataError(f"no such file ({reader} reads the clicks)", file=str(path))
    names = pq.read_schema(path).names
    for c in ("ts", "user_id", "item_id", "event"):
        if c not in names:
            raise DataError("missing column (expected ts, user_id, item_id, event)", file=str(path), column=c)
    t = pq.read_table(path, columns=["ts", "user_id", "item_id", "event"],
                      filters=[("ts", "<", int(cutoff)), ("event", "=", "click")])
    t = t.filter(pc.and_(pc.less(t.column("ts"), int(cutoff)), pc.equal(t.column("event"), "click")))
    user, item, ts = (t.column(c).to_numpy().astype(np.int64) for c in ("user_id", "item_id", "ts"))
    return user, item, ts


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG bytes into an RGB image; raises ``ValueError`` on anything undecodable."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises several types for bad bytes
        raise ValueError(f"undecodable image ({type(err).__name__}: {err})") from None
    return img.convert("RGB")


def validate_items(path: str | Path, check_images: bool = True) -> np.ndarray:
    """Check an items file whole: types, duplicate ids, decodable images. Returns the sorted item ids."""
    path = Path(path)
    seen: list[np.ndarray] = []
    offset = 0
    names = _open(path).schema.names
    cols = ["item_id", "title"] + [c for c in ITEMS_OPTIONAL if c in names]
    cols += [c for c in ("category", "price", "created_at")]
    for batch in iter_batches(path, "items", columns=cols):
        ids = batch.column("item_id").to_numpy()
        titles = batch.column("title").to_pylist()
        for i, t in enumerate(titles):
            if not t or not t.strip():
                raise DataError("empty title", file=str(path), row=offset + i, column="title")
        if check_images:
            images = batch.column("image").to_pylist() if "image" in names else [None] * len(ids)
            img_paths = (batch.column("image_path").to_pylist() if "image_path" in names
                         else [None] * len(ids))
            for i, (b, p) in enumerate(zip(images, img_paths)):
                if b is None and p is None:
                    raise DataError("no image: neither 'image' nor 'image_path' is set",
                                    file=str(path), row=offset + i, column="image")
                try:
                    if b is None:
                        b = (path.parent / p).read_bytes()
                    decode_image(b)
                except (ValueError, OSError) as err:
                    raise DataError(str(err), file=str(path), row=offset + i,
                                    column="image" if p is None else "image_path") from None
        seen.append(ids)
        offset += len(ids)
    all_ids = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        row = int(order[dup[0] + 1])
        raise DataError(f"duplicate item_id {int(sorted_ids[dup[0]])}", file=str(path), row=row,
                        column="item_id")
    return sorted_ids


def validate_events(path: str | Path, item_ids: np.ndarray) -> int:
    """Check an events file against the known (sorted) ``item_ids``. Returns the row count."""
    path = Path(path)
    offset = 0
    allowed = pa.array(EVENT_TYPES)
    for batch in iter_batches(path, "events"):
        ids = batch.column("item_id").to_numpy()
        known = np.isin(ids, item_ids)
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            raise DataError(f"unknown item_id {int(ids[row])} (not in the items table)",
                            file=str(path), row=offset + row, column="item_id")
        ok = pc.is_in(batch.column("event"), value_set=allowed).to_numpy(zero_copy_only=False)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(f"unknown event type {batch.column('event')[row].as_py()!r}; "
                            f"expected one of {', '.join(EVENT_TYPES)}",
                            file=str(path), row=offset + row, column="event")
        offset += batch.num_rows
    return offset


# ---------------------------------------------------------------------------------------------------
# Items with their images: the one reader every stage uses.

def _items_image_dir(path: Path, image_dir: str | Path | None) -> ImageFolder | None:
    if image_dir is not None:
        return ImageFolder(Path(image_dir))
    default = path.parent / "images"
    return ImageFolder(default) if default.is_dir() else None


def iter_items(path: str | Path, columns: list[str] | None = None, *, images: bool = True,
               image_dir: str | Path | None = None,
               batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Items in record batches (checked as :func:`iter_batches` checks them).

    With ``images=True`` every batch has an ``image`` column of bytes, however the file gives each
    row's photo, mixed per row: the ``image`` column (bytes), else ``image_path`` (relative to the
    items file, or absolute), else a file named by the item id in ``image_dir`` (default: an
    ``images/`` folder beside the items file), flat or in subfolders, with or without zero padding
    (:class:`mmrank.data.image_folder.ImageFolder`). A row with none of these, or whose file cannot be read,
    raises a :class:`DataError` naming the file, the row and the column.
    ``columns`` (default: all) are the other columns wanted; ``item_id`` is always included.
    """
    path = Path(path)
    dataset = _open(path)
    names = dataset.schema.names
    folder = _items_image_dir(path, image_dir)
    if images and not any(c in names for c in ITEMS_OPTIONAL) and folder is None:
        raise DataError("missing column: items need 'image' (bytes), 'image_path', or a folder of "
                        "images named by item id (image_dir)", file=str(path), row=0, column="image")
    for field in TABLES["items"]:
        if field.name not in names and field.name not in ITEMS_OPTIONAL:
            raise DataError(f"missing column (expected {field.type})", file=str(path), row=0,
                            column=field.name)
    want = list(columns) if columns is not None else [c for c in names if c not in ITEMS_OPTIONAL]
    want = ["item_id"] + [c for c in want if c not in ("item_id", *ITEMS_OPTIONAL)]
    for c in want:
        if c not in names:
            raise DataError(f"missing column (asked for {c!r})", file=str(path), row=0, column=c)
    read = want + ([c for c in ITEMS_OPTIONAL if c in names] if images else [])
    offset = 0
    for batch in dataset.to_batches(columns=read, batch_size=batch_size):
        batch = _conform(batch, TABLES["items"], path, offset)
        if images:
            n = batch.num_rows
            blobs = batch.column("image").to_pylist() if "image" in names else [None] * n
            rel = batch.column("image_path").to_pylist() if "image_path" in names else [None] * n
            ids = batch.column("item_id").to_numpy()
            out: list[bytes] = []
            for i, (b, p) in enumerate(zip(blobs, rel)):
                if b is None:
                    column = "image_path"
                    f = path.parent / p if p else (folder.find(int(ids[i])) if folder else None)
                    if f is None:
                        raise DataError("no image: 'image' and 'image_path' are empty and no file "
                                        f"named {int(ids[i])}.jpg/.png in "
                                        f"{folder.root if folder else 'an images folder'} (flat or in "
                                        "subfolders, with or without zero padding)",
                                        file=str(path), row=offset + i, column="image")
                    try:
                        b = Path(f).read_bytes()
                    except OSError as err:
                        raise DataError(f"cannot read image {f} ({err.strerror})", file=str(path),
                                        row=offset + i, column=column) from None
                out.append(b)
            cols = [batch.column(c) for c in want] + [pa.array(out, pa.binary())]
            batch = pa.RecordBatch.from_arrays(cols, names=want + ["image"])
        else:
            batch = batch.select(want)
        yield batch
        offset += batch.num_rows


def read_items(path: str | Path, columns: list[str] | None = None, *, images: bool = True,
               image_dir: str | Path | None = None) -> pa.Table:
    """The whole items table; see :func:`iter_items` (``image`` holds every row's bytes)."""
    batches = list(iter_items(path, columns, images=images, image_dir=image_dir))
    if batches:
        return pa.Table.from_batches(batches)
    want = ["item_id"] + [c for c in (columns or []) if c != "item_id"]
    fields = [TABLES["items"].field(c) if c in TABLES["items"].names else pa.field(c, pa.null())
              for c in want]
    if images:
        fields.append(pa.field("image", pa.binary()))
    return pa.schema(fields).empty_table()
