"""`mmrank embed` after `mmrank pretrain`: the heads on the backbone outputs pre-training cached,
against re-encoding every photo and title, on the same run in the same process.

Both paths fill a table of the run's encoder from ``R/data/items.parquet``: the reuse path in a copy of
the run whose ``R/features/`` holds pre-training's cache, the re-encoding path in a copy without it
(``reuse_features=False``). It prints the wall time of the whole ``embed_catalog`` call (encoding,
table writes and the ANN index) and items/s of both, their ratio, and the largest difference between
the two tables' vectors (the goal: identical to 1e-5).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_reuse.py --run R [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _shadow(run: Path, dst: Path, features: bool) -> Path:
    """A copy of ``run`` made of symlinks (data, encoder and, if asked, the feature cache)."""
    dst.mkdir(parents=True)
    for name in ("data", "encoder", "config.yaml") + (("features",) if features else ()):
        if (run / name).exists():
            os.symlink((run / name).resolve(), dst / name)
    return dst


def _embed(run: Path, reuse: bool, threads: int) -> tuple[float, np.ndarray, np.ndarray, dict]:
    from mmrank.store.ingest import embed_catalog, embeddings_root
    from mmrank.store.table import EmbeddingTable
    from mmrank.threads import configure

    configure(threads)
    t0 = time.perf_counter()
    stats = embed_catalog(run, reuse_features=reuse, progress=True)
    seconds = time.perf_counter() - t0
    table = EmbeddingTable.open(embeddings_root(run))
    try:
        ids = np.sort(table.ids())
        return seconds, ids, table.get(ids), stats
    finally:
        table.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run after `mmrank pretrain`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
