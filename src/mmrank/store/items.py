"""The item store of a run: vectors, metadata, photos, search and real-time ingestion (Section 5,
Figure 4 of the CIKM'24 Taobao paper): a new item is visible to ``get`` and to search at once.

An :class:`ItemStore` is an ordinary object owned by whoever opened it (the CLI, the demo, a server's
bundle), so a process can hold two (the current bundle and the one being swapped in). It writes in
one of two ways:

* ``hold_writer=True``: the store opens the table for writing and keeps it (the table's one-writer
  lock) until :meth:`ItemStore.close`; it also keeps the ANN index files up to date. The fastest
  ingest; no other process can write the table meanwhile.
* ``hold_writer=False`` (the default; what servers use): the table is read-only and each ingest opens
  it for writing briefly. Several processes may serve and ingest into the same run at once: local
  tables take turns under a blocking ``flock`` on ``R/embeddings/INGEST.lock``; Redis tables take
  concurrent writers. A reader picks up rows another process wrote on its next miss
  (:meth:`EmbeddingTable.lookup`), and each process brings its own FAISS index up to date with the
  table before a search.

Every ingested item (id, title, image, created_at, category, attributes) is appended to
``R/embeddings/new_items.jsonl`` (fsync'ed before the vector is written), so a new encoder version
re-encodes it; with the Redis backend its metadata and photo also go to the hashes
``{ns}:items`` / ``{ns}:images`` so that servers on other hosts see them.

Category ids follow :mod:`mmrank.data.samples`: the rank of an item's ``category`` string among the
sorted distinct categories of ``R/data/items.parquet``; an unknown category is ``-1`` (the CTR
model's padding row).

Example::

    >>> store = ItemStore.open(run, encoder)                                      # doctest: +SKIP
    >>> vecs, found = store.vectors(np.array([3, 99]))                             # doctest: +SKIP
    >>> store.ingest({"item_id": 10**9, "title": "red shirt", "image": jpeg,       # doctest: +SKIP
    ...               "category": "Tshirts"})
    >>> store.search_text("red shirt", k=5)[0]["item_id"]                          # doctest: +SKIP
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq

from mmrank.errors import DataError
from mmrank.store.ann import AnnIndex
from mmrank.store.backends import current_version, open_table, table_versions
from mmrank.store.encoding import (ItemEncoder, check_title, encode_checked, find_bad_image,
                                   load_encoder)
from mmrank.store.table import EmbeddingTable, check_vectors, version_dirname

NEW_ITEMS = "new_items.jsonl"
INGEST_LOCK = "INGEST.lock"


def embeddings_root(run: Path) -> Path:
    """``R/embeddings``: the tables, their ANN indexes and the log of ingested items."""
    return Path(run) / "embeddings"


def index_dir(table: EmbeddingTable) -> Path:
    """Where the ANN index of ``table`` lives: beside the local table, ``R/embeddings/v-<version>/``."""
    d = Path(table.root) / version_dirname(table.version)
    d.mkdir(parents=True, exist_ok=True)
    return d


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


class ItemExists(DataError):
    """An item id that is already in the table (a second post of the same id)."""


class NewItemLog:
    """``R/embeddings/new_items.jsonl``: every ingested item (id, title, image, created_at[, category,
    attributes]), appended and fsync'ed; a torn last line (a write cut by a crash) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, item: dict) -> None:
        rec = {"item_id": int(item["item_id"]), "title": item["title"],
               "image": base64.b64encode(item["image"]).decode("ascii"),
               "created_at": item.get("created_at")}
        for key in ("category", "attributes"):  # kept when given (the store's metadata reads them)
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
        out: dict[int, dict] = {}
        for line in self.path.read_bytes().split(b"\n"):
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


