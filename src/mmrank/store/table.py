"""The embedding index table (Section 5, Figure 4 of the CIKM'24 Taobao paper): item id -> vector.

This module is what every backend shares (the :class:`EmbeddingTable` interface, version stamps, the
batch checks, ``STORE.json``); :mod:`mmrank.store.backends` opens or creates a table of the backend a
run is configured with.

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

    >>> from mmrank.store.backends import create_table, open_table
    >>> t = create_table(root, version="enc-1", dim=4)                      # doctest: +SKIP
    >>> t.put(np.array([7, 9]), vecs, version="enc-1"); t.publish()          # doctest: +SKIP
    >>> open_table(root).get(np.array([9]))                                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np

from mmrank.durable import write_text
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

    Open the CURRENT version read-only with :func:`mmrank.store.backends.open_table`; build one with
    :func:`~mmrank.store.backends.create_table` (the one writer) and switch readers to it with
    :meth:`publish`.

    Attributes:
        version: the encoder version every vector of the table was made by.
        dim: the vector size D.
    """

    version: str
    dim: int
    encoder_name: str
    writable: bool
    root: Path

    # ---- the interface every backend implements ---------------------------------------------------
    @staticmethod
    @abstractmethod
    def current_version(root: Path, **conn) -> str | None:
        """The CURRENT version under ``root`` (None if nothing was published)."""

    @classmethod
    @abstractmethod
    def versions(cls, root: Path, **conn) -> list[str]:
        """Every encoder version with a table under ``root``."""

    @classmethod
    @abstractmethod
    def open_version(cls, root: Path, version: str, writable: bool = False,
                     **conn) -> "EmbeddingTable":
        """Open the table of ``version``; :class:`MMRankError` if there is none."""

    @classmethod
    @abstractmethod
    def create_version(cls, root: Path, version: str, dim: int, encoder_name: str = "",
                       **conn) -> "EmbeddingTable":
        """Open the table of ``version`` for writing, creating it if needed."""

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
    write_text(root / STORE_FILE, json.dumps(cfg) + "\n")
