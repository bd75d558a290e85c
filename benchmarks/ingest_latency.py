"""Ingestion latency: 1,000 new items ingested one at a time with the default encoders.

For each item: the time from its arrival (``ingest`` is called) to the moment it is visible in search
(a lookup of its vector with ``table.get`` and an ANN search that returns it first). Reports p50/p99
and the split into encode / durable write (fsync) / index add. Target (issue 5): p99 < 200 ms on two
cores.

The run: a tiny synthetic market, its encoder trained for a few steps by ``mmrank.pretrain`` with
the default towers (efficientnet-lite0 + all-MiniLM-L6-v2, frozen) -- latency does not depend on how
long the heads were trained -- and its catalog embedded. The new items are the photos and titles of a
second market (another seed), under fresh ids. ``--run R`` uses an existing run with an encoder.

Roofline (``benchmarks/roofline.py``): the fp32 matmul roof on the benchmark's threads, measured at
the start of the run, the encoder's FLOPs per item (counted on one item by ``torch.utils.flop_counter``)
and the share of that limit reached by the ingest rate and by the encoding alone (at its p50).

Usage::

    python benchmarks/ingest_latency.py [--items 1000] [--run R] [--variant off-the-shelf]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from roofline import count_flops, machine, machine_line, roofline_line


def prepare(run: Path, variant: str) -> None:
    from mmrank.data.market import generate_market, market_config
    from mmrank.pretrain.stage import pretrain
    from mmrank.pretrain.config import PretrainConfig

    if not (run / "data" / "items.parquet").exists():
        generate_market(market_config(size="tiny", seed=0), run)
    if not (run / "encoder" / "version.txt").exists():
        cfg = PretrainConfig(variant=variant, epochs=1, max_steps=5) if variant != "off-the-shelf" \
            else PretrainConfig(variant=variant)
        pretrain(run, cfg)


def new_items(tmp: Path, n: int, id_offset: int) -> list[dict]:
    from mmrank.data.market import generate_market, market_config

    other = tmp / "new-items"
    generate_market(market_config(size="tiny", seed=1, n_items=max(n, 1500)), other)
    t = pq.read_table(other / "data" / "items.parquet", columns=["item_id", "title", "image"])
    return [{"item_id": int(i) + id_offset, "title": title, "image": img}
            for i, title, img in zip(t.column("item_id").to_pylist(), t.column("title").to_pylist(),
                                     t.column("image").to_pylist())][:n]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--run", type=Path, default=None, help="an existing run with R/encoder/")
    p.add_argument("--variant", default="scl", help="pretrain variant for a fresh run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; one item at a time gains nothing from more, and on a "
                   "loaded machine OpenMP spin-waiting makes 2 threads far slower (measured)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    roofs = machine(dtypes=(torch.float32,))
    print(machine_line(roofs))
    from mmrank.pretrain.item_encoder import load_item_encoder
    from mmrank.store.backends import open_table
    from mmrank.store.items import ItemStore
    from mmrank.store.stage import embed_catalog

    with tempfile.TemporaryDirectory(prefix="mmrank-ingest-") as tmpd:
        tmp = Path(tmpd)
        run = args.run or tmp / "run"
        t0 = time.perf_counter()
        prepare(run, args.variant)
        enc = load_item_encoder(run)
        embed_catalog(run, enc, progress=False)
        setup_s = time.perf_counter() - t0
        items = new_items(tmp, args.items + 1, id_offset=10_000_000)
        warm, items = items[-1], items[:-1]
        store = ItemStore.open(run, enc, hold_writer=True)
        n0 = len(store.table)
        store.ingest(warm)  # warm-up (the first call loads lazily)
        flops = count_flops(lambda: enc.encode_items([warm["title"]], [warm["image"]]))
        lat, parts = [], []
        for item in items:
            t_arrival = time.perf_counter()
            parts.append(store.ingest(item))
            q = store.table.get(np.array([item["item_id"]]))[0]
            hits = store.search_vector(q, k=5)
            t_visible = time.perf_counter()
            # (an exact duplicate of an older item ties with it at the top)
            if item["item_id"] not in [h["item_id"] for h in hits
                                       if h["score"] >= hits[0]["score"] - 1e-5]:
                raise SystemExit(f"item {item['item_id']} not visible in search after ingest")
            lat.append((t_visible - t_arrival) * 1e3)
        store.close()
        reader = open_table(run / "embeddings")  # another reader sees every new item
        assert reader.contains(np.array([it["item_id"] for it in items])).all()
        lat_a = np.array(lat)
        comp = {k: round(float(np.percentile([x[k] for x in parts], 50)), 2)
                for k in ("encode_ms", "write_ms", "index_ms")}
        res = {"items": len(items), "table_rows_before": n0, "encoder": enc.name, "dim": enc.dim,
               "index": store.index.kind, "threads": args.threads, "load": round(os.getloadavg()[0], 1),
               "p50_ms": round(float(np.percentile(lat_a, 50)), 2),
               "p99_ms": round(float(np.percentile(lat_a, 99)), 2),
               "max_ms": round(float(lat_a.max()), 2), "p50_parts_ms": comp,
               "items_per_second": round(len(lat) / (lat_a.sum() / 1e3), 1),
               "setup_seconds": round(setup_s, 1)}
    print(f"{res['items']} items ingested one at a time into a table of {n0} ({res['encoder']}, "
          f"dim {res['dim']}, {res['index']} index, {args.threads} torch threads, load "
          f"{res['load']}: a shared machine)")
    print(f"arrival -> visible in search: p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  max "
          f"{res['max_ms']} ms  ({res['items_per_second']} items/s)")
    print(f"p50 parts: encode {comp['encode_ms']} ms, durable write {comp['write_ms']} ms, index add "
          f"{comp['index_ms']} ms")
    print(f"target p99 < 200 ms: {'MET' if res['p99_ms'] < 200 else 'NOT MET'}")
    print(roofline_line("ingest", res["items_per_second"], flops, roofs["fp32"], unit="items"))
    print(roofline_line("encoding alone (p50)", 1e3 / comp["encode_ms"], flops, roofs["fp32"], unit="items"))
    if args.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
