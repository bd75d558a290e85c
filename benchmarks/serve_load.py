"""Capacity of the ranking service: an open-loop load (requests at a fixed arrival rate, not a fixed
number of clients) swept per endpoint, and each endpoint's knee: the highest rate whose p99 stays under
the deadline with every request answered 200.

Endpoints: ``/v1/rank`` (``--candidates`` candidates, ``--history`` behaviour items), ``/v1/search``
by text and by photo, ``POST /v1/items`` (new items, on a private copy of the run), and the plain
FastAPI endpoint of ``benchmarks/serve_latency.py`` (one forward per request, same model) for
``/v1/rank``: the ratio of the two rank knees is the figure that survives the machine. The servers run
with shedding off (a deadline far away), so the sweep sees where latency grows, not the 503s that keep
it bounded in production (see ``mmrank serve --deadline-ms``).

    python benchmarks/serve_load.py --run runs/demo --repeat 3 --json serve_load.json

Each rate's line also gives the server's own p99 (its ``Server-Timing`` header: from the moment the
app sees the request) and how late the client sent its requests: a p99 far above the server's own
is time spent before the app (the event loop or the kernel's queue), a late client is the client's
limit, not the server's.

The rate starts at ``--start`` requests/s and grows by ``--step`` until p99 passes the deadline (or
``--max-rate``); each rate runs ``--seconds``. The client (asyncio + httpx) shares the machine with
the servers: on a 2-core machine its own cost is part of every figure, alike for every endpoint.

``--device cuda`` scores on the GPU in both servers (``mmrank serve --device``; bf16 autocast, the run
config's default); the default is the CPU.
"""

import argparse
import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KEY = "serve-load-key-0123456789"


def requests_for(run: Path, n: int, n_cand: int, n_hist: int) -> dict[str, list[tuple]]:
    """``n`` requests per endpoint, drawn from the run's catalog (seeded)."""
    import pyarrow.parquet as pq

    from mmrank.store.backends import open_table

    ids = open_table(run / "embeddings").ids()
    t = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image", "category"])
    titles, images, cats = (t.column(c).to_pylist() for c in ("title", "image", "category"))
    rng = np.random.default_rng(0)
    rank = []
    for _ in range(n):
        pick = rng.choice(ids, min(len(ids), n_cand + n_hist), replace=False)
        rank.append(("POST", "/v1/rank", {"user": {"history": [int(x) for x in pick[n_cand:]]},
                                          "candidates": [int(x) for x in pick[:n_cand]]}))
    rows = rng.integers(0, len(titles), n)
    text = [("POST", "/v1/search", {"text": titles[r], "k": 10}) for r in rows]
    photo = [("POST", "/v1/search", {"image_b64": base64.b64encode(images[r]).decode(), "k": 10}) for r in rows]
    return {"rank": rank, "search-text": text, "search-photo": photo, "healthz": [("GET", "/healthz", None)],
            "items": [(titles, images, cats)]}  # made per rate: every post a new id


def item_posts(catalog: tuple, n: int, first_id: int) -> list[tuple]:
    titles, images, cats = catalog
    return [("POST", "/v1/items", {"item_id": first_id + i, "title": f"new {i}: {titles[i % len(titles)]}",
                                   "category": cats[i % len(cats)],
                                   "image_b64": base64.b64encode(images[i % len(images)]).decode()},
             {"X-API-Key": KEY}) for i in range(n)]


def sweep(url: str, reqs, args: argparse.Namespace, deadline_ms: float, next_id: list[int]) -> dict:
    """Rates from ``args.start`` up by ``args.step`` until p99 passes the deadline; the knee is the
    highest rate that kept it (every request answered 200)."""
    from mmrank.serve.loadgen import open_loop, summary

    steps, knee, rate = [], 0.0, args.start
    while rate <= args.max_rate:
        if isinstance(reqs[0][0], list):  # items: fresh ids at every rate
            n = int(rate * args.seconds) + 2
            batch = item_posts(reqs[0], n, next_id[0])
            next_id[0] += n
        else:
            batch = reqs
        s = summary(open_loop(url, batch, rate=rate, seconds=args.seconds, timeout=60),
                    ok=201 if batch[0][1] == "/v1/items" and batch[0][0] == "POST" else 200)
        s["rate"] = rate
        steps.append(s)
        good = s["ok"] == s["n"] and s["p99_ms"] < deadline_ms
        print(f"  {rate:8.1f}/s  p50 {s['p50_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms  (server's own p99 "
              f"{s['server_p99_ms']:7.1f} ms, client late p99 {s['client_late_p99_ms']:6.1f} ms)  "
              f"answered {s['status']}{'' if good else '  <- past the knee'}", flush=True)
        if not good:
            break
        knee = rate
        rate *= args.step
    return {"knee": knee, "steps": steps}


