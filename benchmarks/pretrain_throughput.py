"""SCL trainer throughput (pairs/s) at MoCo queue sizes K = 4k, 16k, 65k and the paper's 196,800.

Runs the real trainer (``mmrank.pretrain.train.train``) on random cached features shaped like
EfficientNet-Lite0 (1280-d) + MiniLM (384-d), batch 256, dim 256, nested dims 64/128/256, and
measures the time per step as the difference between a long and a short run (so setup cancels).

Peers measured in the same run:

* ``no queue``: the same SCL step without MoCo (``scl-no-triplet-no-moco`` + the triplet term off);
* ``K=1``: MoCo with a one-slot queue (the momentum encoder's cost, no negatives).

Queue share of a step = (t_K - t_1) / t_K; momentum-encoder share = (t_1 - t_none) / t_K.

Usage::

    python benchmarks/pretrain_throughput.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.data import Features, PairTable
from mmrank.pretrain.distributed import DistEnv
from mmrank.pretrain.train import train

SIZES = (4096, 16384, 65536, 196_800)


def synthetic(n_items: int = 20_000, n_pairs: int = 40_000, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats = Features(item_img=torch.randn(n_items, 1280, generator=g).abs(),
                     item_txt=torch.nn.functional.normalize(torch.randn(n_items, 384, generator=g), dim=-1),
                     text_q=torch.nn.functional.normalize(torch.randn(n_pairs, 384, generator=g), dim=-1),
                     image_q=torch.randn(n_pairs, 1280, generator=g).abs(),
                     qrow=np.arange(n_pairs))
    pairs = PairTable(modality=(rng.random(n_pairs) < 0.3).astype(np.int8),
                      query_text=[None] * n_pairs, query_image=[None] * n_pairs,
                      pos=rng.integers(0, n_items, n_pairs), neg=rng.integers(-1, n_items, n_pairs),
                      test=np.zeros(n_pairs, bool), ts=np.arange(n_pairs))
    return feats, pairs, np.arange(n_items, dtype=np.int64) + 1


def step_seconds(cfg: PretrainConfig, data: tuple, steps: int) -> float:
    feats, pairs, ids = data

    def timed(n: int) -> float:
        t = time.perf_counter()
        train(cfg.model_copy(update={"max_steps": n}), feats, pairs, ids, DistEnv(), log=lambda m: None)
        return time.perf_counter() - t

    timed(2)  # warm-up (allocations, kernels)
    short, long = timed(3), timed(3 + steps)
    return max(1e-9, (long - short) / steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic()
    base = PretrainConfig(batch_size=args.batch_size, epochs=1000, warmup_steps=0)
    t_none = step_seconds(base.model_copy(update={"variant": "scl-no-triplet-no-moco"}), data,
                          args.steps)
    t_one = step_seconds(base.model_copy(update={"variant": "scl-no-triplet", "queue_size": 1}),
                         data, args.steps)
    b = args.batch_size
    print(f"batch {b}, dim 256, nested 64/128/256, {args.threads} threads, {args.steps} timed steps")
    print(f"{'queue K':>10} {'pairs/s':>10} {'ms/step':>9} {'vs no queue':>12} "
          f"{'queue share':>12} {'momentum share':>15}")
    print(f"{'none':>10} {b / t_none:10.0f} {1000 * t_none:9.1f} {1.0:12.2f} {'-':>12} {'-':>15}")
    print(f"{1:>10} {b / t_one:10.0f} {1000 * t_one:9.1f} {t_none / t_one:12.2f} {'-':>12} "
          f"{(t_one - t_none) / t_one:15.1%}")
    for k in SIZES:
        t_k = step_seconds(base.model_copy(update={"variant": "scl-no-triplet", "queue_size": k}),
                           data, args.steps)
        print(f"{k:>10} {b / t_k:10.0f} {1000 * t_k:9.1f} {t_none / t_k:12.2f} "
              f"{max(0.0, t_k - t_one) / t_k:12.1%} {max(0.0, t_one - t_none) / t_k:15.1%}")


if __name__ == "__main__":
    main()
