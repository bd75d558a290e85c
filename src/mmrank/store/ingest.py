"""Bulk embedding of a catalog, real-time ingestion of new items, and search (Section 5, Figure 4).

* :func:`embed_catalog` encodes ``R/data/items.parquet`` (and the items ingested since) in batches into
  the table of the encoder's version, builds the ANN index, then makes that version CURRENT. It is
  resumable: items already in the table are skipped, so a killed run continues where it stopped and
  never writes an item twice.
* :class:`ItemStore` is the serving view of ``R/embeddings``: the table, the ANN index, the titles and
  (for text/image queries and ingestion) the encoder. :meth:`ItemStore.ingest` encodes one new item
  and makes it visible to ``get`` and to search at once; the raw item is also appended to
  ``R/embeddings/new_items.jsonl`` so a new encoder version re-encodes it.

The encoder is any object with the interface of ``mmrank.pretrain.item_encoder.load_item_encoder(run)``:
``version``, ``dim``, ``name``, ``encode_items(titles, images)``, ``encode_text(texts)``,
``encode_images(images)``, each returning ``(N, dim)`` float32, L2-normalised.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow.parquet as pq

from mmrank.data.io import decode_image
from mmrank.errors import DataError, MMRankError
from mmrank.store.ann import AnnConfig, AnnIndex
from mmrank.store.table import EmbeddingTable, check_vectors, set_store_config, version_dirname

NEW_ITEMS = "new_items.jsonl"


class ItemEncoder(Protocol):
    """What the store needs of an encoder (``mmrank.pretrain.item_encoder.load_item_encoder`` returns one)."""

    version: str
    dim: int
    name: str

    def encode_items(self, titles: list[str], images: list[bytes]) -> np.ndarray: ...
    def encode_text(self, texts: list[str]) -> np.ndarray: ...
    def encode_images(self, images: list[bytes]) -> np.ndarray: ...


def load_encoder(run: Path) -> ItemEncoder:
    """The run's item encoder (``R/encoder/``), via ``mmrank.pretrain.item_encoder.load_item_encoder``."""
    try:
        from mmrank.pretrain.item_encoder import load_item_encoder
    except ImportError as err:
        raise MMRankError(f"no item encoder available (mmrank.pretrain: {err})") from None
    return load_item_encoder(run)


def index_for(table: EmbeddingTable, save: bool) -> AnnIndex:
    """The table's ANN index, brought up to date with rows the table has and the index lacks; built
    (and saved when ``save``) if there is none yet."""
    d = index_dir(table)
    ids = table.ids()
    if (d / "ann.json").exists():
        index = AnnIndex.load(d, table.version)
        missing = np.setdiff1d(ids, index.ids())
        if len(missing):
            index.add(missing, table.get(missing))
        return index
    index = AnnIndex.build(ids, table.get(ids), version=table.version)
    if save:
        index.save(d)
    return index


def embeddings_root(run: Path) -> Path:
    return Path(run) / "embeddings"


def index_dir(table: EmbeddingTable) -> Path:
    """Where the ANN index of ``table`` lives: beside the local table, ``R/embeddings/v-<version>/``."""
    d = Path(table.root) / version_dirname(table.version)
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---- input checks -------------------------------------------------------------------------------------
def _check_title(title: Any, where: str, row: int | None) -> str:
    if not isinstance(title, str) or not title.strip():
        raise DataError(f"empty title (got {title!r})", file=where, row=row, column="title")
    return title


def _find_bad_image(images: list[bytes], where: str, offset: int, column: str = "image") -> None:
    """Raise :class:`DataError` naming the first undecodable image, if any."""
    for i, b in enumerate(images):
        if not isinstance(b, (bytes, bytearray)) or not b:
            raise DataError("no image bytes", file=where, row=offset + i, column=column)
        try:
            decode_image(bytes(b))
        except ValueError as err:
            raise DataError(str(err), file=where, row=offset + i, column=column) from None


