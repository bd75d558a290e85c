"""AnnIndex: exact below the threshold, HNSW above, recall measured at build, add, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrank.errors import DataError
from mmrank.store.ann import AnnConfig, AnnIndex, recall_at_k


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_at_k_hand_worked() -> None:
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9], [4, 7, 8]])
    assert recall_at_k(found, truth, k=3) == pytest.approx((2 + 1) / 6)


def test_exact_below_threshold_matches_brute_force() -> None:
    x = _clustered(300)
    ids = np.arange(300) * 7 + 3
    idx = AnnIndex.build(ids, x, version="v1", config=AnnConfig(exact_below=1000))
    assert idx.kind == "flat" and idx.stats["recall_at_10"] == 1.0
    q = _clustered(5, seed=1)
    scores, found = idx.search(q, k=10)
    brute = q @ x.T
    order = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, 1), rtol=1e-5)


def test_hnsw_above_threshold_records_recall() -> None:
    x = _clustered(3000)
    idx = AnnIndex.build(np.arange(3000), x, version="v1",
                         config=AnnConfig(exact_below=1000, recall_queries=200))
    assert idx.kind == "hnsw"
    assert idx.stats["recall_at_10"] >= 0.95
    assert idx.ef_search == idx.stats["ef_search"]
    _, found = idx.search(x[:50], k=1)
    assert (found[:, 0] == np.arange(50)).mean() >= 0.95  # an item is its own nearest neighbour


def test_hnsw_recall_is_measured_not_assumed() -> None:
    """A crippled HNSW (tiny graph, tiny search) must report a recall below 1."""
    x = _clustered(2000, dim=32, seed=3)
    cfg = AnnConfig(kind="hnsw", hnsw_m=4, ef_construction=8, ef_search_grid=[10],
                    recall_queries=200)
    idx = AnnIndex.build(np.arange(2000), x, version="v1", config=cfg)
    assert idx.stats["recall_at_10"] < 0.99


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_incremental_add_is_searchable(kind: str) -> None:
    x = _clustered(1200)
    idx = AnnIndex.build(np.arange(1000), x[:1000], version="v1", config=AnnConfig(kind=kind))
    idx.add(np.arange(1000, 1200), x[1000:])
    assert len(idx) == 1200
    _, found = idx.search(x[1100:1110], k=1)
    np.testing.assert_array_equal(found[:, 0], np.arange(1100, 1110))


def test_exact_index_grows_into_hnsw() -> None:
    x = _clustered(700)
    idx = AnnIndex.build(np.arange(200), x[:200], version="v1", config=AnnConfig(exact_below=300))
    assert idx.kind == "flat"
    idx.add(np.arange(200, 700), x[200:])
    assert idx.kind == "hnsw" and len(idx) == 700 and "recall_at_10" in idx.stats
    _, found = idx.search(x[650:651], k=1)
    assert found[0, 0] == 650


def test_save_load_roundtrip_and_version_stamp(tmp_path: Path) -> None:
    x = _clustered(2000)
    idx = AnnIndex.build(np.arange(2000) + 10, x, version="enc-1",
                         config=AnnConfig(exact_below=500, recall_queries=100))
    idx.save(tmp_path)
    back = AnnIndex.load(tmp_path, version="enc-1")
    assert (back.kind, len(back), back.ef_search, back.stats) == (idx.kind, 2000, idx.ef_search,
                                                                   idx.stats)
    q = _clustered(20, seed=5)
    np.testing.assert_array_equal(back.search(q, 10)[1], idx.search(q, 10)[1])
    with pytest.raises(DataError, match="rebuild"):
        AnnIndex.load(tmp_path, version="enc-2")


def test_empty_index_searches_to_nothing() -> None:
    idx = AnnIndex.build(np.zeros(0, np.int64), np.zeros((0, 8), np.float32), version="v1")
    scores, found = idx.search(np.ones((1, 8), np.float32), k=3)
    assert (found == -1).all()
