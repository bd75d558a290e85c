"""Small synthetic CTR_SAMPLES tables with known structure, for unit tests and the throughput benchmark.

Items have unit "representations" (their true content vectors) and categories; each user has an
interest vector; the history of an impression is drawn from the items closest to that interest, and
the click probability rises with the target's similarity to the interest, plus an item-specific bias
that only the item ID can learn. Not a market simulation (that is :mod:`mmrank.data.market`).

Example::

    >>> table, vecs = synthetic_samples(n_rows=1000, n_items=50, seed=0)
    >>> table.num_rows, vecs.shape
    (1000, (50, 16))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmrank.data.schemas import CTR_SAMPLES, HISTORY_LEN


def synthetic_samples(n_rows: int, n_items: int = 1000, n_users: int = 500, dim: int = 16,
                      history_len: int = HISTORY_LEN, n_categories: int = 10, n_regions: int = 3,
                      min_len: int = 0, sim_weight: float = 3.0, seed: int = 0,
                      item_id_offset: int = 1000) -> tuple[pa.Table, np.ndarray]:
    """A CTR_SAMPLES table (first 80% of rows by time: train) and the item vectors ``(n_items, dim)``.

    Item ``i`` has raw id ``item_id_offset + i``; history lengths are uniform in ``[min_len, history_len]``.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_categories, dim))
    cat = rng.integers(0, n_categories, n_items)
    vec = centers[cat] + 0.8 * rng.normal(size=(n_items, dim))
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    bias = rng.normal(scale=0.7, size=n_items)
    interest = vec[rng.integers(0, n_items, n_users)] + 0.3 * rng.normal(size=(n_users, dim))
    interest /= np.linalg.norm(interest, axis=1, keepdims=True)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop = rng.permutation(pop / pop.sum())

    user = rng.integers(0, n_users, n_rows)
    item = rng.choice(n_items, size=n_rows, p=pop)
    lens = rng.integers(min_len, history_len + 1, n_rows)
    # history: items near the user's interest (top 5% by similarity, sampled)
    k = max(5, n_items // 20)
    near = np.argsort(-(interest @ vec.T), axis=1)[:, :k]                   # (U, k)
    total = int(lens.sum())
    row_of = np.repeat(np.arange(n_rows), lens)
    hist = near[user[row_of], rng.integers(0, k, total)]
    sim = np.einsum("nd,nd->n", interest[user], vec[item])
    logit = -1.5 + sim_weight * sim + bias[item]
    label = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    ts = np.sort(rng.integers(0, 30 * 86400, n_rows))
    offsets = np.zeros(n_rows + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    ids = item_id_offset + np.arange(n_items, dtype=np.int64)

    def lst(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, typ))

    split = np.where(np.arange(n_rows) < int(0.8 * n_rows), "train", "test")
    table = pa.table({
        "ts": pa.array(ts, pa.int64()), "user_id": pa.array(user.astype(np.int64)),
        "item_id": pa.array(ids[item]), "request_id": pa.array(np.arange(n_rows, dtype=np.int64)),
        "position": pa.array(rng.integers(0, 10, n_rows).astype(np.int16)),
        "region": pa.array(rng.integers(0, n_regions, n_rows).astype(np.int16)),
        "category_id": pa.array(cat[item].astype(np.int32)),
        "label": pa.array(label),
        "hist_item_ids": lst(ids[hist], pa.int64()),
        "hist_category_ids": lst(cat[hist].astype(np.int32), pa.int32()),
        "hist_ts": lst(np.zeros(total, np.int64), pa.int64()),
        "split": pa.array(split),
    }, schema=CTR_SAMPLES)
    return table, vec.astype(np.float32)


def synthetic_run(run: Path, n_rows: int = 6000, n_users: int = 200, seed: int = 5) -> Path:
    """A run directory over :func:`synthetic_samples` (200 items, history 20): ``data/ctr_samples.parquet``,
    ``data/items.parquet`` (every 5th item new: created at ts 10,000,000), ``data/manifest.json`` and the
    items' vectors as the embedding table (version ``test-v1``). Returns ``run``."""
    import pyarrow.parquet as pq

    from mmrank.data.io import write_table
    from mmrank.store.backends import create_table

    run = Path(run)
    table, vecs = synthetic_samples(n_rows=n_rows, n_items=200, n_users=n_users, history_len=20, seed=seed)
    write_table(table, run / "data" / "ctr_samples.parquet")
    ids = 1000 + np.arange(200, dtype=np.int64)
    created = np.where(np.arange(200) % 5 == 0, 10_000_000, 0).astype(np.int64)
    pq.write_table(pa.table({"item_id": ids, "title": [f"item {i}" for i in ids],
                             "image": pa.array([b""] * 200, pa.binary()), "category": ["c"] * 200,
                             "price": np.ones(200), "created_at": created}), run / "data" / "items.parquet")
    (run / "data" / "manifest.json").write_text(json.dumps({"oracle_auc": 0.9, "new_item_ts": 5_000_000}))
    t = create_table(run / "embeddings", version="test-v1", dim=vecs.shape[1])
    t.put(ids, vecs, version="test-v1")
    t.publish()
    t.close()
    return run


def planted_batches(d: Path, n_rows: int, n_items: int, n_users: int, seed: int,
                    **kw: Any) -> tuple[Any, Any, Any, Any]:
    """``(samples, encoded samples, ModelSizes, item vector table)`` of a :func:`synthetic_samples`
    table (history 20, at least one behaviour) written under ``d``: what a CTR model test trains on."""
    from mmrank.ctr.data import FeatureSpace, load_samples
    from mmrank.ctr.models import ModelSizes
    from mmrank.ctr.representations import vector_table
    from mmrank.data.io import write_table

    table, vecs = synthetic_samples(n_rows=n_rows, n_items=n_items, n_users=n_users, history_len=20, min_len=1,
                                    seed=seed, **kw)
    data = load_samples(write_table(table, Path(d) / "s.parquet"), history_len=20)
    ids = 1000 + np.arange(n_items)
    space = FeatureSpace.fit(data, ids)
    enc = space.encode(data)
    sizes = ModelSizes(len(space.items), len(space.users), space.n_categories, space.n_regions,
                       vec_dim=vecs.shape[1])
    return data, enc, sizes, vector_table(space, ids, vecs)