def encode_checked(encoder: ItemEncoder, titles: list[str], images: list[bytes], where: str,
                   offset: int = 0) -> np.ndarray:
    """``encoder.encode_items`` with errors that name the row: ``(N,)`` -> ``(N, dim)`` float32."""
    for i, t in enumerate(titles):
        _check_title(t, where, offset + i)
    try:
        vecs = encoder.encode_items(titles, images)
    except Exception as err:
        _find_bad_image(images, where, offset)
        raise MMRankError(f"{where}: encoder {encoder.name!r} failed on rows {offset}.."
                          f"{offset + len(titles) - 1}: {type(err).__name__}: {err}") from err
    vecs = np.asarray(vecs)
    if vecs.shape != (len(titles), encoder.dim):
        raise DataError(f"encoder {encoder.name!r} returned shape {vecs.shape}, expected "
                        f"({len(titles)}, {encoder.dim})", file=where, row=offset, column="vector")
    return vecs


# ---- the log of ingested items ---------------------------------------------------------------------------
class NewItemLog:
    """``R/embeddings/new_items.jsonl``: every ingested item (id, title, image, created_at), appended
    and fsync'ed; a torn last line (a write cut by a crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, item: dict) -> None:
        rec = {"item_id": int(item["item_id"]), "title": item["title"],
               "image": base64.b64encode(item["image"]).decode("ascii"),
               "created_at": item.get("created_at")}
        for key in ("category", "attributes"):  # kept when given (the serving store reads them)
            if item.get(key) is not None:
                rec[key] = item[key]
        line = (json.dumps(rec) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline():
                line = b"\n" + line  # a torn previous line stays alone on its line
            os.write(fd, line)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def read(self) -> list[dict]:
        """Every logged item (the last record of an id wins), images as bytes; lines torn by a
        crash are skipped."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        out: dict[int, dict] = {}
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # Only a torn append (never acknowledged) leaves a line that does not parse;
                # append() starts a fresh line after one, so it is skipped, not fatal.
                continue
            rec["image"] = base64.b64decode(rec["image"])
            out[int(rec["item_id"])] = rec
        return list(out.values())


# ---- bulk embedding ------------------------------------------------------------------------------------
def _catalog_batches(path: Path, batch_size: int) -> Iterator[tuple[int, np.ndarray, list, list]]:
    """``(row offset, ids, titles, images)`` per record batch of the items file (images as bytes,
    however each row gives them: :func:`mmrank.data.io.iter_items`)."""
    from mmrank.data.io import iter_items

    offset = 0
    for batch in iter_items(path, ["item_id", "title"], batch_size=batch_size):
        ids = batch.column("item_id").to_numpy()
        yield offset, ids, batch.column("title").to_pylist(), batch.column("image").to_pylist()
        offset += len(ids)


