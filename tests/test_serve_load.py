"""The server under more load than it can take (`mmrank serve` in a subprocess): it sheds the excess
with 503 + Retry-After at once, counts it in /metrics, and the requests it accepts keep their p99
under the deadline (as the server times them: its Server-Timing header)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrank.testing.serving import ServerProcess

pytestmark = pytest.mark.slow


def _rank_requests(run: Path, n: int, n_cand: int = 50) -> list[tuple]:
    ids = pq.read_table(run / "data" / "items.parquet", columns=["item_id"]).column("item_id").to_numpy()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pick = rng.choice(ids, min(len(ids), n_cand + 20), replace=False)
        out.append(("POST", "/v1/rank", {"user": {"history": [int(x) for x in pick[n_cand:]]},
                                         "candidates": [int(x) for x in pick[:n_cand]]}))
    return out


def test_twice_the_capacity_is_shed_with_retry_after_and_accepted_p99_stays_under_the_deadline(
        serving_run: Path) -> None:
    from mmrank.serve.loadgen import closed_loop, open_loop, summary

    deadline_ms = 250.0
    reqs = _rank_requests(serving_run, 32, n_cand=250)  # ~10 ms forwards: the server, not this client, is the limit
    args = ("--strategy", "simtier", "--forward-workers", "1", "--rank-concurrency", "2",
            "--queue-factor", "2", "--deadline-ms", str(deadline_ms))
    with ServerProcess(serving_run, extra_args=args) as srv:
        closed_loop(srv.url, reqs, 2, 20)  # warm-up
        res, wall = closed_loop(srv.url, reqs, 2, 60)  # capacity: the configured concurrency, saturated
        assert all(r.status == 200 for r in res)
        capacity = len(res) / wall
        got = summary(open_loop(srv.url, reqs, rate=2 * capacity, seconds=4.0))
        metrics = httpx.get(srv.url + "/metrics").text
    refused = got["status"].get(503, 0)
    assert set(got["status"]) <= {200, 503}, got
    assert refused > 0 and got["refused_with_retry_after"] == refused, got
    assert got["ok"] > 0.3 * got["n"], got  # shedding, not collapse: most of the capacity is still served
    # the server's own time (Server-Timing) of the requests it accepted: what its deadline bounds. The
    # client's view adds the time before the app sees a request (uvicorn's event loop and the kernel's
    # queue; the admission takes the loop's lag off the budget, see mmrank.serve.limits.LoopLag) and
    # this process's own lag on a shared machine: bounded loosely (without the lag term it reached
    # 1,021 ms; with it 112-241 ms in three runs).
    assert got["server_p99_ms"] < deadline_ms, (capacity, got)
    assert got["p99_ms"] < 2 * deadline_ms, (capacity, got)
    counted = sum(float(v) for v in re.findall(
        r'mmrank_refused_total\{reason="(?:deadline|queue full|overloaded)",route="/v1/rank"\} (\S+)', metrics))
    assert counted == refused, (counted, got)
