"""Events per second of the event stream: the replay source alone, and the replay source through the
online joiner (into CTR samples), on one run; optionally Redis Streams (produce, then consume with a
consumer group) against a redis-server started here.

    .venv/bin/python benchmarks/stream_throughput.py --run R [--repeats 3] [--redis]

With no run given, a small market is generated into a temporary directory first (``--size small``,
400k impressions). Prints one JSON line per measurement (median of the repeats, and every repeat).
Timings include the reads of the Parquet files (replay) and building every Event object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _replay(run: Path) -> tuple[int, float]:
    from mmrank.stream.sources import ReplaySource

    t0 = time.perf_counter()
    n = sum(len(b) for b in ReplaySource(run))
    return n, time.perf_counter() - t0


def _replay_join(run: Path) -> tuple[int, float]:
    from mmrank.stream.sources import ReplaySource
    from mmrank.stream.stage import make_joiner

    t0 = time.perf_counter()
    j = make_joiner(run)
    n = 0
    for b in ReplaySource(run):
        n += len(b)
        j.push(b.records)
    j.flush()
    return n, time.perf_counter() - t0


def _redis(run: Path) -> dict:
    from mmrank.stream.sources import RedisSource, produce
    from mmrank.testing.serving import redis_server

    with tempfile.TemporaryDirectory() as d:
        proc, url = redis_server(d)
        try:
            p = produce(run, url, "bench")
            src = RedisSource(url, "bench", block_ms=50)
            t0, n = time.perf_counter(), 0
            while (b := src.read()) is not None:
                n += len(b)
                src.ack(b.cursor)
            secs = time.perf_counter() - t0 - 0.05  # less the final empty read's block
        finally:
            proc.kill()
    return {"produce_events_per_s": p["events_per_s"], "consume_ack_events_per_s": round(n / secs, 1),
            "events": n, "note": "redis-server with appendfsync always (the tests' settings)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--redis", action="store_true")
    args = ap.parse_args()
    run = args.run
    if run is None:
        from mmrank.data.market import generate_market, market_config

        run = Path(tempfile.mkdtemp()) / "run"
        generate_market(market_config(size=args.size, seed=0), run)
    for name, fn in (("replay", _replay), ("replay+joiner", _replay_join)):
        rates, n = [], 0
        for _ in range(args.repeats):
            n, secs = fn(run)
            rates.append(n / secs)
        print(json.dumps({"measure": name, "run": str(run), "events": n,
                          "events_per_s_median": round(statistics.median(rates), 1),
                          "events_per_s": [round(r, 1) for r in rates]}), flush=True)
    if args.redis:
        print(json.dumps({"measure": "redis", **_redis(run)}), flush=True)


if __name__ == "__main__":
    main()
