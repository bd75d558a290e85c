"""SCL trainer throughput (pairs/s) at MoCo queue sizes K = 4k, 16k, 65k and the paper's 196,800.

Runs the real trainer (``mmrank.pretrain.train.train``) on random cached features shaped like
EfficientNet-Lite0 (1280-d) + MiniLM (384-d), batch 256, dim 256, nested dims 64/128/256, and
measures the time per step as the difference between a long and a short run (so setup cancels).

Peers measured in the same run:

* ``no queue``: the same SCL step without MoCo (``scl-no-triplet-no-moco`` + the triplet term off);
* ``K=1``: MoCo with a one-slot queue (the momentum encoder's cost, no negatives).

The queue starts full (:class:`FullQueue`, random unit keys and item ids): the steady state after
K / B steps. A short run from an empty queue would otherwise hold only ``steps * B`` keys, and a
loss that skips empty slots would look as fast at K=196,800 as at 4k.

Queue share of a step = (t_K - t_1) / t_K; momentum-encoder share = (t_1 - t_none) / t_K.

Old-vs-new peer, same run: at each K the trainer is also timed with :class:`DenseInfoNCE`, the
previous plain formulation of the same loss (every step and nested dim: re-normalise the queue's
prefix, dense (B, K) masks, ``masked_fill``, concatenate [in-batch, queue] logits, cross-entropy),
patched in for ``InfoNCELoss``; ``speed-up`` = t_dense / t_K. Skip it with ``--no-reference``.

Roofline (``benchmarks/roofline.py``): the fp32 matmul roof measured at the start of the run, the step's
matmul FLOPs per pair (counted by ``torch.utils.flop_counter``) and the share of that limit reached.

``--device cuda`` (issue 30): the same trainer on the GPU with bf16 autocast (``--no-bf16``: fp32);
the machine line and the roofline are the GPU's, each K's share taken of the bf16 matmul roof
measured at the start of the same run (``roofline.matmul_gflops(torch.bfloat16, device=dev)``; fp32
with ``--no-bf16``). Timings synchronise the device. The CPU (the default) prints what it did.

Usage::

    python benchmarks/pretrain_throughput.py [--steps 30] [--threads 2] [--no-reference]
        [--sizes 4096,16384,65536,196800] [--items 20000] [--pairs 40000] [--device cpu|cuda] [--no-bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import mmrank.pretrain.train as train_module
from mmrank.device import describe, resolve_device, synchronize
from mmrank.errors import MMRankError
from mmrank.pretrain.config import PretrainConfig
from mmrank.pretrain.data import Features, PairTable
from mmrank.pretrain.distributed import DistEnv
from mmrank.device import full_precision
from mmrank.pretrain.losses import InfoNCELoss, MomentumQueue, nested_normalize
from mmrank.pretrain.train import train
from roofline import count_flops, machine, machine_line, roofline_line

SIZES = (4096, 16384, 65536, 196_800)


class DenseInfoNCE(InfoNCELoss):
    """The plain formulation (the code before the fast queue path), for the same-run comparison."""

    def forward(self, q, k, pos_index=None, queue=None, q_ids=None, k_ids=None, queue_ids=None,
                queue_valid=None, log_q=None):
        with full_precision(q):  # fp32 logits under a bf16 autocast, as the new loss
            return self._dense(q.float(), k.float(), pos_index, queue, q_ids, k_ids, queue_ids,
                               queue_valid, log_q)

    def _dense(self, q, k, pos_index, queue, q_ids, k_ids, queue_ids, queue_valid, log_q):
        if isinstance(queue, MomentumQueue):
            queue, queue_ids, queue_valid = queue.keys, queue.ids, queue.valid
        b = q.shape[0]
        k_bias = queue_bias = None
        if log_q is not None:                       # logQ correction: every key's logit - log q[id]
            k_bias = -log_q[k_ids]
            if queue is not None:
                queue_bias = -log_q[queue_ids.clamp(min=0)]
        if pos_index is None:
            pos_index = torch.arange(b, device=q.device)
        mask_k = None
        if q_ids is not None and k_ids is not None:
            mask_k = q_ids[:, None] == k_ids[None, :]
            mask_k[torch.arange(b, device=q.device), pos_index] = False
        mask_queue = None
        if queue is not None:
            if queue_valid is not None:
                mask_queue = ~queue_valid[None, :].expand(b, -1)
            if q_ids is not None and queue_ids is not None:
                same = q_ids[:, None] == queue_ids[None, :]
                mask_queue = same if mask_queue is None else (mask_queue | same)

        def one(q, k, queue):
            scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
            logits = (q @ k.t()) * scale
            if k_bias is not None:
                logits = logits + k_bias
            if mask_k is not None:
                logits = logits.masked_fill(mask_k, float("-inf"))
            if queue is not None and queue.shape[0]:
                lq = (q @ queue.t()) * scale
                if queue_bias is not None:
                    lq = lq + queue_bias
                if mask_queue is not None:
                    lq = lq.masked_fill(mask_queue, float("-inf"))
                logits = torch.cat([logits, lq], dim=1)
            return F.cross_entropy(logits, pos_index)

        if not self.nested_dims:
            return {self.name: one(q, k, queue)}
        w = 1.0 / len(self.nested_dims)
        return {f"{self.name}@{d}": w * one(nested_normalize(q, d), nested_normalize(k, d),
                                             nested_normalize(queue, d) if queue is not None else None)
                for d in self.nested_dims}


class FullQueue(MomentumQueue):
    """A :class:`MomentumQueue` whose K slots are already filled (random unit keys, item rows
    0..n_items-1: the trainer names items by catalog row)."""

    def __init__(self, dim: int, size: int, n_items: int = 20_000) -> None:
        super().__init__(dim, size)
        g = torch.Generator().manual_seed(size)
        self.enqueue(F.normalize(torch.randn(size, dim, generator=g), dim=-1),
                     torch.randint(0, n_items, (size,), generator=g))


@contextlib.contextmanager
def full_queue(n_items: int = 20_000):
    """Run the trainer with :class:`FullQueue` (ids of a catalog of ``n_items``) in place of
    ``MomentumQueue``."""
    saved = train_module.MomentumQueue
    train_module.MomentumQueue = functools.partial(FullQueue, n_items=n_items)
    try:
        yield
    finally:
        train_module.MomentumQueue = saved


@contextlib.contextmanager
def dense_loss():
    """Run the trainer with :class:`DenseInfoNCE` in place of ``InfoNCELoss``."""
    saved = train_module.InfoNCELoss
    train_module.InfoNCELoss = DenseInfoNCE
    try:
        yield
    finally:
        train_module.InfoNCELoss = saved


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


def step_seconds(cfg: PretrainConfig, data: tuple, steps: int,
                 device: torch.device = torch.device("cpu"), bf16: bool = True) -> float:
    feats, pairs, ids = data

    def timed(n: int) -> float:
        t = time.perf_counter()
        train(cfg.model_copy(update={"max_steps": n}), feats, pairs, ids, DistEnv(), log=lambda m: None,
              device=device, bf16=bf16)
        synchronize(device)
        return time.perf_counter() - t

    timed(2)  # warm-up (allocations, kernels)
    short, long = timed(3), timed(3 + steps)
    return max(1e-9, (long - short) / steps)


def step_flops(cfg: PretrainConfig, data: tuple, device: torch.device = torch.device("cpu"),
               bf16: bool = True) -> float:
    """Matmul FLOPs of one training step: FLOPs of a 4-step run minus a 2-step run, halved."""
    feats, pairs, ids = data

    def run(n: int) -> None:
        train(cfg.model_copy(update={"max_steps": n}), feats, pairs, ids, DistEnv(), log=lambda m: None,
              device=device, bf16=bf16)

    return (count_flops(lambda: run(4)) - count_flops(lambda: run(2))) / 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="queue sizes K, comma-separated")
    ap.add_argument("--items", type=int, default=20_000, help="items of the synthetic catalog")
    ap.add_argument("--pairs", type=int, default=40_000, help="synthetic <query, item> pairs")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip timing the dense (previous) loss formulation beside the new one")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    ap.add_argument("--no-bf16", action="store_true", help="on CUDA: fp32, no bf16 autocast")
    args = ap.parse_args(argv)
    try:
        args.dev = resolve_device(args.device)
    except MMRankError as err:  # cuda on a machine without it: one line, exit 2
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    torch.set_num_threads(args.threads)
    with full_queue(args.items):
        run(args)


def run(args: argparse.Namespace) -> None:
    dev = getattr(args, "dev", torch.device("cpu"))
    bf16 = dev.type == "cuda" and not getattr(args, "no_bf16", False)
    on_cpu = dev.type == "cpu"
    roofs = machine() if on_cpu else machine(device=dev)
    print(machine_line(roofs) if on_cpu else machine_line(roofs, dev))
    data = synthetic(args.items, args.pairs)
    base = PretrainConfig(batch_size=args.batch_size, epochs=1000, warmup_steps=0)
    timing = functools.partial(step_seconds, device=dev, bf16=bf16)
    t_none = timing(base.model_copy(update={"variant": "scl-no-triplet-no-moco"}), data, args.steps)
    t_one = timing(base.model_copy(update={"variant": "scl-no-triplet", "queue_size": 1}), data, args.steps)
    b = args.batch_size
    where = (f"{args.threads} threads" if on_cpu
             else f"{describe(dev)}, {'bf16 autocast' if bf16 else 'fp32'}")
    print(f"batch {b}, dim 256, nested 64/128/256, {where}, {args.steps} timed steps")
    print(f"{'queue K':>10} {'pairs/s':>10} {'ms/step':>9} {'vs no queue':>12} "
          f"{'queue share':>12} {'momentum share':>15} {'dense pairs/s':>14} {'speed-up':>9}")
    print(f"{'none':>10} {b / t_none:10.0f} {1000 * t_none:9.1f} {1.0:12.2f} {'-':>12} {'-':>15}")
    print(f"{1:>10} {b / t_one:10.0f} {1000 * t_one:9.1f} {t_none / t_one:12.2f} {'-':>12} "
          f"{(t_one - t_none) / t_one:15.1%}")
    rooflines = []
    for k in (int(x) for x in args.sizes.split(",")):
        cfg = base.model_copy(update={"variant": "scl-no-triplet", "queue_size": k})
        t_k = timing(cfg, data, args.steps)
        ref = "-"
        if not args.no_reference:
            with dense_loss():
                t_dense = timing(cfg, data, args.steps)
            ref = f"{b / t_dense:14.0f} {t_dense / t_k:8.2f}x"
        print(f"{k:>10} {b / t_k:10.0f} {1000 * t_k:9.1f} {t_none / t_k:12.2f} "
              f"{max(0.0, t_k - t_one) / t_k:12.1%} {max(0.0, t_one - t_none) / t_k:15.1%} {ref:>24}",
              flush=True)
        precision = "bf16" if bf16 else "fp32"  # the CPU: fp32, as before
        rooflines.append(roofline_line(f"K={k}", b / t_k, step_flops(cfg, data, dev, bf16) / b,
                                       roofs[precision], precision=precision, unit="pairs"))
    print("\n".join(rooflines))


if __name__ == "__main__":
    main()
