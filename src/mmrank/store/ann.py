"""The ANN index over an embedding table, on FAISS: exact below a size threshold, HNSW above it.

Vectors are L2-normalised, so inner product is cosine similarity. At build time the index measures its
own recall@10 against exact search (``IndexFlatIP``) on sample queries and, for HNSW, picks the
smallest ``efSearch`` that reaches ``target_recall``; both are recorded and saved with the index,
stamped with the table's encoder version (a stale index is refused on load).

Example::

    >>> idx = AnnIndex.build(ids, vecs, version="enc-1")          # doctest: +SKIP
    >>> scores, found = idx.search(queries, k=10)                  # doctest: +SKIP
    >>> idx.add(new_ids, new_vecs); idx.save(run / "embeddings" / "v-enc-1")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from mmrank.config import StrictModel
from mmrank.durable import commit_file, temp_path, write_text
from mmrank.errors import DataError, MMRankError
from mmrank.vectors import l2_normalise

INDEX_FILE, META_FILE = "ann.faiss", "ann.json"
SMALL_BATCH = 16  # up to this many queries search on one OpenMP thread


class AnnConfig(StrictModel):
    """How :class:`AnnIndex` chooses and tunes its index."""

    kind: Literal["auto", "flat", "hnsw"] = "auto"
    exact_below: int = Field(50_000, ge=0, description="auto: exact (flat) search below this size")
    hnsw_m: int = Field(32, ge=4, le=128)
    ef_construction: int = Field(64, ge=8)
    ef_search_grid: list[int] = Field([16, 32, 48, 64, 96, 128, 192, 256, 384, 512])
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    recall_queries: int = Field(500, ge=10)
    seed: int = 0


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k. Both ``(Q, >=k)`` int ids, -1 = none."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(np.intersect1d(f[f >= 0], t[t >= 0]))
    return hits / (k * len(found)) if len(found) else 1.0


def sample_queries(vecs: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``(n, D)`` recall queries: catalogue vectors moved by Gaussian noise (a quarter of the per-dim
    spread) and re-normalised, so a query is near, but not on, a stored vector."""
    rng = np.random.default_rng(seed)
    base = vecs[rng.integers(0, len(vecs), size=n)]
    noise = rng.normal(size=base.shape).astype(np.float32) * (0.25 * vecs.std(axis=0, keepdims=True))
    return l2_normalise(base + noise)