def embed_catalog(run: str | Path, encoder: ItemEncoder | None = None, *, batch_size: int = 256,
                  ray_workers: int = 0, ann: AnnConfig | None = None, progress: bool = True,
                  exclude_ids: np.ndarray | None = None,
                  on_batch: Callable[[np.ndarray], None] | None = None, publish: bool = True,
                  backend: str | None = None, url: str | None = None,
                  namespace: str | None = None, reuse_features: bool = True) -> dict:
    """Encode every item of ``R/data/items.parquet`` (and ``new_items.jsonl``) not yet in the table of
    ``encoder.version``, build the ANN index, make the version CURRENT. Returns figures.

    Args:
        ray_workers: > 0 encodes on a local Ray instance with that many workers (extra ``[ray]``).
        exclude_ids: items to leave out (to ingest them later, one by one).
        on_batch: called with the ids of each batch once it is durable (acknowledged).
        backend, url, namespace: record the table backend in ``R/embeddings/STORE.json`` (redis).
        reuse_features: when the encoder offers ``cached_item_features(run)`` (the pre-training
            cache of exactly its backbone outputs for the items file), run only its heads on them.
    """
    run = Path(run)
    encoder = encoder or load_encoder(run)
    root = embeddings_root(run)
    if backend is not None:
        set_store_config(root, backend, url, namespace)
    items_path = run / "data" / "items.parquet"
    if not items_path.exists():
        raise DataError("no such file (generate a market or import a catalog first)",
                        file=str(items_path))
    t0 = time.perf_counter()
    table = EmbeddingTable.create(root, version=encoder.version, dim=encoder.dim,
                                  encoder_name=encoder.name)
    try:
        done = table.ids()
        if exclude_ids is not None:
            done = np.union1d(done, np.asarray(exclude_ids, np.int64))
        n_before = len(table)
        total = pq.ParquetFile(items_path).metadata.num_rows

        cached = None
        if reuse_features and hasattr(encoder, "cached_item_features"):
            cached = encoder.cached_item_features(run)

        def from_cache() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
            """``(ids, vectors, rows read)`` of the items file, from the cached backbone outputs."""
            c_ids, c_img, c_txt = cached
            step = max(batch_size, 1024)
            for a in range(0, len(c_ids), step):
                keep = a + np.flatnonzero(~np.isin(c_ids[a:a + step], done))
                yield c_ids[keep], encoder.encode_item_features(c_img[keep], c_txt[keep]), \
                    len(c_ids[a:a + step])

        def pending() -> Iterator[tuple[str, int, np.ndarray, list, list, int]]:
            """``(source, row offset, ids, titles, images, rows read)`` of what is left to do."""
            for offset, ids, titles, images in (() if cached is not None else
                                                _catalog_batches(items_path, batch_size)):
                keep = ~np.isin(ids, done)
                yield (str(items_path), offset, ids, titles, images, len(ids)) if keep.all() else (
                    str(items_path), offset, ids[keep], [t for t, k in zip(titles, keep) if k],
                    [b for b, k in zip(images, keep) if k], len(ids))
            log = NewItemLog(root / NEW_ITEMS)
            done_set = set(done.tolist())
            new = [r for r in log.read() if r["item_id"] not in done_set]
            for i in range(0, len(new), batch_size):
                chunk = new[i:i + batch_size]
                yield (str(log.path), i, np.array([r["item_id"] for r in chunk], np.int64),
                       [r["title"] for r in chunk], [r["image"] for r in chunk], 0)

        def write(ids: np.ndarray, vecs: np.ndarray) -> None:
            table.put(ids, vecs, version=encoder.version)
            if on_batch is not None:
                on_batch(ids)

        n_new = _run_encoding(encoder, pending(), write, total, ray_workers, progress,
                              from_cache() if cached is not None else None)
        encode_s = time.perf_counter() - t0
        ids = table.ids()
        t1 = time.perf_counter()
        index = AnnIndex.build(ids, table.get(ids), version=table.version, config=ann)
        index.save(index_dir(table))
        index_s = time.perf_counter() - t1
        if publish:
            table.publish()
            # Items ingested into the previous version while this one was built are in the log:
            # encode the ones this table still lacks (a store that had the old table open keeps
            # writing there until it is reopened; its log lines are picked up by the next embed).
            late = [r for r in NewItemLog(root / NEW_ITEMS).read()
                    if not table.contains(np.array([r["item_id"]]))[0]]
            if late:
                late_ids = np.array([r["item_id"] for r in late], np.int64)
                vecs = encode_checked(encoder, [r["title"] for r in late],
                                      [r["image"] for r in late], str(root / NEW_ITEMS))
                write(late_ids, vecs)
                index.add(late_ids, vecs)
                index.save(index_dir(table))
                n_new += len(late)
            ids = table.ids()
        return {"version": table.version, "dim": table.dim, "items": len(ids),
                "already_present": n_before, "encoded": n_new,
                "from_cache": int(np.isin(cached[0], done, invert=True).sum()) if cached is not None else 0,
                "encode_seconds": round(encode_s, 2),
                "items_per_second": round(n_new / encode_s, 1) if n_new else None,
                "index": index.stats, "index_seconds": round(index_s, 2)}
    finally:
        table.close()


