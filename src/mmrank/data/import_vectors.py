"""Item vectors as an import (`mmrank data import --item-vectors F`): read, check, match, write.

A team (or a public data set: MMRec's ``image_feat.npy`` / ``text_feat.npy``, the MicroLens MMCTR
``item_emb.parquet``) often has item embeddings already. They become the run's embedding table (the
format :mod:`mmrank.store` writes, ``R/embeddings/v-<version>/``), so every CTR strategy and search by
item or by vector run without pre-training.

* :func:`read_vectors` reads a Parquet file (an id column and a list<float> column, names
  configurable, default ``item_id`` / ``embedding``) or a ``.npy`` matrix whose row order is an id file
  (``.txt``, one id a line, or ``.parquet``, its id column) or, when none is given, the catalog's row
  order. Every row is checked before anything is written: a row whose length differs from the first
  row's, a NaN or infinite value, a missing vector and a repeated id each stop the import with the
  file, the row and the field named.
* :func:`match_vectors` maps the file's ids onto the run's item ids (the catalog's own ids, or
  ``source_item_id`` where the catalog's ids were not integers): an id the catalog does not hold stops
  the import (the first few named, and their count); catalog items without a vector are counted and
  kept: the CTR models give them the zero "unknown" vector, and search never returns them.
* :func:`write_vectors` writes the table of version ``import-<16 hex>`` (the SHA-256 of the vector
  file(s) and the id file, :func:`mmrank.lineage.digest_of`), builds its ANN index, stamps its lineage
  (that version and the run's ``data/items`` digest, as ``mmrank embed`` does) and makes it CURRENT.

Nothing is lost: every row of the file is one vector of the table (float32; a float64 file is
rounded to float32, the table's type), and the table is exactly the file's rows (tested).

Example::

    >>> from mmrank.data.importer import import_data
    >>> s = import_data("runs/own", items="items.parquet", events="events.parquet",
    ...                 item_vectors="item_emb.parquet")                    # doctest: +SKIP
    >>> s["vectors"]["version"]                                              # doctest: +SKIP
    'import-3f2a...'
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrank.errors import DataError

FIRST_IDS = 5  # ids named in an error about ids


@dataclass
class ItemVectors:
    """Vectors read from a file, checked row by row, before they meet the catalog.

    Attributes:
        keys: ``(N,)`` the file's ids as strings (stripped), or None: the catalog's row order.
        matrix: ``(N, D)`` float32.
        files: the files read (the vector file(s), then the id file); their digest is the version.
        where: the vector file, for messages.
        id_field: the id column (or the id file) named in messages.
        order: how rows map to ids, in words (the summary says it).
        notes: what the reader did that the user should know (dropped padding rows, fused files).
    """

    keys: list[str] | None
    matrix: np.ndarray
    files: list[str]
    where: str
    id_field: str
    order: str
    notes: list[str] = field(default_factory=list)


def _key(v: Any) -> str:
    """An id as the catalog's ids are compared: its text, stripped (``7`` and ``"7"`` are one id)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _as_int(key: str) -> str:
    """A key as an integer catalog id reads (``"0108775015"`` -> ``"108775015"``, as the importer
    reads such ids); a key that is not an integer stays as it is (and is reported unknown)."""
    try:
        return str(int(key))
    except ValueError:
        return key


def check_matrix(matrix: np.ndarray, where: str, field_name: str, row_of: np.ndarray | None = None) -> np.ndarray:
    """A ``(N, D)`` float matrix -> float32, or :class:`DataError` naming the first non-finite row."""
    if matrix.ndim != 2:
        raise DataError(f"expected a matrix (items x dimensions), got shape {matrix.shape}", file=where,
                        column=field_name)
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise DataError(f"expected numbers, got {matrix.dtype}", file=where, column=field_name)
    if matrix.shape[1] == 0:
        raise DataError("the vectors have no dimensions", file=where, column=field_name)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        j = int(np.flatnonzero(~np.isfinite(matrix[r]))[0])
        what = "NaN" if np.isnan(matrix[r, j]) else "infinite"
        raise DataError(f"value {j} of the vector is {what} ({int(bad.sum())} such rows)", file=where,
                        row=int(row_of[r]) if row_of is not None else r, column=field_name)
    return np.ascontiguousarray(matrix, dtype=np.float32)


