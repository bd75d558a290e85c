"""The store's stage on a run directory: what ``mmrank embed`` and ``mmrank demo`` call.

* :func:`embed_catalog` encodes ``R/data/items.parquet`` (and the items ingested since) in batches into
  the table of the encoder's version, builds the ANN index, then makes that version CURRENT. It is
  resumable: items already in the table are skipped, so a killed run continues where it stopped and
  never writes an item twice. The table records what it was made from (``v-<version>/lineage.json``:
  the encoder version and the catalog's digest, :mod:`mmrank.lineage`); a table made from another
  catalog is dropped and rebuilt, and a log of items ingested into another catalog is set aside.
  The encoder runs on the run config's device (``hardware``: auto | cpu | cuda | cuda:N, bf16 autocast
  on CUDA); the figures record it (``device``) beside ``items_per_second``.
* :func:`demo_stage` (the store's part of ``mmrank demo``) embeds the catalog with the newest few items
  held out, then ingests those one at a time, as they would arrive in production (Section 5,
  Figure 4): the figure is the time from arrival to being visible in search. Image-search recall@10
  (MOON's intermediate metric) is measured with the market's query photos (an item's photo under
  crop/shift/colour/blur) through the image-query tower.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmrank import lineage, threads as thread_settings
from mmrank.data.io import read_items
from mmrank.device import HardwareConfig, describe, resolve_device
from mmrank.errors import ConfigError, DataError, MMRankError
from mmrank.store.ann import AnnConfig, AnnIndex
from mmrank.store.backends import create_table, open_table
from mmrank.store.encoding import ItemEncoder, catalog_batches, encode_checked, load_encoder
from mmrank.store.items import NEW_ITEMS, ItemStore, NewItemLog, embeddings_root, index_dir
from mmrank.store.table import set_store_config, store_config, version_dirname


def drop_stale(run: Path, version: str, inputs: dict[str, str]) -> None:
    """Before embedding: set ``R/embeddings/new_items.jsonl`` aside when its items were ingested into
    another catalog than the run's now, and drop the table of ``version`` when it was made from another
    catalog (a Redis table cannot be dropped here: StaleArtifact naming a fresh namespace)."""
    root = embeddings_root(run)
    items = {k: v for k, v in inputs.items() if k.startswith("data/")}
    log = root / NEW_ITEMS
    if lineage.matches(root, items) is False and log.exists():
        old = (lineage.read(root) or {}).get("inputs", {}).get("data/items", "old")
        aside = log.with_name(f"new_items.before-{old}.jsonl")
        log.rename(aside)
        print(f"note: {log} holds items ingested into another catalog: set aside as {aside.name}",
              file=sys.stderr)
    lineage.stamp(root, items)  # the catalog the log of ingested items belongs to
    vdir = root / version_dirname(version)
    if lineage.matches(vdir, inputs) is not False:
        return
    if store_config(root).get("backend", "local") != "local":
        lineage.check(vdir, inputs, f"mmrank embed --run {run} --namespace <a new one>")
    print(f"note: {vdir} was made from another catalog: rebuilding it", file=sys.stderr)
    shutil.rmtree(vdir)


# ---- bulk embedding ------------------------------------------------------------------------------------
def embed_catalog(run: str | Path, encoder: ItemEncoder | None = None, *, batch_size: int = 256,
                  ray_workers: int = 0, ann: AnnConfig | None = None, progress: bool = True,
                  exclude_ids: np.ndarray | None = None,
                  on_batch: Callable[[np.ndarray], None] | None = None,
                  backend: str | None = None, url: str | None = None,
                  namespace: str | None = None, reuse_features: bool = True,
                  hardware: HardwareConfig | None = None) -> dict:
    """Encode every item of ``R/data/items.parquet`` (and ``new_items.jsonl``) not yet in the table of
    ``encoder.version``, build the ANN index, make the version CURRENT. Returns figures.

    Args:
        ray_workers: > 0 encodes on a local Ray instance with that many workers (extra ``[ray]``).
        exclude_ids: items to leave out (to ingest them later, one by one).
        on_batch: called with the ids of each batch once it is durable (acknowledged).
        backend, url, namespace: record the table backend in ``R/embeddings/STORE.json`` (redis).
        reuse_features: when the encoder offers ``cached_item_features(run)`` (the pre-training
            cache of exactly its backbone outputs for the items file), run only its heads on them.
        hardware: where the run's encoder is loaded and runs (default: auto, CUDA when present; a
            device this machine lacks fails here, before any work). An ``encoder`` given runs where it
            is; the figures' ``device`` says where that was.
    """
    run = Path(run)
    hw = hardware or HardwareConfig()
    dev = resolve_device("cpu" if ray_workers > 0 and hw.device == "auto" else hw.device)
    if ray_workers > 0 and dev.type != "cpu":
        raise ConfigError(f"--ray-workers encodes on CPU workers; with device {dev} use --ray-workers 0")
    encoder = encoder or load_encoder(run, device=dev, bf16=hw.bf16, pin_memory=hw.pin_memory)
    ran_on = getattr(encoder, "device", None)
    ran_on = resolve_device(ran_on) if ran_on is not None else resolve_device("cpu")
    root = embeddings_root(run)
    if backend is not None:
        set_store_config(root, backend, url, namespace)
    items_path = run / "data" / "items.parquet"
    if not items_path.exists():
        raise DataError("no such file (generate a market or import a catalog first)",
                        file=str(items_path))
    t0 = time.perf_counter()
    inputs = lineage.embeddings_inputs(run, encoder.version)  # before the catalog is read
    drop_stale(run, encoder.version, inputs)
    table = create_table(root, version=encoder.version, dim=encoder.dim, encoder_name=encoder.name)
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
                                                catalog_batches(items_path, batch_size)):
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
        lineage.stamp(index_dir(table), inputs)
        table.publish()
        # Items ingested into the previous version while this one was built are in the log:
        # encode the ones this table still lacks (a store that had the old table open keeps
        # writing there until it is reopened; its log lines are picked up by the next embed).
        store = ItemStore(run, table, index, encoder)
        n_new += store.catch_up(batch_size)
        ids = table.ids()
        store.close()  # saves the index when the catch-up added to it
        return {"version": table.version, "dim": table.dim, "items": len(ids),
                "already_present": n_before, "encoded": n_new,
                "from_cache": int(np.isin(cached[0], done, invert=True).sum()) if cached is not None else 0,
                "encode_seconds": round(encode_s, 2), "device": describe(ran_on),
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


# ---- the demo ---------------------------------------------------------------------------------------
N_NEW = {"tiny": 10, "small": 20, "default": 50}
N_RECALL_QUERIES = {"tiny": 200, "small": 300, "default": 500}


def _image_search_recall(store: ItemStore, items: dict, n: int, seed: int = 0) -> float:
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


def demo_stage(run: Path, size: str = "small", hardware: HardwareConfig | None = None) -> dict:
    """Embed ``R/data/items.parquet`` with ``R/encoder/``, build the ANN index, ingest the newest
    items one by one. Returns JSON-able headline figures."""
    if size not in N_NEW:
        raise ConfigError(f"size: expected one of {', '.join(N_NEW)}, got {size!r}")
    run = Path(run)
    t0 = time.perf_counter()
    hw = hardware or HardwareConfig()
    enc = load_encoder(run, device=resolve_device(hw.device), bf16=hw.bf16, pin_memory=hw.pin_memory)
    t = read_items(run / "data" / "items.parquet", ["item_id", "title", "created_at"])
    items = {c: t.column(c).to_pylist() for c in t.column_names}
    items["item_id"] = np.array(items["item_id"], np.int64)
    try:
        with open_table(embeddings_root(run), enc.version) as table:
            present = table.ids()
    except MMRankError:
        present = np.zeros(0, np.int64)
    newest = np.argsort(-np.array(items["created_at"]), kind="stable")
    held = [int(r) for r in newest if items["item_id"][r] not in present][:N_NEW[size]]
    threads = thread_settings.get()
    # On an oversubscribed machine (load >= cores) OpenMP spin-waiting makes 2 torch threads slower
    # than 1 (benchmarks/embed_reuse.py --threads 1|2 measures it); use one then.
    embed_threads = thread_settings.for_busy_machine(threads)
    with thread_settings.limited(embed_threads):
        stats = embed_catalog(run, enc, exclude_ids=items["item_id"][held])

    lat, parts = [], []
    with ItemStore.open(run, enc, hold_writer=True) as store:
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
        "image_search_recall_at_10": round(recall, 4),
        "torch_threads_for_embed": 1 if loaded else threads,
        "seconds": round(time.perf_counter() - t0, 1),
    }
