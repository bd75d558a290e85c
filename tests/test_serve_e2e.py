"""The server as a user runs it (`mmrank serve` in a subprocess on 127.0.0.1): durability across
kill -9, a version swap under concurrent load, two processes on one Redis, schemathesis."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrank.testing.serving import ServerProcess

pytestmark = pytest.mark.slow
KEY = "e2e-key-9876543210"


def _catalog(run: Path) -> dict:
    t = pq.read_table(run / "data" / "items.parquet", columns=["item_id", "title", "image", "category"])
    return {c: t.column(c).to_pylist() for c in t.column_names}


def _new_item(cat: dict, k: int, item_id: int) -> dict:
    return {"item_id": item_id, "title": f"new arrival {k}: {cat['title'][k]}", "category": cat["category"][k],
            "image_b64": base64.b64encode(cat["image"][k]).decode()}


def test_acknowledged_items_survive_kill_9(serving_run_copy: Path) -> None:
    cat = _catalog(serving_run_copy)
    new_ids = [880_000_000 + k for k in range(6)]
    srv = ServerProcess(serving_run_copy, api_key=KEY).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for k, i in enumerate(new_ids):
                r = c.post("/v1/items", json=_new_item(cat, k, i), headers={"X-API-Key": KEY})
                assert r.status_code == 201, r.text
                # visible in the very next request
                rank = c.post("/v1/rank", json={"candidates": [i, cat["item_id"][0]]}).json()
                assert i in [x["item_id"] for x in rank["items"]]
        srv.kill9()
    finally:
        srv.stop()
    with ServerProcess(serving_run_copy, api_key=KEY) as srv2, httpx.Client(base_url=srv2.url, timeout=30) as c:
        rank = c.post("/v1/rank", json={"user": {"history": cat["item_id"][:5]},
                                        "candidates": new_ids + cat["item_id"][:3]}).json()
        assert rank["unknown"] == []
        assert set(new_ids) <= {x["item_id"] for x in rank["items"]}
        for k, i in enumerate(new_ids):
            assert c.get(f"/v1/items/{i}").json()["title"].startswith(f"new arrival {k}:")
        hits = c.post("/v1/search", json={"text": f"new arrival 0: {cat['title'][0]}", "k": 10}).json()
        assert new_ids[0] in [h["item_id"] for h in hits["results"]]


def test_version_swap_under_concurrency_16_fails_no_request(serving_run_copy: Path) -> None:
    from mmrank.ctr.stage import train_strategy
    from mmrank.testing.serving import new_encoder
    from mmrank.threads import limited

    cat = _catalog(serving_run_copy)
    rng = np.random.default_rng(0)
    failures: list[str] = []
    bundles: set[str] = set()
    counts = [0]
    stop = threading.Event()
    lock = threading.Lock()

    with ServerProcess(serving_run_copy, api_key=KEY, extra_args=("--strategy", "simtier")) as srv:
        def loop(seed: int) -> None:
            r_ = np.random.default_rng(seed)
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                while not stop.is_set():
                    cands = [int(x) for x in r_.choice(cat["item_id"], 100, replace=False)]
                    try:
                        r = c.post("/v1/rank", json={"user": {"history": cands[:20]}, "candidates": cands})
                        ok = r.status_code == 200 and len(r.json()["items"]) == 100
                        with lock:
                            counts[0] += 1
                            if ok:
                                bundles.add(r.json()["bundle"])
                            else:
                                failures.append(f"{r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as err:
                        with lock:
                            failures.append(repr(err))

        workers = [threading.Thread(target=loop, args=(s,)) for s in range(16)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)
            old = httpx.get(srv.url + "/v1/bundle").json()
            with limited(1):  # a new encoder version: new table, CTR model retrained on it
                new_version = new_encoder(serving_run_copy, seed=int(rng.integers(1, 1000)))
                train_strategy(serving_run_copy, "simtier", make_epochs=1, progress=False)
            r = httpx.post(srv.url + "/v1/admin/reload", json={}, headers={"X-API-Key": KEY}, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["encoder_version"] == new_version != old["encoder_version"]
            time.sleep(1.5)
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert failures == []
    assert counts[0] > 32
    assert len(bundles) == 2 and any(b.startswith(new_version) for b in bundles)


def test_two_uvicorn_workers_on_one_local_table_share_posted_items(serving_run_copy: Path) -> None:
    cat = _catalog(serving_run_copy)
    new_ids = [870_000_000 + k for k in range(4)]
    with ServerProcess(serving_run_copy, api_key=KEY, extra_args=("--workers", "2")) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        for k, i in enumerate(new_ids):  # each post lands on either worker (the kernel picks)
            assert c.post("/v1/items", json=_new_item(cat, k, i), headers={"X-API-Key": KEY}).status_code == 201
        for _ in range(12):  # fresh connections, spread over both workers
            with httpx.Client(base_url=srv.url, timeout=30) as fresh:
                r = fresh.post("/v1/rank", json={"candidates": new_ids, "explain": True}).json()
                assert r["unknown"] == [] and all(x["title"].startswith("new arrival") for x in r["items"])
                hits = fresh.post("/v1/search", json={"text": f"new arrival 2: {cat['title'][2]}", "k": 5}).json()
                assert new_ids[2] in [h["item_id"] for h in hits["results"]]


@pytest.mark.redis
def test_two_processes_on_one_redis_see_each_others_items(serving_run: Path, tmp_path: Path) -> None:
    from mmrank.testing.serving import move_table_to_redis, redis_server

    try:
        proc, url = redis_server(tmp_path)
    except FileNotFoundError:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
    try:
        run_a, run_b = tmp_path / "host_a", tmp_path / "host_b"
        shutil.copytree(serving_run, run_a)
        move_table_to_redis(run_a, url, namespace="e2e")
        shutil.copytree(run_a, run_b)  # another host: its own disk, the same Redis
        cat = _catalog(run_a)
        item = _new_item(cat, 7, 990_000_001)
        with ServerProcess(run_a, api_key=KEY) as a, ServerProcess(run_b, api_key=KEY) as b:
            before = httpx.post(b.url + "/v1/rank", json={"candidates": [990_000_001]}).json()
            assert [u["item_id"] for u in before["unknown"]] == [990_000_001]
            r = httpx.post(a.url + "/v1/items", json=item, headers={"X-API-Key": KEY}, timeout=30)
            assert r.status_code == 201, r.text
            after = httpx.post(b.url + "/v1/rank", json={"candidates": [990_000_001, cat["item_id"][0]],
                                                         "explain": True}).json()
            assert after["unknown"] == []
            got = {x["item_id"]: x for x in after["items"]}
            assert got[990_000_001]["title"] == item["title"] and not got[990_000_001]["id_known"]
            hits = httpx.post(b.url + "/v1/search", json={"text": item["title"], "k": 5}).json()["results"]
            assert 990_000_001 in [h["item_id"] for h in hits]
            assert httpx.get(b.url + "/v1/items/990_000_001".replace("_", "") + "/image").content == cat["image"][7]
        assert not (run_b / "embeddings" / "new_items.jsonl").exists()  # B knew it from Redis only
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_schemathesis_500_generated_cases_no_server_error(serving_run_copy: Path) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    per_operation = 80  # 7 operations take generated bodies: 560 cases and more
    calls: dict[str, int] = {}
    errors: list[str] = []
    with ServerProcess(serving_run_copy, api_key=KEY) as srv:
        schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
        for op in schema.get_all_operations():
            op = op.ok()
            label = f"{op.method.upper()} {op.path}"

            @settings(max_examples=per_operation, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case) -> None:
                headers = {"X-API-Key": KEY} if op.path in ("/v1/items",) else None
                resp = case.call(base_url=srv.url, headers=headers, timeout=60)
                calls[label] = calls.get(label, 0) + 1
                if resp.status_code >= 500:
                    errors.append(f"{label} -> {resp.status_code}: {resp.text[:300]}")

            check()
        health = httpx.get(srv.url + "/healthz").json()
    assert errors == []
    assert sum(calls.values()) >= 500, calls
    assert health["status"] == "ok"
