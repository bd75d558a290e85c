"""The store's stage of ``mmrank demo``: embed the catalog, build the index, ingest new items.

The newest few items of the catalog are held out of the bulk embedding and then ingested one at a
time, as they would arrive in production (Section 5, Figure 4): the figure is the time from arrival
to being visible in search. Image-search recall@10 (MOON's intermediate metric) is measured with the
market's query photos (an item's photo under crop/shift/colour/blur) through the image-query tower.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mmrank import threads as thread_settings
from mmrank.errors import ConfigError, MMRankError
from mmrank.store.ingest import ItemStore, embed_catalog, embeddings_root, load_encoder
from mmrank.store.table import EmbeddingTable

N_NEW = {"tiny": 10, "small": 20, "default": 50}
N_RECALL_QUERIES = {"tiny": 200, "small": 300, "default": 500}


def _image_search_recall(store: ItemStore, items: dict, n: int, seed: int = 0) -> float | None:
    """Share of query photos whose source item is in the top 10 (image-query tower, ANN index)."""
    from mmrank.data.render import render_query_image
    rng = np.random.default_rng(seed)
    ids = store.table.ids()
    ids = rng.choice(ids[np.isin(ids, items["item_id"])], size=min(n, len(ids)), replace=False)
    row = {int(i): r for r, i in enumerate(items["item_id"])}
    photos = [render_query_image(items["image"][row[int(i)]], 1000 + k) for k, i in enumerate(ids)]
    q = store.encoder.encode_images(photos)
    _, found = store.index.search(q, 10)
    return float(np.mean([i in f for i, f in zip(ids, found)]))


def demo_stage(run: Path, size: str = "small") -> dict:
    """Embed ``R/data/items.parquet`` with ``R/encoder/``, build the ANN index, ingest the newest
    items one by one. Returns JSON-able headline figures."""
    if size not in N_NEW:
        raise ConfigError(f"size: expected one of {', '.join(N_NEW)}, got {size!r}")
    run = Path(run)
    t0 = time.perf_counter()
    enc = load_encoder(run)
    from mmrank.data.io import read_items

    t = read_items(run / "data" / "items.parquet", ["item_id", "title", "created_at"])
    items = {c: t.column(c).to_pylist() for c in t.column_names}
    items["item_id"] = np.array(items["item_id"], np.int64)
    try:
        present = EmbeddingTable.open(embeddings_root(run), enc.version).ids()
    except MMRankError:
        present = np.zeros(0, np.int64)
    newest = np.argsort(-np.array(items["created_at"]), kind="stable")
    held = [int(r) for r in newest if items["item_id"][r] not in present][:N_NEW[size]]
    threads = thread_settings.get()
    # On an oversubscribed machine (load >= cores) OpenMP spin-waiting makes 2 torch threads 4-8x
    # slower than 1 (measured on the 2-core demo machine: 12-21 vs 93-95 items/s); use one then.
    embed_threads = thread_settings.for_busy_machine(threads)
    with thread_settings.limited(embed_threads):
        stats = embed_catalog(run, enc, exclude_ids=items["item_id"][held])

    lat, parts = [], []
    with ItemStore.open(run, enc, writable=True) as store:
        with thread_settings.limited(1):  # one item at a time: more threads only contend (benchmarks/)
            for r in held:
                item = {"item_id": int(items["item_id"][r]), "title": items["title"][r],
                        "image": items["image"][r], "created_at": items["created_at"][r]}
                a = time.perf_counter()
                parts.append(store.ingest(item))
                hits = store.search_vector(store.table.get(np.array([item["item_id"]]))[0], k=5)
                lat.append((time.perf_counter() - a) * 1e3)
                if item["item_id"] not in [h["item_id"] for h in hits]:
                    raise MMRankError(f"ingested item {item['item_id']} is not visible in search")
        recall = _image_search_recall(store, items, N_RECALL_QUERIES[size])
        n_total = len(store.table)
    loaded = embed_threads != threads
    return {
        "encoder_version": enc.version, "dim": enc.dim, "items": n_total,
        "embed_seconds": stats["encode_seconds"], "embed_items_per_second": stats["items_per_second"],
        "index": stats["index"]["kind"], "index_recall_at_10": stats["index"].get("recall_at_10"),
        "ingested": len(lat),
        "ingest_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
        "ingest_max_ms": round(float(np.max(lat)), 1) if lat else None,
        "ingest_encode_p50_ms": round(float(np.median([p["encode_ms"] for p in parts])), 1)
        if parts else None,
        "image_search_recall_at_10": None if recall is None else round(recall, 4),
        "torch_threads_for_embed": 1 if loaded else threads,
        "seconds": round(time.perf_counter() - t0, 1),
    }
