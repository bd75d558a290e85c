"""The embedding index table (Section 5, Figure 4 of the CIKM'24 Taobao paper): item id -> vector.

One table holds the vectors of ONE encoder version. A run keeps them under ``R/embeddings/``::

    R/embeddings/
      CURRENT               the version readers open (replaced atomically with os.replace)
      STORE.json            optional: {"backend": "redis", "url": ..., "namespace": ...}
      v-<version>/          one table per encoder version (local backend): meta.json, segments, LOCK
      v-<version>/ann.*     the ANN index built from that table

A new encoder version builds a new table beside the old one, then :func:`set_current` switches
readers to it in one rename; two versions are never mixed (every batch of vectors carries the
version's stamp, checked on write and on read).

Example::

    >>> t = EmbeddingTable.create(root, version="enc-1", dim=4)            # doctest: +SKIP
    >>> t.put(np.array([7, 9]), vecs, version="enc-1"); t.publish()          # doctest: +SKIP
    >>> EmbeddingTable.open(root).get(np.array([9]))                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np

from mmrank.errors import ConfigError, DataError, MMRankError

CURRENT = "CURRENT"
STORE_FILE = "STORE.json"
Missing = Literal["raise", "zero"]


def version_stamp(version: str) -> int:
    """A 32-bit stamp of an encoder version, stored with every batch of vectors."""
    return zlib.crc32(version.encode("utf-8"))


def version_dirname(version: str) -> str:
    """A directory name for ``version``: ``v-<version>`` if it is filesystem-safe, else a hash suffix."""
    if not version or not version.strip():
        raise ConfigError("encoder version: empty; an embedding table needs a version id")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", version)[:80]
    if safe != version:
        safe += "-" + hashlib.sha1(version.encode()).hexdigest()[:8]
    return "v-" + safe


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` durably: temp file, fsync, os.replace, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def store_config(root: Path) -> dict:
    """The backend of the tables under ``root``: ``{"backend": "local"}`` unless STORE.json says else."""
    f = Path(root) / STORE_FILE
    if not f.exists():
        return {"backend": "local"}
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{f}: not valid JSON ({err})") from None
    if cfg.get("backend") not in ("local", "redis"):
        raise ConfigError(f"{f}: key 'backend': expected local or redis, got {cfg.get('backend')!r}")
    return cfg


def check_vectors(ids: np.ndarray, vecs: np.ndarray, dim: int, version: str,
                  table_version: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch for :meth:`EmbeddingTable.put`; raise before anything is written.

    Args:
        ids: ``(N,)`` integer item ids, unique within the batch.
        vecs: ``(N, dim)`` finite floats.
    Returns: ``(ids int64 (N,), vecs float32 C-contiguous (N, dim))``.
    """
    if version != table_version:
        raise DataError(f"vectors of encoder version {version!r} cannot go into the table of "
                        f"version {table_version!r} (build a new table: mmrank embed)", file=where)
    ids = np.asarray(ids)
    vecs = np.asarray(vecs)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise DataError(f"item ids: expected a 1-d integer array, got shape {ids.shape} "
                        f"dtype {ids.dtype}", file=where, column="item_id")
    if vecs.ndim != 2 or vecs.shape[0] != ids.shape[0] or vecs.shape[1] != dim:
        raise DataError(f"vectors: expected shape ({ids.shape[0]}, {dim}), got {vecs.shape}",
                        file=where, column="vector")
    if not np.issubdtype(vecs.dtype, np.floating):
        raise DataError(f"vectors: expected floats, got {vecs.dtype}", file=where, column="vector")
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(f"vector of item {int(ids[r])} is not finite (NaN or inf)", file=where,
                        row=r, column="vector")
    ids = ids.astype(np.int64, copy=False)
    if len(np.unique(ids)) != len(ids):
        s = np.sort(ids)
        dup = int(s[np.flatnonzero(s[1:] == s[:-1])[0]])
        raise DataError(f"item id {dup} appears twice in one batch", file=where, column="item_id")
    return ids, vecs