def check_unique(keys: list[str], where: str, id_field: str) -> None:
    """A repeated id names both rows."""
    seen: dict[str, int] = {}
    for r, k in enumerate(keys):
        if k in seen:
            raise DataError(f"duplicate id {k!r} (first at row {seen[k]})", file=where, row=r, column=id_field)
        seen[k] = r


def _list_matrix(arr: pa.ChunkedArray, where: str, column: str) -> np.ndarray:
    """A list<float> column -> ``(N, D)``; a null row or a row of another length than row 0 is named."""
    a = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    t = a.type
    if pa.types.is_fixed_size_list(t):
        a = a.cast(pa.list_(t.value_type))
        t = a.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise DataError(f"expected a list of floats per row, got {t}", file=where, row=0, column=column)
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise DataError(f"expected a list of floats per row, got a list of {t.value_type}", file=where,
                        row=0, column=column)
    if a.null_count:
        r = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"no vector ({a.null_count} such rows)", file=where, row=r, column=column)
    if not len(a):
        raise DataError("the file holds no rows", file=where, column=column)
    lengths = pc.list_value_length(a).to_numpy()
    off = np.flatnonzero(lengths != lengths[0])
    if len(off):
        r = int(off[0])
        raise DataError(f"vector of {int(lengths[r])} values, row 0 has {int(lengths[0])} (dimension "
                        f"mismatch; {len(off)} rows differ from row 0)", file=where, row=r, column=column)
    values = a.flatten()
    if values.null_count:
        k = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"value {k % int(lengths[0])} of the vector is empty (null)", file=where,
                        row=k // int(lengths[0]), column=column)
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64 if pa.types.is_float64(t.value_type)
                                                        else np.float32)
    return flat.reshape(len(a), int(lengths[0]))


def read_parquet_vectors(path: Path, id_column: str = "item_id", vector_column: str = "embedding") -> ItemVectors:
    """A Parquet file with an id column and a list<float> column -> checked :class:`ItemVectors`."""
    where = str(path)
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"cannot read as Parquet ({err})", file=where) from None
    for c, what in ((id_column, "--vector-id-column"), (vector_column, "--vector-column")):
        if c not in t.column_names:
            raise DataError(f"missing column (the file has: {', '.join(t.column_names)}; name yours with "
                            f"{what})", file=where, row=0, column=c)
    ids = t.column(id_column)
    if ids.null_count:
        r = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("empty where an id is required", file=where, row=r, column=id_column)
    keys = [_key(v) for v in ids.to_pylist()]
    for r, k in enumerate(keys):
        if not k:
            raise DataError("empty where an id is required", file=where, row=r, column=id_column)
    matrix = check_matrix(_list_matrix(t.column(vector_column), where, vector_column), where, vector_column)
    check_unique(keys, where, id_column)
    return ItemVectors(keys, matrix, [where], where, id_column,
                       f"ids from column '{id_column}', vectors from column '{vector_column}'")


def read_id_file(path: Path, id_column: str = "item_id") -> list[str]:
    """``--vector-ids``: a text file (one id a line; blank lines are errors) or a Parquet file (its
    ``id_column``, else its only column)."""
    where = str(path)
    if not path.exists():
        raise DataError("no such file", file=where)
    if path.suffix.lower() in (".parquet", ".pq"):
        t = pq.read_table(path)
        name = id_column if id_column in t.column_names else (t.column_names[0] if t.num_columns == 1 else None)
        if name is None:
            raise DataError(f"missing column (the file has: {', '.join(t.column_names)})", file=where, row=0,
                            column=id_column)
        vals = t.column(name).to_pylist()
        bad = [r for r, v in enumerate(vals) if v is None or not _key(v)]
        if bad:
            raise DataError("empty where an id is required", file=where, row=bad[0], column=name)
        return [_key(v) for v in vals]
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline
    for r, v in enumerate(lines):
        if not v.strip():
            raise DataError("empty line where an id is required", file=where, row=r, column="id")
    return [v.strip() for v in lines]