class _Catalog:
    """Ids, titles, category ids of ``R/data/items.parquet``; photos read on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids = np.zeros(0, np.int64)
        self.titles: list[str] = []
        self.cat_ids = np.zeros(0, np.int32)
        self.categories: list[str] = []  # sorted distinct; category id = index
        self._images: list | None = None
        self._image_lock = threading.Lock()
        if not path.exists():
            return
        t = pq.read_table(path, columns=["item_id", "title", "category"])
        ids = t.column("item_id").to_numpy().astype(np.int64)
        cats = np.asarray(t.column("category").to_pylist(), dtype=object).astype(str)
        names, cat_ids = np.unique(cats, return_inverse=True)
        order = np.argsort(ids, kind="stable")
        self.ids, self._rows = ids[order], order
        titles = t.column("title").to_pylist()
        self.titles = [titles[i] for i in order]
        self.cat_ids = cat_ids.astype(np.int32)[order]
        self.categories = [str(c) for c in names]

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions (N,), found (N,) bool)`` of ``ids`` in the sorted catalog."""
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos, self.ids[pos] == ids

    def image(self, pos: int) -> bytes | None:
        with self._image_lock:
            if self._images is None:
                names = pq.read_schema(self.path).names
                col = "image" if "image" in names else "image_path"
                raw = pq.read_table(self.path, columns=[col]).column(col).to_pylist()
                self._images = [raw[i] for i in self._rows] if col == "image" else \
                    [(self.path.parent / p) if p else None for p in (raw[i] for i in self._rows)]
        img = self._images[pos]
        if isinstance(img, Path):
            return img.read_bytes() if img.exists() else None
        return img