class EmbeddingTable(ABC):
    """Item id -> float32 vector, stamped with one encoder version.

    Open the CURRENT version read-only with :meth:`open`; build one with :meth:`create` (the one
    writer) and switch readers to it with :meth:`publish`.

    Attributes:
        version: the encoder version every vector of the table was made by.
        dim: the vector size D.
    """

    version: str
    dim: int
    encoder_name: str
    writable: bool
    root: Path

    # ---- factories -------------------------------------------------------------------------------
    @staticmethod
    def open(root: str | Path, version: str | None = None, *, writable: bool = False,
             backend: str | None = None, url: str | None = None,
             namespace: str | None = None) -> "EmbeddingTable":
        """Open the table of ``version`` (default: the CURRENT one) under ``root``.

        The backend comes from ``backend`` or ``root/STORE.json`` (default local).
        Raises :class:`MMRankError` if there is no such table.
        """
        root = Path(root)
        cls, kw = _backend(root, backend, url, namespace)
        if version is None:
            version = cls.current_version(root, **kw)
            if version is None:
                raise MMRankError(f"{root}: no embedding table yet (no {CURRENT}); "
                                  f"run `mmrank embed --run <R>` first")
        return cls._open(root, version, writable=writable, **kw)

    @staticmethod
    def create(root: str | Path, *, version: str, dim: int, encoder_name: str = "",
               backend: str | None = None, url: str | None = None,
               namespace: str | None = None) -> "EmbeddingTable":
        """Open the table of ``version`` for writing, creating it if needed (not made CURRENT)."""
        root = Path(root)
        if dim <= 0:
            raise ConfigError(f"embedding dim: expected > 0, got {dim}")
        cls, kw = _backend(root, backend, url, namespace)
        return cls._create(root, version, dim, encoder_name, **kw)

    @staticmethod
    def versions(root: str | Path, **kw) -> list[str]:
        """Every encoder version with a table under ``root``."""
        cls, kw2 = _backend(Path(root), kw.get("backend"), kw.get("url"), kw.get("namespace"))
        return cls._versions(Path(root), **kw2)

    @staticmethod
    def current(root: str | Path, **kw) -> str | None:
        """The CURRENT version under ``root`` (None if nothing was published)."""
        cls, kw2 = _backend(Path(root), kw.get("backend"), kw.get("url"), kw.get("namespace"))
        return cls.current_version(Path(root), **kw2)

    # ---- the interface every backend implements ---------------------------------------------------
    @abstractmethod
    def __len__(self) -> int:
        """The number of distinct item ids."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """``(N,)`` int64: every item id in the table, sorted."""

    @abstractmethod
    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: which of ``item_ids`` have a vector."""

    @abstractmethod
    def _gather(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors (N, D) float32 with zero rows where missing, found (N,) bool)``."""

    @abstractmethod
    def _append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Write one validated batch durably and atomically."""

    @abstractmethod
    def publish(self) -> None:
        """Make this version the CURRENT one (atomically)."""

    def refresh(self) -> None:
        """Pick up rows written by another process since open (cheap when nothing changed)."""

    def close(self) -> None:
        """Release the writer lock / connection."""

    # ---- shared behaviour ----------------------------------------------------------------------------
    def get(self, item_ids: np.ndarray, missing: Missing = "raise") -> np.ndarray:
        """Gather vectors: ``(N,)`` ids -> ``(N, D)`` float32.

        ``missing="raise"`` raises ``KeyError`` naming the first unknown id; ``"zero"`` returns zero
        rows for unknown ids.
        """
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        vecs, found = self._gather(ids)
        if not found.all():
            self.refresh()  # another process may have written them since we opened
            vecs, found = self._gather(ids)
        if missing == "raise" and not found.all():
            first = int(ids[np.flatnonzero(~found)[0]])
            raise KeyError(f"item id {first} is not in the embedding table {self!r} "
                           f"({int((~found).sum())} of {len(ids)} ids unknown)")
        if missing not in ("raise", "zero"):
            raise ValueError(f"missing: expected 'raise' or 'zero', got {missing!r}")
        return vecs

    def lookup(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` ids -> ``(vectors (N, D) float32, zero rows where missing; found (N,) bool)``;
        rows written by another process since open are picked up (one refresh on a miss)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        vecs, found = self._gather(ids)
        if not found.all():
            self.refresh()
            vecs, found = self._gather(ids)
        return vecs, found

    def put(self, item_ids: np.ndarray, vectors: np.ndarray, *, version: str) -> None:
        """Write a batch of vectors made by encoder ``version``; returns once it is durable.

        A later put of the same id replaces its vector. A wrong version, shape or a NaN raises
        :class:`DataError` and writes nothing.
        """
        if not self.writable:
            raise MMRankError(f"{self!r} was opened read-only; open it with writable=True")
        ids, vecs = check_vectors(item_ids, vectors, self.dim, version, self.version, repr(self))
        if len(ids):
            self._append(ids, vecs)

    def __enter__(self) -> "EmbeddingTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _backend(root: Path, backend: str | None, url: str | None, namespace: str | None):
    cfg = store_config(root)
    name = backend or cfg.get("backend", "local")
    if name == "local":
        from mmrank.store.local import LocalTable
        return LocalTable, {}
    if name == "redis":
        from mmrank.store.redis_table import RedisTable
        return RedisTable, {"url": url or cfg.get("url") or "redis://127.0.0.1:6379/0",
                            "namespace": namespace or cfg.get("namespace")}
    raise ConfigError(f"embedding table backend: expected local or redis, got {name!r}")


def set_store_config(root: str | Path, backend: str, url: str | None = None,
                     namespace: str | None = None) -> None:
    """Record in ``root/STORE.json`` which backend holds the tables of this run."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"backend": backend}
    if url:
        cfg["url"] = url
    if namespace:
        cfg["namespace"] = namespace
    atomic_write_text(root / STORE_FILE, json.dumps(cfg) + "\n")
