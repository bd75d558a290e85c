"""The near-line trainer (`mmrank ctr follow`) against the batch trainer, samples/s on the same samples of
the same run (issue 31's goal: >= 0.8x).

Both train one strategy for one pass over every CTR sample of ``--run`` with the same model, optimiser
and batch size on the same threads. The batch trainer (:func:`mmrank.ctr.trainer.train`) reads encoded
rows in shuffled order; the near-line trainer (:class:`mmrank.ctr.follow.Follower`, no files written)
reads them in event time from :func:`mmrank.ctr.follow.sample_batches`, looks IDs up in the dynamic
tables, masks representations not yet readable, cuts batches at each publish, publishes every
``--publish-every`` seconds of event time and scores every batch with the last published model before
training on it (Monolith's protocol): all of that is inside its time. Loading and encoding the samples
is outside both timings.

    .venv/bin/python benchmarks/follow_throughput.py --run R [--strategy id] [--batch-size 256]
        [--publish-every 86400] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--strategy", default="id")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--publish-every", type=int, default=86_400)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from mmrank.ctr.follow import FollowConfig, Follower
    from mmrank.ctr.models import CtrConfig, CtrModel
    from mmrank.ctr.rundata import build_model, ensure_simtier, load_run
    from mmrank.ctr.trainer import TrainConfig, train
    from mmrank.threads import configure

    configure(args.threads)
    tcfg = TrainConfig(batch_size=args.batch_size)
    cfg = CtrConfig(strategy=args.strategy)
    data = load_run(args.run, with_vectors=cfg.uses_vectors)
    rows = np.arange(len(data.samples))
    if cfg.uses_simtier:
        ensure_simtier(data, cfg)
    import torch

    torch.manual_seed(0)
    model: CtrModel = build_model(data, cfg)
    batch = train(model, data.enc, rows, cfg=tcfg, progress=False)

    fcfg = FollowConfig(strategies=[args.strategy], batch_size=args.batch_size,
                        publish_every=args.publish_every, model=cfg, train=tcfg)
    f = Follower(args.run, fcfg, write=False)
    t0 = time.perf_counter()
    res = f.run_pass(progress=False, resume=False)
    secs = time.perf_counter() - t0
    near = res.samples_per_s
    print(f"run {args.run}  strategy {args.strategy}  samples {len(rows)}  batch {args.batch_size}  "
          f"threads {args.threads}")
    print(f"batch trainer      {batch['samples_per_s']:10,.0f} samples/s  ({batch['seconds']:.1f} s)")
    print(f"near-line trainer  {near:10,.0f} samples/s  ({secs:.1f} s, {res.publishes} publishes, "
          "scoring each batch before training included)")
    print(f"ratio near-line / batch: {near / batch['samples_per_s']:.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
