"""ANN benchmark: the index AnnIndex chooses vs FAISS flat (exact), at 200k and 1M vectors of dim 128.

For each size, in one run: build time, queries/s (a batch of queries, and one query at a time) and
recall@10 against the flat index on held-out queries. Target (issue 5): recall@10 >= 0.95 at >= 5x
the flat index's queries/s at 1M.

Data: synthetic, embedding-like vectors: a mixture of 2,000 clusters in a 32-d latent space, mapped
to 128-d by a random linear map, plus isotropic noise, L2-normalised (learned embeddings have a low
intrinsic dimension; i.i.d. Gaussian vectors, the worst case for any ANN index, are reported with
--gaussian). Queries come from the same distribution and are never in the index; efSearch is tuned
at build on a separate set of queries than the one measured here.

Roofline (``benchmarks/roofline.py``), for the flat peer's batch, whose work is known: ``2 n d``
FLOPs a query, against the fp32 matmul roof on FAISS's threads. The chosen index's work (graph or
list traversal inside FAISS) is not counted, nor is one query at a time: its bound is the bandwidth
of whichever cache level holds the index (the machine it was written on has a 480 MB L3), which the
benchmark does not measure.

Usage::

    python benchmarks/ann.py                      # 200k and 1M
    python benchmarks/ann.py --sizes 20000 --queries 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np
import torch
from roofline import machine, machine_line, roofline_line

from mmrank.store.ann import AnnConfig, AnnIndex, recall_at_k


def embedding_like(n: int, dim: int, rng: np.random.Generator, latent: int = 32,
                   clusters: int = 2000, proj: np.ndarray | None = None,
                   centres: np.ndarray | None = None) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors with a low intrinsic dimension (see the module docstring)."""
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 200_000):
        m = min(200_000, n - a)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent))
        x = (z @ proj).astype(np.float32) + 0.1 * rng.standard_normal((m, dim)).astype(np.float32)
        out[a:a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def gaussian(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def qps(search, queries: np.ndarray, one_at_a_time: int) -> tuple[float, float, np.ndarray]:
    """(batch queries/s on all threads, one-query-at-a-time queries/s on one OpenMP thread -- what
    AnnIndex does for a few queries, and the fair setting for flat too --, found ids of the batch)."""
    t0 = time.perf_counter()
    _, found = search(queries, 10)
    batch = len(queries) / (time.perf_counter() - t0)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    for q in queries[:one_at_a_time]:
        search(q[None], 10)
    single = one_at_a_time / (time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    return batch, single, found


def bench(n: int, dim: int, n_queries: int, seed: int, kind: str) -> dict:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        make = lambda m: gaussian(m, dim, rng)  # noqa: E731
    else:
        latent, clusters = 32, 2000
        proj = rng.standard_normal((latent, dim)) / np.sqrt(latent)
        centres = 1.5 * rng.standard_normal((clusters, latent))
        make = lambda m: embedding_like(m, dim, rng, latent, clusters, proj, centres)  # noqa: E731
    x = make(n)
    tune_q, test_q = make(500), make(n_queries)
    ids = np.arange(n, dtype=np.int64)

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    flat_build = time.perf_counter() - t0
    flat_batch, flat_single, truth = qps(flat.search, test_q, one_at_a_time=min(50, n_queries))

    t0 = time.perf_counter()
    idx = AnnIndex.build(ids, x, version="bench", config=AnnConfig(), queries=tune_q)
    build = time.perf_counter() - t0
    idx_batch, idx_single, found = qps(idx.search, test_q, one_at_a_time=min(500, n_queries))
    recall = recall_at_k(found, truth, 10)
    return {"n": n, "dim": dim, "data": kind, "queries": n_queries,
            "flat": {"build_s": round(flat_build, 2), "qps_batch": round(flat_batch, 1),
                     "qps_single": round(flat_single, 1)},
            "chosen": {"kind": idx.kind, "ef_search": idx.ef_search, "build_s": round(build, 1),
                       "build_recall_at_10": idx.stats.get("recall_at_10"),
                       "qps_batch": round(idx_batch, 1), "qps_single": round(idx_single, 1),
                       "recall_at_10": round(recall, 4)},
            "speedup_batch": round(idx_batch / flat_batch, 1),
            "speedup_single": round(idx_single / flat_single, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200000,1000000")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gaussian", action="store_true",
                   help="also i.i.d. Gaussian vectors (the worst case), at the smallest size")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    print(f"threads={faiss.omp_get_max_threads()} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f} (a shared machine: absolute figures are noisy, the ratios "
          f"less so)", flush=True)
    torch.set_num_threads(faiss.omp_get_max_threads())
    roofs = machine(dtypes=(torch.float32,))
    print(machine_line(roofs), flush=True)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        for kind in ["embedding-like"] + (["gaussian"] if args.gaussian and n == min(sizes) else []):
            r = bench(n, args.dim, args.queries, args.seed, kind)
            rows.append(r)
            c, f = r["chosen"], r["flat"]
            print(f"n={n:>9,} {kind:<15} flat: build {f['build_s']:6.2f}s  {f['qps_batch']:9.1f} q/s "
                  f"(1-by-1 {f['qps_single']:8.1f})  | {c['kind']} (efSearch={c['ef_search']}): "
                  f"build {c['build_s']:7.1f}s  {c['qps_batch']:9.1f} q/s (1-by-1 "
                  f"{c['qps_single']:8.1f})  recall@10={c['recall_at_10']:.4f}  "
                  f"speedup x{r['speedup_batch']} (1-by-1 x{r['speedup_single']})", flush=True)
            print(roofline_line(f"flat batch n={n:,}", f["qps_batch"], 2 * n * args.dim, roofs["fp32"],
                                unit="queries"))
    big = max((r for r in rows if r["data"] == "embedding-like"), key=lambda r: r["n"])
    ok = big["chosen"]["recall_at_10"] >= 0.95 and big["speedup_batch"] >= 5
    print(f"target at n={big['n']:,}: recall@10 >= 0.95 at >= 5x flat q/s: "
          f"{'MET' if ok else 'NOT MET'} (recall {big['chosen']['recall_at_10']}, "
          f"x{big['speedup_batch']} batched, x{big['speedup_single']} one at a time)")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
