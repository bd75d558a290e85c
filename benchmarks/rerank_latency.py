"""Latency of re-ranking one 50-candidate search list on one thread: ARMMT against the pointwise DNN,
measured in the same run (issue 10's goal: ARMMT within 3x the DNN, and under 5 ms at p99).

One request = its candidates' features gathered into tensors (:func:`mmrank.rerank.data.make_batch`,
history of up to 50 clicks), the model's forward pass, and the order (argsort of the ranking head).
Untrained weights (latency does not depend on their values). Reported: p50 / p99 / mean in ms for the
whole request and for the forward pass alone, and ARMMT / DNN ratios.

    .venv/bin/python benchmarks/rerank_latency.py [--run R] [--reps 2000] [--dim 256] [--device cpu|cuda]

Without ``--run``: a hand-made run (:func:`mmrank.testing.lists.write_tiny_lists`, 50 candidates, 15
shown, up to 50 history clicks) with a ``--dim``-wide deterministic encoder. With ``--run``: the run's
lists and encoder (``R/encoder``), requests with the most candidates first.

Roofline (``benchmarks/roofline.py``): the fp32 matmul roof on one thread, measured at the start of
the run, each model's FLOPs per request (its forward on the timed requests, counted by
``torch.utils.flop_counter``) and the share of that limit its p50 forward reaches. Requests this small
are bound by per-operator overhead, not by arithmetic: the share is small by nature.

``--device cuda``: the models on the GPU under bf16 autocast (the output says so), each request's batch
copied from pinned memory, every timing synchronised with the GPU, the roof the GPU's bf16 matmul
roof. The CPU run (the default) is as before.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from roofline import count_flops, machine, machine_line, roofline_line

from mmrank.data.schemas import HISTORY_LEN
from mmrank.device import autocast, describe, resolve_device, synchronize
from mmrank.rerank.models import model_config
from mmrank.rerank.trainer import batch_for, build_model, load_data


def _time(fn, reps: int, warmup: int = 50, device: torch.device = torch.device("cpu")) -> np.ndarray:
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = np.empty(reps)
    for i in range(reps):
        t = time.perf_counter()
        fn()
        synchronize(device)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256, help="representation width (hand-made run only)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    torch.set_num_threads(1)
    roofs = machine(dtypes=(torch.float32, torch.bfloat16) if gpu else (torch.float32,), device=dev)
    print(machine_line(roofs, dev))
    if gpu:
        print(f"device {describe(dev)}: both models under bf16 autocast; timings synchronised")
    roof, prec = (roofs["bf16"], "bf16") if gpu else (roofs["fp32"], "fp32")
    tmp = None
    if args.run is None:
        from mmrank.store.tiny_encoder import TinyItemEncoder
        from mmrank.testing.lists import write_tiny_lists

        tmp = tempfile.TemporaryDirectory()
        run = write_tiny_lists(Path(tmp.name), n_items=3000, n_users=50, n_requests=1500, n_candidates=50,
                               n_shown=15, hist_len=HISTORY_LEN, seed=0)
        data = load_data(run, encoder=TinyItemEncoder(dim=args.dim))
    else:
        data = load_data(args.run)
    sizes = np.diff(data.lists.offsets)
    hl = np.diff(data.lists.hist_offsets)
    pick = np.lexsort((-hl, -sizes))[:64]          # the longest lists, longest histories first
    print(f"requests timed: {len(pick)} (candidates {sizes[pick].min()}-{sizes[pick].max()}, "
          f"history {hl[pick].min()}-{hl[pick].max()}), representation dim {data.feats.dim}, "
          f"torch threads {torch.get_num_threads()}, {args.reps} reps")
    res, flops = {}, {}
    for name in ("dnn", "armmt"):
        torch.manual_seed(0)
        model = build_model(data, model_config(name)).to(dev).eval()
        batches = [batch_for(data, np.array([r]), "all", device=dev) for r in pick]
        i = {"k": 0}

        @torch.inference_mode()
        def request() -> None:
            r = pick[i["k"] % len(pick)]
            i["k"] += 1
            b = batch_for(data, np.array([r]), "all", device=dev)
            with autocast(dev):
                s = model.rank_scores(model(b))[0]
            np.argsort(-s.float().cpu().numpy(), kind="stable")

        @torch.inference_mode()
        def forward() -> None:
            b = batches[i["k"] % len(batches)]
            i["k"] += 1
            with autocast(dev):
                model(b)

        res[name] = {"request": _time(request, args.reps, device=dev),
                     "forward": _time(forward, args.reps, device=dev)}
        with torch.inference_mode(), autocast(dev):
            flops[name] = sum(count_flops(lambda b=b: model(b)) for b in batches) / len(batches)
    print(f"{'':8} {'':8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, r in res.items():
        for part, t in r.items():
            print(f"{name:8} {part:8} {np.percentile(t, 50):8.3f} {np.percentile(t, 99):8.3f} {t.mean():8.3f}")
    for part in ("request", "forward"):
        a, d = res["armmt"][part], res["dnn"][part]
        print(f"ARMMT / DNN ({part}): p50 {np.percentile(a, 50) / np.percentile(d, 50):.2f}x, "
              f"p99 {np.percentile(a, 99) / np.percentile(d, 99):.2f}x")
    for name in res:
        print(roofline_line(f"{name} forward (p50)", 1e3 / np.percentile(res[name]["forward"], 50),
                            flops[name], roof, prec, unit="requests"))
    p99 = np.percentile(res["armmt"]["request"], 99)
    ratio = p99 / np.percentile(res["dnn"]["request"], 99)
    print(f"goal (ARMMT p99 < 5 ms and within 3x the DNN): {'met' if p99 < 5 and ratio <= 3 else 'not met'} "
          f"(p99 {p99:.2f} ms, {ratio:.2f}x)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