def read_npy_vectors(path: Path, ids: Path | list[str] | None = None, id_column: str = "item_id") -> ItemVectors:
    """A ``.npy`` matrix; row i is the item of line i of the id file (or of ``ids``), else of the
    catalog's row i (``keys`` None)."""
    where = str(path)
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read as a NumPy .npy matrix ({err})", file=where) from None
    matrix = check_matrix(np.asarray(m), where, "vector")
    files = [where]
    if ids is None:
        return ItemVectors(None, matrix, files, where, "row",
                           "row i is the catalog's item of row i (no --vector-ids given)")
    if isinstance(ids, Path):
        keys, id_where, order = read_id_file(ids, id_column), str(ids), f"row i is the item of row i of {ids}"
        files.append(str(ids))
    else:
        keys, id_where, order = list(ids), where, "row i is item i"
    if len(keys) != len(matrix):
        raise DataError(f"{len(keys)} ids for {len(matrix)} vector rows ({where}): one id per row is needed",
                        file=id_where)
    check_unique(keys, id_where, "id" if id_where != where else "row")
    return ItemVectors(keys, matrix, files, where, "id", order)


def read_vectors(path: str | Path, *, ids: str | Path | None = None, id_column: str = "item_id",
                 vector_column: str = "embedding") -> ItemVectors:
    """``--item-vectors``: Parquet (``id_column`` + ``vector_column``) or ``.npy`` (+ ``ids``)."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", file=str(p))
    if p.suffix.lower() == ".npy":
        return read_npy_vectors(p, Path(ids) if ids is not None else None, id_column)
    if ids is not None:
        raise DataError("--vector-ids applies to a .npy matrix; a Parquet file names its ids in "
                        "--vector-id-column", file=str(ids))
    return read_parquet_vectors(p, id_column, vector_column)


def fuse(parts: list[ItemVectors], name: str) -> ItemVectors:
    """Several vector files of the same items in the same row order (MMRec's image and text features)
    -> one: each part's rows L2-normalised, then concatenated and scaled by 1/sqrt(parts), so each
    modality weighs the same and every row has norm 1 (a zero row stays zero)."""
    n = {len(p.matrix) for p in parts}
    if len(n) != 1:
        raise DataError("the feature files have different numbers of rows: "
                        + ", ".join(f"{p.where} {len(p.matrix)}" for p in parts), file=parts[-1].where)
    normed = []
    for p in parts:
        norm = np.linalg.norm(p.matrix, axis=1, keepdims=True)
        normed.append(np.where(norm > 0, p.matrix / np.maximum(norm, 1e-12), 0.0))
    matrix = (np.concatenate(normed, axis=1) / np.sqrt(len(parts))).astype(np.float32)
    files = [f for p in parts for f in p.files]
    order = parts[0].order
    return ItemVectors(parts[0].keys, matrix, files, " + ".join(p.where for p in parts), parts[0].id_field,
                       order, [f"{name}: {' and '.join(Path(p.where).name for p in parts)} "
                               f"({' + '.join(str(p.matrix.shape[1]) for p in parts)} dimensions), each row "
                               f"L2-normalised, concatenated"])


def catalog_keys(items: pa.Table) -> list[str]:
    """Each catalog row's id as the vector file names it: ``source_item_id`` where the import coded
    the ids, else the integer id."""
    if "source_item_id" in items.column_names:
        return [_key(v) for v in items.column("source_item_id").to_pylist()]
    return [str(int(v)) for v in items.column("item_id").to_pylist()]


def match_vectors(vec: ItemVectors, items: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(run item ids (N,), vectors (N, D), summary)``: every row of the file, on the run's ids.

    An id the catalog lacks stops the import (the first few named, and the count); catalog items
    without a vector are counted (``summary["items_without_vector"]``)."""
    cat = catalog_keys(items)
    run_ids = items.column("item_id").to_numpy().astype(np.int64)
    if vec.keys is None:
        if len(vec.matrix) != len(cat):
            raise DataError(f"{len(vec.matrix)} vector rows but the catalog has {len(cat)} items: rows are "
                            "matched to the catalog's rows in order, so the counts must be equal (or give "
                            "--vector-ids)", file=vec.where)
        ids = run_ids
    else:
        pos = {k: i for i, k in enumerate(cat)}
        keys = vec.keys if "source_item_id" in items.column_names else [_as_int(k) for k in vec.keys]
        at = np.array([pos.get(k, -1) for k in keys], np.int64)
        unknown = np.flatnonzero(at < 0)
        if len(unknown):
            named = ", ".join(repr(vec.keys[r]) for r in unknown[:FIRST_IDS])
            raise DataError(f"{len(unknown)} id{'s' if len(unknown) != 1 else ''} not in the catalog "
                            f"({named}{', ...' if len(unknown) > FIRST_IDS else ''}); every vector must "
                            f"name a catalog item", file=vec.where if vec.id_field != "id" else vec.files[-1],
                            row=int(unknown[0]), column=vec.id_field)
        ids = run_ids[at]
    without = int(len(run_ids) - len(np.unique(ids)))
    summary = {"file": vec.where, "rows": int(len(vec.matrix)), "dim": int(vec.matrix.shape[1]),
               "order": vec.order, "items_without_vector": without, "notes": list(vec.notes)}
    return ids, vec.matrix, summary


def vectors_version(vec: ItemVectors) -> str:
    """``import-<16 hex>``: the SHA-256 of the files read (:func:`mmrank.lineage.digest_of`)."""
    from mmrank.lineage import digest_of

    return "import-" + digest_of(vec.files)


def check_local_store(run: str | Path) -> None:
    """Imported vectors go to a local table: a run whose tables are in Redis (``STORE.json``) is
    refused before anything is written."""
    from mmrank.store.table import STORE_FILE, store_config

    root = Path(run) / "embeddings"
    if store_config(root).get("backend", "local") != "local":
        raise DataError("imported vectors go to a local table; this run's embeddings are in Redis: "
                        "import into a new run directory", file=str(root / STORE_FILE))


def write_vectors(run: str | Path, ids: np.ndarray, matrix: np.ndarray, version: str,
                  source: dict[str, Any]) -> dict[str, Any]:
    """Write ``(ids, matrix)`` as the run's embedding table of ``version``, build its ANN index, stamp
    its lineage (the version and ``data/items``, as :func:`mmrank.store.stage.embed_catalog` does, plus
    the file it came from) and make it CURRENT. A table of the same version is replaced."""
    from mmrank import lineage
    from mmrank.store.ann import AnnIndex
    from mmrank.store.backends import create_table
    from mmrank.store.items import embeddings_root, index_dir
    from mmrank.store.table import version_dirname

    run = Path(run)
    root = embeddings_root(run)
    check_local_store(run)
    vdir = root / version_dirname(version)
    if vdir.exists():
        shutil.rmtree(vdir)  # the same file imported again (perhaps against another catalog)
    inputs = {**lineage.embeddings_inputs(run, version)}
    order = np.argsort(ids, kind="stable")
    table = create_table(root, version=version, dim=int(matrix.shape[1]), encoder_name="imported")
    try:
        table.put(ids[order], matrix[order], version=version)
        index = AnnIndex.build(table.ids(), table.get(table.ids()), version=version)
        index.save(index_dir(table))
        lineage.stamp(vdir, inputs, imported=source)
        table.publish()
        n = len(table)
    finally:
        table.close()
    return {"version": version, "items": n, "dim": int(matrix.shape[1]), "index": index.stats}

