"""A bounded soak with faults against a real server: rank, search and ingest from client threads on
``mmrank serve --workers 2`` over a Redis table, while Redis restarts, the bundle is swapped and one
worker is killed with SIGKILL. Used by ``tests/test_serve_soak.py`` (about a minute) and
``benchmarks/serve_load.py --soak SECONDS`` (ten minutes).

The faults come at fixed shares of the run: Redis restarts at 20%, the bundle is swapped at 40%, a
worker is killed at 60%; resident memory is read after warm-up (15%) and at the end, on a worker
that lives through the whole run.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path

KEY = "soak-key-0123456789"


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_pids(server_pid: int) -> list[int]:
    """The uvicorn worker processes of ``mmrank serve --workers N`` (Linux /proc)."""
    out = []
    for c in _children(server_pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(run: Path, redis_dir: Path, seconds: float = 60.0, swap_strategy: str | None = None,
         strategy: str = "simtier") -> dict:
    """Run the soak on ``run`` (it is written to: pass a copy); returns what happened (see keys). The
    swap loads ``swap_strategy`` (default: the same strategy again, a fresh bundle)."""
    import httpx
    import pyarrow.parquet as pq

    from mmrank.testing.serving import ServerProcess, move_table_to_redis, redis_server

    rproc, url = redis_server(redis_dir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    move_table_to_redis(run, url, namespace="soak")
    t = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image"])
    ids, titles, images = (t.column(c).to_pylist() for c in ("item_id", "title", "image"))
    statuses: dict[str, dict[int, int]] = {"rank": {}, "search": {}, "items": {}}
    no_retry_after: list[str] = []
    dropped: list[tuple[str, float]] = []
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    out: dict = {}

    def record(kind: str, r) -> None:  # noqa: ANN001
        with lock:
            statuses[kind][r.status_code] = statuses[kind].get(r.status_code, 0) + 1
            if r.status_code in (429, 503) and not r.headers.get("retry-after"):
                no_retry_after.append(f"{kind} {r.status_code} {r.text[:200]}")

    def loop(kind: str, seed: int) -> None:
        k = seed
        n = len(ids)
        while not stop.is_set():
            k += 1
            try:
                with httpx.Client(base_url=srv.url, timeout=30) as c:  # a fresh connection: either worker
                    for _ in range(5):
                        if kind == "rank":
                            a, h = (k * 7) % max(1, n - 50), k % max(1, n - 20)
                            r = c.post("/v1/rank", json={"user": {"history": ids[h:h + 20]},
                                                         "candidates": ids[a:a + 50]})
                        elif kind == "search":
                            body = ({"text": titles[k % n]} if k % 2 else
                                    {"image_b64": base64.b64encode(images[k % n]).decode()})
                            r = c.post("/v1/search", json=body)
                        else:
                            item_id = 600_000_000 + seed * 10_000_000 + k
                            r = c.post("/v1/items", headers={"X-API-Key": KEY}, json={
                                "item_id": item_id, "title": f"soak {item_id}: {titles[k % n]}",
                                "image_b64": base64.b64encode(images[k % n]).decode()})
                            if r.status_code == 201:
                                with lock:
                                    acked.append(item_id)
                        record(kind, r)
                        k += 1
            except httpx.HTTPError as err:
                with lock:
                    dropped.append((f"{kind}: {type(err).__name__}", time.monotonic()))
                time.sleep(0.05)

    args = ("--workers", "2", "--strategy", strategy, "--forward-workers", "1")
    srv = ServerProcess(run, api_key=KEY, extra_args=args, timeout=180).start()
    t0 = time.monotonic()

    def until(share: float) -> None:
        time.sleep(max(0.0, t0 + share * seconds - time.monotonic()))

    try:
        clients = [threading.Thread(target=loop, args=(kind, s)) for s, kind in
                   enumerate(("rank", "rank", "search", "items"))]
        for c in clients:
            c.start()
        until(0.15)
        pids = worker_pids(srv.proc.pid)
        survivor = pids[0]
        out["rss_warm_kb"] = rss_kb(survivor)
        until(0.20)
        rproc.terminate()  # Redis restarts (its data on disk: appendfsync always)
        rproc.wait(timeout=10)
        time.sleep(min(2.0, 0.03 * seconds))
        rproc, _ = redis_server(redis_dir, port=port)
        until(0.40)
        r = httpx.post(srv.url + "/v1/admin/reload", json={"strategy": swap_strategy} if swap_strategy else {},
                       headers={"X-API-Key": KEY}, timeout=120)  # on whichever worker answers
        out["swap_status"] = r.status_code
        until(0.60)
        now = worker_pids(srv.proc.pid)
        out["worker_died_on_its_own"] = survivor not in now or len(now) < 2
        victim = next((p for p in now if p != survivor), None)
        killed_at = time.monotonic()
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        until(1.0)
        stop.set()
        for c in clients:
            c.join(timeout=60)
        out["rss_end_kb"] = rss_kb(survivor) if survivor in worker_pids(srv.proc.pid) else None
        out["victim_replaced"] = victim is not None and victim not in worker_pids(srv.proc.pid) \
            and len(worker_pids(srv.proc.pid)) == 2
        missing = set()
        for _ in range(4):  # every acknowledged item, asked of both workers (fresh connections)
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                missing |= {i for i in acked if c.get(f"/v1/items/{i}").status_code != 200}
        rank = httpx.post(srv.url + "/v1/rank", json={"candidates": acked[-100:] or ids[:1]}, timeout=30).json()
    finally:
        stop.set()
        srv.stop()
        rproc.terminate()
        rproc.wait(timeout=10)
    out.update({"statuses": statuses, "acknowledged": len(acked), "missing": sorted(missing),
                "unknown_in_rank": rank.get("unknown"), "no_retry_after": no_retry_after,
                "dropped": [(what, round(at - killed_at, 2)) for what, at in dropped],
                "seconds": seconds})
    return out