class AnnIndex:
    """Top-k inner-product search over item vectors, with ids (FAISS ``IndexIDMap``).

    Attributes:
        version: encoder version of the vectors (the table's).
        kind: ``"flat"`` (exact) or ``"hnsw"``.
        stats: what was measured at build: ``recall_at_10``, ``build_seconds``, ``ef_search``, ...
    """

    def __init__(self, dim: int, version: str, kind: str, config: AnnConfig | None = None) -> None:
        self.dim, self.version, self.kind = dim, version, kind
        self.config = config or AnnConfig()
        self.stats: dict = {}
        if kind == "flat":
            self._inner = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self._inner = faiss.IndexHNSWFlat(dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._inner.hnsw.efConstruction = self.config.ef_construction
            self._inner.hnsw.efSearch = self.config.ef_search_grid[len(self.config.ef_search_grid) // 2]
        else:
            raise MMRankError(f"ANN index kind: expected flat or hnsw, got {kind!r}")
        self.index = faiss.IndexIDMap(self._inner)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"AnnIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}, version={self.version!r})"

    @property
    def ef_search(self) -> int | None:
        return int(self._inner.hnsw.efSearch) if self.kind == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind == "hnsw":
            self._inner.hnsw.efSearch = int(value)

    # ---- build ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: np.ndarray, vecs: np.ndarray, *, version: str,
              config: AnnConfig | None = None, queries: np.ndarray | None = None) -> "AnnIndex":
        """Build over ``(N,)`` ids and ``(N, D)`` vectors; measure recall@10 against exact search
        on ``queries`` ``(Q, D)`` (default :func:`sample_queries`; ``benchmarks/ann.py`` passes a set
        apart from the one it measures)."""
        config = config or AnnConfig()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or len(ids) != len(vecs):
            raise DataError(f"ANN build: expected ids (N,) and vectors (N, D), got {ids.shape} "
                            f"and {vecs.shape}")
        kind = config.kind
        if kind == "auto":
            kind = "flat" if len(ids) < config.exact_below else "hnsw"
        t0 = time.perf_counter()
        index = cls(vecs.shape[1], version, kind, config)
        if len(ids):
            index.index.add_with_ids(vecs, ids)
        build_s = time.perf_counter() - t0
        index.stats = {"kind": kind, "n": len(ids), "build_seconds": round(build_s, 3)}
        if len(ids):
            index.stats.update(index.measure(vecs, queries))
        return index

    def measure(self, vecs: np.ndarray, queries: np.ndarray | None = None) -> dict:
        """recall@10 against exact search over ``vecs`` (the indexed vectors) on
        :func:`sample_queries`; HNSW: tune efSearch to the smallest value of the grid that reaches
        ``target_recall``."""
        cfg = self.config
        if queries is None:
            queries = sample_queries(vecs, cfg.recall_queries, cfg.seed)
        k = min(10, len(self))
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(np.ascontiguousarray(vecs, np.float32))
        _, truth_rows = exact.search(queries, k)
        ids_by_row = faiss.vector_to_array(self.index.id_map)
        truth = ids_by_row[truth_rows]
        if self.kind == "flat":
            return {"recall_at_10": 1.0, "recall_queries": len(queries)}
        chosen, recall = cfg.ef_search_grid[-1], 0.0
        for ef in cfg.ef_search_grid:
            self.ef_search = max(ef, k)
            _, found = self.index.search(queries, k)
            recall = recall_at_k(found, truth, k)
            chosen = ef
            if recall >= cfg.target_recall:
                break
        self.ef_search = chosen
        return {"recall_at_10": round(recall, 4), "ef_search": chosen,
                "recall_queries": len(queries), "hnsw_m": cfg.hnsw_m}

    # ---- use -----------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add new items (``(N,)`` ids not yet in the index, ``(N, D)`` vectors); visible at once."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        self.index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64).reshape(-1))
        if self.kind == "flat" and self.config.kind == "auto" and len(self) >= 2 * self.config.exact_below:
            self._grow_to_hnsw()

    def _grow_to_hnsw(self) -> None:
        """The exact index outgrew the threshold: rebuild it as HNSW (and re-measure)."""
        vecs = self._inner.reconstruct_n(0, len(self))
        ids = faiss.vector_to_array(self.index.id_map).copy()
        grown = AnnIndex.build(ids, vecs, version=self.version,
                               config=self.config.model_copy(update={"kind": "hnsw"}))
        self.kind, self._inner, self.index, self.stats = grown.kind, grown._inner, grown.index, grown.stats

    def ids(self) -> np.ndarray:
        """``(N,)`` int64: the ids in the index (insertion order)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, D)`` queries -> ``(scores (Q, k) float32, ids (Q, k) int64)``, best first; -1 pads."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            return (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        if self.kind == "hnsw" and self.ef_search < k:
            self.ef_search = k
        if len(q) > SMALL_BATCH:
            return self.index.search(q, k)
        # A few queries gain nothing from OpenMP, and on a loaded machine its spin-waiting makes
        # them slower with 2 threads than with 1 (benchmarks/ann.py measures it).
        from mmrank.threads import faiss_limited

        with faiss_limited(1):
            return self.index.search(q, k)

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, dirpath: str | Path) -> None:
        """Write ``ann.faiss`` (FAISS's own format) and ``ann.json`` atomically into ``dirpath``."""
        dirpath = Path(dirpath)
        tmp = temp_path(dirpath / INDEX_FILE)
        faiss.write_index(self.index, str(tmp))
        commit_file(tmp, dirpath / INDEX_FILE)
        meta = {"version": self.version, "kind": self.kind, "dim": self.dim, "n": len(self),
                "ef_search": self.ef_search, "stats": self.stats,
                "config": self.config.model_dump(mode="json")}
        write_text(dirpath / META_FILE, json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, dirpath: str | Path, version: str) -> "AnnIndex":
        """Load the index saved in ``dirpath``; refuse one built for another encoder version."""
        dirpath = Path(dirpath)
        try:
            meta = json.loads((dirpath / META_FILE).read_text())
        except FileNotFoundError:
            raise MMRankError(f"{dirpath}: no ANN index ({META_FILE}); run `mmrank embed`") from None
        if meta["version"] != version:
            raise DataError(f"ANN index of encoder version {meta['version']!r}, the table is "
                            f"{version!r}: rebuild it (mmrank embed)", file=str(dirpath / META_FILE),
                            column="version")
        index = cls.__new__(cls)
        index.dim, index.version, index.kind = meta["dim"], meta["version"], meta["kind"]
        index.config = AnnConfig.model_validate(meta["config"])
        index.stats = meta["stats"]
        index.index = faiss.read_index(str(dirpath / INDEX_FILE))
        index._inner = faiss.downcast_index(index.index.index)
        if index.kind == "hnsw" and meta.get("ef_search"):
            index.ef_search = meta["ef_search"]
        if len(index) != meta["n"]:
            raise DataError(f"ANN index holds {len(index)} vectors, its meta says {meta['n']}",
                            file=str(dirpath / INDEX_FILE))
        return index
