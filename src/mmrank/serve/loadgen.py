"""An HTTP load generator for the server's capacity benchmark and its shedding tests (asyncio + httpx).

* :func:`open_loop`: requests at a fixed arrival rate, whatever the server's latency (so a slow server
  faces a growing queue, as it would in production), not a fixed number of clients.
* :func:`closed_loop`: ``concurrency`` clients, each sending its next request when the last returned.

Each returns :class:`Result` rows; :func:`summary` turns them into counts and percentiles.

Example::

    >>> reqs = [("POST", "/v1/rank", {"candidates": [1, 2, 3]})]          # doctest: +SKIP
    >>> summary(open_loop("http://127.0.0.1:8000", reqs, rate=200, seconds=5))
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

Request = tuple  # (method, path, json body or None[, headers])


@dataclass
class Result:
    status: int              # 0: no answer (connection error or client timeout)
    seconds: float           # from the scheduled send time to the answer
    retry_after: str | None
    server_seconds: float | None = None  # the server's own time (its Server-Timing header)
    late: float = 0.0        # how late the client sent it (its own lag: past a few ms, the client is the limit)


def _server_seconds(header: str | None) -> float | None:
    if not header or "dur=" not in header:
        return None
    try:
        return float(header.split("dur=", 1)[1].split(",")[0].split(";")[0]) / 1e3
    except ValueError:
        return None


async def _send(client, req: Request, scheduled: float) -> Result:
    import httpx

    method, path, body = req[:3]
    headers = req[3] if len(req) > 3 else None
    late = time.perf_counter() - scheduled
    try:
        r = await client.request(method, path, json=body, headers=headers)
        return Result(r.status_code, time.perf_counter() - scheduled, r.headers.get("retry-after"),
                      _server_seconds(r.headers.get("server-timing")), late)
    except httpx.HTTPError:
        return Result(0, time.perf_counter() - scheduled, None, None, late)


async def _open_loop(url: str, reqs: list[Request], rate: float, seconds: float, timeout: float) -> list[Result]:
    import httpx

    n = max(1, int(rate * seconds))
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await _send(client, ("GET", "/healthz", None), time.perf_counter())  # a connection open before t0
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_send(client, reqs[i % len(reqs)], at)))
        return list(await asyncio.gather(*tasks))


def open_loop(url: str, reqs: list[Request], rate: float, seconds: float, timeout: float = 30.0) -> list[Result]:
    """``rate * seconds`` requests (cycling through ``reqs``), the i-th sent at ``i / rate`` s; a
    request's latency counts from its scheduled time (a late client does not hide queueing)."""
    return asyncio.run(_open_loop(url, reqs, rate, seconds, timeout))


async def _closed_loop(url: str, reqs: list[Request], concurrency: int, total: int, timeout: float) -> list[Result]:
    import httpx

    out: list[Result] = []
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_i
            while next_i < total:
                req = reqs[next_i % len(reqs)]
                next_i += 1
                out.append(await _send(client, req, time.perf_counter()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def closed_loop(url: str, reqs: list[Request], concurrency: int, total: int,
                timeout: float = 30.0) -> tuple[list[Result], float]:
    """``total`` requests from ``concurrency`` clients; returns the results and the wall time."""
    t0 = time.perf_counter()
    res = asyncio.run(_closed_loop(url, reqs, concurrency, total, timeout))
    return res, time.perf_counter() - t0


def summary(results: list[Result], ok: int = 200) -> dict:
    """Counts by status and the latency percentiles (ms) of the requests answered ``ok``: as the client
    saw them (``p50_ms``, ``p99_ms``: from the scheduled send) and as the server timed them
    (``server_p99_ms``)."""
    lat = np.asarray([r.seconds for r in results if r.status == ok]) * 1e3
    srv = np.asarray([r.server_seconds for r in results if r.status == ok and r.server_seconds is not None]) * 1e3
    by_status: dict[int, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {"n": len(results), "ok": int(len(lat)), "status": by_status,
            "refused_with_retry_after": sum(1 for r in results if r.status in (429, 503) and r.retry_after),
            "p50_ms": pct(50), "p99_ms": pct(99),
            "server_p99_ms": float(np.percentile(srv, 99)) if len(srv) else float("nan"),
            "client_late_p99_ms": float(np.percentile([r.late for r in results], 99) * 1e3) if results
            else float("nan")}