def _run_encoding(encoder: ItemEncoder, batches: Iterator, write: Callable, total: int,
                  ray_workers: int, show: bool, precomputed: Iterator | None = None) -> int:
    """Encode ``batches`` (after writing the ``(ids, vectors, rows)`` of ``precomputed``, if any)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    n = 0
    with Progress(TextColumn("embed"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not show) as bar:
        task = bar.add_task("embed", total=total)
        if ray_workers > 0:
            from mmrank.store.ray_encode import encode_on_ray

            done = encode_on_ray(encoder, batches, ray_workers)
        else:
            done = ((ids, encode_checked(encoder, titles, images, where, offset) if len(ids)
                     else None, rows) for where, offset, ids, titles, images, rows in batches)
        for ids, vecs, rows in itertools.chain(precomputed or (), done):
            if len(ids):
                write(ids, vecs)
                n += len(ids)
            bar.update(task, advance=rows)
    return n


# ---- serving: search and ingestion ---------------------------------------------------------------------
class ItemStore:
    """The table + ANN index + titles (+ encoder) of a run: search, and ingestion of new items.

    Example::

        >>> store = ItemStore.open(run, encoder, writable=True)                     # doctest: +SKIP
        >>> store.ingest({"item_id": 10**9, "title": "red shirt", "image": jpeg})   # doctest: +SKIP
        >>> store.search_text("red shirt", k=10)[0]["item_id"]                      # doctest: +SKIP
    """

    def __init__(self, run: Path, table: EmbeddingTable, index: AnnIndex,
                 encoder: ItemEncoder | None) -> None:
        self.run, self.table, self.index, self._encoder = Path(run), table, index, encoder
        self.log = NewItemLog(embeddings_root(run) / NEW_ITEMS)
        self._titles: dict[int, str] | None = None
        self._dirty = False
        self._mutex = threading.RLock()  # FAISS add and search must not overlap (an HTTP server)

    @classmethod
    def open(cls, run: str | Path, encoder: ItemEncoder | None = None, *,
             writable: bool = False) -> "ItemStore":
        """Open the CURRENT table of ``R/embeddings`` and its index (built if missing, brought up to
        date with rows the table has and the index lacks)."""
        run = Path(run)
        table = EmbeddingTable.open(embeddings_root(run), writable=writable)
        if encoder is not None and encoder.version != table.version:
            raise DataError(f"encoder version {encoder.version!r} but the CURRENT table is "
                            f"{table.version!r}; run `mmrank embed` with this encoder first",
                            file=str(embeddings_root(run)))
        return cls(run, table, index_for(table, save=True), encoder)

    @property
    def encoder(self) -> ItemEncoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.run)
            if self._encoder.version != self.table.version:
                raise DataError(f"the run's encoder is version {self._encoder.version!r}, the "
                                f"CURRENT table {self.table.version!r}; run `mmrank embed`",
                                file=str(self.run / "encoder"))
        return self._encoder

    def title(self, item_id: int) -> str:
        if self._titles is None:
            path = self.run / "data" / "items.parquet"
            t = pq.read_table(path, columns=["item_id", "title"]) if path.exists() else None
            self._titles = dict(zip(t.column("item_id").to_pylist(), t.column("title").to_pylist())) \
                if t is not None else {}
            for rec in self.log.read():
                self._titles[int(rec["item_id"])] = rec["title"]
        return self._titles.get(int(item_id), "")

    # ---- search ------------------------------------------------------------------------------------
    def search_vector(self, query: np.ndarray, k: int = 10,
                      exclude: int | None = None) -> list[dict]:
        """``(D,)`` query -> up to ``k`` hits ``{"item_id", "score", "title"}``, best first."""
        with self._mutex:
            scores, ids = self.index.search(np.asarray(query, np.float32).reshape(1, -1),
                                            k + (exclude is not None))
        hits = []
        for s, i in zip(scores[0], ids[0]):
            if i < 0 or (exclude is not None and i == exclude):
                continue
            hits.append({"item_id": int(i), "score": float(s), "title": self.title(int(i))})
        return hits[:k]

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        """Text query (the text-query tower) -> top-k items."""
        _check_title(text, "--text", None)
        return self.search_vector(self.encoder.encode_text([text])[0], k)

    def search_image(self, image: bytes, k: int = 10) -> list[dict]:
        """Image query (the image-query tower) -> top-k items."""
        _find_bad_image([image], "--image", 0)
        return self.search_vector(self.encoder.encode_images([image])[0], k)

    def search_item(self, item_id: int, k: int = 10) -> list[dict]:
        """The k items nearest to item ``item_id`` (itself left out)."""
        try:
            q = self.table.get(np.array([item_id], np.int64))[0]
        except KeyError:
            raise DataError(f"item {item_id} is not in the embedding table "
                            f"({self.table.version!r})", column="item_id") from None
        return self.search_vector(q, k, exclude=int(item_id))

    # ---- ingestion ----------------------------------------------------------------------------------
    def ingest(self, item: dict) -> dict:
        """Encode one new item ``{"item_id", "title", "image" (bytes)[, "created_at"]}`` and make it
        visible to ``table.get`` and to search. Bad input raises :class:`DataError`, writing nothing.

        Returns timings in ms: ``encode_ms``, ``write_ms`` (durable), ``index_ms``, ``total_ms``.
        """
        with self._mutex:
            return self._ingest(item)

    def _ingest(self, item: dict) -> dict:
        t0 = time.perf_counter()
        if not self.table.writable:
            raise MMRankError("this ItemStore was opened read-only; open it with writable=True")
        where = "ingest"
        for key in ("item_id", "title", "image"):
            if key not in item:
                raise DataError(f"missing field {key!r}", file=where, column=key)
        try:
            item_id = int(item["item_id"])
        except (TypeError, ValueError):
            raise DataError(f"item_id: expected an integer, got {item['item_id']!r}", file=where,
                            column="item_id") from None
        title = _check_title(item["title"], where, None)
        image = item["image"]
        if self.table.contains(np.array([item_id]))[0]:
            raise DataError(f"item {item_id} is already in the embedding table", file=where,
                            column="item_id")
        enc = self.encoder
        _find_bad_image([image], where, 0)
        vec = encode_checked(enc, [title], [image], where)
        ids, vecs = check_vectors(np.array([item_id]), vec, self.table.dim, enc.version,
                                  self.table.version, where)
        t1 = time.perf_counter()
        self.log.append({"item_id": item_id, "title": title, "image": bytes(image),
                         "created_at": item.get("created_at")})
        self.table.put(ids, vecs, version=enc.version)
        t2 = time.perf_counter()
        self.index.add(ids, vecs)
        self._dirty = True
        if self._titles is not None:
            self._titles[item_id] = title
        t3 = time.perf_counter()
        ms = lambda a, b: round((b - a) * 1e3, 3)  # noqa: E731
        return {"item_id": item_id, "encode_ms": ms(t0, t1), "write_ms": ms(t1, t2),
                "index_ms": ms(t2, t3), "total_ms": ms(t0, t3)}

    def save_index(self) -> None:
        """Persist the ANN index with the items ingested since it was loaded."""
        with self._mutex:
            self._save_index()

    def _save_index(self) -> None:
        if self._dirty:
            self.index.save(index_dir(self.table))
            self._dirty = False

    def close(self) -> None:
        self.save_index()
        self.table.close()

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_OPEN: dict[Path, ItemStore] = {}


def ingest(item: dict, *, run: str | Path | None = None, store: ItemStore | None = None,
           encoder: ItemEncoder | None = None) -> dict:
    """Encode one new item and make it visible to ``get`` and search (see :meth:`ItemStore.ingest`).

    Pass an open writable ``store``, or ``run`` (the store is opened once per process and kept).
    """
    if store is None:
        if run is None:
            raise MMRankError("ingest: pass store= or run=")
        key = Path(run).resolve()
        store = _OPEN.get(key)
        if store is None:
            store = _OPEN[key] = ItemStore.open(run, encoder, writable=True)
    return store.ingest(item)


def close_stores() -> None:
    """Close the stores :func:`ingest` opened (saving their indexes and releasing the writer lock)."""
    while _OPEN:
        _OPEN.popitem()[1].close()