def run_soak(args: argparse.Namespace) -> dict:
    """``--soak SECONDS``: :func:`mmrank.testing.soak.soak` on a copy of the run, and its verdicts."""
    import json

    from mmrank.testing.serving import build_serving_run
    from mmrank.testing.soak import soak

    if shutil.which("redis-server") is None:
        raise SystemExit("--soak needs redis-server (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        src = Path(args.run) if args.run else build_serving_run(Path(tmp) / "src", strategies=("id", "simtier"))
        run = Path(tmp) / "run"
        shutil.copytree(src, run)
        (Path(tmp) / "redis").mkdir()
        print(f"soak of {args.soak:g} s on a copy of {src}: rank, search, ingest on 2 workers; Redis restarts at "
              f"20%, the bundle is swapped at 40%, a worker is killed at 60%", flush=True)
        r = soak(run, Path(tmp) / "redis", seconds=args.soak, strategy=args.strategy or "simtier",
                 swap_strategy=args.swap_strategy)
    five = {k: {s: n for s, n in v.items() if s >= 500 and s != 503} for k, v in r["statuses"].items()}
    growth = (r["rss_end_kb"] / r["rss_warm_kb"] - 1) if r.get("rss_end_kb") else float("nan")
    print(f"answers: {r['statuses']}; bundle swap answered {r['swap_status']}; a worker died on its own: "
          f"{r['worker_died_on_its_own']}; the killed worker replaced: {r['victim_replaced']}")
    print(f"acknowledged items: {r['acknowledged']}, missing after the faults: {len(r['missing'])}")
    print(f"5xx other than 503: {five}; 429/503 without Retry-After: {len(r['no_retry_after'])}")
    print(f"connections cut (s after the kill): {r['dropped']}")
    print(f"resident memory of a surviving worker: {r['rss_warm_kb']} kB after warm-up -> {r['rss_end_kb']} kB "
          f"at the end ({growth:+.1%}; goal < +10%)")
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "serve_soak", **r}, indent=1, default=str))
    return r


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a run with encoder/, embeddings/, ctr/ (default: build a small one)")
    p.add_argument("--strategy", default=None)
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--deadline-ms", type=float, default=500.0, help="the p99 a rate must keep")
    p.add_argument("--start", type=float, default=10.0, help="first rate (requests/s)")
    p.add_argument("--step", type=float, default=1.4, help="each rate is the last times this")
    p.add_argument("--max-rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per rate")
    p.add_argument("--endpoints", default="rank,search-text,search-photo,items,plain-rank",
                   help="also 'healthz': the client's own ceiling (a rate past it measures the client)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N | auto: where both "
                   "servers score")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="instead of the sweep: a soak with faults this long (Redis restart, bundle swap, "
                        "a worker killed; needs redis-server), e.g. 600")
    p.add_argument("--swap-strategy", default=None, help="--soak: the strategy the bundle swap loads "
                   "(default: the served one, reloaded)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.soak:
        return run_soak(args)

    import json

    from serve_latency import PlainServer

    from mmrank.device import resolve_device
    from mmrank.testing.serving import ServerProcess, build_serving_run

    dev = resolve_device(args.device)  # a device this machine lacks: fail before building anything
    tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
    if args.run is None:
        print("building a small run (synthetic market, small encoder, simtier CTR model) ...", flush=True)
        src = build_serving_run(Path(tmp.name) / "src", n_items=1000, n_users=500, n_impressions=20_000,
                                strategies=("simtier",))
    else:
        src = Path(args.run)
    run = Path(tmp.name) / "run"  # items are posted: a private copy
    shutil.copytree(src, run)
    endpoints = [e for e in args.endpoints.split(",") if e]
    reqs = requests_for(run, 64, args.candidates, args.history)
    print(f"run {src} (copied to {run}); deadline {args.deadline_ms:g} ms; {args.seconds:g} s per rate; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
          + (f"; models on {dev}" if dev.type != "cpu" else ""), flush=True)
    extra = ("--rank-concurrency", "100000", "--search-concurrency", "100000", "--items-concurrency",
             "100000", "--deadline-ms", "3600000", "--device", args.device) + \
        (("--strategy", args.strategy) if args.strategy else ())
    runs, next_id = [], [7_000_000_000]
    with ServerProcess(run, api_key=KEY, extra_args=extra, threads=args.threads) as srv, \
            PlainServer(run, args.strategy, args.threads, args.device) as plain:
        for k in range(args.repeat):
            print(f"\n-- run {k + 1} --")
            knees = {}
            for e in endpoints:
                print(f"{e}:", flush=True)
                url = plain.url if e == "plain-rank" else srv.url
                knees[e] = sweep(url, reqs["rank" if e == "plain-rank" else e], args, args.deadline_ms, next_id)
            if "rank" in knees and "plain-rank" in knees and knees["plain-rank"]["knee"] > 0:
                knees["ratio_rank_to_plain"] = knees["rank"]["knee"] / knees["plain-rank"]["knee"]
            runs.append(knees)
    print(f"\nknees (requests/s with p99 under {args.deadline_ms:g} ms), over {args.repeat} run(s): "
          f"mean (min - max)")
    summary = {}
    for e in endpoints + ["ratio_rank_to_plain"]:
        vals = [r[e]["knee"] if isinstance(r.get(e), dict) else r.get(e) for r in runs]
        vals = [v for v in vals if v is not None]
        if not vals:
            continue
        a = np.asarray(vals, float)
        summary[e] = {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
                      "std": float(a.std()), "values": vals}
        unit = "x" if e.startswith("ratio") else "/s"
        print(f"{e:<20} {a.mean():8.2f}{unit}  ({a.min():.2f} - {a.max():.2f})")
    doc = {"benchmark": "serve_load", "config": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in vars(args).items() if k != "json"},
           "summary": summary, "runs": runs}
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"figures written to {args.json}")
    tmp.cleanup()
    return doc


if __name__ == "__main__":
    main()