class ItemStore:
    """Table + ANN index + item metadata (+ encoder) of a run (see the module docstring).

    Thread-safe: one lock guards the index, one the metadata, one the encoder (tokenizers and some
    towers are not thread-safe).

    Attributes:
        table: the :class:`EmbeddingTable` of this store's encoder version.
        index: its :class:`AnnIndex`.
        version, dim: the table's encoder version and vector size.
    """

    def __init__(self, run: Path, table: EmbeddingTable, index: AnnIndex,
                 encoder: ItemEncoder | None, device: Any = None) -> None:
        self.run = Path(run)
        self._device = device  # where the run's encoder is loaded on first use (None: the CPU)
        self.root = embeddings_root(run)
        self.table, self.index, self._encoder = table, index, encoder
        self.version, self.dim = table.version, table.dim
        self.catalog = _Catalog(self.run / "data" / "items.parquet")
        self._cat_of = {c: i for i, c in enumerate(self.catalog.categories)}
        self.log = NewItemLog(self.root / NEW_ITEMS)
        self._log_offset = 0
        self._new: dict[int, dict] = {}  # ingested items: title, category_id, created_at, attributes
        self._lock = threading.RLock()  # the metadata
        self._index_lock = threading.RLock()  # FAISS add and search must not overlap
        self._enc_lock = threading.Lock()
        self._dirty = False  # items added to the index since it was saved (hold_writer only)
        self._redis = getattr(table, "client", None)
        self._ns = getattr(table, "ns", None)
        self._read_log()

    @classmethod
    def open(cls, run: str | Path, encoder: ItemEncoder | None = None, *, version: str | None = None,
             hold_writer: bool = False, device: Any = None) -> "ItemStore":
        """Open the table of ``version`` (default: the encoder's, else CURRENT) and its index, brought
        up to date with the table. Refuses an encoder of another version, and a table made from
        another catalog (or with an encoder trained on other data) than the run's now
        (:class:`mmrank.lineage.StaleArtifact`, naming the command that rebuilds it).

        ``hold_writer``: open the table for writing and keep it (module docstring); the index is then
        saved when built here and on :meth:`close`. ``device``: where the run's encoder is loaded
        when no ``encoder`` is given (a torch device or auto | cpu | cuda | cuda:N; None: the CPU).
        """
        run, root = Path(run), embeddings_root(run)
        if encoder is not None and version is not None and encoder.version != version:
            raise DataError(f"encoder version {encoder.version!r} but the table asked for is "
                            f"{version!r}", file=str(root))
        version = version or (encoder.version if encoder is not None else None)
        if encoder is not None and version not in table_versions(root):
            raise DataError(f"no table of encoder version {version!r} (CURRENT: "
                            f"{current_version(root)!r}); run `mmrank embed` with this encoder first",
                            file=str(root))
        table = open_table(root, version, writable=hold_writer)
        try:
            from mmrank.lineage import check_embeddings

            check_embeddings(run, table.version)  # made from the run's catalog as it is now
            return cls(run, table, index_for(table, save=hold_writer), encoder, device=device)
        except BaseException:
            table.close()
            raise

    @property
    def encoder(self) -> ItemEncoder:
        """The encoder given to :meth:`open`, else the run's (``R/encoder/``), loaded on first use."""
        if self._encoder is None:
            imported = self.imported
            enc_version = self.run / "encoder" / "version.txt"
            if imported is not None and not (enc_version.exists()
                                             and enc_version.read_text().strip() == self.version):
                raise DataError(f"text and image queries need an encoder's query towers, and this table "
                                f"holds vectors imported from {imported.get('file')} (version "
                                f"{self.version!r}, `mmrank data import --item-vectors`), which come with "
                                "none: search by item (--item) or by vector (--vector)", file=str(self.root))
            enc = load_encoder(self.run, device=self._device)
            if enc.version != self.version:
                raise DataError(f"the run's encoder is version {enc.version!r}, the table "
                                f"{self.version!r}; run `mmrank embed`", file=str(self.run / "encoder"))
            self._encoder = enc
        return self._encoder

    @property
    def imported(self) -> dict | None:
        """What ``mmrank data import --item-vectors`` recorded for this table (file, rows, order), or
        None when an encoder made it."""
        from mmrank import lineage

        return (lineage.read(self.root / version_dirname(self.version)) or {}).get("imported")

    def close(self) -> None:
        """Save the index (when this store holds the writer) and release the table."""
        if self.table.writable:
            with self._index_lock:
                if self._dirty:
                    self.index.save(index_dir(self.table))
                    self._dirty = False
        self.table.close()

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- metadata -----------------------------------------------------------------------------------
    def category_id(self, category: str | None) -> int:
        """The CTR category id of a category name (-1 if unknown or None)."""
        return -1 if category is None else self._cat_of.get(str(category), -1)

    def _remember(self, rec: dict) -> None:
        self._new[int(rec["item_id"])] = {
            "title": rec.get("title", ""), "category": rec.get("category"),
            "category_id": self.category_id(rec.get("category")),
            "created_at": rec.get("created_at"), "attributes": rec.get("attributes") or {}}

    def _read_log(self) -> None:
        """Read the lines appended to new_items.jsonl since the last read (whole lines only)."""
        path = self.log.path
        if not path.exists():
            return
        with open(path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        for line in data[:end].split(b"\n"):
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn line (never acknowledged)
            self._remember(rec)
        self._log_offset += end + 1

    def _fetch_remote(self, ids: list[int]) -> None:
        """Metadata of ingested items from Redis (another host's ingests)."""
        if self._redis is None or not ids:
            return
        vals = self._redis.hmget(f"{self._ns}:items", [str(i) for i in ids])
        for v in vals:
            if v is not None:
                self._remember(json.loads(v))

    def meta(self, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``(category ids (N,) int32, titles)``; an id neither in the catalog nor ingested gets
        ``-1`` and ``""``."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        pos, in_cat = self.catalog.find(ids)
        cats = np.where(in_cat, self.catalog.cat_ids[pos] if len(self.catalog.ids) else -1,
                        -1).astype(np.int32)
        titles = [self.catalog.titles[p] if f else "" for p, f in zip(pos, in_cat)]
        rest = [k for k in np.flatnonzero(~in_cat)]
        if rest:
            with self._lock:
                if any(int(ids[k]) not in self._new for k in rest):
                    self._read_log()
                    self._fetch_remote([int(ids[k]) for k in rest if int(ids[k]) not in self._new])
                for k in rest:
                    rec = self._new.get(int(ids[k]))
                    if rec is not None:
                        cats[k], titles[k] = rec["category_id"], rec["title"]
        return cats, titles

    def image(self, item_id: int) -> bytes | None:
        """The photo of an item (catalog or ingested), or None."""
        pos, found = self.catalog.find(np.array([item_id], np.int64))
        if found[0]:
            return self.catalog.image(int(pos[0]))
        if self._redis is not None:
            img = self._redis.hget(f"{self._ns}:images", str(int(item_id)))
            if img is not None:
                return img
        for rec in self.log.read():  # rare (a page showing a new item): read the log
            if int(rec["item_id"]) == int(item_id):
                return rec["image"]
        return None

    # ---- vectors ------------------------------------------------------------------------------------
    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (N, D) float32, found (N,) bool)``: see :meth:`EmbeddingTable.lookup`."""
        return self.table.lookup(ids)

    def __len__(self) -> int:
        return len(self.table)

    # ---- search -------------------------------------------------------------------------------------
    def _sync_index(self) -> None:
        """Add to the index what the table has and the index lacks (other processes' ingests).
        Call with the index lock held."""
        self.table.refresh()
        if len(self.table) == len(self.index):
            return
        missing = np.setdiff1d(self.table.ids(), self.index.ids())
        if len(missing):
            self.index.add(missing, self.table.get(missing))
            self._dirty = True

    def search_vector(self, query: np.ndarray, k: int = 10,
                      exclude: int | None = None) -> list[dict]:
        """``(D,)`` query -> up to ``k`` hits ``{"item_id", "score", "title"}``, best first
        (``exclude``: an item id left out)."""
        with self._index_lock:
            self._sync_index()
            scores, ids = self.index.search(np.asarray(query, np.float32).reshape(1, -1),
                                            k + (exclude is not None))
        keep = (ids[0] >= 0) & (ids[0] != (-1 if exclude is None else exclude))
        hit_ids, hit_scores = ids[0][keep][:k], scores[0][keep][:k]
        _, titles = self.meta(hit_ids)
        return [{"item_id": int(i), "score": float(s), "title": t}
                for i, s, t in zip(hit_ids, hit_scores, titles)]

    def encode_text(self, text: str) -> np.ndarray:
        """A text query through the text-query tower: ``(D,)`` float32."""
        check_title(text, "text", None)
        with self._enc_lock:
            return np.asarray(self.encoder.encode_text([text])[0], np.float32)

    def encode_image(self, image: bytes) -> np.ndarray:
        """An image query (JPEG/PNG bytes) through the image-query tower: ``(D,)`` float32."""
        find_bad_image([image], "image", 0)
        with self._enc_lock:
            return np.asarray(self.encoder.encode_images([image])[0], np.float32)

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        """Text query -> top-k items."""
        return self.search_vector(self.encode_text(text), k)

    def search_image(self, image: bytes, k: int = 10) -> list[dict]:
        """Image query -> top-k items."""
        return self.search_vector(self.encode_image(image), k)

    def check_query(self, query: np.ndarray, where: str = "vector") -> np.ndarray:
        """A ``(D,)`` query vector of this table's size, finite: float32; else :class:`DataError`."""
        q = np.asarray(query, np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise DataError(f"query vector of {q.shape[0]} values; the table's vectors have {self.dim}",
                            file=where)
        if not np.isfinite(q).all():
            raise DataError("query vector has a NaN or infinite value", file=where)
        return q

    def search_item(self, item_id: int, k: int = 10) -> list[dict]:
        """The k items nearest to item ``item_id`` (itself left out)."""
        vec, found = self.table.lookup(np.array([item_id], np.int64))
        if not found[0]:
            raise DataError(f"item {item_id} is not in the embedding table ({self.version!r})",
                            column="item_id")
        return self.search_vector(vec[0], k, exclude=int(item_id))

    # ---- ingestion ----------------------------------------------------------------------------------
    @contextmanager
    def _writer(self) -> Iterator[EmbeddingTable]:
        """A writable handle on this version's table: the held one, or one shared safely by every
        serving process (module docstring)."""
        if self.table.writable:
            yield self.table
            return
        if self._redis is not None:
            with open_table(self.root, self.version, writable=True) as table:
                yield table
            return
        fd = os.open(self.root / INGEST_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: serving processes take turns
            with open_table(self.root, self.version, writable=True) as table:
                yield table
        finally:
            os.close(fd)  # releases the flock (also released by the kernel if we die)

    def ingest(self, item: dict[str, Any]) -> dict:
        """Encode ``{"item_id", "title", "image" (bytes)[, "category", "created_at", "attributes"]}``,
        write it durably (log, then table: acknowledged means on disk), index it.

        Raises :class:`DataError` (naming the field) for bad input and :class:`ItemExists` for an id
        already in the table; nothing is written then. Returns timings in ms: ``encode_ms``,
        ``write_ms`` (durable), ``index_ms``, ``total_ms``.
        """
        t0 = time.perf_counter()
        where = "item"
        try:
            item_id = int(item["item_id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"item_id: expected an integer, got {item.get('item_id')!r}", file=where,
                            column="item_id") from None
        title = check_title(item.get("title"), where, None)
        image = item.get("image")
        find_bad_image([image], where, 0)
        if self.table.lookup(np.array([item_id]))[1][0]:
            raise ItemExists(f"item {item_id} is already in the embedding table", file=where,
                             column="item_id")
        enc = self.encoder
        with self._enc_lock:
            vec = encode_checked(enc, [title], [bytes(image)], where)
        ids, vecs = check_vectors(np.array([item_id]), vec, self.dim, enc.version, self.version, where)
        t1 = time.perf_counter()
        rec = {"item_id": item_id, "title": title, "image": bytes(image),
               "created_at": item.get("created_at"), "category": item.get("category"),
               "attributes": item.get("attributes") or None}
        # The index lock is held from the write to the index add, so a search's sync cannot add
        # the item first (FAISS would then hold it twice).
        with self._index_lock:
            with self._writer() as table:
                if table.contains(ids)[0]:  # posted meanwhile by another process
                    raise ItemExists(f"item {item_id} is already in the embedding table",
                                     file=where, column="item_id")
                self.log.append(rec)
                if self._redis is not None:
                    meta = {k: v for k, v in rec.items() if k != "image"}
                    pipe = self._redis.pipeline(transaction=True)
                    pipe.hset(f"{self._ns}:items", str(item_id), json.dumps(meta))
                    pipe.hset(f"{self._ns}:images", str(item_id), rec["image"])
                    pipe.execute()
                table.put(ids, vecs, version=enc.version)
            t2 = time.perf_counter()
            self.table.refresh()
            self.index.add(ids, vecs)
            self._dirty = True
        with self._lock:
            self._remember(rec)
        t3 = time.perf_counter()
        ms = lambda a, b: round((b - a) * 1e3, 3)  # noqa: E731
        return {"item_id": item_id, "encode_ms": ms(t0, t1), "write_ms": ms(t1, t2),
                "index_ms": ms(t2, t3), "total_ms": ms(t0, t3)}

    def catch_up(self, batch_size: int = 64) -> int:
        """Encode and write the logged items this version's table lacks (items acknowledged under an
        older encoder version while this one was built or swapped in); returns how many were added.
        Needs the encoder. Local log only (this host's ingests)."""
        recs = [r for r in self.log.read() if not self.table.contains(np.array([r["item_id"]]))[0]]
        if not recs:
            return 0
        enc = self.encoder
        n = 0
        for a in range(0, len(recs), batch_size):
            chunk = recs[a:a + batch_size]
            with self._enc_lock:
                vecs = encode_checked(enc, [r["title"] for r in chunk], [r["image"] for r in chunk],
                                      str(self.log.path), a)
            with self._writer() as table:
                ids = np.array([r["item_id"] for r in chunk], np.int64)
                keep = ~table.contains(ids)
                if keep.any():
                    table.put(ids[keep], vecs[keep], version=enc.version)
                    n += int(keep.sum())
        with self._lock:
            for r in recs:
                self._remember(r)
        with self._index_lock:
            self._sync_index()
        return n


def decode_b64_image(text: str, field: str = "image") -> bytes:
    """Base64 text -> bytes; :class:`DataError` naming ``field`` when it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise DataError("not valid base64", column=field) from None
