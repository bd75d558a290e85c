"""`mmrank embed` after `mmrank pretrain`: the heads on the backbone outputs pre-training cached,
against re-encoding every photo and title, on the same run in the same process.

Both paths fill a table of the run's encoder from ``R/data/items.parquet``: the reuse path in a copy of
the run whose ``R/features/`` holds pre-training's cache, the re-encoding path in a copy without it
(``reuse_features=False``). It prints the wall time of the whole ``embed_catalog`` call (encoding,
table writes and the ANN index) and items/s of both, their ratio, and the largest difference between
the two tables' vectors (the goal: identical to 1e-5).

Roofline (``benchmarks/roofline.py``): the fp32 matmul roof measured at the start of the run (the
encoders run in fp32), each path's FLOPs per item (convolutions and matmuls, counted by
``torch.utils.flop_counter`` on the first 16 items) and the share of the limit its items/s reach.
Decoding and resizing the photos count 0 FLOPs, so the re-encoding path's share is low by nature.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_reuse.py --run R [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from roofline import count_flops, machine, machine_line, roofline_line


def _shadow(run: Path, dst: Path, features: bool) -> Path:
    """A copy of ``run`` made of symlinks (data, encoder and, if asked, the feature cache)."""
    dst.mkdir(parents=True)
    for name in ("data", "encoder", "config.yaml") + (("features",) if features else ()):
        if (run / name).exists():
            os.symlink((run / name).resolve(), dst / name)
    return dst


def _embed(run: Path, reuse: bool, threads: int) -> tuple[float, np.ndarray, np.ndarray, dict]:
    from mmrank.store.backends import open_table
    from mmrank.store.items import embeddings_root
    from mmrank.store.stage import embed_catalog
    from mmrank.threads import configure

    configure(threads)
    t0 = time.perf_counter()
    stats = embed_catalog(run, reuse_features=reuse, progress=True)
    seconds = time.perf_counter() - t0
    table = open_table(embeddings_root(run))
    try:
        ids = np.sort(table.ids())
        return seconds, ids, table.get(ids), stats
    finally:
        table.close()


def flops_per_item(run: Path, n: int = 16) -> tuple[float, float | None]:
    """FLOPs per item of ``(re-encoding, the heads on cached backbone outputs)``, counted on the first
    ``n`` items of the catalog (None: the run has no usable cache)."""
    from mmrank.data.io import iter_items
    from mmrank.store.encoding import load_encoder

    encoder = load_encoder(run)
    batch = next(iter_items(run / "data" / "items.parquet", ["item_id", "title"], batch_size=n))
    titles, images = batch.column("title").to_pylist(), batch.column("image").to_pylist()
    full = count_flops(lambda: encoder.encode_items(titles, images)) / len(titles)
    cached = encoder.cached_item_features(run)
    if cached is None:
        return full, None
    heads = count_flops(lambda: encoder.encode_item_features(cached[1][:n], cached[2][:n]))
    return full, heads / len(cached[1][:n])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run after `mmrank pretrain`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from mmrank.threads import configure

    configure(args.threads)
    roofs = machine(dtypes=(torch.float32,))
    print(machine_line(roofs))
    with tempfile.TemporaryDirectory(dir=args.run.parent) as tmp:
        cached = _shadow(args.run, Path(tmp) / "cached", features=True)
        fresh = _shadow(args.run, Path(tmp) / "fresh", features=False)
        t_c, ids_c, v_c, s_c = _embed(cached, True, args.threads)
        t_f, ids_f, v_f, s_f = _embed(fresh, False, args.threads)
        if s_c["from_cache"] != len(ids_c):
            print(f"note: only {s_c['from_cache']} of {len(ids_c)} items came from the cache")
        n = len(ids_f)
        same_ids = np.array_equal(ids_c, ids_f)
        diff = float(np.abs(v_c - v_f).max()) if same_ids else float("nan")
        print(f"items {n:,}  threads {args.threads}")
        print(f"re-encoding  {t_f:8.1f} s  {n / t_f:10,.0f} items/s  (index {s_f['index_seconds']} s)")
        print(f"from cache   {t_c:8.1f} s  {n / t_c:10,.0f} items/s  (index {s_c['index_seconds']} s; "
              f"{s_c['from_cache']:,} items from R/features/)")
        print(f"speed-up {t_f / t_c:.1f}x (goal >= 5x); max |difference| {diff:.2e} (goal <= 1e-5); "
              f"same ids: {same_ids}")
        f_full, f_heads = flops_per_item(cached)
        print(roofline_line("re-encoding", n / t_f, f_full, roofs["fp32"], unit="items"))
        if f_heads is not None:
            print(roofline_line("from cache", n / t_c, f_heads, roofs["fp32"], unit="items"))


if __name__ == "__main__":
    main()
